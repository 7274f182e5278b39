"""Two diagnostics of the analytic model's largest errors on the shipped profile.

1. Agreement after a rejection (from the profile's exit traces, no timing): the analytic
   model treats positions as independent. (a) P(exit d agrees with exit i at position t+k |
   exit i disagreed with the full model at t) next to the marginal, k = 1..3, with the number
   of such events; (b) for single-level plans [d, L] propose g: the expected accepted drafts
   E[min(R, g)] of a round that starts right after a disagreement and after an agreement
   (R: the run of agreement from the round's first draft), and the acceptance that a model
   of two kinds of rounds gives (the kind set by how the previous round ended, each kind's
   run lengths as measured: a semi-Markov model) next to the walk's and the i.i.d. one.
2. Forward prices by shape and predecessor (timed, seconds): every validation plan of
   studies/fidelity/results.json and autoregressive decode the same prompts, interleaved;
   each forward's measured time over the cost model's, relative to the autoregressive
   steps', grouped by (kind, layers, tokens) and, for drafts, by whether the forward before
   had the same shape.

    python studies/fidelity/diagnose.py                  # both (about a minute on a quiet 2-core VM)
    python studies/fidelity/diagnose.py --no-timing      # 1 only
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

from hispec_sim.evaluate import Setting
from hispec_sim.schema import Plan, load_profile

HERE = Path(__file__).resolve().parent


def _traced(acc):
    """(agree(a, b): whether exits a and b agree at every traced position, the request of
    every position, the requests' first positions)."""
    t = np.asarray(acc.traces)
    col = {e: i for i, e in enumerate(acc.exits)}
    starts = list(acc.trace_starts or [0])
    request = np.repeat(np.arange(len(starts)), np.diff(starts + [len(t)]))
    return (lambda a, b: t[:, col[a]] == t[:, col[b]]), request, starts


def after_rejection(acc, draft: int, mid: int, full: int, lags=(1, 2, 3)) -> list[dict]:
    """Agreement of (draft, mid) k positions after a (mid, full) disagreement, within requests."""
    agree, request, _ = _traced(acc)
    low, top = agree(draft, mid), agree(mid, full)
    rows = []
    for k in lags:
        same = request[k:] == request[:-k]
        hit = same & ~top[:-k]
        rows.append({"lag": k, "events": int(hit.sum()), "after_rejection": float(low[k:][hit].mean()),
                     "after_agreement": float(low[k:][same & top[:-k]].mean()), "marginal": float(low.mean())})
    return rows


def _runs(agree: np.ndarray, request: np.ndarray, g: int):
    """Survival P(R >= m), m = 0..g, of the run of agreement from a position, split by the
    agreement two positions before (a round after a bonus: the last draft agreed, then the
    checker's own token) and one position before (after a correction: it disagreed)."""
    n = len(agree)
    ok = np.array([i >= 2 and i + g <= n and request[i - 2] == request[i + g - 1] for i in range(n)])
    run = np.zeros(n, int)
    for i in np.flatnonzero(ok):
        while run[i] < g and agree[i + run[i]]:
            run[i] += 1
    after_cor = ok & ~np.roll(agree, 1)
    after_bon = ok & np.roll(agree, 2)
    return {kind: np.array([(run[sel] >= k).mean() for k in range(g + 1)]) for kind, sel in
            (("after a correction", after_cor), ("after a bonus", after_bon))}


def single_level_runs(acc, draft: int, full: int, g: int) -> dict:
    """Accepted drafts per round of [draft, full] propose g: i.i.d., two kinds of rounds
    (semi-Markov, from the measured run lengths), and the walk along every request."""
    pairs, request, starts = _traced(acc)
    agree = pairs(draft, full)
    surv = _runs(agree, request, g)
    s_cor, s_bon = surv["after a correction"], surv["after a bonus"]
    p_cor, p_bon = 1 - s_cor[g], 1 - s_bon[g]  # P(the round ends in a correction), by the kind of round
    pi = p_bon / (1 - p_cor + p_bon)  # stationary share of rounds after a correction
    two_kinds = pi * s_cor[1:].sum() + (1 - pi) * s_bon[1:].sum()
    walked = rounds = 0
    for a, b in zip(starts, starts[1:] + [len(agree)]):
        i = a
        while i + g <= b:
            r = 0
            while r < g and agree[i + r]:
                r += 1
            walked, rounds, i = walked + r, rounds + 1, i + r + 1
    m = agree.mean()
    return {"iid": float(sum(m ** k for k in range(1, g + 1))), "two_kinds": float(two_kinds),
            "walked": walked / max(rounds, 1), "after_correction": float(s_cor[1:].sum()),
            "after_bonus": float(s_bon[1:].sum())}


def forward_prices(setting: Setting, plans: list[Plan], prompts, max_new_tokens: int) -> dict:
    from hispec_exec import decode, load_model
    from hispec_sim.validate import forward_ms

    model = load_model()
    cost = setting.cost_for(plans)
    groups = collections.defaultdict(lambda: np.zeros(3))
    decode(model, plans[0], prompts[0], 8)  # warm-up
    for i, ids in enumerate(prompts):
        for k in np.roll(np.arange(len(plans)), -i):  # plans interleaved per prompt
            run = decode(model, plans[k], ids, max_new_tokens)
            fs, prices = run.forwards, forward_ms(cost, run)
            for j, f in enumerate(fs):
                shape = (sum(b - a + 1 for a, b, _ in f.segments), max(n for _, _, n in f.segments))
                kind = "autoregressive" if plans[k].depth == 1 else "check" if f.level > 1 else "draft"
                keys = [(kind,) + shape]
                if kind == "draft":
                    keys.append((kind, shape[0], "after a draft" if j and fs[j - 1].segments == f.segments else "after a check"))
                for key in keys:
                    groups[key] += (f.ms, prices[j], 1)
    base = groups[("autoregressive", setting.num_layers, 1)]
    base = base[0] / base[1]
    return {key: (g[0] / g[1] / base, int(g[2])) for key, g in groups.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE.parent.parent / "profiles" / "cpu_hispec_tiny.json"))
    ap.add_argument("--pairs", default="2,14;2,4;3,9;7,13", help="(draft, intermediate) exits, ';'-separated")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    args = ap.parse_args()
    setting = Setting(load_profile(args.profile))
    L = setting.num_layers
    print(f"1. agreement of (draft, intermediate) k positions after the intermediate exit disagreed with exit {L} "
          f"(profile {setting.profile.name}, workload {setting.workload}, {len(setting.acceptance.traces)} positions)")
    for pair in args.pairs.split(";"):
        d, m = map(int, pair.split(","))
        for r in after_rejection(setting.acceptance, d, m, L):
            print(f"   ({d},{m}) k={r['lag']}: {r['after_rejection']:.3f} after a rejection ({r['events']} events), "
                  f"{r['after_agreement']:.3f} after an agreement, marginal {r['marginal']:.3f}")
    print(f"\n   accepted drafts per round of [d,{L}] propose g: after a correction / after a bonus; i.i.d., two kinds "
          "of rounds, walked")
    for d, g in ((2, 3), (2, 6), (7, 6), (10, 4)):
        r = single_level_runs(setting.acceptance, d, L, g)
        print(f"   [{d},{L}] g={g}: {r['after_correction']:.3f} / {r['after_bonus']:.3f}; i.i.d. {r['iid']:.3f}, "
              f"two kinds {r['two_kinds']:.3f}, walked {r['walked']:.3f}")
    if args.no_timing:
        return
    import torch

    from hispec_exec import heldout_prompts

    torch.set_num_threads(1)
    plans = [Plan(levels=[L])] + [Plan.model_validate(p["plan"]) for p in json.loads((HERE / "results.json").read_text())["plans"]]
    prompts = heldout_prompts(args.prompts, 64, 0)
    out = forward_prices(setting, plans, prompts, args.max_new_tokens)
    print(f"\n2. forward time measured / cost model, relative to autoregressive steps ({args.prompts} prompts x "
          f"{args.max_new_tokens} tokens, {len(plans)} plans interleaved; groups of >= 30 forwards)")
    for key in sorted(out, key=lambda k: (k[0], k[1], str(k[2]))):
        ratio, n = out[key]
        if n >= 30:
            print(f"   {' '.join(map(str, key)):32s} x{ratio:.3f}  ({n} forwards)")


if __name__ == "__main__":
    main()
