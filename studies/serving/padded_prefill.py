"""Prefill forwards of prompts of mixed lengths, executor against simulator: one prefill
forward (`Transformer.run_jobs(..., prefill=True)`) of 1-4 prompts or pieces of prompts
(chunked prefill: n tokens after c cached) in a pool of 8 slots, timed on the shipped
model, and priced by a profile's serving cost (hispec_sim.serving.StepCost.prefill_pieces,
at prefill scale 1: these forwards are timed as the calibration's prefill grid is) two
ways: as the executor computes it (every piece padded to the longest piece's rows, less
their linear part (latency.prefill_row_ms), against the furthest reach's keys), and as the
simulator did before -- whole prompts: the grid read at their total rows (each prompt's
attention at the mean length; before 2026-12-03 13:20 UTC); pieces: each piece's own
attention over its own cached part (before 2026-12-03 14:53 UTC).

    python studies/serving/padded_prefill.py [--profile P] [--rounds 12]

Cases are timed in interleaved rounds (the median of each), so that the machine's drift
moves every case alike; the cases priced alike both ways (equal lengths, one piece) show
the grid's own error at that moment, and the others are also read against their median.
Prints a table; writes nothing. One CPU thread.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

# (tokens, cached) per prompt or piece; the chunked cases are pieces of at most 32 or 64
# tokens, as studies/serving/chunked cuts them (the end of one prompt and the start of the next)
CASES = [[(n, 0) for n in case] for case in
         ([250, 250], [100, 400], [400, 400], [200, 300], [100, 100], [145, 145, 145, 145], [60, 60, 60, 400])]
CASES += [[(32, 368)], [(32, 0), (32, 368)], [(12, 380), (20, 0)], [(4, 396), (28, 0)], [(16, 200), (16, 0)],
          [(64, 336)], [(8, 392), (56, 0)]]
POOL = 8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "studies" / "serving" / "long_prompts" / "profile.json"))
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    import torch

    from hispec_exec.checkpoint import load_model
    from hispec_sim.schema import Plan, load_profile
    from hispec_sim.latency import sequence_attention_ms, serving_layer_ms
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
    toks = [[torch.randint(0, model.args.vocab_size, (n,), generator=gen) for n, _ in case] for case in CASES]
    times: dict = {i: [] for i in range(len(CASES))}
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for r in range(args.rounds + 1):  # round 0 warms up
            for i in rng.permutation(len(CASES)):
                for c, (_, cached) in zip(caches, CASES[i]):
                    c.lens[1:] = [cached] * L  # the cached part's values do not change the time
                t = time.perf_counter()
                model.run_jobs([(c, L, x) for c, x in zip(caches, toks[i])], prefill=True)
                if r:
                    times[i].append((time.perf_counter() - t) * 1e3)
    table = table.model_copy(update={"serving": table.serving.model_copy(update={"prefill_scale": 1.0})})
    cost = StepCost(table, Plan(levels=[16]), L, POOL, 1024, np.full(POOL, max(n + c for case in CASES for n, c in case) + 1))
    print(f"profile {args.profile}; {args.rounds} interleaved rounds, median ms of one prefill forward")
    ratio: dict = {"before": [], "padded": []}  # priced / measured, per case
    lines = []
    for i, case in enumerate(CASES):
        n, c = np.array(case).T
        meas = float(np.median(times[i]))
        padded = cost.prefill_pieces(n, c)
        if c.any():  # each piece's own attention over its own cached part
            before = cost.prefill_pieces(n) + L * float(sequence_attention_ms(table, n, c).sum())
        else:  # the grid at the total rows
            before = L * float(serving_layer_ms(table, len(case), int(n.sum()), prefill=True)) + cost.fixed
        lines.append(f"{str(case):36s} {meas:9.1f}")
        for way, priced in (("before", before), ("padded", padded)):
            ratio[way].append(priced / meas)
            lines[-1] += f" {priced:10.1f} {100 * (ratio[way][-1] - 1):+6.0f}%"
    # the cases priced alike both ways (equal lengths, one piece) carry the grid's own error
    # at that moment (the machine drifts by tens of percent): the others are read against it
    ratio = {way: np.array(r) for way, r in ratio.items()}
    alike = np.isclose(ratio["before"], ratio["padded"])
    rel = {way: r / np.median(r[alike]) - 1 for way, r in ratio.items()}
    for i in range(len(CASES)):
        lines[i] += "".join("      -" if alike[i] else f" {100 * rel[way][i]:+6.0f}%" for way in ratio)
    print(f"{'(tokens, cached) each':36s} {'measured':>9s} {'before':>18s} {'padded':>18s} "
          f"{'vs alike: before':>17s} {'padded':>7s}")
    print("\n".join(lines))
    for way, r in ratio.items():
        e, off = np.abs(r - 1), np.abs(rel[way][~alike])
        print(f"{way}: median |error| {100 * np.median(e):.0f} %, worst {100 * np.max(e):.0f} %; the {len(off)} "
              f"cases not priced alike, against those priced alike: median {100 * np.median(off):.0f} %, "
              f"worst {100 * np.max(off):.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
