"""Side-by-side benchmark of the executor (run on demand: python tests/bench/bench_exec.py).

1. Our autoregressive decoding vs transformers' generate on the same weights (the shipped
   checkpoint converted to a LlamaForCausalLM folder), greedy, same prompts, interleaved.
2. Our single-level self-speculation vs transformers' assistant_early_exit (same exit,
   same number of drafts per round).
3. HiSpec on the shipped model: best single-level and best 3-level plan chosen on one
   prompt set (seed 0, 4 prompts x 96 tokens), then re-measured side by side with
   autoregressive decoding on a fresh prompt set (seed 1, 8 prompts x 128 tokens, twice).
"""
from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time

import torch


def tps(fn, n_tokens):
    t = time.perf_counter()
    fn()
    return n_tokens / (time.perf_counter() - t)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--select-prompts", type=int, default=4, help="prompts (seed 0) used to pick the best plans")
    ap.add_argument("--fresh-prompts", type=int, default=8, help="prompts (seed 1) the picked plans are measured on")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of the fresh measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="write the figures here too")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from hispec_exec import autoregressive, decode, heldout_prompts, load_model
    from hispec_exec.hf import save_hf
    from hispec_sim.schema import Plan

    hf_logging.set_verbosity_error()
    dev = a.device
    model = load_model(device=dev)
    L = model.num_layers
    T = a.max_new_tokens
    tmp = tempfile.mkdtemp(prefix="hispec_hf_")
    save_hf(model, tmp)
    hf = LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).to(dev).eval()
    prompts = heldout_prompts(a.prompts, 64, seed=0)
    fig = {"device": dev, "threads": a.threads, "prompts": a.prompts, "max_new_tokens": T}

    def hf_gen(p, **kw):
        ids = torch.tensor([p], device=dev)
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=T, min_new_tokens=T,
                              do_sample=False, pad_token_id=0, eos_token_id=None, **kw)
        return out[0, len(p):].tolist()

    # warm-up
    hf_gen(prompts[0])
    autoregressive(model, prompts[0], 16)

    # 1. autoregressive vs transformers.generate
    ours_t = hf_t = 0.0
    same = 0
    for p in prompts:
        t = time.perf_counter()
        r = autoregressive(model, p, T)
        ours_t += time.perf_counter() - t
        t = time.perf_counter()
        toks = hf_gen(p)
        hf_t += time.perf_counter() - t
        same += toks == r.tokens
    n = T * len(prompts)
    fig["ours_autoregressive_tokens_per_s"] = n / ours_t
    fig["hf_generate_tokens_per_s"] = n / hf_t
    fig["ratio_ours_vs_hf_generate"] = hf_t / ours_t
    fig["hf_generate_same_tokens"] = f"{same}/{len(prompts)}"
    print(f"[1] autoregressive: ours {n / ours_t:.1f} tok/s, transformers generate {n / hf_t:.1f} tok/s, "
          f"ratio {hf_t / ours_t:.2f}x (identical outputs {same}/{len(prompts)})", flush=True)

    # 2. single-level self-speculation vs assistant_early_exit
    for E, g in [(2, 3), (4, 4)]:
        ours_t = hf_t = 0.0
        same = 0
        plan = Plan(levels=[E, L], propose=g)
        hf.generation_config.num_assistant_tokens = g
        hf.generation_config.num_assistant_tokens_schedule = "constant"
        hf.generation_config.assistant_confidence_threshold = 0.0
        hf_gen(prompts[0], assistant_early_exit=E)
        for p in prompts:
            t = time.perf_counter()
            r = decode(model, plan, p, T)
            ours_t += time.perf_counter() - t
            t = time.perf_counter()
            toks = hf_gen(p, assistant_early_exit=E)
            hf_t += time.perf_counter() - t
            same += toks == r.tokens
        key = f"E{E}_g{g}"
        fig[f"ours_single_level_{key}_tokens_per_s"] = n / ours_t
        fig[f"hf_assistant_early_exit_{key}_tokens_per_s"] = n / hf_t
        fig[f"ratio_ours_vs_hf_early_exit_{key}"] = hf_t / ours_t
        print(f"[2] self-speculation [{E},{L}] g={g}: ours {n / ours_t:.1f} tok/s, transformers "
              f"assistant_early_exit={E} {n / hf_t:.1f} tok/s, ratio {hf_t / ours_t:.2f}x "
              f"(identical outputs {same}/{len(prompts)})", flush=True)

    # 3. HiSpec vs autoregressive vs the best tuned single-level plan
    sel = heldout_prompts(a.select_prompts, 64, seed=0)
    Tsel = min(T, 96)

    def speed(plan, ps, tt):
        tot = 0.0
        for p in ps:
            tot += decode(model, plan, p, tt).wall_s
        return len(ps) * tt / tot

    singles = [Plan(levels=[e, L], propose=g) for e in (1, 2, 3, 4, 6) for g in (2, 3, 4, 6)]
    hispecs = [Plan(levels=[d, i, L], propose=g, windows=[w])
               for d, i, g, w in itertools.product((1, 2, 3), (4, 6, 8), (2, 3), (4, 6, 8)) if d < i]
    t0 = time.perf_counter()
    best_s = max(singles, key=lambda p: speed(p, sel, Tsel))
    best_h = max(hispecs, key=lambda p: speed(p, sel, Tsel))
    print(f"[3] selected on prompts seed 0 ({time.perf_counter() - t0:.0f}s): best single-level "
          f"{best_s.describe()}, best HiSpec {best_h.describe()}", flush=True)
    fresh = heldout_prompts(a.fresh_prompts, 64, seed=1)
    n = T * len(fresh) * a.repeats
    ar_t = s_t = h_t = 0.0
    ident = True
    res = {}
    for p in fresh * a.repeats:
        ra = autoregressive(model, p, T)
        rs = decode(model, best_s, p, T)
        rh = decode(model, best_h, p, T)
        ar_t += ra.wall_s
        s_t += rs.wall_s
        h_t += rh.wall_s
        ident &= ra.tokens == rs.tokens == rh.tokens
        res.setdefault("s", []).append(rs)
        res.setdefault("h", []).append(rh)
    acc_h = [sum(r.accepted[j] for r in res["h"]) / max(1, sum(r.proposed[j] for r in res["h"])) for j in (1, 2)]
    acc_s = sum(r.accepted[1] for r in res["s"]) / max(1, sum(r.proposed[1] for r in res["s"]))
    fig.update({
        "best_single_level": best_s.describe(), "best_hispec": best_h.describe(),
        "autoregressive_tokens_per_s": n / ar_t, "single_level_tokens_per_s": n / s_t,
        "hispec_tokens_per_s": n / h_t,
        "single_level_speedup_vs_autoregressive": ar_t / s_t,
        "hispec_speedup_vs_autoregressive": ar_t / h_t,
        "hispec_speedup_vs_best_single_level": s_t / h_t,
        "single_level_acceptance": acc_s, "hispec_acceptance_levels_2_3": acc_h,
        "identical_to_autoregressive": ident,
    })
    print(f"[3] {len(fresh)} fresh prompts (seed 1) x {a.repeats}: autoregressive {n / ar_t:.1f} tok/s; single-level {best_s.describe()} "
          f"{n / s_t:.1f} tok/s ({ar_t / s_t:.2f}x, acceptance {acc_s:.2f}); HiSpec {best_h.describe()} "
          f"{n / h_t:.1f} tok/s ({ar_t / h_t:.2f}x vs autoregressive, {s_t / h_t:.2f}x vs best single-level, "
          f"acceptance {acc_h[0]:.2f}/{acc_h[1]:.2f}); identical outputs {ident}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(fig, f, indent=1)
    return fig


if __name__ == "__main__":
    main()
