"""Adaptive vs fixed plans on the shipped model, measured side by side: batch 1 and serving.

Plans are chosen on prompt set A (the profile's own prompts: cpu_hispec_tiny was measured
on held-out prompts seed 0, its confidence statistics on the same prompts) by
`hispec-sim optimize --adaptive`'s functions (hispec_sim.adaptive.cli_adaptive: the
exhaustive fixed search and the threshold grid, every plan at the workload's MEAN rates:
the adaptive models take no per-request spread, so the fixed plans are predicted at mean
rates too); they are measured here on prompt set B (held-out prompts, another seed).

Batch 1: every plan on every prompt, interleaved (plan order rotated per prompt) so the
machine's load hits all plans alike; greedy outputs of all plans checked identical.
Prediction: fixed plans -> analytic.predict; adaptive [E, L] and [l1, l2, L] -> the exact
analytic models (i.i.d. positions); deeper adaptive -> fixed analytic x trace-replay
ratio (adaptive.adaptive_tokens_per_second). Error = measured / predicted - 1 of the
speedup over autoregressive measured in the same run (insensitive to a uniformly slower
machine); the issue's target: median |error| of the adaptive plans <= 5 %.

Serving: `hispec-exec serve`'s process (hispec_exec.serve.serve, in-process) on the same
seeded Poisson request set for every plan (set B prompts), plans run one after another
with the order rotated each pass; throughput, TTFT p50 and TPOT p50 per plan (mean over
passes). Batching: --batching (ragged default; synchronous runs adaptive plans too).

usage: PYTHONPATH=. python studies/adaptive/run_adaptive.py [--quick] [--prompts 16] [--new 128]
           [--passes 2] [--serve-requests 32] [--qps 4] [--max-batch 8] [--out-dir DIR]
Writes RESULTS.md and results.json into --out-dir (default: next to this script); --quick
(a smoke run in about a minute: 2 prompts x 16 tokens, 6 requests) writes to a temporary
folder unless --out-dir is given.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hispec_exec import decode, heldout_prompts, load_model
from hispec_sim.adaptive import adaptive_tokens_per_second, cli_adaptive, mean_rates
from hispec_sim.evaluate import Setting, exhaustive, score
from hispec_sim.schema import Plan, ServeLimits, load_profile, write_atomic
from hispec_sim.traffic import summarize

HERE = Path(__file__).resolve().parent
TARGET = 0.05


def choose_plans(max_propose: int, max_window: int) -> tuple[dict, dict, dict]:
    setting = Setting(load_profile("cpu_hispec_tiny"), None, None, None, 1, None)
    m = mean_rates(setting)
    fixed = exhaustive(m, max_propose=max_propose, max_window=max_window)
    ad = cli_adaptive(setting, exhaustive(setting, max_propose=max_propose, max_window=max_window), max_propose, max_window)
    plans = {"autoregressive": Plan(levels=[m.num_layers]),
             "fixed single-level": next(s.plan for s in fixed.top if s.plan.depth == 2),
             "adaptive single-level": Plan.model_validate(ad["best_single_level"]["plan"]),
             "fixed hierarchical": next(s.plan for s in fixed.top if s.plan.depth >= 3)}
    if ad["best_hierarchical"]:
        plans["adaptive hierarchical"] = Plan.model_validate(ad["best_hierarchical"]["plan"])
    pred = {}
    for n, p in plans.items():
        tps, how = adaptive_tokens_per_second(m, p)
        pred[n] = {"tokens_per_s": tps, "model": how}
    return plans, pred, ad


def batch1(model, plans: dict, prompts, new: int, passes: int) -> dict:
    names = list(plans)
    decode(model, plans["autoregressive"], prompts[0], 8)  # warm-up
    wall = dict.fromkeys(names, 0.0)
    toks = dict.fromkeys(names, 0)
    committed = dict.fromkeys(names, 0)
    fulls = dict.fromkeys(names, 0)
    for i, pr in enumerate(prompts * passes):
        order = names[i % len(names):] + names[:i % len(names)]
        ref = None
        for n in order:
            r = decode(model, plans[n], pr, new)
            wall[n] += r.wall_s
            toks[n] += len(r.tokens)
            committed[n] += r.committed
            fulls[n] += r.forwards_per_level()[-1]
            ref = ref or r.tokens
            assert r.tokens == ref, f"{n}: greedy output differs from the other plans'"
    return {n: {"tokens_per_s": toks[n] / wall[n], "tokens_per_full_forward": committed[n] / fulls[n]} for n in names}


def serving(model, plans: dict, prompts, new: int, qps: float, max_batch: int, passes: int, batching: str, seed: int) -> dict:
    from hispec_exec.serve import serve

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / qps, len(prompts))).tolist()
    news = [new] * len(prompts)
    limits = ServeLimits(max_batch=max_batch)
    names = [n for n in plans if n != "autoregressive"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    ref = None
    for i in range(passes):
        for n in names[i % len(names):] + names[:i % len(names)]:
            out = serve(model, plans[n], arrivals, prompts, news, limits, batching=batching)
            ref = ref or out["tokens"]
            assert out["tokens"] == ref, f"{n}: served greedy output differs from the other plans'"
            s = summarize(out["metrics"], limits)
            runs[n].append({"throughput_tokens_per_s": s["throughput_tokens_per_s"], "ttft_ms_p50": s["ttft_ms"]["p50"],
                            "tpot_ms_p50": s["tpot_ms"]["p50"], "mean_batch": out["mean_batch"]})
    return {n: {k: statistics.fmean(r[k] for r in rs) for k in rs[0]} for n, rs in runs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, output to a temporary folder")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--seed-b", type=int, default=1)
    ap.add_argument("--passes", type=int, default=2, help="passes over the prompts / the serving runs (order rotated)")
    ap.add_argument("--serve-requests", type=int, default=32)
    ap.add_argument("--serve-new", type=int, default=64)
    ap.add_argument("--qps", type=float, default=4.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batching", default="ragged", choices=["ragged", "synchronous"])
    ap.add_argument("--max-propose", type=int, default=8)
    ap.add_argument("--max-window", type=int, default=16)
    ap.add_argument("--out-dir")
    a = ap.parse_args()
    if a.quick:
        a.prompts, a.new, a.passes, a.serve_requests, a.serve_new, a.max_propose, a.max_window = 2, 16, 1, 6, 12, 6, 6
    out_dir = Path(a.out_dir) if a.out_dir else (Path(tempfile.mkdtemp(prefix="adaptive_quick_")) if a.quick else HERE)
    torch.set_num_threads(1)
    load0 = open("/proc/loadavg").read().split()[:3]
    t0 = time.time()
    plans, pred, ad = choose_plans(a.max_propose, a.max_window)
    model = load_model()
    meas = batch1(model, plans, heldout_prompts(a.prompts, 64, seed=a.seed_b), a.new, a.passes)
    load_mid = open("/proc/loadavg").read().split()[:3]
    srv = serving(model, plans, heldout_prompts(a.serve_requests, 32, seed=a.seed_b + 100), a.serve_new, a.qps,
                  a.max_batch, a.passes, a.batching, a.seed_b)
    load1 = open("/proc/loadavg").read().split()[:3]
    ar_p, ar_m = pred["autoregressive"]["tokens_per_s"], meas["autoregressive"]["tokens_per_s"]
    rows = []
    for n, p in plans.items():
        ps, ms = pred[n]["tokens_per_s"] / ar_p, meas[n]["tokens_per_s"] / ar_m
        rows.append({"role": n, "plan": p.describe(), "plan_json": p.model_dump(), "model": pred[n]["model"],
                     "predicted_tokens_per_s": round(pred[n]["tokens_per_s"], 2),
                     "measured_tokens_per_s": round(meas[n]["tokens_per_s"], 2),
                     "predicted_speedup": round(ps, 4), "measured_speedup": round(ms, 4),
                     "speedup_error": round(ms / ps - 1, 4),
                     "measured_tokens_per_full_forward": round(meas[n]["tokens_per_full_forward"], 4)})
    errs = [abs(r["speedup_error"]) for r in rows if r["role"].startswith("adaptive")]
    best = lambda kind, d, key: max((n for n in d if n.startswith(kind)), key=lambda n: d[n][key])
    b_ad, b_fx = best("adaptive", meas, "tokens_per_s"), best("fixed", meas, "tokens_per_s")
    s_ad, s_fx = best("adaptive", srv, "throughput_tokens_per_s"), best("fixed", srv, "throughput_tokens_per_s")
    res = {"command": "PYTHONPATH=. python studies/adaptive/run_adaptive.py" + (" --quick" if a.quick else ""),
           "args": vars(a), "set_a": "profile cpu_hispec_tiny (held-out prompts seed 0)",
           "set_b": f"held-out prompts seed {a.seed_b}: {a.prompts} x {a.new} tokens, prompt length 64, {a.passes} passes; "
                    f"serving: {a.serve_requests} requests (seed {a.seed_b + 100}, prompt length 32, {a.serve_new} new "
                    f"tokens), Poisson {a.qps} req/s, max batch {a.max_batch}, {a.batching}",
           "rates": ad["rates"], "threads": 1, "loadavg": {"before": load0, "after_batch1": load_mid, "after": load1},
           "seconds": round(time.time() - t0, 1), "host": os.uname().nodename, "torch": torch.__version__,
           "batch1": rows, "median_abs_speedup_error_adaptive": round(statistics.median(errs), 4),
           "target_met": bool(statistics.median(errs) <= TARGET),
           "batch1_best_adaptive_vs_best_fixed": {"adaptive": b_ad, "fixed": b_fx,
                                                  "gain": round(meas[b_ad]["tokens_per_s"] / meas[b_fx]["tokens_per_s"], 4)},
           "batch1_gain_single_level": round(meas["adaptive single-level"]["tokens_per_s"] / meas["fixed single-level"]["tokens_per_s"], 4),
           "serving": {n: {k: round(v, 3) for k, v in d.items()} for n, d in srv.items()},
           "serving_best_adaptive_vs_best_fixed": {"adaptive": s_ad, "fixed": s_fx, "gain": round(
               srv[s_ad]["throughput_tokens_per_s"] / srv[s_fx]["throughput_tokens_per_s"], 4)},
           "optimize_adaptive": {k: ad[k] for k in ("best", "best_fixed", "predicted_gain_over_best_fixed")}}
    if "adaptive hierarchical" in meas:
        res["batch1_gain_hierarchical"] = round(meas["adaptive hierarchical"]["tokens_per_s"]
                                                / meas["fixed hierarchical"]["tokens_per_s"], 4)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "results.json", json.dumps(res, indent=1) + "\n")
    write_atomic(out_dir / "RESULTS.md", results_md(res))
    print(results_md(res))
    print(f"wrote {out_dir / 'RESULTS.md'} and results.json")


def results_md(r: dict) -> str:
    L = ["# Adaptive drafting and escalation on the shipped model (CPU)", "",
         f"Generated by `{r['command']}` ({r['seconds']} s, host {r['host']}, torch {r['torch']}, 1 thread; "
         f"loadavg before {' '.join(r['loadavg']['before'])}, after batch 1 {' '.join(r['loadavg']['after_batch1'])}, "
         f"after {' '.join(r['loadavg']['after'])}).", "",
         f"Plans chosen on set A ({r['set_a']}) by `hispec-sim optimize --adaptive`'s functions; {r['rates']}.",
         f"Measured on set B: {r['set_b']}.", "", "## Batch 1", "",
         "| role | plan | predicted tok/s | measured tok/s | predicted speedup | measured speedup | speedup error | model |",
         "|---|---|---:|---:|---:|---:|---:|---|"]
    for x in r["batch1"]:
        L.append(f"| {x['role']} | {x['plan']} | {x['predicted_tokens_per_s']:.2f} | {x['measured_tokens_per_s']:.2f} | "
                 f"{x['predicted_speedup']:.3f} | {x['measured_speedup']:.3f} | {100 * x['speedup_error']:+.1f} % | {x['model']} |")
    b = r["batch1_best_adaptive_vs_best_fixed"]
    L += ["", f"* Prediction error of the adaptive plans (speedup over autoregressive, same run): median |error| "
          f"{100 * r['median_abs_speedup_error_adaptive']:.1f} % (target <= 5 %: {'met' if r['target_met'] else 'NOT met'}).",
          f"* Best adaptive ({b['adaptive']}) vs best fixed ({b['fixed']}), measured: x{b['gain']:.3f}; adaptive vs fixed "
          f"single-level x{r['batch1_gain_single_level']:.3f}"
          + (f", hierarchical x{r['batch1_gain_hierarchical']:.3f}." if "batch1_gain_hierarchical" in r else "."),
          f"* Predicted by optimize --adaptive: x{r['optimize_adaptive']['predicted_gain_over_best_fixed']:.3f} "
          f"({r['optimize_adaptive']['best']['describe']} vs {r['optimize_adaptive']['best_fixed']['describe']}).",
          "", "## Serving (hispec-exec serve's process, the same requests for every plan)", "",
          "| role | throughput tok/s | TTFT p50 ms | TPOT p50 ms | mean batch |", "|---|---:|---:|---:|---:|"]
    for n, d in r["serving"].items():
        L.append(f"| {n} | {d['throughput_tokens_per_s']:.2f} | {d['ttft_ms_p50']:.1f} | {d['tpot_ms_p50']:.1f} | {d['mean_batch']:.2f} |")
    s = r["serving_best_adaptive_vs_best_fixed"]
    L += ["", f"* Best adaptive ({s['adaptive']}) vs best fixed ({s['fixed']}) in serving: x{s['gain']:.3f} throughput.",
          "", "Earlier hand-run batch-1 results (two runs, no gain beyond noise): previous_runs.md.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
