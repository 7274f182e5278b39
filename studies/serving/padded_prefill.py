"""Prefill forwards of prompts of mixed lengths, executor against simulator: one prefill
forward (`Transformer.run_jobs(..., prefill=True)`) of 2-4 prompts in a pool of 8 slots,
timed on the shipped model, and priced by a profile's serving cost
(hispec_sim.serving.StepCost.prefill_pieces, at prefill scale 1: these forwards are timed
as the calibration's prefill grid is) two ways -- the grid read at the prompts' total rows
(the simulator before 2026-12-03 13:20 UTC: each prompt's attention at the mean length) and
every prompt padded to the longest, less the padding rows' linear part
(latency.prefill_row_ms), as the executor computes it.

    python studies/serving/padded_prefill.py [--profile P] [--rounds 12]

Cases are timed in interleaved rounds (the median of each), so that the machine's drift
moves every case alike; the equal-length cases show the grid's own error. Prints a table;
writes nothing. One CPU thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

CASES = [[250, 250], [100, 400], [400, 400], [200, 300], [100, 100], [145, 145, 145, 145], [60, 60, 60, 400]]
POOL = 8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "studies" / "serving" / "long_prompts" / "profile.json"))
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    import torch

    from hispec_exec.checkpoint import load_model
    from hispec_sim.schema import Plan, load_profile
    from hispec_sim.latency import serving_layer_ms
    from hispec_sim.serving import StepCost

    torch.set_num_threads(1)
    table = load_profile(args.profile).table()
    if table.serving is None or table.serving.prefill_layer_ms is None:
        print("error: --profile: needs a serving calibration with a prefill grid (profile measure)", file=sys.stderr)
        return 2
    model = load_model()
    L = model.num_layers
    pool = model.new_pool(POOL)
    caches = [pool.cache(s) for s in range(POOL)]
    gen = torch.Generator().manual_seed(0)
    toks = [[torch.randint(0, model.args.vocab_size, (n,), generator=gen) for n in case] for case in CASES]
    times: dict = {i: [] for i in range(len(CASES))}
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for r in range(args.rounds + 1):  # round 0 warms up
            for i in rng.permutation(len(CASES)):
                for c in caches:
                    c.lens[1:] = [0] * L
                t = time.perf_counter()
                model.run_jobs([(c, L, x) for c, x in zip(caches, toks[i])], prefill=True)
                if r:
                    times[i].append((time.perf_counter() - t) * 1e3)
    table = table.model_copy(update={"serving": table.serving.model_copy(update={"prefill_scale": 1.0})})
    cost = StepCost(table, Plan(levels=[16]), L, POOL, 1024, np.full(POOL, max(map(max, CASES)) + 1))
    print(f"profile {args.profile}; {args.rounds} interleaved rounds, median ms of one prefill forward")
    print(f"{'prompts':24s} {'measured':>9s} {'at the total':>18s} {'padded':>18s}")
    errs: dict = {"at the total": [], "padded": []}
    for i, case in enumerate(CASES):
        n = np.array(case)
        meas = float(np.median(times[i]))
        padded = cost.prefill_pieces(n)
        at_total = L * float(serving_layer_ms(table, len(case), int(n.sum()), prefill=True)) + cost.fixed  # as before
        line = f"{str(case):24s} {meas:9.1f}"
        for way, priced in (("at the total", at_total), ("padded", padded)):
            errs[way].append(priced / meas - 1)
            line += f" {priced:10.1f} {100 * errs[way][-1]:+6.0f}%"
        print(line)
    for way, e in errs.items():
        e = np.abs(np.array(e))
        print(f"{way}: median |error| {100 * np.median(e):.0f} %, worst {100 * np.max(e):.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
