"""Does pool occupancy change a serve() step's time? (A cause tested for the serving
calibration's miss, studies/serving/RESULTS.md.)

The calibration's closed batches fill their KV pool (b requests, b slots), so attention
runs in place on the pool's blocks; in serving, 1-3 running sequences in a pool of 8 slots
take the copying path (`_Rows.in_place` needs slots <= 2 x sequences). This times the
autoregressive steps with 2 running sequences both ways, in alternating rounds:
a closed batch of 2 (pool of 2) against 8 requests of which 6 leave after one token (pool
of 8, 2 running).

    PYTHONPATH=. python studies/serving/pool_occupancy.py [--rounds 3]
"""
import argparse
import statistics

import torch

from hispec_exec.checkpoint import load_model
from hispec_exec.measure import calibration_prompts
from hispec_exec.measure_serving import _ops_of
from hispec_exec.serve import serve
from hispec_sim.schema import Plan, ServeLimits


def two_running_steps(model, plan, prompts, news, max_batch) -> list[float]:
    log: list[dict] = []
    serve(model, plan, [0.0] * len(prompts), prompts, news, ServeLimits(max_batch=max_batch), mode="greedy",
          step_log=log, ops_of=_ops_of)
    return [it["step_ms"] for it in log if len(it["ops"]) == 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    prompts = calibration_prompts(model, 8, 24)
    plan = Plan(levels=[model.args.n_layers])
    for r in range(a.rounds):
        two = statistics.median(two_running_steps(model, plan, prompts[:2], [40, 40], 2))
        eight = statistics.median(two_running_steps(model, plan, prompts, [40, 40] + [1] * 6, 8))
        print(f"round {r}: 2 running sequences, pool of 2: median step {two:.2f} ms; pool of 8: {eight:.2f} ms; "
              f"ratio {eight / two:.3f}", flush=True)


if __name__ == "__main__":
    main()
