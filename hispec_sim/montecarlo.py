"""Monte-Carlo simulation of a chain plan, vectorised over independent streams.

Every stream runs the plan's schedule token by token: a round of `propose` drafts, a
level-2 check, and the cascade of checks whose window is full; each forward costs what
the CostModel says. Acceptance is drawn i.i.d. with the rates of acceptance.py (same
assumptions as the analytic model), or replayed from measured per-position traces, which
keeps the correlation between neighbouring positions and between levels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acceptance import AgreementModel
from .analytic import _check_cost
from .latency import CostModel
from .schema import Plan

ACC, COR, BON = 0, 1, 2  # how a buffered token got there: survived, correction, bonus/draft


@dataclass
class MCResult:
    tokens_per_second: float
    ci95: tuple[float, float]
    latency_ms_p50: float
    latency_ms_p99: float
    tokens_per_full_forward: float
    acceptance: list[float]
    streams: int
    cycles: int
    replay: bool


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cw, q * cw[-1])])


def simulate(cost: CostModel, model: AgreementModel, plan: Plan, streams: int = 4096, cycles: int = 64,
             seed: int = 0, replay: bool = False) -> MCResult:
    """Simulate `streams` independent streams for `cycles` full-model checks each.

    A fixed number of whole cycles per stream keeps the ratio estimator unbiased (cutting
    at a fixed number of rounds would favour short cycles)."""
    rng = np.random.default_rng(seed)
    levels, k, g = plan.levels, plan.depth, plan.propose
    if k == 1:
        ms = cost.autoregressive_ms(levels[0])
        tps = cost.batch * 1000.0 / ms
        return MCResult(tps, (tps, tps), ms, ms, 1.0, [], streams, streams * cycles, replay)

    # capacity of each level's buffer: level 1 holds g drafts; level j+1 < k holds < w + block
    cap = [g]
    for w in plan.windows:
        cap.append(w - 1 + cap[-1] + 1)
    max_n = max(cap)
    check_ms = [_check_cost(cost, np.array([levels[j]]), np.array([levels[j + 1]]), max_n + 1)[0] for j in range(k - 1)]
    draft_ms = float(cost.forward([(levels[0], 1)], 1))

    rates = []
    for j in range(k - 1):  # check of level j's buffer (0-based) by level j+1
        r = model.rates(None if j == 0 else np.array([levels[j - 1]]), np.array([levels[j]]), np.array([levels[j + 1]]))
        rates.append(np.array([r.after_accept[0], r.after_reject[0], r.marginal[0]]))
    if replay:
        if model.traces is None:
            raise ValueError("mc: replay needs a workload with traces")
        t = model.traces
        agree = [t[:, model.idx(levels[j])[()]] == t[:, model.idx(levels[j + 1])[()]] for j in range(k - 1)]
        n_pos = t.shape[0]
        pos = rng.integers(0, n_pos, streams)  # last committed position of each stream

    types = [np.full((streams, c + 1), BON, np.int8) for c in cap]
    length = [np.zeros(streams, np.int64) for _ in cap]
    clock = np.zeros(streams)  # time since the stream's last full check
    total_time = np.zeros(streams)
    total_tokens = np.zeros(streams)
    checked = np.zeros(k - 1)
    accepted = np.zeros(k - 1)
    cycle_ms, cycle_tokens = [], []
    rows = np.arange(streams)
    cols = np.arange(max_n + 2)

    done_cycles = np.zeros(streams, np.int64)
    while (done_cycles < cycles).any():
        clock += g * draft_ms
        length[0][:] = g  # drafts are BON-typed: no lower level has seen them
        active = np.ones(streams, bool)
        for j in range(k - 1):
            n = np.where(active, length[j], 0)
            width = cap[j]
            clock += np.where(active, check_ms[j][n], 0.0)
            if replay:
                offset = sum((length[m] for m in range(j + 1, k - 1)), np.zeros(streams, np.int64))
                p = (pos[:, None] + 1 + offset[:, None] + cols[None, :width]) % n_pos
                ok = agree[j][p]
            else:
                ok = rng.random((streams, width)) < rates[j][types[j][:, :width]]
            ok &= cols[None, :width] < n[:, None]
            a = np.where(ok.all(1), width, np.argmin(ok, 1))
            a = np.minimum(a, n)
            counted = active & (done_cycles < cycles)
            checked[j] += n[counted].sum()
            accepted[j] += a[counted].sum()
            length[j][active] = 0
            if j == k - 2:  # the full model commits
                done = active
                committed = a + 1
                count = done & (done_cycles < cycles)
                done_cycles += done
                total_time[count] += clock[count]
                total_tokens[count] += committed[count]
                cycle_ms.append(clock[count].copy())
                cycle_tokens.append(committed[count].astype(float))
                if replay:
                    pos[done] = (pos[done] + committed[done]) % n_pos
                clock[done] = 0.0
                for m in range(k - 1):
                    length[m][done] = 0
                break
            up = types[j + 1]
            start = length[j + 1]
            span = cols[None, : up.shape[1]]
            new = (span >= start[:, None]) & (span <= (start + a)[:, None]) & active[:, None]
            last = span == (start + a)[:, None]
            fill = np.where(last, np.where(a == n, BON, COR)[:, None], ACC).astype(np.int8)
            up[new] = fill[new]
            length[j + 1] = np.where(active, start + a + 1, start)
            active = active & (length[j + 1] >= plan.windows[j])

    ratio = total_tokens.sum() / total_time.sum()
    z = total_tokens - ratio * total_time
    se = np.sqrt(z.var(ddof=1) / streams) / total_time.mean()
    scale = cost.batch * 1000.0
    ms = np.concatenate(cycle_ms)
    tk = np.concatenate(cycle_tokens)
    per_token = ms / tk
    return MCResult(
        tokens_per_second=scale * ratio,
        ci95=(scale * (ratio - 1.96 * se), scale * (ratio + 1.96 * se)),
        latency_ms_p50=_weighted_quantile(per_token, tk, 0.5),
        latency_ms_p99=_weighted_quantile(per_token, tk, 0.99),
        tokens_per_full_forward=float(tk.mean()),
        acceptance=list(accepted / np.maximum(checked, 1)),
        streams=streams,
        cycles=len(ms),
        replay=replay,
    )
