"""Adaptive vs fixed plans on the shipped model, measured side by side at batch 1.

Plans are chosen on prompt set A (the profile's own prompts: cpu_hispec_tiny was measured
on held-out prompts seed 0, and its confidence statistics on the same prompts) by
`hispec-sim optimize --adaptive`'s functions; they are measured here on prompt set B
(held-out prompts, another seed), every plan on every prompt, interleaved (plan order
rotated per prompt) so the machine's load hits all plans alike.

Prediction: fixed plans -> analytic.predict; adaptive single-level -> adaptive.analytic_single_level;
adaptive hierarchical -> the fixed plan's analytic value x the replay ratio (as optimize --adaptive).
Error = measured / predicted - 1, in tokens/s and in speedup over autoregressive (measured in
the same run), the latter insensitive to a uniformly slower machine.

usage: PYTHONPATH=. python studies/adaptive/run_adaptive.py [--prompts 16] [--new 128] [--seed-b 1] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from hispec_exec import decode, heldout_prompts, load_model
from hispec_sim.adaptive import analytic_single_level, cli_adaptive, replay
from hispec_sim.evaluate import Setting, exhaustive, score
from hispec_sim.schema import Plan, load_profile


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--seed-b", type=int, default=1)
    ap.add_argument("--passes", type=int, default=2, help="passes over the prompts (plan order rotated each time)")
    ap.add_argument("--out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    load0 = open("/proc/loadavg").read().split()[:3]
    setting = Setting(load_profile("cpu_hispec_tiny"), None, None, None, 1, None)
    result = exhaustive(setting)
    ad = cli_adaptive(setting, result)
    best_fixed_single = next(s.plan for s in result.top if s.plan.depth == 2)
    best_fixed_hier = next(s.plan for s in result.top if s.plan.depth >= 3)
    best_ad_single = Plan.model_validate(ad["best_single_level"]["plan"])
    best_ad_hier = Plan.model_validate(ad["best_hierarchical"]["plan"])
    cost = setting.cost(80)
    ar = Plan(levels=[16])
    pred = {}
    for p in (ar, best_fixed_single, best_fixed_hier):
        pred[p.describe()] = score(setting, [p])[0].tokens_per_second
    pred[best_ad_single.describe()] = analytic_single_level(cost, setting.agreement, best_ad_single).tokens_per_second
    pred[best_ad_hier.describe()] = ad["best_hierarchical"]["predicted_tokens_per_second"]
    per_full = {p.describe(): score(setting, [p])[0].tokens_per_full_forward for p in (ar, best_fixed_single, best_fixed_hier)}
    per_full[best_ad_single.describe()] = analytic_single_level(cost, setting.agreement, best_ad_single).tokens_per_full_forward
    per_full[best_ad_hier.describe()] = replay(cost, setting.acceptance, best_ad_hier, 1500, 8, 0).tokens_per_full_forward
    plans = {"autoregressive": ar, "fixed single-level": best_fixed_single, "adaptive single-level": best_ad_single,
             "fixed hierarchical": best_fixed_hier, "adaptive hierarchical": best_ad_hier}

    model = load_model()
    prompts = heldout_prompts(a.prompts, 64, seed=a.seed_b)
    names = list(plans)
    decode(model, ar, prompts[0], 16)  # warm-up
    wall = dict.fromkeys(names, 0.0)
    toks = dict.fromkeys(names, 0)
    committed = dict.fromkeys(names, 0)
    fulls = dict.fromkeys(names, 0)
    ref = {}
    t0 = time.time()
    for i, pr in enumerate(prompts * a.passes):
        order = names[i % len(names):] + names[:i % len(names)]
        for n in order:
            r = decode(model, plans[n], pr, a.new)
            wall[n] += r.wall_s
            toks[n] += len(r.tokens)
            committed[n] += r.committed
            fulls[n] += r.forwards_per_level()[-1]
            ref.setdefault(i, r.tokens)
            assert r.tokens == ref[i], f"{n}: greedy output differs from the other plans'"
    load1 = open("/proc/loadavg").read().split()[:3]
    meas = {n: toks[n] / wall[n] for n in names}
    rows = []
    for n in names:
        d = plans[n].describe()
        p = pred[d]
        rows.append({"role": n, "plan": d, "plan_json": plans[n].model_dump(), "predicted_tokens_per_s": round(p, 2),
                     "measured_tokens_per_s": round(meas[n], 2), "error": round(meas[n] / p - 1, 4),
                     "predicted_speedup": round(p / pred[ar.describe()], 4),
                     "measured_speedup": round(meas[n] / meas["autoregressive"], 4),
                     "predicted_tokens_per_full_forward": round(per_full[d], 4),
                     "measured_tokens_per_full_forward": round(committed[n] / fulls[n], 4),
                     "speedup_error": round((meas[n] / meas["autoregressive"]) / (p / pred[ar.describe()]) - 1, 4)})
    out = {"set_a": "profile cpu_hispec_tiny (held-out prompts seed 0, 16 x 128 tokens)",
           "set_b": f"held-out prompts seed {a.seed_b}: {a.prompts} x {a.new} tokens, prompt length 64, {a.passes} passes",
           "threads": 1, "loadavg_before": load0, "loadavg_after": load1, "seconds": round(time.time() - t0, 1),
           "host": os.uname().nodename, "torch": torch.__version__, "rows": rows,
           "gain_adaptive_vs_fixed_single_measured": round(meas["adaptive single-level"] / meas["fixed single-level"], 4),
           "gain_adaptive_vs_fixed_hier_measured": round(meas["adaptive hierarchical"] / meas["fixed hierarchical"], 4),
           "gain_best_adaptive_vs_best_fixed_measured": round(max(meas["adaptive single-level"], meas["adaptive hierarchical"])
                                                              / max(meas["fixed single-level"], meas["fixed hierarchical"]), 4),
           "optimize_adaptive": {k: ad[k] for k in ("best", "best_fixed", "predicted_gain_over_best_fixed")}}
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        open(a.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
