"""Benchmark of the Optuna plan search (prints figures; not a test).

    python tests/bench/bench_search.py [--seeds 10] [--seeds4 3] [--profile a100_llama70b]

1. 3-level space (depth 1..3, propose 1..8, window 1..16, the space `optimize` covers
   exhaustively): TPE's best tokens/s after 50 / 100 / 200 trials as a fraction of the
   exhaustive optimum, median (and min) over seeds, with the wall time to reach each count.
2. 4-level space (depth 1..4): TPE's best after 500 trials vs the best of a random search
   given the same wall time.
In-memory storage, so the figures measure the sampler; an SQLite study adds about 40 ms
per trial (a commit per trial), PostgreSQL about the same over a LAN.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hispec_sim.evaluate import Setting, exhaustive  # noqa: E402
from hispec_sim.schema import load_profile  # noqa: E402
from hispec_sim.search import optuna_search  # noqa: E402


def curve(study, counts):
    trials = sorted(study.trials, key=lambda t: t.number)
    t0 = trials[0].datetime_start
    out = {}
    for n in counts:
        best = max(t.values[0] for t in trials[:n])
        out[n] = (best, (trials[n - 1].datetime_complete - t0).total_seconds())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="a100_llama70b")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seeds4", type=int, default=3)
    args = ap.parse_args()
    setting = Setting(load_profile(args.profile))
    t = time.perf_counter()
    ex = exhaustive(setting)
    print(f"profile {args.profile} (tp {setting.tp}, batch {setting.batch}, workload {setting.workload}); exhaustive optimum "
          f"{ex.best.plan.describe()} {ex.best.tokens_per_second:.3f} tokens/s over {ex.plans_evaluated} plans in "
          f"{time.perf_counter() - t:.2f} s; best single-level {ex.best_single_level.tokens_per_second / ex.best.tokens_per_second:.4f} of it")
    counts = (50, 100, 200)
    rows = {n: [] for n in counts}
    for seed in range(args.seeds):
        r = optuna_search(setting, trials=max(counts), seed=seed, storage=None, depth=(1, 3), seed_exhaustive=False)
        for n, (best, wall) in curve(r.optuna_study, counts).items():
            rows[n].append((best / ex.best.tokens_per_second, wall))
    print(f"\n3-level space, TPE, {args.seeds} seeds: best / exhaustive optimum")
    print(f"{'trials':>6s} {'median':>8s} {'min':>8s} {'>=0.99':>7s} {'wall s (median)':>16s}")
    for n in counts:
        fr = [f for f, _ in rows[n]]
        print(f"{n:6d} {statistics.median(fr):8.4f} {min(fr):8.4f} {sum(f >= 0.99 for f in fr):4d}/{len(fr):<2d} "
              f"{statistics.median(w for _, w in rows[n]):16.2f}")

    print(f"\n4-level space (depth 1..4), {args.seeds4} seeds: TPE after 500 trials vs random search for the same wall time")
    print(f"{'seed':>4s} {'TPE tokens/s':>13s} {'wall s':>7s} {'random tokens/s':>16s} {'random trials':>13s} {'TPE best plan'}")
    for seed in range(args.seeds4):
        t = time.perf_counter()
        tpe = optuna_search(setting, trials=500, seed=seed, storage=None, depth=(1, 4), seed_exhaustive=False)
        wall = time.perf_counter() - t
        rnd = optuna_search(setting, trials=None, timeout=wall, seed=seed, storage=None, depth=(1, 4), sampler="random",
                             seed_exhaustive=False)
        print(f"{seed:4d} {tpe.best.tokens_per_second:13.3f} {wall:7.1f} {rnd.best.tokens_per_second:16.3f} "
              f"{rnd.study['trials']:13d} {tpe.best.plan.describe()}")
    print(f"(exhaustive 3-level optimum for reference: {ex.best.tokens_per_second:.3f})")


if __name__ == "__main__":
    main()
