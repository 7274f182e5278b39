"""Benchmark: request-level serving simulation speed (issue target: >= 10,000 simulated
requests at max batch 64 in <= 5 s on this machine).

Runs `hispec_sim.serving.simulate_arrays` on a100_llama70b for autoregressive, the best
single-level and a 3-level plan, ragged and synchronous, 10,000 Poisson requests at a
load that keeps the batch full (64), and prints the wall and CPU time of each together
with numpy's time for one small reduction in the same run (the machine's speed at that
moment: on a loaded machine both grow together; CPU time is less disturbed by other
processes than wall time).

--reference also runs the slot-by-slot synchronous engine that the compact one replaced
(kept as the reference in tests/serving/test_synchronous_engine.py) on the synchronous
plans of depth >= 3, side by side in the same run, and prints its CPU time, the ratio
and whether both runs are identical.

--adaptive runs adaptive plans instead (hispec_sim.serving_adaptive, through the same
simulate_arrays) on cpu_hispec_tiny (the profile with confidence statistics and a measured
per-request spread), each next to its fixed plan.

--baseline REV also runs hispec_sim as it is at git revision REV (e.g. main; extracted
with `git archive` into a temporary folder and imported as another package) on the same
inputs right after each run, and prints its CPU time, the ratio and whether both runs
are identical (speed work must not move a value).

    python tests/bench/bench_serve_sim.py [--requests 10000] [--qps 30] [--policies ragged,synchronous] [--reference]
                                          [--adaptive] [--baseline main]
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from hispec_sim import schema, serving, traffic


def numpy_small_op_us(reps: int = 20000) -> float:
    a = np.zeros((64, 3))
    t = time.perf_counter()
    for _ in range(reps):
        a.sum(0)
    return (time.perf_counter() - t) / reps * 1e6


def poisson_requests(qps: float, n: int, prompt_len: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrival seconds, prompt lengths and max_new_tokens (uniform 32..256) of n seeded Poisson requests."""
    tr = schema.Traffic(qps=qps, requests=n, prompt_len=schema.LengthDist.parse(prompt_len, "p"),
                        output_len=schema.LengthDist.parse("uniform:32:256", "o"), seed=1)
    reqs = traffic.generate(tr)
    return (np.array([r.arrival_s for r in reqs]), np.array([r.prompt_len for r in reqs]),
            np.array([r.max_new_tokens for r in reqs]))


def reference_engine():
    """The slot-by-slot synchronous engine and its set-up (the equivalence test's)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
    import test_synchronous_engine

    return test_synchronous_engine._reference_run


def baseline_serving(rev: str):
    """hispec_sim.serving at git revision `rev`, imported as the package hispec_sim_baseline
    (its modules import each other relatively, so the old code runs whole)."""
    root = Path(__file__).resolve().parents[2]
    tar = subprocess.run(["git", "-C", str(root), "archive", rev, "hispec_sim"], check=True, capture_output=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_sim_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(tmp, filter="data")
    (tmp / "hispec_sim").rename(tmp / "hispec_sim_baseline")
    sys.path.insert(0, str(tmp))
    return importlib.import_module("hispec_sim_baseline.serving")


def same_run(a: serving.ServeRun, b: serving.ServeRun) -> bool:
    return (a.steps, a.prefills) == (b.steps, b.prefills) and all(
        np.array_equal(getattr(a, f), getattr(b, f))
        for f in ("admit_ms", "first_ms", "last_ms", "event_req", "event_ms", "event_tokens"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--qps", type=float, default=30.0)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--policies", default="ragged,synchronous")
    ap.add_argument("--reference", action="store_true",
                    help="also time the slot-by-slot synchronous engine (depth >= 3), side by side")
    ap.add_argument("--adaptive", action="store_true", help="adaptive plans and their fixed plans on cpu_hispec_tiny")
    ap.add_argument("--baseline", metavar="REV", help="also time hispec_sim at this git revision, side by side")
    args = ap.parse_args()
    base = baseline_serving(args.baseline) if args.baseline else None
    prof = schema.load_profile("cpu_hispec_tiny" if args.adaptive else "a100_llama70b")
    layers = prof.model.num_layers
    table, acc = prof.table(), prof.workload()
    arr, pl, ol = poisson_requests(args.qps, args.requests, "uniform:64:512")
    lim = schema.ServeLimits(max_batch=args.max_batch)
    print(f"load average {os.getloadavg()[0]:.2f}; numpy small reduction {numpy_small_op_us():.2f} us "
          f"(about 2-3 us on an idle core)")
    print(f"{args.requests} requests, Poisson {args.qps:g} req/s, prompts uniform 64..512, outputs uniform 32..256, "
          f"max batch {args.max_batch}")
    print(f"{'plan':34s} {'policy':12s} {'seconds':>8s} {'CPU s':>6s} {'requests/s simulated':>21s} {'steps':>7s} "
          f"{'mean batch':>10s}")
    plans = [dict(levels=[80]), dict(levels=[23, 80], propose=3), dict(levels=[17, 42, 80], propose=2, windows=[9])]
    if args.adaptive:
        plans = [dict(levels=[2, 16], propose=6), dict(levels=[2, 16], propose=6, draft_confidence=0.3),
                 dict(levels=[1, 2, 16], propose=1, windows=[3]),
                 dict(levels=[1, 2, 16], propose=1, windows=[3], escalate_confidence=[0.3]),
                 dict(levels=[1, 4, 16], propose=3, windows=[4], draft_confidence=0.5, escalate_confidence=[0.5])]
    for kw in plans:
        for policy in args.policies.split(","):
            if len(kw["levels"]) == 1 and policy != "ragged":
                continue
            plan = schema.Plan(**kw, batching=policy)
            t0, c0 = time.perf_counter(), time.process_time()
            run = serving.simulate_arrays(table, layers, acc, plan, arr, pl, ol, lim, seed=0)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            # mean running batch: the sum over requests of their time in the engine / the span
            inside = (run.last_ms - run.admit_ms).sum() / (run.last_ms.max() - run.admit_ms.min())
            print(f"{plan.describe():34s} {policy:12s} {dt:8.2f} {dc:6.2f} {args.requests / dt:21.0f} {run.steps:7d} "
                  f"{inside:10.1f}")
            if args.reference and policy == "synchronous" and plan.depth >= 3 and not plan.adaptive:
                c1 = time.process_time()
                ref = reference_engine()(table, layers, acc, plan, arr, pl, ol, lim, 0)
                rc = time.process_time() - c1
                print(f"{'  slot-by-slot reference':34s} {policy:12s} {'':8s} {rc:6.2f}   compact / reference CPU "
                      f"time {dc / rc:.2f}; identical runs: {same_run(run, ref)}")
            if base is not None:
                c1 = time.process_time()
                old = base.simulate_arrays(table, layers, acc, plan, arr, pl, ol, lim, seed=0)
                bc = time.process_time() - c1
                print(f"{'  baseline ' + args.baseline:34s} {policy:12s} {'':8s} {bc:6.2f}   this / baseline CPU time "
                      f"{dc / bc:.2f}; identical runs: {same_run(run, old)}", flush=True)


if __name__ == "__main__":
    main()
