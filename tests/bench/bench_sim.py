"""Benchmark of the simulator (run on demand: python tests/bench/bench_sim.py [profile]).

Prints: the time to evaluate the whole single-level + 3-level space of an 80-layer profile
(target <= 1 s), and Monte-Carlo simulated tokens per second as a ratio to numpy's raw
random-number throughput measured in the same run (target >= 0.1).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from hispec_sim.evaluate import Setting, exhaustive, exhaustive_arrays
from hispec_sim.montecarlo import simulate
from hispec_sim.schema import Plan, load_profile


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def main(profile_name: str = "a100_llama70b") -> None:
    setting = Setting(load_profile(profile_name))
    exits, single, pairs, three = exhaustive_arrays(setting)
    n = 1 + single.size + three.size
    best, median = best_of(lambda: exhaustive_arrays(setting))
    print(f"profile {setting.profile.name}: {setting.num_layers} layers, {n} plans (single-level + 3-level, propose 1..8, window 1..16)")
    print(f"  vectorised sweep: best {best:.3f} s, median {median:.3f} s  (target <= 1 s)")
    best, median = best_of(lambda: exhaustive(setting), repeats=3)
    print(f"  full optimize incl. re-scoring and baselines: best {best:.3f} s, median {median:.3f} s")

    rng = np.random.default_rng(0)
    size = 10_000_000
    t = time.perf_counter()
    for _ in range(5):
        rng.random(size)
    rng_rate = 5 * size / (time.perf_counter() - t)
    print(f"numpy random numbers/s (same run): {rng_rate:,.0f}")
    L = setting.num_layers
    found = exhaustive(setting)
    for label, plan in [("optimizer's best", found.best.plan), ("best single-level", found.best_single_level.plan),
                        ("paper default", Plan(levels=[L // 8, L // 4, L], propose=2, windows=[4])),
                        ("4-level", Plan(levels=[L // 8, L // 4, L // 2, L], propose=2, windows=[4, 8]))]:
        streams, cycles = 65536, 32
        t = time.perf_counter()
        r = simulate(setting.cost(), setting.agreement, plan, streams=streams, cycles=cycles, seed=0)
        wall = time.perf_counter() - t
        simulated = r.tokens_per_full_forward * r.cycles
        print(f"Monte-Carlo ({label}) {plan.describe()}: {r.cycles} cycles, {simulated:,.0f} tokens in {wall:.2f} s "
              f"= {simulated / wall:,.0f} simulated tokens/s; ratio to numpy RNG {simulated / wall / rng_rate:.3f} (target >= 0.1)")


if __name__ == "__main__":
    main(*sys.argv[1:])
