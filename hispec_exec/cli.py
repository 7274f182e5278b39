"""hispec-exec: run plans of the shared schema on a real early-exit model.

  hispec-exec info     [--model M] [--json]
  hispec-exec run      (--plan FILE | --levels 2,4,16 --propose 2 --window 4) [--check] [--json] ...
  hispec-exec generate --prompt TEXT [--levels ... | --plan FILE] ...
  hispec-exec train    [--out DIR] [--minutes M] ...
"""
from __future__ import annotations

import argparse
import json
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"hispec-exec: error: {message}\n")
        raise SystemExit(2)


def _ints(text: str, field: str) -> list[int]:
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ValueError(f"{field}: expected comma-separated integers, got {text!r}") from None
    if not out:
        raise ValueError(f"{field}: empty list")
    return out


def _plan_from_args(a, num_layers: int):
    from hispec_sim.schema import Plan, load_plan

    if a.plan:
        if a.levels:
            raise ValueError("plan: give --plan or --levels, not both")
        plan = load_plan(a.plan)
    elif a.levels:
        levels = _ints(a.levels, "levels")
        windows = _ints(a.window, "window") if a.window else []
        if len(levels) > 2 and not windows:
            raise ValueError(f"window: a {len(levels)}-level chain needs {len(levels) - 2} window(s) (--window)")
        if len(levels) <= 2:
            windows = []
        if len(windows) == 1 and len(levels) > 3:
            windows = windows * (len(levels) - 2)
        plan = Plan(levels=levels, propose=a.propose if len(levels) > 1 else 1, windows=windows)
    else:
        from hispec_sim.schema import autoregressive_plan

        plan = autoregressive_plan(num_layers)
    return plan


def _add_model(p):
    p.add_argument("--model", help="checkpoint folder (ours or a Hugging Face Llama folder); default: the shipped model")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")


def _add_plan(p):
    p.add_argument("--plan", help="plan JSON file (hispec-sim optimize/evaluate output works too)")
    p.add_argument("--levels", help="exit layers, e.g. 2,4,16 (the last is the full model)")
    p.add_argument("--propose", type=int, default=2, help="drafts per round at level 1")
    p.add_argument("--window", help="window(s) of the intermediate level(s), e.g. 4 or 4,8")
    p.add_argument("--mode", choices=["greedy", "sampling"], help="default: the plan's mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)


def _load(a):
    import torch

    torch.set_num_threads(max(1, a.threads))
    from .checkpoint import load_model

    return load_model(a.model, device=a.device)


def _codec(a, model):
    """(encode, decode) for text: the checkpoint's own tokenizer when a Hugging Face folder
    carries one, bytes otherwise (our byte-level model)."""
    from pathlib import Path

    from .data import decode_bytes, encode

    folder = Path(a.model) if a.model else None
    if folder is not None and any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                   "tokenizer.model")):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ValueError("model: this checkpoint's tokenizer needs the transformers package") from None
        try:
            tok = AutoTokenizer.from_pretrained(str(folder))
        except Exception as e:
            raise ValueError(f"model: cannot load the tokenizer in {folder} ({str(e).splitlines()[0][:100]})") from None
        return (lambda text: tok.encode(text, add_special_tokens=False),
                lambda ids: tok.decode(ids, skip_special_tokens=True))
    if model.args.vocab_size < 256:
        raise ValueError("model: text is encoded as bytes and this checkpoint has no tokenizer, "
                         "but its vocabulary has fewer than 256 tokens")
    return encode, decode_bytes


def cmd_info(a) -> int:
    from .checkpoint import DEFAULT_CHECKPOINT

    model = _load(a)
    args = model.args
    info = {
        "model": str(a.model or DEFAULT_CHECKPOINT),
        "layers": args.n_layers, "params": model.num_params(), "dim": args.dim, "heads": args.n_heads,
        "kv_heads": args.n_kv_heads, "ffn": args.ffn_dim, "vocab": args.vocab_size,
        "max_seq_len": args.max_seq_len, "tie_embeddings": args.tie_embeddings,
        "exits": list(range(1, args.n_layers + 1)),
    }
    if a.model is None:
        try:
            log = json.loads((DEFAULT_CHECKPOINT / "train_log.json").read_text())
            h = log.get("heldout", {})
            info["training"] = {"train_seconds": log.get("train_seconds"), "tokens_seen": log.get("tokens_seen"),
                                "heldout_loss_per_exit": h.get("loss"),
                                "agreement_with_last_per_exit": h.get("agreement_with_last")}
        except (OSError, ValueError):
            pass
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"model   {info['model']}")
        print(f"layers  {args.n_layers}   params {info['params'] / 1e6:.2f}M   dim {args.dim}   heads {args.n_heads}/"
              f"{args.n_kv_heads} kv   ffn {args.ffn_dim}   vocab {args.vocab_size}   context {args.max_seq_len}")
        print(f"exits   1..{args.n_layers} (every layer, shared final norm + LM head)")
        t = info.get("training")
        if t and t.get("heldout_loss_per_exit"):
            print("held-out loss per exit:   " + " ".join(f"{v:.2f}" for v in t["heldout_loss_per_exit"]))
            print("agreement with last exit: " + " ".join(f"{v:.2f}" for v in t["agreement_with_last_per_exit"]))
    return 0


def run_plan(model, plan, prompts, max_new_tokens: int, mode: str, seed: int = 0, temperature: float = 1.0,
             check: bool = False, repeats: int = 1) -> dict:
    """Decode prompts with the plan and autoregressively, interleaved, in the same run."""
    from .generate import autoregressive, check_fits, decode

    mode = mode or plan.mode
    for p in prompts:
        check_fits(plan, len(p), max_new_tokens, model.args.max_seq_len)
    # warm-up (allocator, masks, kernels)
    decode(model, plan, prompts[0], min(8, max_new_tokens), mode=mode, seed=seed, temperature=temperature)
    autoregressive(model, prompts[0], min(8, max_new_tokens), mode=mode, seed=seed, temperature=temperature)
    res, ars = [], []
    for r in range(repeats):
        for i, p in enumerate(prompts):
            ars.append(autoregressive(model, p, max_new_tokens, mode=mode, seed=seed + i, temperature=temperature, sync=False))
            res.append(decode(model, plan, p, max_new_tokens, mode=mode, seed=seed + i, temperature=temperature))
    k = plan.depth
    new = sum(len(r.tokens) for r in res)
    wall = sum(r.wall_s for r in res)
    ar_wall = sum(r.wall_s for r in ars)
    proposed = [sum(r.proposed[j] for r in res) for j in range(k)]
    accepted = [sum(r.accepted[j] for r in res) for j in range(k)]
    fpl = [sum(r.forwards_per_level()[j] for r in res) for j in range(k)]
    layer_tokens = [sum(x) for x in zip(*(r.layer_tokens() for r in res))]
    out = {
        "plan": plan.model_dump(),
        "plan_text": plan.describe(),
        "family": plan.family,
        "mode": mode,
        "prompts": len(prompts),
        "repeats": repeats,
        "max_new_tokens": max_new_tokens,
        "device": str(model.tok_embeddings.weight.device),
        "tokens_per_s": new / wall,
        "autoregressive_tokens_per_s": new / ar_wall,
        "speedup_vs_autoregressive": ar_wall / wall,
        "acceptance_per_level": [None] + [a / p if p else None for p, a in zip(proposed[1:], accepted[1:])],
        "proposed_per_level": proposed,
        "accepted_per_level": accepted,
        "forwards_per_level": fpl,
        "tokens_per_full_forward": sum(r.committed for r in res) / fpl[-1] if fpl[-1] else None,
        "committed_tokens": sum(r.committed for r in res),
        "layer_tokens": layer_tokens,
        "wall_s": wall,
        "autoregressive_wall_s": ar_wall,
    }
    if check:
        if mode == "greedy":  # identical, or where it first differs and the full model's top-2 gap there
            from .check import greedy_check

            out.update(greedy_check(model, prompts, [r.tokens for r in res], [a.tokens for a in ars]))
        else:
            out["identical_to_autoregressive"] = None
            out["check_note"] = "sampling mode: output is distributed as the full model's, not identical"
    return out


def cmd_run(a) -> int:
    from .data import decode_bytes, heldout_prompts
    from .data import encode as encode_bytes

    model = _load(a)
    plan = _plan_from_args(a, model.num_layers)
    from .generate import check_plan

    check_plan(model, plan)
    if a.prompts < 1:
        raise ValueError("prompts: must be >= 1")
    if a.max_new_tokens < 1:
        raise ValueError("max_new_tokens: must be >= 1")
    enc, _ = _codec(a, model)
    prompts = heldout_prompts(a.prompts, a.prompt_len, a.seed)
    if enc is not encode_bytes:
        prompts = [enc(decode_bytes(p)) or [0] for p in prompts]
    out = run_plan(model, plan, prompts, a.max_new_tokens, a.mode or plan.mode, a.seed, a.temperature,
                   a.check, a.repeats)
    if a.out:
        from hispec_sim.schema import write_atomic

        write_atomic(a.out, json.dumps(out, indent=1) + "\n")
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        acc = " ".join("-" if x is None else f"{x:.3f}" for x in out["acceptance_per_level"])
        print(f"plan {out['plan_text']} ({out['family']}, {out['mode']}) on {out['prompts']} held-out prompts x "
              f"{a.max_new_tokens} tokens")
        print(f"tokens/s {out['tokens_per_s']:.1f}   autoregressive {out['autoregressive_tokens_per_s']:.1f}   "
              f"speedup {out['speedup_vs_autoregressive']:.3f}x")
        print(f"acceptance per level {acc}   tokens per full-model forward {out['tokens_per_full_forward']:.3f}")
        print(f"forwards per level {out['forwards_per_level']}")
        if "identical_to_autoregressive" in out:
            print(f"identical_to_autoregressive {out['identical_to_autoregressive']}")
        if "first_divergence_text" in out:
            print(out["first_divergence_text"])
    return 0


def cmd_generate(a) -> int:
    from .generate import decode

    if not a.prompt:
        raise ValueError("prompt: empty prompt")
    model = _load(a)
    plan = _plan_from_args(a, model.num_layers)
    enc, dec = _codec(a, model)
    ids = enc(a.prompt.replace("\\n", "\n"))
    if not ids:
        raise ValueError("prompt: the prompt encodes to no tokens")
    r = decode(model, plan, ids, a.max_new_tokens, mode=a.mode, seed=a.seed, temperature=a.temperature)
    sys.stdout.write(dec(ids + r.tokens) + "\n")
    s = r.summary()
    acc = " ".join("-" if x is None else f"{x:.2f}" for x in s["acceptance_per_level"])
    sys.stderr.write(f"[{s['plan']} {s['mode']}: {s['tokens_per_s']:.1f} tokens/s, acceptance {acc}, "
                     f"{s['tokens_per_full_forward']:.2f} tokens per full-model forward]\n")
    return 0


def cmd_train(a) -> int:
    from .model import ModelArgs
    from .train import train

    args = ModelArgs(dim=a.dim, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.kv_heads, ffn_dim=a.ffn,
                     max_seq_len=a.max_seq_len)
    ModelArgs.from_dict(json.loads(args.to_json()))  # validate
    info = train(a.out, args, minutes=a.minutes, steps=a.steps, batch=a.batch, seq=a.seq, lr=a.lr,
                 exit_scale=a.exit_scale, dropout_max=a.layer_dropout, threads=a.threads, seed=a.seed,
                 init_from=a.init_from,
                 log=lambda s: print(s, flush=True))
    print(json.dumps({"out": a.out, "train_seconds": info["train_seconds"], "steps": info["steps"],
                      "heldout_loss_per_exit": info["heldout"]["loss"],
                      "agreement_with_last_per_exit": info["heldout"]["agreement_with_last"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hispec-exec", description="Run hierarchical speculative decoding plans on a real model.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    q = sub.add_parser("info", help="model layers, parameters, exits")
    _add_model(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(fn=cmd_info)

    q = sub.add_parser("run", help="decode held-out prompts with a plan and autoregressively; report speed")
    _add_model(q)
    _add_plan(q)
    q.add_argument("--prompts", type=int, default=4)
    q.add_argument("--prompt-len", type=int, default=64)
    q.add_argument("--max-new-tokens", type=int, default=128)
    q.add_argument("--repeats", type=int, default=1)
    q.add_argument("--check", action="store_true", help="report identical_to_autoregressive (greedy)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--out", help="also write the JSON report to this file")
    q.set_defaults(fn=cmd_run)

    q = sub.add_parser("generate", help="continue a text prompt")
    _add_model(q)
    _add_plan(q)
    q.add_argument("--prompt", required=True)
    q.add_argument("--max-new-tokens", type=int, default=200)
    q.set_defaults(fn=cmd_generate)

    q = sub.add_parser("train", help="train the early-exit model (LayerSkip recipe) on the stdlib corpus")
    q.add_argument("--out", default="hispec_exec/checkpoints")
    q.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget (ignored with --steps)")
    q.add_argument("--steps", type=int)
    q.add_argument("--dim", type=int, default=160)
    q.add_argument("--layers", type=int, default=16)
    q.add_argument("--heads", type=int, default=4)
    q.add_argument("--kv-heads", type=int, default=2)
    q.add_argument("--ffn", type=int, default=448)
    q.add_argument("--max-seq-len", type=int, default=512)
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--seq", type=int, default=256)
    q.add_argument("--lr", type=float, default=3e-3)
    q.add_argument("--exit-scale", type=float, default=0.3)
    q.add_argument("--layer-dropout", type=float, default=0.1)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--init-from", help="continue training this checkpoint folder (model flags are ignored)")
    q.set_defaults(fn=cmd_train)

    from .serve import add_parser as add_serve  # hispec-exec serve
    add_serve(sub)
    return p


def _one_line(e: Exception) -> str:
    try:
        from pydantic import ValidationError

        if isinstance(e, ValidationError):
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ())) or "plan"
            return f"{loc}: {err.get('msg', 'invalid')}"
    except ImportError:
        pass
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if getattr(a, "cmd", None) == "train" and a.steps is not None and a.steps < 1:
        sys.stderr.write("hispec-exec: error: steps: must be >= 1\n")
        return 2
    try:
        return a.fn(a)
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"hispec-exec: error: {_one_line(e)}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
