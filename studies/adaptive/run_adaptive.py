"""Adaptive vs fixed plans on the shipped model, measured side by side: batch 1 and serving.

Plans are chosen on prompt set A by `hispec-sim optimize --adaptive`'s functions
(hispec_sim.adaptive.cli_adaptive: the exhaustive fixed search and the threshold grid,
every plan over the workload's request distribution -- each measured request at its own
agreement and confidence statistics, adaptive.over_requests). Set A: the shipped
profile's latency table with acceptance and confidence measured here on --a-prompts
held-out prompts (seed 0; default 64: the generalisation study's prompts-needed curve
shows 16 prompts leave several % of sampling error; 0 = the profile's own 16). The plans
are measured on prompt set B (held-out prompts, another seed; default 32).

Batch 1: every plan on every prompt, interleaved (plan order rotated per prompt) so the
machine's load hits all plans alike; greedy outputs of all plans checked identical.
Prediction, two models side by side: fixed plans -> analytic.predict; adaptive [E, L]
and [l1, l2, L] -> the exact analytic models (i.i.d. positions); deeper adaptive -> its
trace replay (adaptive.adaptive_tokens_per_second); and trace replay of
set A's measured requests (adaptive.walked: runs of agreement and confidence kept). Error = measured / predicted - 1 of the
speedup over autoregressive measured in the same run (insensitive to a uniformly slower
machine); the issue's target: median |error| of the adaptive plans <= 5 %.

Serving: `hispec-exec serve`'s process (hispec_exec.serve.serve, in-process) on the same
seeded Poisson request set for every plan (set B prompts), plans run one after another
with the order rotated each pass; throughput, TTFT p50 and TPOT p50 per plan (mean over
passes). Batching: --batching (ragged default; synchronous runs adaptive plans too).
Prediction: `hispec-sim serve` (the request-level serving simulator, in-process through
hispec_sim.cli.main) on the SAME request set (a JSONL trace of the arrivals, prompt lengths
and max_new_tokens; --sim-seeds acceptance seeds), set A's profile with its per-request
spread, same max batch and policy; error = measured / predicted - 1 per figure
and for the adaptive / fixed ratios.

usage: PYTHONPATH=. python studies/adaptive/run_adaptive.py [--quick] [--a-prompts 64] [--prompts 32] [--new 128]
           [--passes 1] [--serve-passes 2] [--serve-requests 32] [--qps 4] [--max-batch 8] [--batching ragged] [--sim-seeds 5] [--out-dir DIR]
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
from hispec_sim.adaptive import adaptive_tokens_per_second, cli_adaptive, walked
from hispec_sim.evaluate import Setting, exhaustive, score
from hispec_sim.schema import Plan, ServeLimits, load_profile, write_atomic
from hispec_sim.traffic import summarize

HERE = Path(__file__).resolve().parent
TARGET = 0.05


def set_a(n: int, new: int) -> tuple[Setting, str]:
    """Set A: the shipped profile's latency table with acceptance measured on n held-out
    prompts (seed 0; the profile's own 16-prompt workload when n == 0)."""
    prof = load_profile("cpu_hispec_tiny")
    if not n:
        return Setting(prof), "profile cpu_hispec_tiny, its workload (16 held-out prompts, seed 0)"
    from hispec_exec.measure import add_workload

    name = f"a{n}"
    prof = add_workload(prof, load_model(), prof.model.name, name, heldout_prompts(n, 64, seed=0),
                        f"{n} held-out prompts (seed 0, 64 bytes)", new, "cpu")
    return Setting(prof, name), (f"profile cpu_hispec_tiny's latency table, acceptance and confidence measured on "
                                 f"{n} held-out prompts (seed 0) x {new} tokens")


def choose_plans(setting: Setting, max_propose: int, max_window: int) -> tuple[dict, dict, dict]:
    m = setting
    fixed = exhaustive(m, max_propose=max_propose, max_window=max_window)
    ad = cli_adaptive(m, fixed, max_propose, max_window)
    plans = {"autoregressive": Plan(levels=[m.num_layers]),
             "fixed single-level": next(s.plan for s in fixed.top if s.plan.depth == 2),
             "adaptive single-level": Plan.model_validate(ad["best_single_level"]["plan"]),
             "fixed hierarchical": next(s.plan for s in fixed.top if s.plan.depth >= 3)}
    if ad["best_hierarchical"]:
        plans["adaptive hierarchical"] = Plan.model_validate(ad["best_hierarchical"]["plan"])
    pred = {}
    for n, p in plans.items():
        tps, how = adaptive_tokens_per_second(m, p)
        w = walked(m, p)
        pred[n] = {"tokens_per_s": tps, "model": how, "replay_tokens_per_s": w.tokens_per_second,
                   "replay_per_full": w.tokens_per_full_forward}
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


def request_set(prompts, new: int, qps: float, seed: int) -> tuple[list[float], list[int]]:
    """The seeded Poisson arrivals and max_new_tokens every plan is served (and simulated) with."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(1.0 / qps, len(prompts))).tolist(), [new] * len(prompts)


SERVE_FIGURES = (("throughput_tokens_per_s", None), ("ttft_ms", "p50"), ("tpot_ms", "p50"))


def predicted_serving(setting: Setting, plans: dict, prompts, arrivals, news, max_batch: int, batching: str, seeds: int,
                      seed: int) -> dict:
    """`hispec-sim serve` of every plan on the request set (a JSONL trace): mean over the
    acceptance seeds and its 95 % interval, per figure. Returns {plan name: {figure: ...}}
    and the command line of each run."""
    import contextlib
    import io

    from hispec_sim.cli import main as sim_main

    out = {}
    with tempfile.TemporaryDirectory(prefix="adaptive_serve_") as d:
        profile, workload = Path(d) / "profile_a.json", setting.workload
        write_atomic(profile, setting.profile.model_dump_json(exclude_none=True))
        trace = Path(d) / "requests.jsonl"
        trace.write_text("".join(json.dumps({"arrival_s": a, "prompt_tokens": len(p), "max_new_tokens": n}) + "\n"
                                 for a, p, n in zip(arrivals, prompts, news)))
        for name, plan in plans.items():
            if name == "autoregressive":
                continue
            pf = Path(d) / "plan.json"
            pf.write_text(plan.model_dump_json())
            argv = ["serve", "--profile", str(profile), "--workload", workload, "--plan", str(pf), "--trace", str(trace), "--max-batch",
                    str(max_batch), "--batching", batching, "--seeds", str(seeds), "--seed", str(seed), "--json"]
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                code = sim_main(argv)
            if code != 0:
                raise RuntimeError(f"hispec-sim serve failed for {name} ({plan.describe()})")
            agg = json.loads(buf.getvalue())["mean_over_seeds"]
            out[name] = {key if sub is None else f"{key.removesuffix('_ms')}_ms_{sub}":
                         (agg[key] if sub is None else agg[key][sub]) for key, sub in SERVE_FIGURES}
            out[name]["command"] = "hispec-sim " + " ".join(["serve", "--profile", "PROFILE_A"] + argv[3:6] + ["PLAN", "--trace", "REQUESTS"] + argv[9:])
    return out


def serving(model, plans: dict, prompts, arrivals, news, max_batch: int, passes: int, batching: str) -> dict:
    from hispec_exec.serve import serve

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
    ap.add_argument("--a-prompts", type=int, default=64, help="set A: prompts whose acceptance the plans are chosen on "
                    "(0: the profile's own 16)")
    ap.add_argument("--prompts", type=int, default=32, help="set B: prompts measured at batch 1")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--seed-b", type=int, default=1)
    ap.add_argument("--passes", type=int, default=1, help="passes over set B's prompts at batch 1 (order rotated)")
    ap.add_argument("--serve-passes", type=int, default=2, help="passes over the serving runs (order rotated)")
    ap.add_argument("--serve-requests", type=int, default=32)
    ap.add_argument("--serve-new", type=int, default=64)
    ap.add_argument("--qps", type=float, default=4.0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batching", default="ragged", choices=["ragged", "synchronous"])
    ap.add_argument("--sim-seeds", type=int, default=5, help="acceptance seeds of the serving simulator's prediction")
    ap.add_argument("--max-propose", type=int, default=8)
    ap.add_argument("--max-window", type=int, default=16)
    ap.add_argument("--out-dir")
    a = ap.parse_args()
    if a.quick:
        a.prompts, a.new, a.passes, a.serve_requests, a.serve_new, a.max_propose, a.max_window = 2, 16, 1, 6, 12, 6, 6
        a.a_prompts, a.serve_passes = 0, 1
    out_dir = Path(a.out_dir) if a.out_dir else (Path(tempfile.mkdtemp(prefix="adaptive_quick_")) if a.quick else HERE)
    torch.set_num_threads(1)
    load0 = open("/proc/loadavg").read().split()[:3]
    t0 = time.time()
    setting, set_a_text = set_a(a.a_prompts, a.new)
    plans, pred, ad = choose_plans(setting, a.max_propose, a.max_window)
    model = load_model()
    meas = batch1(model, plans, heldout_prompts(a.prompts, 64, seed=a.seed_b), a.new, a.passes)
    load_mid = open("/proc/loadavg").read().split()[:3]
    srv_prompts = heldout_prompts(a.serve_requests, 32, seed=a.seed_b + 100)
    arrivals, news = request_set(srv_prompts, a.serve_new, a.qps, a.seed_b)
    srv = serving(model, plans, srv_prompts, arrivals, news, a.max_batch, a.serve_passes, a.batching)
    load1 = open("/proc/loadavg").read().split()[:3]
    srv_pred = predicted_serving(setting, plans, srv_prompts, arrivals, news, a.max_batch, a.batching, a.sim_seeds, a.seed_b)
    ar_p, ar_m = pred["autoregressive"]["tokens_per_s"], meas["autoregressive"]["tokens_per_s"]
    rows = []
    for n, p in plans.items():
        ps, ms = pred[n]["tokens_per_s"] / ar_p, meas[n]["tokens_per_s"] / ar_m
        rs = pred[n]["replay_tokens_per_s"] / ar_p
        rows.append({"role": n, "plan": p.describe(), "plan_json": p.model_dump(), "model": pred[n]["model"],
                     "predicted_tokens_per_s": round(pred[n]["tokens_per_s"], 2),
                     "measured_tokens_per_s": round(meas[n]["tokens_per_s"], 2),
                     "predicted_speedup": round(ps, 4), "measured_speedup": round(ms, 4),
                     "speedup_error": round(ms / ps - 1, 4),
                     "replay_speedup": round(rs, 4), "speedup_error_replay": round(ms / rs - 1, 4),
                     "replay_tokens_per_full_forward": round(pred[n]["replay_per_full"], 4),
                     "measured_tokens_per_full_forward": round(meas[n]["tokens_per_full_forward"], 4)})
    errs = [abs(r["speedup_error"]) for r in rows if r["role"].startswith("adaptive")]
    errs_replay = [abs(r["speedup_error_replay"]) for r in rows if r["role"].startswith("adaptive")]
    best = lambda kind, d, key: max((n for n in d if n.startswith(kind)), key=lambda n: d[n][key])
    b_ad, b_fx = best("adaptive", meas, "tokens_per_s"), best("fixed", meas, "tokens_per_s")
    s_ad, s_fx = best("adaptive", srv, "throughput_tokens_per_s"), best("fixed", srv, "throughput_tokens_per_s")
    res = {"command": "PYTHONPATH=. python studies/adaptive/run_adaptive.py" + (" --quick" if a.quick else ""),
           "args": vars(a), "set_a": set_a_text,
           "set_b": f"held-out prompts seed {a.seed_b}: {a.prompts} x {a.new} tokens, prompt length 64, {a.passes} pass(es); "
                    f"serving: {a.serve_requests} requests (seed {a.seed_b + 100}, prompt length 32, {a.serve_new} new "
                    f"tokens), Poisson {a.qps} req/s, max batch {a.max_batch}, {a.batching}, {a.serve_passes} passes",
           "rates": ad["rates"], "threads": 1, "loadavg": {"before": load0, "after_batch1": load_mid, "after": load1},
           "seconds": round(time.time() - t0, 1), "host": os.uname().nodename, "torch": torch.__version__,
           "batch1": rows, "median_abs_speedup_error_adaptive": round(statistics.median(errs), 4),
           "target_met": bool(statistics.median(errs) <= TARGET),
           "median_abs_speedup_error_adaptive_replay": round(statistics.median(errs_replay), 4),
           "batch1_best_adaptive_vs_best_fixed": {"adaptive": b_ad, "fixed": b_fx,
                                                  "gain": round(meas[b_ad]["tokens_per_s"] / meas[b_fx]["tokens_per_s"], 4)},
           "batch1_gain_single_level": round(meas["adaptive single-level"]["tokens_per_s"] / meas["fixed single-level"]["tokens_per_s"], 4),
           "serving": {n: {k: round(v, 3) for k, v in d.items()} for n, d in srv.items()},
           "serving_best_adaptive_vs_best_fixed": {"adaptive": s_ad, "fixed": s_fx, "gain": round(
               srv[s_ad]["throughput_tokens_per_s"] / srv[s_fx]["throughput_tokens_per_s"], 4)},
           **serving_comparison(srv, srv_pred, a.sim_seeds),
           "optimize_adaptive": {k: ad[k] for k in ("best", "best_fixed", "predicted_gain_over_best_fixed")}}
    if "adaptive hierarchical" in meas:
        res["batch1_gain_hierarchical"] = round(meas["adaptive hierarchical"]["tokens_per_s"]
                                                / meas["fixed hierarchical"]["tokens_per_s"], 4)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "results.json", json.dumps(res, indent=1) + "\n")
    write_atomic(out_dir / "RESULTS.md", results_md(res))
    print(results_md(res))
    print(f"wrote {out_dir / 'RESULTS.md'} and results.json")


def serving_comparison(meas: dict, pred: dict, seeds: int) -> dict:
    """Per plan and figure: measured (hispec-exec serve), predicted (hispec-sim serve, mean
    over seeds and 95 % interval) and error = measured / predicted - 1; and the adaptive /
    fixed ratios (same family, and best vs best by predicted throughput) both ways."""
    rows = {}
    for n, m in meas.items():
        p = pred[n]
        rows[n] = {"command": p["command"]}
        for key in m:
            if key in p:
                rows[n][key] = {"measured": round(m[key], 3), "predicted": round(p[key]["mean"], 3),
                                "predicted_ci95": None if p[key]["ci95"] is None else [round(x, 3) for x in p[key]["ci95"]],
                                "error": round(m[key] / p[key]["mean"] - 1, 4)}
    tp = "throughput_tokens_per_s"
    ratios = {}
    for fam in ("single-level", "hierarchical"):
        ad, fx = f"adaptive {fam}", f"fixed {fam}"
        if ad in meas and fx in meas:
            ratios[fam] = {key: {"measured": round(meas[ad][key] / meas[fx][key], 4),
                                 "predicted": round(pred[ad][key]["mean"] / pred[fx][key]["mean"], 4)}
                           for key in (tp, "ttft_ms_p50", "tpot_ms_p50")}
    best = lambda kind: max((n for n in pred if n.startswith(kind)), key=lambda n: pred[n][tp]["mean"])
    b_ad, b_fx = best("adaptive"), best("fixed")
    errs = [abs(rows[n][tp]["error"]) for n in rows]
    return {"serving_predicted_by": f"hispec-sim serve (serving simulator), set A's profile, {seeds} acceptance "
                                    "seeds, the same requests (trace)",
            "serving_vs_simulator": rows,
            "serving_adaptive_vs_fixed": ratios,
            "serving_predicted_best_adaptive_vs_best_fixed": {
                "adaptive": b_ad, "fixed": b_fx,
                "predicted_gain": round(pred[b_ad][tp]["mean"] / pred[b_fx][tp]["mean"], 4),
                "measured_gain": round(meas[b_ad][tp] / meas[b_fx][tp], 4)},
            "serving_median_abs_throughput_error": round(statistics.median(errs), 4)}


def results_md(r: dict) -> str:
    L = ["# Adaptive drafting and escalation on the shipped model (CPU)", "",
         f"Generated by `{r['command']}` ({r['seconds']} s, host {r['host']}, torch {r['torch']}, 1 thread; "
         f"loadavg before {' '.join(r['loadavg']['before'])}, after batch 1 {' '.join(r['loadavg']['after_batch1'])}, "
         f"after {' '.join(r['loadavg']['after'])}).", "",
         f"Plans chosen on set A ({r['set_a']}) by `hispec-sim optimize --adaptive`'s functions; {r['rates']}.",
         f"Measured on set B: {r['set_b']}.", "", "Every error below is measured / predicted - 1 (negative: the "
         "prediction was too high).", "", "## Batch 1", "",
         "| role | plan | predicted tok/s | measured tok/s | predicted speedup | measured speedup | speedup error | model "
         "| replay speedup | replay error | tokens per full check, replay / measured |",
         "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for x in r["batch1"]:
        L.append(f"| {x['role']} | {x['plan']} | {x['predicted_tokens_per_s']:.2f} | {x['measured_tokens_per_s']:.2f} | "
                 f"{x['predicted_speedup']:.3f} | {x['measured_speedup']:.3f} | {100 * x['speedup_error']:+.1f} % | {x['model']} "
                 f"| {x['replay_speedup']:.3f} | {100 * x['speedup_error_replay']:+.1f} % "
                 f"| {x['replay_tokens_per_full_forward']:.3f} / {x['measured_tokens_per_full_forward']:.3f} |")
    b = r["batch1_best_adaptive_vs_best_fixed"]
    L += ["", f"* Prediction error of the adaptive plans (speedup over autoregressive, same run): median |error| "
          f"{100 * r['median_abs_speedup_error_adaptive']:.1f} % by the exact analytic models (i.i.d. positions; target "
          f"<= 5 %: {'met' if r['target_met'] else 'NOT met'}); by trace replay of set A's measured requests "
          f"(runs of agreement and confidence kept): {100 * r['median_abs_speedup_error_adaptive_replay']:.1f} %.",
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
    L += ["", f"* Best adaptive ({s['adaptive']}) vs best fixed ({s['fixed']}) in serving: x{s['gain']:.3f} throughput."]
    if "serving_vs_simulator" in r:
        L += ["", f"### Measured vs predicted by {r['serving_predicted_by']}", "",
              "| role | figure | measured | predicted [95 % CI over seeds] | error |", "|---|---|---:|---:|---:|"]
        for n, d in r["serving_vs_simulator"].items():
            for key, label in (("throughput_tokens_per_s", "throughput tok/s"), ("ttft_ms_p50", "TTFT p50 ms"),
                               ("tpot_ms_p50", "TPOT p50 ms")):
                x = d[key]
                ci = f" [{x['predicted_ci95'][0]:.2f}, {x['predicted_ci95'][1]:.2f}]" if x["predicted_ci95"] else ""
                L.append(f"| {n} | {label} | {x['measured']:.2f} | {x['predicted']:.2f}{ci} | {100 * x['error']:+.1f} % |")
        L += ["", "| adaptive / fixed | figure | measured | predicted (serving simulator) |", "|---|---|---:|---:|"]
        for fam, d in r["serving_adaptive_vs_fixed"].items():
            for key, x in d.items():
                L.append(f"| {fam} | {key} | x{x['measured']:.3f} | x{x['predicted']:.3f} |")
        b = r["serving_predicted_best_adaptive_vs_best_fixed"]
        L += ["", f"* Serving, best adaptive ({b['adaptive']}) vs best fixed ({b['fixed']}) by the simulator's predicted "
              f"throughput: predicted x{b['predicted_gain']:.3f}, measured x{b['measured_gain']:.3f}; median |throughput "
              f"error| over the plans {100 * r['serving_median_abs_throughput_error']:.1f} %.",
              f"* Command per plan: `{next(iter(r['serving_vs_simulator'].values()))['command']}`."]
    L += [
          "", "Earlier hand-run batch-1 results (two runs, no gain beyond noise): previous_runs.md.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    main()
