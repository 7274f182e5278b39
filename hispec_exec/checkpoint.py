"""Loading and saving checkpoints: our own format (config.json + model.safetensors) or a
Hugging Face Llama folder. Weights are read with safetensors only, never unpickled."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .model import ModelArgs, Transformer

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints"

# Bounds of a model this executor builds (float32 weights on one device)
MODEL_LIMITS = {"vocab_size": (2, 1 << 20), "dim": (2, 1 << 16), "n_layers": (1, 1024), "n_heads": (1, 1024),
                "n_kv_heads": (1, 1024), "ffn_dim": (1, 1 << 18), "max_seq_len": (2, 1 << 20)}


def _machine_bytes() -> int | None:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def model_bytes(args: ModelArgs) -> int:
    """float32 bytes of the weights and the full KV caches (upper bound of what loading needs)."""
    hd = args.dim // args.n_heads
    per_layer = args.dim * (args.n_heads + 2 * args.n_kv_heads) * hd + args.n_heads * hd * args.dim \
        + 3 * args.dim * args.ffn_dim + 2 * args.dim
    params = args.n_layers * per_layer + args.vocab_size * args.dim * (1 if args.tie_embeddings else 2) + args.dim
    kv = args.n_layers * 2 * args.max_seq_len * args.n_kv_heads * hd
    return 4 * (params + kv)


HF_NAMES = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
            "n_kv_heads": "num_key_value_heads", "ffn_dim": "intermediate_size", "max_seq_len": "max_position_embeddings",
            "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings"}


def check_args(args: ModelArgs, field: str = "config", names: dict | None = None) -> ModelArgs:
    """ValueError naming the field unless the executor can build and run this model here:
    types, ranges, shapes RoPE needs, and memory (weights + KV caches <= this machine's RAM)."""
    import math

    names = names or {}

    def n(f):  # the config's own name of the field
        return f"{field}.{names.get(f, f)}"

    for f, (lo, hi) in MODEL_LIMITS.items():
        v = getattr(args, f)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{n(f)}: must be an integer in [{lo}, {hi}], got {v!r}")
    if args.dim % args.n_heads or args.n_heads % args.n_kv_heads:
        raise ValueError(f"{n('n_heads')}: {n('dim')} ({args.dim}) must divide by {n('n_heads')} ({args.n_heads}) "
                         f"and that by {n('n_kv_heads')} ({args.n_kv_heads})")
    if (args.dim // args.n_heads) % 2:
        raise ValueError(f"{n('dim')}: the head dimension {args.dim} / {args.n_heads} heads = "
                         f"{args.dim // args.n_heads} must be even (RoPE)")
    for f, lo, hi in (("rope_theta", 1.0, 1e12), ("norm_eps", 1e-12, 0.1)):
        v = getattr(args, f)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{n(f)}: must be a number in [{lo:g}, {hi:g}], got {v!r}")
    if not isinstance(args.tie_embeddings, bool):
        raise ValueError(f"{n('tie_embeddings')}: must be true or false, got {args.tie_embeddings!r}")
    rs = args.rope_scaling
    if rs is not None:
        if not isinstance(rs, dict):
            raise ValueError(f"{field}.rope_scaling: must be an object (llama3 scaling) or null, got {rs!r}")
        for k, lo, hi, default in (("factor", 1e-3, 1e6, None), ("low_freq_factor", 1e-3, 1e6, 1.0),
                                   ("high_freq_factor", 1e-3, 1e6, 4.0),
                                   ("original_max_position_embeddings", 1, 1 << 24, 8192)):
            v = rs.get(k, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise ValueError(f"{field}.rope_scaling.{k}: must be a number in [{lo:g}, {hi:g}], got {v!r}")
        if rs.get("low_freq_factor", 1.0) >= rs.get("high_freq_factor", 4.0):
            raise ValueError(f"{field}.rope_scaling.low_freq_factor: must be below high_freq_factor")
    need, have = model_bytes(args), _machine_bytes()
    if have is not None and need > have:
        raise ValueError(f"{field}: this model needs {need / 2**30:.1f} GiB (float32 weights + KV caches), "
                         f"this machine has {have / 2**30:.1f} GiB")
    return args


def _read_json(path: Path, field: str) -> dict:
    """A JSON object file, bounded like every JSON input (size, nesting, finite numbers)."""
    from hispec_sim.schema import _load_object

    if not path.exists():
        raise ValueError(f"{field}: missing {path}")
    return _load_object(path, field)


def read_safetensors(path: Path, field: str = "model") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from hispec_sim.schema import regular_file

    if not path.exists():
        raise ValueError(f"{field}: missing {path}")
    regular_file(path, field)
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types on corrupt files
        raise ValueError(f"{field}: corrupt safetensors file {path} ({str(e).splitlines()[0][:120]})") from None


def check_float(name: str, x: torch.Tensor, field: str = "model") -> torch.Tensor:
    """x, unless its dtype is not a floating point one (integers or booleans cast to float
    would run a different model without a word)."""
    if not x.is_floating_point():
        raise ValueError(f"{field}: tensor {name} has dtype {str(x.dtype).removeprefix('torch.')}; weights must be "
                         "float16, bfloat16, float32 or float64")
    return x


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
        if not bool(torch.isfinite(check_float(k, sd[k], field)).all()):  # NaN logits argmax to token 0 at every exit: "perfect" agreement
            raise ValueError(f"{field}: tensor {k} holds NaN or infinite values; weights must be finite")
    with torch.no_grad():
        for k, p in model.state_dict().items():
            if k in sd:
                p.copy_(sd[k].to(p.dtype))


def weights_digest(model: Transformer) -> str:
    """'sha256:<hex>' over the weights as the model runs them: each state_dict tensor's
    name, shape and float32 values in name order. The same checkpoint gives the same digest
    on any machine and from any stored dtype it loads from (little-endian hosts); another
    training run, or another checkpoint of the same shape, gives another."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}{tuple(t.shape)};".encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy())
    return f"sha256:{h.hexdigest()}"


def _context_within(asked: int, most: int, field: str) -> int:
    if not 2 <= asked <= most:
        raise ValueError(f"max_context: must be in [2, {most}] (the checkpoint's {field}), got {asked}")
    return asked


def load_model(path: str | Path | None = None, device: str = "cpu", max_seq_len: int | None = None) -> Transformer:
    """Load our checkpoint folder (default: the shipped one) or a Hugging Face Llama folder;
    max_seq_len: the positions each KV cache holds (default: the checkpoint's context, a Hugging
    Face one's capped at DEFAULT_HF_CONTEXT), at most the checkpoint's."""
    folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not folder.exists():
        raise ValueError(f"model: no such folder {folder}")
    if not folder.is_dir():
        raise ValueError(f"model: {folder} is not a folder; give the checkpoint folder")
    cfg = _read_json(folder / "config.json", "model")
    if "model_type" in cfg or "architectures" in cfg:
        from .hf import load_hf

        model = load_hf(folder, cfg, max_seq_len=max_seq_len)
    else:
        try:
            args = ModelArgs.from_dict(cfg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model: bad config in {folder / 'config.json'} ({e})") from None
        check_args(args)
        if max_seq_len:  # fewer positions than trained is safe; more would run RoPE where training never went
            args.max_seq_len = _context_within(max_seq_len, args.max_seq_len, "max_seq_len")
        model = Transformer(args)
        load_state(model, read_safetensors(folder / "model.safetensors"))
    if device != "cpu":
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device: cuda requested but no CUDA GPU is available")
        model = model.to(device)
    return model.eval()
