"""Decode attention of a batch, executor against simulator: the time a decode step adds over
the same step at context 0, measured through `Transformer.run_jobs` on the shipped model and
priced by a profile's serving cost (hispec_sim.serving.StepCost) three ways -- each sequence
at its own context (the simulator before 2026-12-03), padded as the executor computes it
(every sequence against the batch's longest context, every slot of a pool at least half
full: latency.padded_sequences) with the batch-1 table's per-sequence increment, and padded
with the increments the serving calibration measured through a pool -- one sequence alone
or a pair gathered, or in place (ServingCalibration.attention_*; from 2026-12-03 on, when
the profile has them; latency.padded_attention_ms).

    python studies/serving/padded_attention.py [--profile P] [--rounds 15]

Cases are timed in interleaved rounds (the median of each), so that the machine's drift
moves every case alike; each is also timed at context 0 with the same sequences and pool,
and only the difference is compared (the linear part and fixed costs cancel). Prints a
table; writes nothing. One CPU thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# (pool slots, contexts of the sequences of one decode step)
CASES = [(8, [150]), (8, [450]), (8, [150, 150]), (8, [450, 450]), (8, [150, 450]), (8, [100, 200, 300]),
         (8, [150, 150, 150]), (8, [150, 150, 150, 150]), (8, [150, 150, 150, 450]), (8, [100, 200, 300, 400]),
         (16, [150, 150, 150, 450]), (8, [450] * 8)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "studies" / "serving" / "long_prompts" / "profile.json"))
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    import torch

    from hispec_exec.checkpoint import load_model
    from hispec_sim.schema import Plan, load_profile
    from hispec_sim.serving import StepCost

    torch.set_num_threads(1)
    table = load_profile(args.profile).table()
    model = load_model()
    L = model.num_layers
    pools = {p: model.new_pool(p) for p in {p for p, _ in CASES}}
    tok = torch.tensor([65])
    runs = [(p, ctx) for p, ctx in CASES] + [(p, [0] * len(ctx)) for p, ctx in CASES]
    times: dict = {i: [] for i in range(len(runs))}
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for r in range(args.rounds + 1):  # round 0 warms up
            for i in rng.permutation(len(runs)):
                p, ctx = runs[i]
                caches = [pools[p].cache(s) for s in range(len(ctx))]
                for c, x in zip(caches, ctx):
                    c.lens[1:] = [x] * L
                t = time.perf_counter()
                model.run_jobs([(c, L, tok) for c in caches])
                if r:
                    times[i].append((time.perf_counter() - t) * 1e3)
    med = [float(np.median(times[i])) for i in range(len(runs))]
    print(f"profile {args.profile}; {args.rounds} interleaved rounds, median ms added over context 0")
    # priced at forward scale 1: these forwards are timed through run_jobs, as the calibration's
    # grids are (the scale carries the grids to the serve loop)
    table = table.model_copy(update={"serving": table.serving.model_copy(update={"forward_scale": 1.0})})
    plain = table.model_copy(update={"serving": table.serving.model_copy(update={
        "attention_rows": None, "attention_contexts": None, "attention_gathered_ms": None, "attention_in_place_ms": None,
        "attention_single_ms": None})})
    ways = {"own context": (plain, False), "padded, table": (plain, True)}
    if table.serving.attention_rows is not None:
        ways["padded, measured"] = (table, True)
    print(f"{'pool':>4s}  {'contexts':24s} {'measured':>9s}" + "".join(f" {w:>17s}" for w in ways))
    errs: dict = {w: [] for w in ways}
    for i, (p, ctx) in enumerate(CASES):
        meas = med[i] - med[i + len(CASES)]
        line = f"{p:4d}  {str(ctx):24s} {meas:9.3f}"
        for way, (tab, padded) in ways.items():
            cost = StepCost(tab, Plan(levels=[16]), L, p, 512, np.full(p, 10))
            cost.padded = padded
            rows = np.ones((len(ctx), 1), np.int64)
            priced = (cost.step(rows, np.array(ctx), np.array([len(ctx)]), 0)
                      - cost.step(rows, np.zeros(len(ctx), np.int64), np.array([len(ctx)]), 0))
            errs[way].append(priced / meas - 1 if meas > 0 else np.nan)
            line += f" {priced:10.3f} {100 * errs[way][-1]:+5.0f}%"
        print(line)
    for way, e in errs.items():
        e = np.abs(np.array(e))
        print(f"{way}: median |error| {100 * np.nanmedian(e):.0f} %, worst {100 * np.nanmax(e):.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
