"""Loading and saving checkpoints: our own format (config.json + model.safetensors) or a
Hugging Face Llama folder. Weights are read with safetensors only, never unpickled."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .model import ModelArgs, Transformer

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints"


def _read_json(path: Path, field: str) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{field}: missing {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{field}: corrupt JSON in {path} ({e.msg} at line {e.lineno})") from None
    except OSError as e:
        raise ValueError(f"{field}: cannot read {path} ({e.strerror})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{field}: {path} must hold a JSON object")
    return d


def read_safetensors(path: Path, field: str = "model") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.exists():
        raise ValueError(f"{field}: missing {path}")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ValueError(f"{field}: corrupt safetensors file {path} ({str(e).splitlines()[0][:120]})") from None


def load_state(model: Transformer, sd: dict[str, torch.Tensor], field: str = "model") -> None:
    want = {k: v for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        want.pop("output.weight", None)
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing:
        raise ValueError(f"{field}: checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
    if extra:
        raise ValueError(f"{field}: checkpoint has unexpected tensors, e.g. {extra[0]}")
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"{field}: tensor {k} has shape {tuple(sd[k].shape)}, the config needs {tuple(v.shape)}")
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if k in sd:
                p.copy_(sd[k].to(p.dtype))


def load_model(path: str | Path | None = None, device: str = "cpu", max_seq_len: int | None = None) -> Transformer:
    """Load our checkpoint folder (default: the shipped one) or a Hugging Face Llama folder."""
    folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not folder.exists():
        raise ValueError(f"model: no such folder {folder}")
    if folder.is_file():
        raise ValueError(f"model: {folder} is a file; give the checkpoint folder")
    cfg = _read_json(folder / "config.json", "model")
    if "model_type" in cfg or "architectures" in cfg:
        from .hf import load_hf

        model = load_hf(folder, cfg, max_seq_len=max_seq_len)
    else:
        if max_seq_len:
            cfg["max_seq_len"] = max_seq_len
        try:
            args = ModelArgs.from_dict(cfg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model: bad config in {folder / 'config.json'} ({e})") from None
        model = Transformer(args)
        load_state(model, read_safetensors(folder / "model.safetensors"))
    if device != "cpu":
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda requested but no CUDA GPU is available")
        model = model.to(device)
    return model.eval()
