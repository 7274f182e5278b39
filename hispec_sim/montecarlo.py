"""Monte-Carlo simulation of a chain plan, vectorised over independent streams.

Every stream runs the plan's schedule: rounds of `propose` drafts, a level-2 check, and
the cascade of checks whose window is full; each forward costs what the CostModel says.
Two engines: the block engine draws each check's accepted prefix with one uniform and all
cycles at once (i.i.d. acceptance with the rates of acceptance.py, the analytic model's
assumptions); the token engine walks every buffered token and can replay measured
per-position traces, keeping the correlation between neighbouring positions and levels.

Trace replay walks the measured requests themselves: one stream per request (walk_spans),
from its first position until it has committed as many tokens as the request has rows, so the
estimate is sum(tokens) / sum(time) over the requests, as the executor aggregates them.
For greedy plans the committed tokens of every full-model check are then exactly the
executor's (a check commits up to the first token that disagrees with the full model,
and everything before it was produced in the measured context); what a lower level does
past a rejection, and the last check of a request (rows past its end wrap round to its
start), use the measured rows as stand-ins. (Streams of a fixed number of cycles from
random positions weight the positions by the local rate: a mean of rates, biased high.)

Per-request spread (Acceptance.spread): every stream is one request with its own rates,
drawn from the distribution itself (logit_normal: z ~ N(0, sigma) per stream; empirical:
a measured request, with probability proportional to its weight), and runs whole cycles
until it has committed `request_tokens` tokens. The estimate is total tokens / total time
over the streams, the aggregate E[tokens] / E[time] that analytic.expected_chain_terms
computes. Spread streams run on the token engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acceptance import AgreementModel
from .analytic import _check_cost
from .latency import CostModel
from .schema import MAX_MC_DRAFTS, Plan

ACC, COR, BON = 0, 1, 2  # how a buffered token got there: survived, correction, bonus/draft
CHUNK_CELLS = 500_000  # candidate cells per batch of the block engine (arrays stay in cache)
TABLE_ROWS = 4096  # level-2 checks of up to this many draft-round combinations go by table lookup
EXTENSION_COST = 2.5  # a candidate drawn in an extension, relative to one drawn up front (gather, second check)


@dataclass
class MCResult:
    tokens_per_second: float
    ci95: tuple[float, float] | None  # None from one stream (a replay of one request)
    latency_ms_p50: float
    latency_ms_p99: float
    tokens_per_full_forward: float
    acceptance: list[float]
    streams: int
    cycles: int
    replay: bool


QUANTILE_SAMPLES = 262_144


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """Quantile of values weighted by weights."""
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cw, q * cw[-1])])


def _every_kth(chunks: list[np.ndarray], k: int) -> np.ndarray:
    """Every k-th element of the chunks laid end to end, without joining them."""
    out, start = [], 0
    for x in chunks:
        out.append(x[(-start) % k::k])
        start += len(x)
    return np.concatenate(out)


REQUEST_TOKENS = 256  # a per-request spread: each stream is one request of this many tokens


def simulate(cost: CostModel, model: AgreementModel, plan: Plan, streams: int = 4096, cycles: int = 64,
             seed: int = 0, replay: bool = False, engine: str = "auto", request_tokens: int = REQUEST_TOKENS) -> MCResult:
    """Simulate `streams` independent streams for `cycles` full-model checks each.

    A fixed number of whole cycles per stream keeps the ratio estimator unbiased (cutting
    at a fixed number of rounds would favour short cycles). engine: "block" draws each
    check's accepted prefix with one uniform (i.i.d. only, fast), "token" walks every
    token (needed for trace replay and a per-request spread); "auto" picks block unless
    replaying or the workload has a spread. With a spread, `request_tokens` replaces
    `cycles`: each stream is one request of that many tokens (module docstring); trace
    replay ignores the spread (the traces carry their own request-to-request variation)
    and ignores streams, cycles and the seed: one stream per measured request, each walked
    to its own length (module docstring); deterministic."""
    if streams < 2 or cycles < 1 or request_tokens < 1:
        raise ValueError("mc: streams must be >= 2, cycles >= 1 and request_tokens >= 1")
    spread = getattr(model, "scenarios", None) is not None and not replay
    if plan.depth == 1:
        ms = cost.autoregressive_ms(plan.levels[0])
        tps = cost.batch * 1000.0 / ms
        return MCResult(tps, (tps, tps), ms, ms, 1.0, [], streams, streams * cycles, replay)
    if replay and model.traces is None:
        raise ValueError("replay: needs a workload with traces (profile measure records them)")
    check_simulation_size(plan, len(model.traces) if replay else streams * (request_tokens if spread else cycles), replay)
    if engine == "auto":
        engine = "token" if (replay or spread) else "block"
    if engine == "block":
        if replay or spread:
            raise ValueError("mc: trace replay and a per-request spread need the token engine")
        return _summarise(*_block_engine(cost, model, plan, streams, cycles, np.random.default_rng(seed)),
                          cost.batch, streams, False)
    if replay:
        spans = walk_spans(model.acc.trace_starts, len(model.traces))
        streams, request_tokens = len(spans), np.array([n for _, n in spans])
    return _summarise(*_token_engine(cost, model, plan, streams, cycles, seed, replay,
                                     request_tokens if (spread or replay) else None),
                      cost.batch, streams, replay)


class SimulationTooLarge(ValueError):
    """A simulation that could walk more than MAX_MC_DRAFTS drafts (check_simulation_size)."""


def check_simulation_size(plan: Plan, cycles: int, replay: bool = False) -> None:
    """Refuse a simulation that could walk more than MAX_MC_DRAFTS drafts: a full-model check
    holds at most propose x window_3 x ... x window_k of them (every check below it emits at
    least one token), and `cycles` bounds the full-model checks (each commits >= 1 token)."""
    per = plan.propose * int(np.prod(plan.windows, dtype=object)) if plan.depth > 1 else 0
    if per * cycles > MAX_MC_DRAFTS:
        raise SimulationTooLarge(
            f"{'replay' if replay else 'mc'}: plan {plan.levels} (propose {plan.propose}, windows {list(plan.windows)}) "
            f"drafts up to {per:,} tokens per full-model check; over {cycles:,} checks that is {per * cycles:.2e} drafts, "
            f"at most {MAX_MC_DRAFTS:.2e}: " + ("a shorter propose or window (trace replay walks every measured position)"
                                                if replay else "fewer streams or cycles, or a shorter propose or window"))


WALK_ROWS = 256  # trace replay walks a longer request in pieces of this many rows


def walk_spans(trace_starts, rows: int) -> list[tuple[int, int]]:
    """(first row, rows) of every stream trace replay walks: each measured request, a
    request longer than WALK_ROWS cut into pieces of WALK_ROWS rows (each walked from its
    first row, as a request would be: a run of agreement across a cut is broken, and the
    vectorised walk stays as wide as the pieces; workloads without trace_starts are one
    request)."""
    bounds = list(trace_starts or [0]) + [rows]
    return [(a, min(WALK_ROWS, b - a)) for lo, b in zip(bounds, bounds[1:]) for a in range(lo, b, WALK_ROWS)]


def _level_rates(model: AgreementModel, levels: list[int]) -> list[np.ndarray]:
    """[after_accept, after_reject, marginal] for the check of level j's tokens by j+1."""
    out = []
    for j in range(len(levels) - 1):
        r = model.rates(None if j == 0 else np.array([levels[j - 1]]), np.array([levels[j]]), np.array([levels[j + 1]]))
        out.append(np.array([r.after_accept[0], r.after_reject[0], r.marginal[0]]))
    return out


def _block_engine(cost: CostModel, model: AgreementModel, plan: Plan, streams: int, cycles: int, rng):
    """Each check draws its accepted prefix with ONE uniform U: the prefix reaches token i
    iff U < product of the pass rates of tokens 1..i, which has exactly the law of
    independent per-token draws. A check at level j+1 consumes candidate checks of level j
    (candidates on axis 0, a batch of cycles on the others) until its buffer holds >= its
    window; a whole batch of cycles is a few array operations.

    Speed: a fill rarely needs all `window` candidates (every block has >= 1 token, most
    have more), so each level first draws K of them (K = the 95th percentile of the
    candidates used, from a pilot draw) and extends, with window - K more, only the cells
    whose K candidates did not fill the buffer: every cell still sees one sequence of
    independent candidates, the law is unchanged. Counts are int16, pass log-probabilities
    float32; the first failing candidate is found by counting (the cumulative log-product
    only decreases)."""
    levels, k, g = plan.levels, plan.depth, plan.propose
    log_rates = [np.log(np.clip(r, 1e-300, 1.0)) for r in _level_rates(model, levels)]
    cap = [g]
    for w in plan.windows:
        cap.append(w - 1 + cap[-1] + 1)
    check_ms = [_check_cost(cost, np.array([levels[j]]), np.array([levels[j + 1]]), max(cap) + 1)[0] for j in range(k - 1)]
    round_ms = g * float(cost.forward([(levels[0], 1)], 1)) + check_ms[0][g]
    check_ms32 = [c.astype(np.float32) for c in check_ms]  # per-check times: float32, totals float64
    alpha = float(np.exp(log_rates[0][2]))
    inv_log_alpha = np.float32(1.0 / np.log(alpha)) if 0.0 < alpha < 1.0 else None
    thresholds = (alpha ** np.arange(1, g + 1)).astype(np.float32)
    lr = log_rates[1] if k > 2 else np.zeros(3)  # the level-2 check of draft blocks
    draft_block = np.array([i * lr[0] + (lr[2] if i == g else lr[1]) for i in range(g + 1)], np.float32)  # log P(block passes)

    def drafts(shape):
        """Rounds of g drafts: a = accepted drafts of the level-2 check's view, P(a >= i) = alpha^i."""
        if alpha >= 1.0:
            a = np.full(shape, g, np.int16)
        elif alpha <= 0.0:
            a = np.zeros(shape, np.int16)
        elif g <= 8:  # inverse CDF of min(Geometric, g): a = #{i <= g: U < alpha^i}, U uniform in [0, 1)
            u = rng.random(shape, dtype=np.float32)
            a = (u < thresholds[0]).astype(np.int16)
            for th in thresholds[1:]:
                a += u < th
        else:  # the same from the logarithm: a = min(floor(log U' / log alpha), g), U' in (0, 1]
            x = np.log(np.float32(1.0) - rng.random(shape, dtype=np.float32))
            x *= inv_log_alpha
            a = np.minimum(x, np.float32(g), out=x).astype(np.int16)  # floor: x >= 0
        return a, None, round_ms, [(g, a)]  # bonus None: a == g; scalars broadcast (every round costs the same)

    def check(level: int, a, bonus, t, stats):
        """The checks of 0-based level `level` over candidates (axis 0) of the level below.
        Works on (candidates, cells) views; a value at a per-cell candidate index is one flat
        take, a masked sum over the used prefix a prefix sum read at n_used - 1."""
        w = plan.windows[level - 2]
        lacc, lcor, lbon = log_rates[level - 1]
        cands, cell_shape = a.shape[0], a.shape[1:]
        rows = lambda x: x.reshape(cands, -1)
        a = rows(a)
        cells = a.shape[1]
        col = np.arange(cells)
        length = a + np.int16(1)
        end = _cumsum0(length)
        start = end - length
        used = start < w  # a prefix of the candidates: those that start below the window
        n_used = used.sum(0, dtype=np.int16)
        last = (n_used.astype(np.intp) - 1) * cells + col  # flat index of the last used candidate
        at = lambda x, idx: x.reshape(-1).take(idx)
        prefix = lambda x: at(_cumsum0(rows(x)), last)  # sum over the used candidates
        n = at(end, last)
        time = (n_used * np.float32(t) if np.ndim(t) == 0 else prefix(t)) + check_ms32[level - 1].take(n)
        block = draft_block.take(a) if bonus is None else \
            (a * np.float32(lacc) + np.where(rows(bonus), np.float32(lbon), np.float32(lcor))).astype(np.float32)
        cum = _cumsum0(block)
        u = np.log(np.float32(1.0) - rng.random(cells, dtype=np.float32))
        f = (cum > u).sum(0, dtype=np.int16)  # candidates passed whole before the first failing one
        failed = f < n_used
        fail = np.minimum(f, np.int16(cands - 1)).astype(np.intp) * cells + col
        blk_f = at(block, fail)
        a_f = at(a, fail)
        if lacc < 0:  # survivors of the failing block pass while before + t * lacc > u
            x = u - (at(cum, fail) - blk_f)
            x /= np.float32(lacc)
            t_pass = _ceil_minus_one_clipped(x, a_f)
        else:
            t_pass = a_f
        accepted = np.where(failed, at(start, fail) + t_pass, n)
        lower = [(n_used * c if np.ndim(c) == 0 else prefix(c), prefix(x)) for c, x in stats[:-1]]
        c, _ = stats[-1]  # the level just below: accepted over the used candidates = n - n_used
        lower.append((n_used * c if np.ndim(c) == 0 else prefix(c), n - n_used))
        shaped = lambda x: x.reshape(cell_shape)
        return (shaped(accepted), shaped(~failed), shaped(time),
                [(shaped(c), shaped(x)) for c, x in lower] + [(shaped(n), shaped(accepted))])

    tables: dict[int, tuple] = {}

    def draft_tables(cands: int):
        """Every combination of `cands` draft rounds (a_i in 0..g), indexed sum a_i (g+1)^i:
        what a level-2 check of it yields. thr[c, j] = log P(its first j + 1 buffered tokens
        all pass) (-inf past the buffer): a check accepts #{j : thr[c, j] > log U}, the
        same one-uniform law as `check`."""
        if cands not in tables:
            w = plan.windows[0]
            lacc, lcor, lbon = log_rates[1]
            combos = (np.arange((g + 1) ** cands)[:, None] // (g + 1) ** np.arange(cands)[None, :]) % (g + 1)
            n_tab, used_tab = np.zeros(len(combos), np.int16), np.zeros(len(combos), np.int16)
            thr = np.full((len(combos), cap[1]), -np.inf, np.float32)
            for c, row in enumerate(combos):
                logs, n_used = [], 0
                for a_i in row:
                    if len(logs) >= w:
                        break
                    logs += [lacc] * int(a_i) + [lbon if a_i == g else lcor]
                    n_used += 1
                n_tab[c], used_tab[c] = len(logs), n_used
                thr[c, : len(logs)] = np.cumsum(logs)
            time_tab = (used_tab * round_ms + check_ms[1][n_tab]).astype(np.float32)  # levels[2] checks n tokens
            tables[cands] = (n_tab, used_tab, thr, time_tab)
        return tables[cands]

    def check_drafts(a):
        """`check` at level 2 (draft rounds as candidates) by table lookup: one index per cell."""
        cands, cell_shape = a.shape[0], a.shape[1:]
        n_tab, used_tab, thr, time_tab = draft_tables(cands)
        thr_cols = [np.ascontiguousarray(thr[:, j]) for j in range(thr.shape[1])]
        a = a.reshape(cands, -1)
        idx = a[0].astype(np.intp)
        for i in range(1, cands):
            idx += a[i] * np.int16((g + 1) ** i)
        u = np.log(np.float32(1.0) - rng.random(a.shape[1], dtype=np.float32))
        accepted = np.zeros(a.shape[1], np.int16)
        for col in thr_cols:  # the passing tokens form a prefix: count them column by column
            accepted += col.take(idx) > u
        n, n_used = n_tab.take(idx), used_tab.take(idx)
        shaped = lambda x: x.reshape(cell_shape)
        return (shaped(accepted), shaped(accepted == n), shaped(time_tab.take(idx)),
                [(shaped(n_used * np.int16(g)), shaped(n - n_used)), (shaped(n), shaped(accepted))])

    K: dict[int, int] = {}

    def draw(level: int, shape: tuple):
        """Independent checks by 0-based level `level` (>= 1) of the buffer below:
        (accepted, bonus?, time since this level's previous check, [(checked, accepted)
        per level <= this one])."""
        if level == 1:
            return drafts(shape)
        w = plan.windows[level - 2]
        if level not in K:  # pilot: how many candidates a fill uses; K minimises the expected candidates drawn,
            # K + P(K fall short) (w - K), the extension counted 1.5x for its gather and second check
            a = draw(level - 1, (w, 2048))[0]
            needed = (np.cumsum(a + 1, 0) - a - 1 < w).sum(0)
            ks = np.arange(1, w + 1)
            K[level] = int(ks[np.argmin(ks + np.array([(needed > kk).mean() for kk in ks]) * (w - ks) * EXTENSION_COST)])
        kk = K[level]
        a, bonus, t, stats = draw(level - 1, (kk,) + shape)  # candidates on axis 0: reductions stay elementwise
        out = check_drafts(a) if (level == 2 and (g + 1) ** kk <= TABLE_ROWS) else check(level, a, bonus, t, stats)
        if kk == w:
            return out
        short = np.flatnonzero(a.sum(0, dtype=np.int16).reshape(-1) + kk < w)  # K candidates end below the window
        if len(short) == 0:
            return out
        flat = lambda x: x.reshape(x.shape[0], -1)[:, short]
        more = draw(level - 1, (w - kk, len(short)))
        join = lambda x, y: x if x is None else np.concatenate([flat(np.broadcast_to(x, a.shape)), np.broadcast_to(y, more[0].shape)], 0)
        sub = check(level, join(a, more[0]), join(bonus, more[1]), t if np.ndim(t) == 0 else join(t, more[2]),
                    [(c if np.ndim(c) == 0 else join(c, mc), join(x, mx)) for (c, x), (mc, mx) in zip(stats, more[3])])

        def put(full, part):
            if np.ndim(full) == 0:
                full = np.full(shape, full, np.asarray(part).dtype)
            full = full.copy() if not full.flags.writeable else full
            full.reshape(-1)[short] = part
            return full
        return (put(out[0], sub[0]), put(out[1], sub[1]), put(out[2], sub[2]),
                [(put(c, sc), put(x, sx)) for (c, x), (sc, sx) in zip(out[3], sub[3])])

    draw(k - 1, (1, 2))  # pilots first (they consume random numbers before the chunks, in a fixed order)
    cells = max(int(np.prod([K.get(lv, 1) for lv in range(2, k)])), 1) * cycles
    chunk = max(1, min(streams, CHUNK_CELLS // cells))
    times, tokens, checked, accepted = [], [], np.zeros(k - 1), np.zeros(k - 1)
    for lo in range(0, streams, chunk):
        a, _, t, stats = draw(k - 1, (cycles, min(chunk, streams - lo)))
        times.append(np.broadcast_to(np.asarray(t, np.float64), a.shape))
        tokens.append(a + 1.0)
        for j, (c, x) in enumerate(stats):
            checked[j] += np.broadcast_to(c, a.shape).sum(dtype=np.int64)
            accepted[j] += x.sum(dtype=np.int64)
    cycle_ms = np.concatenate(times, 1)
    cycle_tokens = np.concatenate(tokens, 1)
    return (cycle_ms.sum(0), cycle_tokens.sum(0), [cycle_ms.ravel()], [cycle_tokens.ravel()],
            accepted / np.maximum(checked, 1))


def _ceil_minus_one_clipped(x: np.ndarray, top: np.ndarray) -> np.ndarray:
    """clip(ceil(x) - 1, 0, top) as int16, in place on float32 x. Clipped before the ceil:
    x is huge where a log rate is near 0, and numpy 1.x without SSE4.1 flags a float32 ceil
    beyond 2^31 as 'invalid' (a spurious RuntimeWarning; the value was right)."""
    np.clip(x, 1, top + 1, out=x)
    np.ceil(x, out=x)
    x -= np.float32(1.0)
    return x.astype(np.int16)


def _cumsum0(x: np.ndarray) -> np.ndarray:
    """Cumulative sum over axis 0 of a few long rows: row-by-row adds on contiguous rows
    (numpy's accumulate along a leading axis is several times slower)."""
    out = x.copy()
    for i in range(1, len(out)):
        np.add(out[i - 1], out[i], out=out[i])
    return out


def _summarise(total_time, total_tokens, cycle_ms, cycle_tokens, acceptance, batch, streams, replay) -> MCResult:
    ratio = total_tokens.sum() / total_time.sum()
    z = total_tokens - ratio * total_time
    se = np.sqrt(z.var(ddof=1) / streams) / total_time.mean() if streams > 1 else 0.0
    scale = batch * 1000.0
    cycles = sum(len(x) for x in cycle_tokens)
    # Every k-th cycle for the latency percentiles: sorting millions buys nothing, and a prefix
    # would not do: the token engine records cycles step by step across streams, so with a
    # per-request spread its first cycles over-represent the fast requests' short ones.
    k = -(-cycles // QUANTILE_SAMPLES)
    ms, tk = _every_kth(cycle_ms, k), _every_kth(cycle_tokens, k)
    per_token = ms / tk
    return MCResult(
        tokens_per_second=float(scale * ratio),
        ci95=(float(scale * max(ratio - t95(streams - 1) * se, 0.0)), float(scale * (ratio + t95(streams - 1) * se)))
        if streams > 1 else None,  # a rate is >= 0
        latency_ms_p50=_weighted_quantile(per_token, tk, 0.5),
        latency_ms_p99=_weighted_quantile(per_token, tk, 0.99),
        tokens_per_full_forward=float(sum(float(y.sum()) for y in cycle_tokens) / cycles),
        acceptance=[float(x) for x in acceptance],
        streams=streams,
        cycles=cycles,
        replay=replay,
    )


def t95(dof: int) -> float:
    """The two-sided 95 % Student t quantile: the half-width of an interval from `dof` + 1
    samples in standard errors (1.96 only for many; 12.7 for two)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def _stream_rates(model: AgreementModel, levels: list[int], rng, streams: int) -> list[np.ndarray]:
    """Per stream (streams, 3) [after_accept, after_reject, marginal]: one request per stream."""
    reqs = model.for_rows(np.zeros(1, int)).sample(rng, streams)
    out = []
    for j in range(len(levels) - 1):
        full = lambda e: np.full(streams, e)
        r = reqs.rates(None if j == 0 else full(levels[j - 1]), full(levels[j]), full(levels[j + 1]))
        out.append(np.stack([r.after_accept, r.after_reject, r.marginal], 1))
    return out


def _token_engine(cost: CostModel, model: AgreementModel, plan: Plan, streams: int, cycles: int, seed: int, replay: bool,
                  request_tokens: int | None = None):
    """Token by token: every buffered token carries how it got there (ACC/COR/BON).
    request_tokens (a spread, or per stream when replaying): each stream stops after the
    cycle that brings it to request_tokens committed tokens, instead of after `cycles`
    cycles; with a spread it draws its own rates, replaying it walks measured request s."""
    rng = np.random.default_rng(seed)
    levels, k, g = plan.levels, plan.depth, plan.propose

    # capacity of each level's buffer: level 1 holds g drafts; level j+1 < k holds < w + block
    cap = [g]
    for w in plan.windows:
        cap.append(w - 1 + cap[-1] + 1)
    max_n = max(cap)
    check_ms = [_check_cost(cost, np.array([levels[j]]), np.array([levels[j + 1]]), max_n + 1)[0] for j in range(k - 1)]
    draft_ms = float(cost.forward([(levels[0], 1)], 1))

    rates = _stream_rates(model, levels, rng, streams) if (request_tokens is not None and not replay) \
        else _level_rates(model, levels)
    if replay:
        t = model.traces
        agree = [t[:, model.idx(levels[j])[()]] == t[:, model.idx(levels[j + 1])[()]] for j in range(k - 1)]
        first = np.cumsum(request_tokens) - request_tokens  # stream s: rows first[s] .. (walk_spans tile the rows)
        pos = np.full(streams, -1, np.int64)  # last committed position within the stream's request

    types = [np.full((streams, c + 1), BON, np.int8) for c in cap]
    length = [np.zeros(streams, np.int64) for _ in cap]
    clock = np.zeros(streams)  # time since the stream's last full check
    total_time = np.zeros(streams)
    total_tokens = np.zeros(streams)
    checked = np.zeros(k - 1)
    accepted = np.zeros(k - 1)
    cycle_ms, cycle_tokens = [], []
    cols = np.arange(max_n + 2)

    done_cycles = np.zeros(streams, np.int64)
    live = lambda: (total_tokens < request_tokens) if request_tokens is not None else (done_cycles < cycles)
    out_time, out_tokens, ids = np.zeros(streams), np.zeros(streams), np.arange(streams)
    while (running := live()).any():
        if request_tokens is not None and 2 * running.sum() < len(running):
            # requests end at different times: step only the unfinished ones from here on
            # (the same process; finished streams are no longer drawn for)
            out_time[ids], out_tokens[ids] = total_time, total_tokens
            keep = running
            ids, total_time, total_tokens, clock, done_cycles = (x[keep] for x in (ids, total_time, total_tokens, clock, done_cycles))
            types, length = [x[keep] for x in types], [x[keep] for x in length]
            if replay:
                pos, first, request_tokens = pos[keep], first[keep], request_tokens[keep]
            elif rates[0].ndim == 2:
                rates = [x[keep] for x in rates]
            running = running[keep]
        streams = len(running)
        clock += g * draft_ms
        length[0][:] = g  # drafts are BON-typed: no lower level has seen them
        active = np.ones(streams, bool)
        for j in range(k - 1):
            n = np.where(active, length[j], 0)
            width = cap[j]
            clock += np.where(active, check_ms[j][n], 0.0)
            if replay:
                offset = sum((length[m] for m in range(j + 1, k - 1)), np.zeros(streams, np.int64))
                p = (pos[:, None] + 1 + offset[:, None] + cols[None, :width]) % request_tokens[:, None]
                ok = agree[j][first[:, None] + p]
            else:
                tj = types[j][:, :width]
                p_ok = rates[j][tj] if rates[j].ndim == 1 else np.take_along_axis(rates[j], tj.astype(np.intp), 1)
                ok = rng.random((streams, width)) < p_ok
            ok &= cols[None, :width] < n[:, None]
            a = np.where(ok.all(1), width, np.argmin(ok, 1))
            a = np.minimum(a, n)
            counted = active & running
            checked[j] += n[counted].sum()
            accepted[j] += a[counted].sum()
            length[j][active] = 0
            if j == k - 2:  # the full model commits
                done = active
                committed = a + 1
                count = done & running
                done_cycles += done
                total_time[count] += clock[count]
                total_tokens[count] += committed[count]
                cycle_ms.append(clock[count].copy())
                cycle_tokens.append(committed[count].astype(float))
                if replay:
                    pos[done] += committed[done]
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

    out_time[ids], out_tokens[ids] = total_time, total_tokens
    return out_time, out_tokens, cycle_ms, cycle_tokens, accepted / np.maximum(checked, 1)
