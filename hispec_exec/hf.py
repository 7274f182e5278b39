"""Hugging Face Llama-format folders <-> our model (config.json + safetensors, sharded too)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .model import ModelArgs, Transformer

DEFAULT_HF_CONTEXT = 2048  # the KV cache is allocated for this many positions up front: keep it moderate


def eos_token_ids(folder: Path, vocab: int) -> frozenset[int]:
    """The end-of-sequence ids a Hugging Face folder names (eos_token_id of config.json and
    generation_config.json: an id, a list of them or null); none for our checkpoints."""
    from .checkpoint import _read_json

    out: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        if not (folder / name).is_file():
            continue
        v = _read_json(folder / name, "model").get("eos_token_id")
        for x in v if isinstance(v, list) else [] if v is None else [v]:
            if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < vocab:
                raise ValueError(f"{name.split('.')[0]}.eos_token_id: must be token ids in [0, {vocab - 1}] (or "
                                 f"null), got {v!r}")
            out.add(x)
    return frozenset(out)


def _int(cfg: dict, key: str, default=None) -> int:
    v = cfg.get(key)
    v = default if v is None else v  # null: the reader's default, as transformers reads it
    if v is None:
        raise ValueError(f"config.{key}: missing in the Hugging Face config")
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"config.{key}: must be a positive integer, got {v!r}")
    return v


def _num(cfg: dict, key: str, default: float) -> float:
    v = cfg.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"config.{key}: must be a number, got {v!r}")
    return float(v)


def args_from_hf(cfg: dict, max_seq_len: int | None = None) -> ModelArgs:
    """Our ModelArgs from a Hugging Face Llama config; ValueError naming the config field
    for anything the executor cannot build (types and ranges: checkpoint.check_args)."""
    from .checkpoint import HF_NAMES, check_args

    mt = cfg.get("model_type", "llama")
    archs = cfg.get("architectures", [])
    if not isinstance(archs, list):
        raise ValueError(f"config.architectures: must be a list of names, got {archs!r}")
    if mt not in ("llama", "mistral") and "LlamaForCausalLM" not in archs:  # qwen2: q/k/v biases, not loaded here
        raise ValueError(f"model_type: only Llama-format checkpoints (llama, mistral) are supported, got {mt!r}")
    for f in ("attention_bias", "mlp_bias"):
        if cfg.get(f):
            raise ValueError(f"{f}: biases are not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act: only silu is supported, got {cfg.get('hidden_act')!r}")
    dim, heads = _int(cfg, "hidden_size"), _int(cfg, "num_attention_heads")
    if heads < 1 or dim < 1:
        raise ValueError("config.num_attention_heads: hidden_size and num_attention_heads must be >= 1")
    hd = cfg.get("head_dim")
    hd = dim // heads if hd is None else hd
    if isinstance(hd, bool) or not isinstance(hd, int) or hd * heads != dim:
        raise ValueError("config.head_dim: head_dim * num_attention_heads must equal hidden_size")
    rp = cfg.get("rope_parameters")  # transformers >= 5 keeps theta and scaling here
    rp = {} if rp is None else rp
    if not isinstance(rp, dict):
        raise ValueError(f"config.rope_parameters: must be an object, got {rp!r}")
    if cfg.get("rope_theta") is not None and "rope_theta" in rp and cfg["rope_theta"] != rp["rope_theta"]:
        # transformers >= 5 reads rope_parameters: with two values the model would depend on the reader
        raise ValueError(f"config.rope_theta: {cfg['rope_theta']!r} differs from rope_parameters.rope_theta "
                         f"{rp['rope_theta']!r}; give one value")
    theta = cfg["rope_theta"] if cfg.get("rope_theta") is not None else rp.get("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ValueError(f"config.rope_theta: must be a number, got {theta!r}")
    rs = cfg.get("rope_scaling") or (rp if rp.get("rope_type", "default") != "default" else None)
    if rs is not None:
        if not isinstance(rs, dict):
            raise ValueError(f"config.rope_scaling: must be an object or null, got {rs!r}")
        kind = rs.get("rope_type", rs.get("type"))
        if kind in ("default", None):
            rs = None
        elif kind != "llama3":
            raise ValueError(f"config.rope_scaling: only llama3 scaling is supported, got {kind!r}")
        else:
            rs = {k: v for k, v in rs.items() if k in ("factor", "low_freq_factor", "high_freq_factor",
                                                       "original_max_position_embeddings")}
            for key in ("factor", "original_max_position_embeddings"):  # readers default the second differently
                if key not in rs:
                    raise ValueError(f"config.rope_scaling.{key}: missing (llama3 scaling needs it)")
    ctx = _int(cfg, "max_position_embeddings", DEFAULT_HF_CONTEXT)
    if ctx < 2:
        raise ValueError(f"config.max_position_embeddings: must be >= 2, got {ctx}")
    kv = _int(cfg, "num_key_value_heads", heads)
    if kv < 1:
        raise ValueError(f"config.num_key_value_heads: must be >= 1, got {kv}")
    if max_seq_len:
        from .checkpoint import _context_within

        seq = _context_within(max_seq_len, ctx, "max_position_embeddings")
    else:
        seq = min(ctx, DEFAULT_HF_CONTEXT)
    window = cfg.get("sliding_window")  # Mistral applies it whatever use_sliding_window says (only Qwen2 reads that)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)):
        raise ValueError(f"config.sliding_window: must be an integer or null, got {window!r}")
    if window is not None and window < seq:
        raise ValueError(f"config.sliding_window: {window} is shorter than the {seq} positions the model runs at; "
                         "the executor attends over the whole context (no sliding window)")
    args = ModelArgs(
        vocab_size=_int(cfg, "vocab_size"), dim=dim, n_layers=_int(cfg, "num_hidden_layers"), n_heads=heads,
        n_kv_heads=kv, ffn_dim=_int(cfg, "intermediate_size"),
        rope_theta=float(theta), norm_eps=_num(cfg, "rms_norm_eps", 1e-6),
        max_seq_len=seq,
        tie_embeddings=cfg.get("tie_word_embeddings", False), rope_scaling=rs)
    return check_args(args, "config", HF_NAMES)


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from .checkpoint import _read_json, read_safetensors

    single = folder / "model.safetensors"
    if single.exists():
        return read_safetensors(single)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        wm = _read_json(index, "model").get("weight_map", {})
        if not isinstance(wm, dict) or not all(isinstance(k, str) for k in wm):
            raise ValueError(f"model: {index}: weight_map must be an object {{tensor name: shard file}}")
        out = {}
        for shard in wm.values():
            if not isinstance(shard, str) or not shard or Path(shard).name != shard or shard in (".", ".."):
                raise ValueError(f"model: {index} names shard {shard!r}; a shard must be a file name in the folder")
        for shard in sorted(set(wm.values())):
            held = read_safetensors(folder / shard)
            for name in (n for n, s in wm.items() if s == shard):  # each tensor from the shard the index names
                if name not in held:
                    raise ValueError(f"model: {index} places {name} in {shard}, which does not hold it")
                out[name] = held[name]
        return out
    raise ValueError(f"model: {folder} has no model.safetensors or model.safetensors.index.json")


def load_hf(folder: Path, cfg: dict, max_seq_len: int | None = None) -> Transformer:
    from .checkpoint import check_float, load_state

    args = args_from_hf(cfg, max_seq_len)
    t = _hf_tensors(folder)

    used: set[str] = set()

    def get(name):
        for k in (name, "model." + name if not name.startswith("model.") else name):
            if k in t:
                used.add(k)
                return check_float(k, t[k]).float()
        raise ValueError(f"model: checkpoint lacks tensor {name}")

    sd = {"tok_embeddings.weight": get("model.embed_tokens.weight"), "norm.weight": get("model.norm.weight")}
    if not args.tie_embeddings:
        sd["output.weight"] = get("lm_head.weight")
    elif "lm_head.weight" in t:  # transformers 5 would run this head, transformers 4 the embeddings: refuse to guess
        if not torch.equal(get("lm_head.weight"), sd["tok_embeddings.weight"]):
            raise ValueError("model: tie_word_embeddings is true but lm_head.weight differs from the embeddings "
                             "(readers disagree on which to use); set tie_word_embeddings false or drop lm_head.weight")
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        try:
            sd[f"layers.{i}.wqkv.weight"] = torch.cat([get(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
            sd[f"layers.{i}.w13.weight"] = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
        except RuntimeError:  # shapes that cannot be stacked: the tensors do not match config.json
            raise ValueError(f"model: layer {i}'s projection tensors do not match config.json's sizes") from None
        sd[f"layers.{i}.wo.weight"] = get(p + "self_attn.o_proj.weight")
        sd[f"layers.{i}.w2.weight"] = get(p + "mlp.down_proj.weight")
        sd[f"layers.{i}.attention_norm.weight"] = get(p + "input_layernorm.weight")
        sd[f"layers.{i}.ffn_norm.weight"] = get(p + "post_attention_layernorm.weight")
    unread = sorted(k for k in t if k not in used and not k.endswith("rotary_emb.inv_freq"))  # a buffer, recomputed
    if unread:  # biases, more layers than config.json says, quantisation scales: another model than the one built
        raise ValueError(f"model: the checkpoint holds {len(unread)} tensor(s) the executor would not use, e.g. "
                         f"{unread[0]} (biases, extra layers and quantisation scales are not supported)")
    model = Transformer(args)
    load_state(model, sd)
    return model


def hf_config(args: ModelArgs) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": args.vocab_size,
        "hidden_size": args.dim, "intermediate_size": args.ffn_dim, "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads, "num_key_value_heads": args.n_kv_heads, "head_dim": args.head_dim,
        "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_theta": args.rope_theta, "rope_type": "default"}, "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings, "hidden_act": "silu", "attention_bias": False,
        "mlp_bias": False, "torch_dtype": "float32", "bos_token_id": None, "eos_token_id": None,
        "pad_token_id": None, "use_cache": True,
    }


def save_hf(model: Transformer, folder: str | Path) -> None:
    """Write our model as a Hugging Face LlamaForCausalLM folder (for the side-by-side benchmark)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    a = model.args
    hd, H, KV = a.head_dim, a.n_heads, a.n_kv_heads
    sd = {"model.embed_tokens.weight": model.tok_embeddings.weight, "model.norm.weight": model.norm.weight}
    if not a.tie_embeddings:
        sd["lm_head.weight"] = model.output.weight
    for i, l in enumerate(model.layers):
        p = f"model.layers.{i}."
        q, k, v = l.wqkv.weight.split([H * hd, KV * hd, KV * hd])
        g, u = l.w13.weight.chunk(2)
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                   p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": l.wo.weight,
                   p + "mlp.gate_proj.weight": g, p + "mlp.up_proj.weight": u, p + "mlp.down_proj.weight": l.w2.weight,
                   p + "input_layernorm.weight": l.attention_norm.weight,
                   p + "post_attention_layernorm.weight": l.ffn_norm.weight})
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in sd.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(hf_config(a), indent=2) + "\n", encoding="utf-8")
