"""How much of the analytic model's error is the order of positions? (no timing, seconds)

The analytic model assumes positions are i.i.d.; trace replay walks the measured positions
in order. This study replays the same traces with the positions of every request shuffled
(each request keeps its own rows, so its own rates: the per-request spread stays, the
order goes). Where shuffled replay lands on the analytic figure and ordered replay does
not, the gap is the order of positions -- not the rates, the spread or the timing, which
all three share. Two more views of the same question:

  * the run lengths of agreement of the draft pair (how many agreeing positions come
    before a disagreeing one) against the geometric law that i.i.d. positions imply;
  * local regimes: the analytic model over the rates of chunks of C positions instead of
    whole requests (each chunk a "request" of the spread), raw and shrunk towards its
    request's rates by the sampling noise of C positions (James-Stein, per exit pair);
  * a what-if ("draft walk"): the analytic model with its draft stage's accepted prefix
    taken from a walk of the traces (rounds of `propose` drafts, each starting after the
    last one's correction or bonus, as the executor runs them) instead of i.i.d. positions
    -- exact for single-level plans up to each request's last round, the levels above it
    unchanged. Tried, not kept (docs/fidelity.md).

    python studies/fidelity/position_structure.py            # Intel Xeon VM, 4th run
    python studies/fidelity/position_structure.py --profile P.json [--results R.json] [--npz F.npz:KEY --rows N]

--results (a run_fidelity results.json) takes its plans and adds the error of each
prediction against the measured speed-up; --npz replaces the workload's traces by a stored
array (requests of --rows rows each, with their empirical spread; the profile's workload must
have one), e.g. the generalisation study's prompt sets.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hispec_sim import analytic
from hispec_sim.acceptance import AgreementModel
from hispec_sim.evaluate import Setting
from hispec_sim.montecarlo import simulate
from hispec_sim.schema import Plan, load_profile

RUN = Path(__file__).resolve().parent / "machines" / "intel-xeon-amx-vm" / "calibrated" / "rerun3"
SHUFFLES = 5


def request_bounds(acc) -> list[tuple[int, int]]:
    starts = list(acc.trace_starts or [0]) + [len(acc.traces)]
    return list(zip(starts, starts[1:]))


def agreement_runs(e: np.ndarray, bounds) -> np.ndarray:
    """run[i]: agreeing positions from i on, within i's request."""
    run = np.zeros(len(e), int)
    for lo, hi in bounds:
        nxt = 0
        for i in range(hi - 1, lo - 1, -1):
            nxt = nxt + 1 if e[i] else 0
            run[i] = nxt
    return run


def draft_walk(run: np.ndarray, bounds, k: int) -> np.ndarray:
    """P(a drafts accepted), a = 0..k, over the rounds of a single-level walk with propose k:
    every request from its first row, each round starting after the last one's correction
    or bonus (a request's last round is cut at its end)."""
    pos = np.array([lo for lo, _ in bounds])
    ends = np.array([hi for _, hi in bounds])
    hist = np.zeros(k + 1)
    while (live := pos < ends).any():
        a = np.minimum(run[pos[live]], np.minimum(k, ends[live] - pos[live]))
        np.add.at(hist, a, 1)
        pos[live] += a + 1
    return hist / hist.sum()


def walk_draft_prediction(cost, model, plan: Plan, runs) -> float:
    """The analytic tokens/s with the draft stage's accepted prefix from draft_walk (the
    what-if of the module docstring); the levels above it as analytic.chain_terms prices them."""
    levels = np.array([plan.levels])
    draft_ms = cost.forward([(levels[:, 0], np.ones(1, int))], np.ones(1, int))
    k = plan.propose
    hist = draft_walk(runs[(plan.levels[0], plan.levels[1])], request_bounds(model.acc), k)
    accepted = float(hist @ np.arange(k + 1))
    block_ms = k * draft_ms + analytic._check_cost(cost, levels[:, 0], levels[:, 1], k)[:, k]
    if plan.depth == 2:
        return float(cost.batch * 1000.0 * (accepted + 1) / block_ms[0])
    p_cor = np.zeros((1, k + 1))
    p_bon = np.zeros((1, k + 1))
    p_cor[0, :k], p_bon[0, k] = hist[:k], hist[k]
    for c in range(3, plan.depth + 1):
        window = np.array([plan.windows[c - 3]])
        rates = model.rates(levels[:, c - 3], levels[:, c - 2], levels[:, c - 1])
        check_ms = analytic._check_cost(cost, levels[:, c - 2], levels[:, c - 1], int(window[0]) + p_cor.shape[1])
        terms, (_, v, powers, passes) = analytic._level_terms(p_cor, p_bon, rates, check_ms, int(window[0]))
        pick = lambda x: x[0, window[0] - 1]
        block_ms = pick(terms.blocks) * block_ms + pick(terms.check_ms)
        if c == plan.depth:
            return float(cost.batch * 1000.0 * (pick(terms.accepted) + 1) / block_ms[0])
        p_cor, p_bon = analytic._emitted_blocks(p_cor, p_bon, rates, window, v, powers, passes)
    raise AssertionError("unreachable")


def shuffled(model: AgreementModel, rng) -> AgreementModel:
    out = AgreementModel(model.acc)
    t = model.traces.copy()
    for lo, hi in request_bounds(model.acc):
        t[lo:hi] = t[lo:hi][rng.permutation(hi - lo)]
    out.traces = t
    return out


def with_npz(profile, spec: str, rows: int):
    path, key = spec.rsplit(":", 1)
    traces = np.load(path)[key]
    acc = profile.workload(profile.default_workload)
    agree = lambda t: (t[:, :, None] == t[:, None, :]).mean(0)
    starts = list(range(0, len(traces), rows))
    spread = acc.spread.model_copy(update={"per_request": [agree(traces[a:a + rows]).tolist() for a in starts], "weights": None})
    new = acc.model_copy(update={"traces": traces.tolist(), "trace_starts": starts,
                                 "agreement": agree(traces).tolist(), "spread": spread})
    return profile.model_copy(update={"workloads": {profile.default_workload: new}})


DEFAULT_PLANS = ["[2,16] propose=3", "[2,16] propose=6", "[4,16] propose=3", "[2,14,16] propose=6 window=6",
                 "[2,10,13,16] propose=3 window=3,5", "[7,8,9,16] propose=3 window=8,6", "[3,9,16] propose=3 window=3"]


def chunk_spread(profile, C: int, shrink: bool):
    """The workload with its spread over chunks of C positions (weights: chunk lengths);
    shrink: each chunk's agreement matrix pulled towards its request's by the share of the
    chunks' within-request variance that C positions' sampling noise explains."""
    acc = profile.workload(profile.default_workload)
    t = np.asarray(acc.traces)
    agree = lambda x: (x[:, :, None] == x[:, None, :]).mean(0)  # noqa: E731
    chunks, own, w = [], [], []
    for lo, hi in request_bounds(acc):
        whole = agree(t[lo:hi])
        for a in range(lo, hi, C):
            chunks.append(agree(t[a:min(a + C, hi)]))
            own.append(whole)
            w.append(min(a + C, hi) - a)
    m, r, w = np.array(chunks), np.array(own), np.array(w, float)
    if shrink:
        seen = (w[:, None, None] * (m - r) ** 2).sum(0) / w.sum()
        noise = (m * (1 - m)).sum(0) / len(w) / C
        m = r + np.clip(1 - noise / np.maximum(seen, 1e-12), 0, 1) * (m - r)
    spread = acc.spread.model_copy(update={"per_request": m.tolist(), "weights": w.tolist()})
    return profile.model_copy(update={"workloads": {profile.default_workload: acc.model_copy(update={"spread": spread})}})


def parse_plan(text: str) -> Plan:
    levels, *rest = text.split()
    kv = dict(x.split("=") for x in rest)
    return Plan(levels=json.loads(levels), propose=int(kv.get("propose", 1)),
                windows=[int(w) for w in kv["window"].split(",")] if "window" in kv else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(RUN / "profile.json"))
    ap.add_argument("--results", default=None, help="a run_fidelity results.json (default: the profile's folder's, if any)")
    ap.add_argument("--npz", default=None, help="FILE.npz:KEY traces to use instead of the workload's")
    ap.add_argument("--rows", type=int, default=128, help="rows per request of --npz traces")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    results = args.results or (str(Path(args.profile).with_name("results.json")) if args.npz is None else None)
    measured = {}
    if results and Path(results).exists():
        rows = json.loads(Path(results).read_text())["plans"]
        plans = [Plan.model_validate(r["plan"]) for r in rows]
        measured = {i: r["measured_speedup"] for i, r in enumerate(rows)}
    else:
        plans = [parse_plan(p) for p in DEFAULT_PLANS]
    if args.npz:
        profile = with_npz(profile, args.npz, args.rows)
    setting = Setting(profile)
    model, acc = setting.agreement, setting.acceptance
    cost = setting.cost(64)
    bounds = request_bounds(acc)
    pairs = {(p.levels[0], p.levels[1]) for p in plans if p.depth > 1}
    runs = {(a, b): agreement_runs(model.traces[:, model.idx(a)] == model.traces[:, model.idx(b)], bounds) for a, b in pairs}
    ar = simulate(cost, model, Plan(levels=[profile.model.num_layers]), replay=True).tokens_per_second
    rng = np.random.default_rng(0)
    shuffles = [shuffled(model, rng) for _ in range(SHUFFLES)]
    print(f"{args.profile}{'  traces ' + args.npz if args.npz else ''}: {len(model.traces)} positions, {len(bounds)} requests; "
          f"tokens/s relative to trace replay{'; error against the measured speed-up' if measured else ''}")
    print(f"{'plan':36s} {'analytic':>9s} {'shuffled':>9s} {'walk':>9s}" + ("  |  analytic  replay   walk" if measured else ""))
    gaps = []
    for i, plan in enumerate(plans):
        if plan.depth == 1:
            continue
        a = analytic.predict(cost, model, [plan]).tokens_per_second[0]
        r = simulate(cost, model, plan, replay=True).tokens_per_second
        s = np.mean([simulate(cost, m, plan, replay=True).tokens_per_second for m in shuffles])
        w = walk_draft_prediction(cost, model, plan, runs)
        gaps.append((a / r - 1, s / r - 1, w / r - 1))
        line = f"{plan.describe():36s} {a / r - 1:+9.1%} {s / r - 1:+9.1%} {w / r - 1:+9.1%}"
        if i in measured:
            err = lambda x: (x / ar) / measured[i] - 1
            line += f"  |  {err(a):+7.1%} {err(r):+7.1%} {err(w):+7.1%}"
        print(line)
    g = np.abs(np.array(gaps))
    print(f"median / worst |gap to replay|: analytic {np.median(g[:, 0]):.1%} / {g[:, 0].max():.1%}, "
          f"shuffled replay {np.median(g[:, 1]):.1%} / {g[:, 1].max():.1%}, draft walk {np.median(g[:, 2]):.1%} / {g[:, 2].max():.1%}")
    for C in (32, 16):
        for shrink in (False, True):
            m = Setting(chunk_spread(profile, C, shrink)).agreement
            g = [abs(analytic.predict(cost, m, [p]).tokens_per_second[0] / simulate(cost, model, p, replay=True)
                     .tokens_per_second - 1) for p in plans if p.depth > 1]
            print(f"analytic over chunks of {C} positions{' (shrunk)' if shrink else ''}: median / worst |gap to "
                  f"replay| {np.median(g):.1%} / {max(g):.1%}")
    for a, b in sorted(pairs):
        e = model.traces[:, model.idx(a)] == model.traces[:, model.idx(b)]
        p = e.mean()
        first = np.union1d([lo for lo, _ in bounds], np.flatnonzero(~e) + 1)  # a request's start, or after a disagreement
        lengths = runs[(a, b)][first[first < len(e)]]
        hist = np.bincount(lengths, minlength=10)[:10] / len(lengths)
        geo = (1 - p) * p ** np.arange(10)
        print(f"pair ({a},{b}) agreement {p:.3f}: P(run = 0..9) measured {' '.join(f'{x:.3f}' for x in hist)}")
        print(f"{'':26s}geometric {' '.join(f'{x:.3f}' for x in geo)}")


if __name__ == "__main__":
    main()
