"""Is re-ranking the analytic search's best 50 by trace replay enough? (no timing, ~110 s)

`optimize` ranks every plan of the exhaustive space (single-level and 3-level) with the
analytic model, then walks its DEFAULT_RESCORE best through trace replay and ranks those.
Where the analytic model's i.i.d. positions misorder plans, the plan replay likes best may lie
below that cut. This study replays EVERY plan of the space and prints, for N = 1 .. 400,
how far the best of the analytic top N (by replay) falls short of the best of all (by replay),
and where the replay-best plan sits in the analytic ranking.

    python studies/fidelity/rescore_depth.py                           # the shipped cpu_hispec_tiny
    python studies/fidelity/rescore_depth.py --profile P.json [--workload W]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hispec_sim.evaluate import DEFAULT_RESCORE, Setting, exhaustive_arrays
from hispec_sim.montecarlo import simulate
from hispec_sim.schema import Plan, load_profile

DEPTHS = (1, 5, 10, 20, 50, 100, 200, 400)


def every_plan(setting: Setting) -> tuple[list[Plan], np.ndarray]:
    """Every plan of optimize's exhaustive space with its analytic tokens/s."""
    exits, single, pairs, three = exhaustive_arrays(setting)
    L = setting.num_layers
    plans = [Plan(levels=[int(e), L], propose=g + 1) for e in exits for g in range(single.shape[1])]
    tps = list(single.reshape(-1))
    for p, (a, b) in enumerate(pairs):
        for g in range(three.shape[1]):
            for w in range(three.shape[2]):
                plans.append(Plan(levels=[int(a), int(b), L], propose=g + 1, windows=[w + 1]))
                tps.append(three[p, g, w])
    return plans, np.array(tps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu_hispec_tiny")
    ap.add_argument("--workload", default=None)
    args = ap.parse_args()
    setting = Setting(load_profile(args.profile), workload=args.workload)
    plans, analytic = every_plan(setting)
    cost = setting.cost(8 + 16 + 8)
    t0 = time.perf_counter()
    replay = np.array([simulate(cost, setting.agreement, p, replay=True).tokens_per_second for p in plans])
    seconds = time.perf_counter() - t0
    order = np.argsort(-analytic, kind="stable")
    best = int(np.argmax(replay))
    rank = int(np.flatnonzero(order == best)[0]) + 1
    print(f"{args.profile} workload {setting.workload}: {len(plans)} plans replayed in {seconds:.0f} s")
    print(f"replay's best: {plans[best].describe()} {replay[best]:.1f} tokens/s by replay "
          f"({analytic[best]:.1f} analytic), analytic rank {rank}; the analytic best: "
          f"{plans[order[0]].describe()} {replay[order[0]]:.1f} by replay ({analytic[order[0]]:.1f} analytic)")
    gap = np.abs(analytic / replay - 1)
    print(f"analytic vs replay over the space: median |gap| {np.median(gap):.1%}, worst {gap.max():.1%} "
          f"({plans[int(np.argmax(gap))].describe()})")
    for n in DEPTHS:
        top = replay[order[:n]].max()
        print(f"  re-rank the analytic top {n:4d}{' (the default)' if n == DEFAULT_RESCORE else '':14s}: best by replay "
              f"{top:.1f} tokens/s, {1 - top / replay[best]:.2%} below replay's best of all")


if __name__ == "__main__":
    main()
