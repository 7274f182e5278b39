"""Benchmark: what step-time noise costs the serving simulator, side by side in one run.

Runs `hispec_sim.serving.simulate_arrays` on cpu_hispec_tiny (the profile with a serving
calibration) for an autoregressive, a single-level and a 3-level plan, ragged and
synchronous, 10,000 Poisson requests at max batch 64, once with deterministic steps and
once with a step noise attached to the calibration (an AR(1) lognormal ratio, lag-1 0.5,
two step-size classes, sigma 0.45 / 0.3, summarised as the measurement does; the
profile's own, if it has one, is replaced), and prints both CPU times and their ratio. (The published a100/h100 profiles
have no serving calibration, hence no noise: tests/bench/bench_serve_sim.py is unchanged.)

    python tests/bench/bench_step_noise.py [--requests 10000] [--qps 60]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from bench_serve_sim import poisson_requests  # this folder's sibling (scripts run from their folder)
from hispec_sim import schema, serving, step_noise


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--qps", type=float, default=60.0)
    ap.add_argument("--max-batch", type=int, default=64)
    args = ap.parse_args()
    prof = schema.load_profile("cpu_hispec_tiny")
    table = next(t for t in prof.latency if t.serving is not None)
    acc, L = prof.workload(), prof.model.num_layers
    rng = np.random.default_rng(0)
    z = step_noise.ar1(0.5, 0.0, rng.standard_normal(19999))
    # two step-size classes split at 20 ms: short steps sigma 0.45, the others 0.3
    fitted = np.tile([10.0, 40.0], len(z) // 2)
    noise = schema.StepNoise(**{**step_noise.describe(np.exp(np.where(fitted < 20, 0.45, 0.3) * z),
                                                      np.zeros(len(z), int), fitted),
                                "lag1_autocorrelation": 0.5})
    tables = {"off": table.model_copy(update={"serving": table.serving.model_copy(update={"step_noise": None})}),
              "on": table.model_copy(update={"serving": table.serving.model_copy(update={"step_noise": noise})})}
    arr, pl, ol = poisson_requests(args.qps, args.requests, "uniform:16:128")
    lim = schema.ServeLimits(max_batch=args.max_batch)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.requests} requests, Poisson {args.qps:g} req/s, max batch "
          f"{args.max_batch}, profile {prof.name}")
    print(f"{'plan':34s} {'policy':12s} {'CPU s off':>9s} {'CPU s on':>9s} {'on/off':>7s} {'p99 TBT off':>12s} "
          f"{'p99 TBT on':>11s} {'tok/s off':>10s} {'tok/s on':>9s}")
    mid = L // 2
    plans = [([L], 1, []), ([4, L], 3, []), ([2, mid, L], 2, [3])]
    for levels, g, w in plans:
        for policy in ("ragged", "synchronous"):
            if len(levels) == 1 and policy != "ragged":
                continue
            plan = schema.Plan(levels=levels, propose=g, windows=w, batching=policy)
            cpu, summ = {}, {}
            for key in ("off", "on"):
                c0 = time.process_time()
                run = serving.simulate_arrays(tables[key], L, acc, plan, arr, pl, ol, lim, seed=0)
                cpu[key] = time.process_time() - c0
                summ[key] = serving.quick_summary(run, lim)
            print(f"{plan.describe():34s} {policy:12s} {cpu['off']:9.2f} {cpu['on']:9.2f} {cpu['on'] / cpu['off']:7.2f} "
                  f"{summ['off']['tbt_ms']['p99']:12.1f} {summ['on']['tbt_ms']['p99']:11.1f} "
                  f"{summ['off']['throughput_tokens_per_s']:10.0f} {summ['on']['throughput_tokens_per_s']:9.0f}")


if __name__ == "__main__":
    main()
