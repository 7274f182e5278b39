"""hispec-exec: run plans of the shared schema on a real early-exit model.

  hispec-exec info     [--model M] [--json]
  hispec-exec run      (--plan FILE | --levels 2,4,16 --propose 2 --window 4) [--check] [--json] ...
  hispec-exec generate --prompt TEXT [--levels ... | --plan FILE] ...
  hispec-exec train    [--out DIR] [--minutes M] ...
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from hispec_sim import schema
from hispec_sim.cli_common import (SEED, Parser, add_model_args, add_plan_args, add_progress_arg, check_output,
                                   check_output_folder, float_in, given, int_in, load_model_from_args, model_files,
                                   plan_from_args, progress_log, refuse_unread, run_main, shown)

TOKENS = int_in(1, 1 << 20)


def _per_level(levels: list[int], acceptance: list, digits: int) -> str:
    """'L4: 0.412, L16: 0.575' (levels 2..k; '-' for a level that never checked, or none)."""
    return ", ".join(f"L{lv}: " + ("-" if a is None else f"{a:.{digits}f}") for lv, a in zip(levels[1:], acceptance)) or "-"


def _load(a):
    return load_model_from_args(a)


_add_model = add_model_args  # the older name, for subcommands written against it


def _plan_args(a):
    """The plan of the flags, checked before the model loads (None: autoregressive over
    whatever model loads)."""
    if a.plan is None and a.levels is None:
        plan_from_args(a, default_layers=1)  # refuses --propose / --window without --levels
        return None
    return plan_from_args(a)


def _plan_for_model(a, model, plan=None, batch_ok: bool = False):
    """The plan (autoregressive without one), checked against this model's depth; a plan
    for another model says what to run instead. batch_ok: a plan of batch > 1 (serve)."""
    from .generate import check_plan

    L = model.num_layers
    plan = plan if plan is not None else schema.autoregressive_plan(L)
    if plan.levels[-1] != L:
        which = "the shipped model" if a.model is None else f"the model in {a.model}"
        hint = ("optimize with --profile cpu_hispec_tiny (the shipped model's profile)" if a.model is None
                else "measure its profile (hispec-sim profile measure --model ...) and optimize with it")
        n = plan.levels[-1]
        raise ValueError(f"levels: the plan is for a model of {n} layers, {which} has {L}; "
                         f"{hint}, or pass --model with a checkpoint of {n} layers")
    check_plan(model, plan, batch_ok=batch_ok)
    return plan


def cmd_info(a) -> int:
    from .checkpoint import DEFAULT_CHECKPOINT, weights_digest

    model = _load(a)
    args = model.args
    info = {
        "model": str(a.model or DEFAULT_CHECKPOINT),
        "layers": args.n_layers, "params": model.num_params(), "dim": args.dim, "heads": args.n_heads,
        "kv_heads": args.n_kv_heads, "ffn": args.ffn_dim, "vocab": args.vocab_size,
        "max_seq_len": args.max_seq_len, "tie_embeddings": args.tie_embeddings,
        "exits": list(range(1, args.n_layers + 1)), "weights": weights_digest(model),
    }
    if a.model is None:
        try:
            log = json.loads((DEFAULT_CHECKPOINT / "train_log.json").read_text(encoding="utf-8"))
            h = log.get("heldout", {})
            info["training"] = {"train_seconds": log.get("train_seconds"), "tokens_seen": log.get("tokens_seen"),
                                "heldout_loss_per_exit": h.get("loss"),
                                "agreement_with_last_per_exit": h.get("agreement_with_last")}
        except (OSError, ValueError):
            pass
    if a.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"model   {shown(info['model'])}")
        print(f"layers  {args.n_layers}   params {info['params'] / 1e6:.2f}M   dim {args.dim}   heads {args.n_heads}/"
              f"{args.n_kv_heads} kv   ffn {args.ffn_dim}   vocab {args.vocab_size}   context {args.max_seq_len}")
        print(f"exits   1..{args.n_layers} (every layer, shared final norm + LM head)")
        print(f"weights {info['weights']} (a profile measured on this model records it)")
        t = info.get("training")
        if t and t.get("heldout_loss_per_exit"):
            print("held-out loss per exit:   " + " ".join(f"{v:.2f}" for v in t["heldout_loss_per_exit"]))
            print("agreement with last exit: " + " ".join(f"{v:.2f}" for v in t["agreement_with_last_per_exit"]))
    return 0


def run_plan(model, plan, prompts, max_new_tokens: int, mode: str, seed: int = 0, temperature: float = 1.0,
             check: bool = False, repeats: int = 1, log=None) -> dict:
    """Decode prompts with the plan and autoregressively, interleaved, in the same run.
    log(line), if given, hears of each decode, and every PROGRESS_S within a long one."""
    from .generate import autoregressive, check_fits, decode

    mode = mode or plan.mode
    for p in prompts:
        check_fits(plan, len(p), max_new_tokens, model.args.max_seq_len)
    say = log or (lambda line: None)
    say("warm-up")  # allocator, masks, kernels
    warm = min(8, max_new_tokens)
    decode(model, plan, prompts[0], warm, mode=mode, seed=seed, temperature=temperature,
           on_step=_ticker(log, "warm-up, plan", warm))
    autoregressive(model, prompts[0], warm, mode=mode, seed=seed, temperature=temperature,
                   on_step=_ticker(log, "warm-up, autoregressive", warm))
    res, ars = [], []
    for r in range(repeats):
        for i, p in enumerate(prompts):
            what = f"prompt {i + 1}/{len(prompts)}" + (f", repeat {r + 1}/{repeats}" if repeats > 1 else "")
            ars.append(autoregressive(model, p, max_new_tokens, mode=mode, seed=seed + i, temperature=temperature,
                                      sync=False, on_step=_ticker(log, f"{what}, autoregressive", max_new_tokens)))
            res.append(decode(model, plan, p, max_new_tokens, mode=mode, seed=seed + i, temperature=temperature,
                              on_step=_ticker(log, f"{what}, plan", max_new_tokens)))
            say(f"{what}: plan {len(res[-1].tokens) / res[-1].wall_s:.1f} tokens/s, autoregressive "
                f"{len(ars[-1].tokens) / ars[-1].wall_s:.1f} tokens/s")
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
        "acceptance_per_level": [a / p if p else None for p, a in zip(proposed[1:], accepted[1:])],  # levels 2..k
        "proposed_per_level": proposed,
        "accepted_per_level": accepted,
        "forwards_per_level": fpl,
        "tokens_per_full_forward": sum(r.committed for r in res) / fpl[-1] if fpl[-1] else None,
        "committed_tokens": sum(r.committed for r in res),
        "layer_tokens": layer_tokens,
        "wall_s": wall,
        "autoregressive_wall_s": ar_wall,
    }
    if check and mode == "greedy":  # identical, or where it first differs and the full model's top-2 gap there
        # (sampled output is distributed as the full model's: the CLI refuses --check there)
        from .check import greedy_check

        out.update(greedy_check(model, prompts, [r.tokens for r in res], [a.tokens for a in ars]))
    return out


PROGRESS_S = 5.0  # seconds between progress lines within one decode


def _ticker(log, what: str, max_new_tokens: int):
    """on_step for one decode: a line every PROGRESS_S seconds of it (None without a log)."""
    if log is None:
        return None
    last = [time.monotonic()]

    def on_step(done: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_S:
            last[0] = time.monotonic()
            log(f"{what}: {min(done, max_new_tokens)}/{max_new_tokens} tokens")
    return on_step


def cmd_run(a) -> int:
    from .prompts import heldout_token_prompts, text_codec

    if a.out:  # before the run: never overwrite the plan
        check_output(a.out, inputs=[a.plan, *model_files(a)])
    plan = _plan_args(a)
    _refuse_mode_flags(a, plan)
    model = _load(a)
    plan = _plan_for_model(a, model, plan)
    if a.prompt_len + a.max_new_tokens > model.args.max_seq_len:
        raise ValueError(f"max_new_tokens: --prompt-len ({a.prompt_len}) + --max-new-tokens ({a.max_new_tokens}) "
                         f"must fit the model's context {model.args.max_seq_len}")
    prompts = heldout_token_prompts(text_codec(model, a.model), a.prompts, a.prompt_len, a.seed)
    out = run_plan(model, plan, prompts, a.max_new_tokens, a.mode or plan.mode, a.seed, a.temperature,
                   a.check, a.repeats, log=progress_log("run", a.progress))
    if a.out:
        from hispec_sim.schema import write_atomic

        write_atomic(a.out, json.dumps(out, indent=1) + "\n")
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        acc = _per_level(out["plan"]["levels"], out["acceptance_per_level"], 3)
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


def _refuse_mode_flags(a, plan, flags=("--temperature",)) -> None:
    """Before the model loads: --temperature (generate: and --seed) only mean something when
    sampling, --check (identical to autoregressive decoding) only when greedy."""
    if (a.mode or (plan.mode if plan is not None else "greedy")) == "greedy":
        refuse_unread(a, flags, "--mode sampling (greedy decoding takes the argmax)")
    else:
        refuse_unread(a, ("--check",), "greedy mode (sampled output is distributed as the full model's, not identical)")


def cmd_generate(a) -> int:
    from .generate import decode

    if not a.prompt.replace("\\n", "\n").strip():  # as a prompts file's line: whitespace alone is no prompt
        raise ValueError("prompt: empty prompt (or whitespace only)")
    try:  # undecodable bytes of argv arrive as lone surrogates (PEP 383)
        a.prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("prompt: not UTF-8 text") from None
    plan = _plan_args(a)
    _refuse_mode_flags(a, plan, ("--temperature", "--seed"))
    model = _load(a)
    plan = _plan_for_model(a, model, plan)
    from .prompts import text_codec

    codec = text_codec(model, a.model)
    prompt = a.prompt.replace("\\n", "\n")
    ids = codec.encode(prompt)
    if not ids:
        raise ValueError("prompt: the prompt encodes to no tokens")
    from .generate import check_fits

    check_fits(plan, len(ids), a.max_new_tokens, model.args.max_seq_len)
    from .hf import eos_token_ids

    stop = frozenset() if a.model is None else eos_token_ids(Path(a.model), model.args.vocab_size)
    if a.ignore_eos:
        if not stop:
            raise ValueError("ignore_eos: applies to a model that names an end-of-sequence token (eos_token_id), "
                             "and this one names none: it runs to --max-new-tokens anyway")
        stop = frozenset()
    r = decode(model, plan, ids, a.max_new_tokens, mode=a.mode, seed=a.seed, temperature=a.temperature, stop=stop)
    sys.stdout.write(with_continuation(prompt, codec, ids, r.tokens) + "\n")
    s = r.summary()
    acc = _per_level(plan.levels, s["acceptance_per_level"], 2)
    ended = f", ended by token {r.tokens[-1]} (end of sequence)" if r.tokens[-1] in stop else ""
    sys.stderr.write(f"[{s['plan']} {s['mode']}: {len(r.tokens)} tokens{ended}, {s['tokens_per_s']:.1f} tokens/s, "
                     f"acceptance {acc}, {s['tokens_per_full_forward']:.2f} tokens per full-model forward]\n")
    return 0


def with_continuation(text: str, codec, ids: list[int], new: list[int]) -> str:
    """The user's prompt `text` (encoded as `ids`) and what `new` adds to it: the decode of both
    past the decode of the prompt (a tokenizer's first word of `new` alone would lose its
    leading space); the whole decode where a tokenizer's normalisation makes the prompt's
    decode no prefix of it."""
    head, full = codec.decode(ids), codec.decode(ids + new)
    return text + full[len(head):] if full.startswith(head) else full


def check_train_args(a):
    """Every train argument, before anything is created: the model shape the executor can
    build on this machine, a sequence that fits it, a budget, a folder to write."""
    from .checkpoint import check_args
    from .model import ModelArgs

    if a.steps is not None:
        refuse_unread(a, ("--minutes",), "a wall-clock budget; --steps sets the budget in optimizer steps")
    if a.init_from is not None:
        refuse_unread(a, ("--dim", "--layers", "--heads", "--kv-heads", "--ffn", "--max-seq-len"),
                      "a new model; --init-from continues a checkpoint of its own shape")
        init = Path(a.init_from)
        if not (init.is_dir() and (init / "config.json").is_file()):
            raise ValueError(f"init_from: {a.init_from} is not a checkpoint folder (config.json + model.safetensors)")
        from .prompts import TOKENIZER_FILES

        tokenizer = [f for f in TOKENIZER_FILES if (init / f).exists()]
        if tokenizer:  # training feeds byte text: ids 0..255 would take other meanings than the tokenizer's
            raise ValueError(f"init_from: {a.init_from} carries a tokenizer ({', '.join(tokenizer)}), and train reads "
                             "byte text (ids 0..255): its tokens would be trained on other meanings; continue a "
                             "byte-level checkpoint (one train wrote)")
        from .checkpoint import _read_json

        cfg = _read_json(init / "config.json", "init_from")
        try:
            args = ModelArgs.from_dict(cfg) if not ("model_type" in cfg or "architectures" in cfg) else None
        except (TypeError, ValueError) as e:
            raise ValueError(f"init_from: bad config ({e})") from None
        if args is None:
            from .hf import args_from_hf

            args = args_from_hf(cfg)
        check_args(args, "init_from")
        if args.vocab_size < 256:
            raise ValueError(f"init_from: a vocabulary of {args.vocab_size} tokens; training reads byte text "
                             "(256 symbols), so it needs >= 256")
    else:
        args = ModelArgs(dim=a.dim, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.kv_heads, ffn_dim=a.ffn,
                         max_seq_len=a.max_seq_len)
        for flag, f in (("kv_heads", "n_kv_heads"), ("heads", "n_heads")):
            if getattr(args, f) > args.dim:
                raise ValueError(f"{flag}: must be <= --dim ({args.dim}), got {getattr(args, f)}")
        check_args(args, "model")
    if args.n_layers < 2:
        raise ValueError(f"layers: an early-exit model needs >= 2 layers, got {args.n_layers}")
    if a.seq >= args.max_seq_len and not given(getattr(a, "_argv", []), "--seq"):
        a.seq = args.max_seq_len - 1  # the default 256 on a model of a shorter context: as long as it allows
    if a.seq >= args.max_seq_len:
        raise ValueError(f"seq: must be in [1, {args.max_seq_len - 1}] (below --max-seq-len), got {a.seq}")
    # activations of one step: every layer's hidden states, attention scores and 5 exits' logits
    hd = args.dim // args.n_heads
    act = 4 * a.batch * a.seq * (args.n_layers * (8 * args.dim + 3 * args.ffn_dim + 2 * args.n_heads * a.seq)
                                 + 15 * args.vocab_size)
    from .checkpoint import _machine_bytes, model_bytes

    need, have = 4 * model_bytes(args) + act, _machine_bytes()
    if have is not None and need > have:
        raise ValueError(f"batch: --batch {a.batch} x --seq {a.seq} on this model needs about {need / 2**30:.1f} GiB "
                         f"to train, this machine has {have / 2**30:.1f} GiB")
    del hd
    if a.out is None:
        from .checkpoint import DEFAULT_CHECKPOINT

        a.out = str(DEFAULT_CHECKPOINT)
    check_output_folder(a.out)
    if a.init_from is not None and Path(a.out).is_dir() and os.path.samefile(a.out, a.init_from):
        raise ValueError(f"out: {a.out} is the --init-from checkpoint, an input; give another folder")
    from .train import is_checkpoint_folder

    out = Path(a.out)
    if out.is_dir() and any(out.iterdir()) and not is_checkpoint_folder(out):
        raise ValueError(f"out: {a.out} is a folder holding other files (only a checkpoint `train` wrote is replaced); "
                         "give a new folder or one of its checkpoints")
    return args


def cmd_train(a) -> int:
    from .train import train

    args = check_train_args(a)
    import time

    out = Path(a.out)
    created = not out.exists()
    started = time.time()
    try:
        info = train(a.out, args if a.init_from is None else None, minutes=a.minutes, steps=a.steps, batch=a.batch,
                     seq=a.seq, lr=a.lr, exit_scale=a.exit_scale, dropout_max=a.layer_dropout, threads=a.threads,
                     seed=a.seed, init_from=a.init_from, log=lambda s: print(s, flush=True))
    except BaseException as e:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # interrupted before the first checkpoint: leave no empty folder
        elif isinstance(e, KeyboardInterrupt) and (out / "train_log.json").exists() \
                and (out / "train_log.json").stat().st_mtime >= started:
            from hispec_sim.entry import exit_message

            line, code = exit_message("hispec-exec", e, f"{out} holds the last checkpoint saved, whole; its "
                                      "train_log.json says partial if training had not finished")
            sys.stderr.write(line + "\n")
            return code
        raise
    print(json.dumps({"out": a.out, "train_seconds": info["train_seconds"], "steps": info["steps"],
                      "heldout_loss_per_exit": info["heldout"]["loss"],
                      "agreement_with_last_per_exit": info["heldout"]["agreement_with_last"]}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="hispec-exec", description="Run hierarchical speculative decoding plans on a real model.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    q = sub.add_parser("info", help="model layers, parameters, exits")
    add_model_args(q)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_info)

    q = sub.add_parser("run", help="decode held-out prompts with a plan and autoregressively; report speed")
    add_model_args(q)
    _add_decoding(q)
    q.add_argument("--prompts", type=int_in(1, 10_000), default=4)
    q.add_argument("--prompt-len", type=TOKENS, default=64,
                   help="bytes of held-out source per prompt (default 64; the tokens themselves for a byte-level model, "
                   "re-encoded by a checkpoint's tokenizer.json)")
    q.add_argument("--max-new-tokens", type=TOKENS, default=128)
    q.add_argument("--repeats", type=int_in(1, 1000), default=1)
    q.add_argument("--check", action="store_true", help="report identical_to_autoregressive (greedy)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--out", help="also write the JSON report to this file")
    add_progress_arg(q, "each decode, and every few seconds within a long one,")
    q.set_defaults(func=cmd_run)

    q = sub.add_parser("generate", help="continue a text prompt")
    add_model_args(q)
    _add_decoding(q)
    q.add_argument("--prompt", required=True, help="the prompt text; a literal \\n in it is read as a newline")
    q.add_argument("--max-new-tokens", type=TOKENS, default=200)
    q.add_argument("--ignore-eos", action="store_true",
                   help="generate --max-new-tokens tokens even past the model's end-of-sequence token (eos_token_id)")
    q.set_defaults(func=cmd_generate)

    q = sub.add_parser("train", help="train the early-exit model (LayerSkip recipe) on the stdlib corpus")
    q.add_argument("--out", help="checkpoint folder to write (default: the shipped one, hispec_exec/checkpoints/ of the "
                   "installed package)")
    q.add_argument("--minutes", type=float_in(0.001, 7 * 24 * 60), default=25.0,
                   help="wall-clock budget (default 25; not with --steps)")
    q.add_argument("--steps", type=int_in(1, 10_000_000), help="optimizer steps (instead of --minutes)")
    q.add_argument("--dim", type=int_in(2, 1 << 16), default=160, help="model width (default 160)")
    q.add_argument("--layers", type=int_in(2, schema.MAX_LAYERS), default=16, help="decoder layers (default 16; >= 2: exits below the last)")
    q.add_argument("--heads", type=int_in(1, 1024), default=4, help="attention heads (default 4; dim / heads even: RoPE)")
    q.add_argument("--kv-heads", type=int_in(1, 1024), default=2, help="key/value heads, dividing --heads (default 2)")
    q.add_argument("--ffn", type=int_in(1, 1 << 18), default=448, help="SwiGLU hidden width (default 448)")
    q.add_argument("--max-seq-len", type=int_in(2, 1 << 16), default=512, help="the model's context in tokens (default 512)")
    q.add_argument("--batch", type=int_in(1, 4096), default=16, help="training sequences per step (default 16)")
    q.add_argument("--seq", type=int_in(1, 1 << 16), default=256,
                   help="training window in tokens (default 256, or the model's context less one if shorter)")
    q.add_argument("--lr", type=float_in(1e-8, 1.0), default=3e-3, help="peak learning rate, AdamW (default 3e-3)")
    q.add_argument("--exit-scale", type=float_in(0.0, 100.0), default=0.3,
                   help="early-exit loss weight: layer l weighs scale x l / L against the last layer's 1 (default 0.3)")
    q.add_argument("--layer-dropout", type=float_in(0.0, 0.99), default=0.1,
                   help="layer dropout rising linearly from 0 at layer 1 to this at the last (default 0.1)")
    q.add_argument("--threads", type=int_in(1, schema.MAX_THREADS), default=1, help="CPU threads for torch (default 1)")
    q.add_argument("--seed", type=SEED, default=0, help="initialisation and batch order (default 0)")
    q.add_argument("--init-from", help="continue training this checkpoint folder (of its own shape: no model flags)")
    q.set_defaults(func=cmd_train)

    from .serve import add_parser as add_serve  # hispec-exec serve
    add_serve(sub)
    return p


def _add_decoding(q) -> None:
    add_plan_args(q, "plan JSON file (hispec-sim optimize --out / export --to exec)")
    q.add_argument("--mode", choices=["greedy", "sampling"], help="default: the plan's mode")
    q.add_argument("--seed", type=SEED, default=0)
    q.add_argument("--temperature", type=float_in(1e-3, 100.0), default=1.0, help="sampling temperature")


def main(argv: list[str] | None = None) -> int:
    return run_main("hispec-exec", build_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
