"""Does a forward cost in the decode loop what it costs alone? Per forward shape of a few plans:
its median time inside decode runs, the same shape timed alone (warm, repeated, shapes
interleaved in a random order), and, for a check, what its parts cost alone -- its 1-row
layers and its multi-row layers as two uniform forwards, less one forward's fixed cost --
which is how the cost model prices it from the layer table (plus the per-check term).

Written for the Intel Xeon VM's open miss (docs/fidelity.md): final checks after a long
1-row segment cost more in validation runs than the profile's fit says.

    python studies/fidelity/shapes_in_loop.py [--rounds 2] [--prompts 4]   # ~25 s a round, 1 thread
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
import torch

from hispec_exec import decode, heldout_prompts, load_model
from hispec_exec.measure import robust_mean
from hispec_sim.schema import Plan

CONTEXT = 128  # cached tokens the shapes timed alone read (the loop's run from 64 to 192)
PLANS = [Plan(levels=[16]), Plan(levels=[2, 16], propose=6), Plan(levels=[2, 14, 16], propose=6, windows=[6]),
         Plan(levels=[7, 8, 9, 16], propose=3, windows=[8, 6]), Plan(levels=[2, 10, 13, 16], propose=3, windows=[3, 5])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="decode passes, each followed by 20 rounds of shapes alone")
    ap.add_argument("--prompts", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    L = model.num_layers
    g = torch.Generator().manual_seed(0)
    cache = model.new_cache()
    model.run(cache, 0, L, torch.randint(0, model.args.vocab_size, (2 * CONTEXT,), generator=g))
    for b in range(1, L):  # rows waiting at every boundary a check may read
        cache.hidden(b)[:] = torch.randn(cache.capacity, model.args.dim, generator=g)
    one = torch.randint(0, model.args.vocab_size, (1,), generator=g)

    def uniform(layers: int, n: int):
        toks = torch.randint(0, model.args.vocab_size, (n,), generator=g)

        def f():
            cache.lens[1:L + 1] = [CONTEXT] * L
            model.run_jobs([(cache, layers, toks)])
            model.head(cache.hid[1][:n])
        return f

    def check(lo: int, hi: int, n: int):  # n drafted rows wait at boundary lo; one new token runs 1..lo
        def f():
            cache.lens[1:lo + 1] = [CONTEXT + n] * lo
            cache.lens[lo + 1:L + 1] = [CONTEXT] * (L - lo)
            model.run_jobs([(cache, hi, one)])
            model.head(cache.hid[1][:n + 1])
        return f

    def timed(f) -> float:
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1e3

    loop, alone, calls = defaultdict(list), defaultdict(list), {}
    for r in range(args.rounds):
        for plan in PLANS:
            for ids in heldout_prompts(args.prompts, 64, 0):
                for f in decode(model, plan, ids, 128).forwards:
                    key = tuple(tuple(s) for s in f.segments)
                    loop[key].append(f.ms)
                    if key not in calls:
                        if len(key) == 1:
                            calls[key] = uniform(key[0][1], key[0][2])
                        else:
                            (_, lo, _), (_, hi, n1) = key
                            calls[key] = check(lo, hi, n1 - 1)
                            calls.setdefault(("1-row", lo), uniform(lo, 1))
                            calls.setdefault(("rows", hi - lo, n1), uniform(hi - lo, n1))
        calls.setdefault(("1-row", 1), uniform(1, 1))
        keys = [k for k in calls if not isinstance(k[0], tuple) or len(loop[k]) >= 20]
        rng = np.random.default_rng(r)
        for _ in range(20):
            for i in rng.permutation(len(keys)):
                calls[keys[i]]()
                alone[keys[i]].append(timed(calls[keys[i]]))
    ms = {k: robust_mean(v)[0] for k, v in alone.items()}
    ar = ((1, L, 1),)
    ref = robust_mean(loop[ar])[0] / ms[ar]
    fixed = ms[("1-row", 1)] - (ms[ar] - ms[("1-row", 1)]) / (L - 1)  # a 1-layer forward less a layer
    print(f"autoregressive step: in the loop / alone x{ref:.3f} (the other ratios relative to it)")
    print("shape (first layer, last layer, rows)...   forwards  loop ms  alone ms  loop/alone  check alone - its parts")
    for k in sorted((k for k in ms if isinstance(k[0], tuple)), key=lambda k: (len(k), k)):
        lm = robust_mean(loop[k])[0]
        extra = ""
        if len(k) == 2:  # the parts: two forwards, less one forward's fixed cost (and exit head on one row)
            (_, lo, _), (_, hi, n1) = k
            extra = f"  {ms[k] - (ms[('1-row', lo)] + ms[('rows', hi - lo, n1)] - fixed):+.3f} ms"
        print(f"{str(k):42s} {len(loop[k]):8d} {lm:8.3f} {ms[k]:9.3f}  x{lm / ms[k] / ref:.3f}{extra}")


if __name__ == "__main__":
    main()
