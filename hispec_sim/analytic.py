"""Exact expected throughput of chain plans: a renewal-reward model over buffer lengths.

Assumptions (see acceptance.py for the acceptance ones): positions are i.i.d.; every
sequence of the batch runs the same schedule in lockstep (a forward carries batch x the
stream's new tokens); costs are those of latency.CostModel.

After every full-model check all buffers are empty, so full checks cut the decode into
i.i.d. cycles and tokens/s = E[tokens committed per cycle] / E[time per cycle]. A cycle at
level c is built from i.i.d. checks of level c-1 (each yields a "block": a accepted
tokens then one token of that level's own, a correction or a bonus) until the buffer
holds >= window tokens; by Wald's identity E[time] = E[#blocks] E[time per block] +
E[cost of the check]. The block counts follow a renewal recursion over buffer length,
so everything is a few array operations, vectorised over plans.

Per-request spread (Acceptance.spread): requests differ in their rates; each request runs
at its own rates throughout. A request of N output tokens takes N x t_r, t_r = its mean
time per committed token (cycle_r / committed_r), so the aggregate throughput of many
requests is E[tokens] / E[time] = sum N / sum N t_r; with N equal over requests (or the
empirical family's per-request token weights as N) that is 1 / E_w[t_r] -- NOT the mean of
per-request rates E[1 / t_r], which is larger (Jensen). `expected_chain_terms` returns the
per-cycle terms of that aggregate: committed = 1 / E_w[1 / committed_r] (tokens per
full-model forward over all requests' cycles) and cycle = E_w[t_r] x committed, so
committed / cycle = 1 / E_w[t_r]. The expectation is exact over a discrete distribution:
Gauss-Hermite quadrature for logit_normal, one evaluation per distinct request for
empirical (acceptance.spread_scenarios). Per-level acceptance is E_w[acceptance_r]: the
token-weighted mean of each request's accepted / checked.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acceptance import AgreementModel, LevelRates
from .latency import CostModel
from .schema import Plan


@dataclass
class LevelTerms:
    """Expected per-check quantities of one level for windows 1..W (arrays (plans, W))."""

    blocks: np.ndarray  # E[#blocks from the level below per check]
    check_ms: np.ndarray  # E[cost of the check forward]
    checked: np.ndarray  # E[tokens checked]
    accepted: np.ndarray  # E[tokens accepted]; the level emits accepted + 1


def _renewal(weights: np.ndarray, width: int) -> np.ndarray:
    """r[m] = sum over block sequences whose lengths sum to m of the product of their
    weights; weights[:, a] belongs to a block of length a + 1."""
    plans, blocks = weights.shape
    r = np.zeros((plans, width))
    r[:, 0] = 1.0
    for m in range(1, width):
        k = min(blocks, m)
        r[:, m] = np.einsum("pa,pa->p", weights[:, :k], r[:, m - 1 :: -1][:, :k])
    return r


def _level_terms(p_cor, p_bon, rates: LevelRates, check_ms, width: int):
    """Check of a buffer filled with blocks (p_cor[:, a], p_bon[:, a]: probability of a
    block of a survivors then a correction / a bonus) until it holds >= w tokens, for
    every w in 1..width. check_ms[:, n] = cost of checking n tokens."""
    p_blk = p_cor + p_bon
    plans, blocks = p_blk.shape
    powers = rates.after_accept[:, None] ** np.arange(blocks)
    passes = powers * (p_cor * rates.after_reject[:, None] + p_bon * rates.marginal[:, None])
    u = _renewal(p_blk, width)  # P(buffer length hits m)
    v = _renewal(passes, width)  # ... and every token so far is accepted
    check = _at_stop(u, p_blk, check_ms)
    checked = _at_stop(u, p_blk, np.broadcast_to(np.arange(width + blocks, dtype=float), (plans, width + blocks)))
    geo = np.concatenate([np.zeros((plans, 1)), np.cumsum(powers[:, 1:], 1)], 1)  # sum_{t<=a} beta^t
    per_block = (p_blk * geo + passes).sum(1)  # E[accepted-prefix tokens in a block] given all before passed
    accepted = np.cumsum(v, 1) * per_block[:, None]
    return LevelTerms(np.cumsum(u, 1), check, checked, accepted), (u, v, powers, passes)


def _at_stop(u: np.ndarray, p_blk: np.ndarray, f: np.ndarray) -> np.ndarray:
    """For every window w = 1..W: E[f(buffer length when the fill stops)], i.e. the sum over
    blocks that start below w and end at or above it (m0 < w <= e = m0 + a + 1) of
    u[m0] p_blk[a] f[e]; u is p_blk's renewal (_renewal), f[:, e] is given for e < W + blocks.
    Every block started below w, less those that also ended below w: since u[e] = sum over
    m0 < e of u[m0] p_blk[e - m0 - 1] (e >= 1), the second sum is sum_{1<=e<w} f[e] u[e]
    (time ~ plans x W x blocks, memory ~ plans x W)."""
    width = u.shape[1]
    ends = np.lib.stride_tricks.sliding_window_view(f[:, 1:], p_blk.shape[1], axis=1)[:, :width]  # [m0, a] -> f[m0 + a + 1]
    started = np.einsum("pma,pa->pm", ends, p_blk)
    ended = f[:, :width] * u
    ended[:, 0] = 0.0
    return np.cumsum(u * started - ended, 1)


def _emitted_blocks(p_cor, p_bon, rates: LevelRates, window: np.ndarray, v: np.ndarray, powers, passes):
    """Distribution of what a level emits for each plan's own window: (q_cor, q_bon)[:, a]
    = P(a tokens accepted, then a correction / a bonus)."""
    plans, blocks = p_cor.shape
    width = int(window.max())
    size = width + blocks
    q_cor = np.zeros((plans, size))
    q_bon = np.zeros((plans, size))
    p_blk = p_cor + p_bon
    tail = np.cumsum(p_blk[:, ::-1], 1)[:, ::-1]  # tail[:, t] = P(block has >= t survivors)
    beta = rates.after_accept[:, None]
    reject_last = powers * (p_cor * (1 - rates.after_reject[:, None]) + p_bon * (1 - rates.marginal[:, None]))
    for m0 in range(width):
        wv = np.where(m0 < window, v[:, m0], 0.0)[:, None]
        if blocks > 1:  # rejected at the t-th survivor of the block, t = 1..blocks-1
            q_cor[:, m0 : m0 + blocks - 1] += wv * powers[:, : blocks - 1] * (1 - beta) * tail[:, 1:]
        q_cor[:, m0 : m0 + blocks] += wv * reject_last
        ends = m0 + np.arange(blocks) + 1
        q_bon[:, m0 + 1 : m0 + 1 + blocks] += wv * passes * (ends[None, :] >= window[:, None])
    return q_cor, q_bon


@dataclass
class Prediction:
    tokens_per_second: np.ndarray  # aggregate over the batch
    latency_ms: np.ndarray  # mean time per committed token of one sequence
    tokens_per_full_forward: np.ndarray  # tokens committed per full-model forward
    cycle_ms: np.ndarray
    acceptance: np.ndarray  # (plans, depth - 1): accepted / checked at levels 2..k


def _check_cost(cost: CostModel, lower, upper, max_n: int) -> np.ndarray:
    """Cost of a check by exit `upper` of n tokens from exit `lower`: the last one runs
    through layers 1..lower, the n + 1 tokens through lower+1..upper; head over n + 1."""
    n = np.arange(max_n + 1)[None, :]
    lower = np.asarray(lower, float)[:, None]
    upper = np.asarray(upper, float)[:, None]
    return cost.forward([(lower, np.ones_like(n)), (upper - lower, n + 1)], n + 1, verify=True)


def chain_terms(cost: CostModel, model: AgreementModel, levels: np.ndarray, propose: np.ndarray,
                windows: np.ndarray, top_width: int | None = None):
    """Expected cycle time and tokens for plans of one depth k >= 2.

    levels (P, k), propose (P,), windows (P, k-2). The top level is evaluated for every
    window 1..top_width of the level below it (used to sweep the last window or, for
    k = 2, the propose length); otherwise for each plan's own value. Returns
    (committed (P, W), cycle_ms (P, W), acceptance list of (P, W) or (P,) arrays).
    """
    plans, k = levels.shape
    draft_ms = cost.forward([(levels[:, 0], np.ones(plans, int))], np.ones(plans, int))
    per_block_ms = draft_ms
    p_cor = np.zeros((plans, 1))
    p_bon = np.ones((plans, 1))  # a draft: one token that no lower level saw
    acceptance = []
    for c in range(2, k + 1):
        window = propose if c == 2 else windows[:, c - 3]
        lower2 = levels[:, c - 3] if c >= 3 else None
        rates = model.rates(lower2, levels[:, c - 2], levels[:, c - 1])
        top = c == k
        width = top_width if (top and top_width) else int(window.max())
        check_ms = _check_cost(cost, levels[:, c - 2], levels[:, c - 1], width + p_cor.shape[1])
        terms, (u, v, powers, passes) = _level_terms(p_cor, p_bon, rates, check_ms, width)
        per_check_ms = terms.blocks * per_block_ms[:, None] + terms.check_ms  # Wald: E[#blocks] E[block time]
        acceptance.append(terms.accepted / terms.checked)
        if top and top_width:  # every window 1..top_width
            return terms.accepted + 1.0, per_check_ms, acceptance
        pick = lambda x: x[np.arange(plans), window - 1]
        acceptance[-1] = pick(acceptance[-1])
        if top:
            return pick(terms.accepted) + 1.0, pick(per_check_ms), acceptance
        per_block_ms = pick(per_check_ms)
        p_cor, p_bon = _emitted_blocks(p_cor, p_bon, rates, window, v, powers, passes)
    raise AssertionError("unreachable")


CHAIN_CELLS = 1 << 23  # rows x buffer x block lengths summed over in one chain_terms pass (its arrays: rows x buffer)


def rows_per_pass(propose: np.ndarray, windows: np.ndarray, top_width: int | None) -> int:
    """Plan rows one chain_terms pass may hold: per row it sums over buffer lengths x block
    lengths, each at most the longest buffer the plans can fill."""
    span = 1 + int(np.max(propose)) + (int(windows.sum(1).max()) if windows.size else 0) + (top_width or 0)
    return max(1, CHAIN_CELLS // span**2)


def expected_chain_terms(cost: CostModel, model: AgreementModel, levels: np.ndarray, propose: np.ndarray,
                         windows: np.ndarray, top_width: int | None = None):
    """chain_terms averaged over the workload's request distribution (module docstring):
    (committed, cycle_ms, acceptance) with committed / cycle = 1 / E_w[time per token].
    Without a spread (or a degenerate one) exactly chain_terms. Plans and scenarios are
    evaluated in passes of rows_per_pass rows (each plan row's terms are its own)."""
    plans = len(levels)
    per_pass = rows_per_pass(propose, windows, top_width)
    if plans > per_pass:
        parts = [expected_chain_terms(cost, model, levels[i:i + per_pass], propose[i:i + per_pass],
                                      windows[i:i + per_pass], top_width) for i in range(0, plans, per_pass)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                [np.concatenate([p[2][j] for p in parts]) for j in range(len(parts[0][2]))])
    scen = getattr(model, "scenarios", None)
    if scen is None:
        return chain_terms(cost, model, levels, propose, windows, top_width)
    S = len(scen.weights)
    per_call = max(1, per_pass // plans)  # scenarios per pass
    time_per_token = inv_committed = 0.0
    acc_sum = None
    for lo in range(0, S, per_call):
        s = np.arange(lo, min(S, lo + per_call))
        rows = np.repeat(s, plans)  # scenario-major: row = scenario x plans + plan
        tile = lambda x: np.tile(x, (len(s),) + (1,) * (np.ndim(x) - 1))
        committed, cycle, acc = chain_terms(cost, model.for_rows(rows), tile(levels), tile(propose), tile(windows), top_width)
        w = scen.weights[s]
        fold = lambda x: np.tensordot(w, x.reshape((len(s), plans) + x.shape[1:]), axes=1)  # weighted sum over scenarios
        time_per_token = time_per_token + fold(cycle / committed)
        inv_committed = inv_committed + fold(1.0 / committed)
        folded = [fold(a) for a in acc]
        acc_sum = folded if acc_sum is None else [x + y for x, y in zip(acc_sum, folded)]
    committed = 1.0 / inv_committed
    return committed, time_per_token * committed, acc_sum


def predict(cost: CostModel, model: AgreementModel, plans: list[Plan]) -> Prediction:
    """Expected throughput of plans (any mix of depths) on one cost model and workload
    (over its request distribution when it has a spread: module docstring)."""
    n = len(plans)
    out = Prediction(np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros((n, max(p.depth for p in plans) - 1)))
    by_depth: dict[int, list[int]] = {}
    for i, p in enumerate(plans):
        by_depth.setdefault(p.depth, []).append(i)
    for depth, idx in by_depth.items():
        idx = np.asarray(idx)
        if depth == 1:
            committed = np.ones(len(idx))
            cycle = np.full(len(idx), cost.autoregressive_ms(plans[idx[0]].levels[0]))
            acc = []
        else:
            levels = np.array([plans[i].levels for i in idx])
            propose = np.array([plans[i].propose for i in idx])
            windows = np.array([plans[i].windows for i in idx]).reshape(len(idx), depth - 2)
            committed, cycle, acc = expected_chain_terms(cost, model, levels, propose, windows)
        _fill(out, idx, committed, cycle, cost.batch, acc)
    return out


def _fill(out: Prediction, idx, committed, cycle, batch, acc):
    out.tokens_per_second[idx] = batch * 1000.0 * committed / cycle
    out.latency_ms[idx] = cycle / committed
    out.tokens_per_full_forward[idx] = committed
    out.cycle_ms[idx] = cycle
    for j, a in enumerate(acc):
        out.acceptance[idx, j] = a


def leviathan_tokens_per_round(alpha, propose):
    """Leviathan et al. 2023: expected tokens per round (1 - a^(g+1)) / (1 - a)."""
    alpha = np.asarray(alpha, float)
    return np.where(alpha < 1, (1 - alpha ** (propose + 1)) / np.where(alpha < 1, 1 - alpha, 1), propose + 1.0)
