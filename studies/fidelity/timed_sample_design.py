"""How many prompts of set B must the generalisation study time, and how long?

The speed-up measured on the timed prompts of B is their acceptance, not B's: a sample of a
heavy-tailed per-prompt distribution. This draws `--draws` random samples of m prompts of T
tokens from B's 512 committed exit traces (`generalisation_traces.npz`, no timing, no model
run) and prints, per design (m, T), the 50 % / 90 % quantiles of the median and worst
|error| over the study's 12 plans of the sample's trace replay against all 512 prompts'
(prompts of T tokens): what the timed sample alone would put on a perfect prediction of B.
The tokens per plan run, m x T, set the timed part's cost.

    python studies/fidelity/timed_sample_design.py             # ~30 s
"""
from __future__ import annotations

import argparse

import numpy as np

from run_generalisation import HERE, _from_traces, prefix_rows, replay_predictions

from hispec_sim.evaluate import Setting
from hispec_sim.schema import load_profile
from hispec_sim.validate import draw_plans

DESIGNS = ((24, 128), (32, 128), (64, 64), (96, 32), (64, 96), (128, 48), (192, 32), (128, 64))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE.parent.parent / "profiles" / "cpu_hispec_tiny.json"))
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    z = np.load(HERE / "generalisation_traces.npz")
    n, T = int(z["key"][0]), int(z["key"][1])
    base = load_profile(args.profile)
    walks = lambda idx, t, s="B": _from_traces(z[f"traces_{s}"][prefix_rows(idx, T, t)], len(idx), t, s)
    a = walks(range(n), T, "A")  # the study's plans: drawn on all of A, seed 0, as run_generalisation draws them
    plans = draw_plans(Setting(base.model_copy(update={"workloads": {"A": a}, "default_workload": "A"}), "A"), 12, 0)
    rng = np.random.default_rng(args.seed)
    print(f"timed sample of m prompts x T tokens vs all {n} prompts of B (trace replay, {args.draws} draws):")
    print("    m    T  m x T | median |error|: q50   q90 | worst |error|: q50   q90")
    for m, t in DESIGNS:
        wl = {"all": walks(range(n), t)} | {f"s{d}": walks(rng.choice(n, m, replace=False), t) for d in range(args.draws)}
        p = base.model_copy(update={"workloads": wl, "default_workload": "all"})
        r = {w: np.array(replay_predictions(Setting(p, w), plans)) for w in wl}
        e = np.array([np.abs(r[f"s{d}"] / r["all"] - 1) for d in range(args.draws)])
        med, worst = np.median(e, axis=1), e.max(axis=1)
        print(f"{m:5d} {t:4d} {m * t:6d} | {100 * np.quantile(med, 0.5):13.1f} % {100 * np.quantile(med, 0.9):4.1f} % |"
              f" {100 * np.quantile(worst, 0.5):12.1f} % {100 * np.quantile(worst, 0.9):4.1f} %")


if __name__ == "__main__":
    main()
