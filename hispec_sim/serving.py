"""Request-level serving simulation: the serving process of `hispec-exec serve`, costed.

The process simulated is exactly the one specified at the top of hispec_exec/serve.py
(admission FIFO head-of-line under max_batch and a KV reservation of prompt +
max_new_tokens + the plan's overshoot; every request admitted in an iteration prefilled
in ONE forward of its P - 1 tokens through all layers -- or, chunked, at most
`prefill_chunk` queued prompt tokens per iteration's forward, a piece after cached
tokens paying attention over them; then one decode step over the
running sequences under the plan's batching policy, `ragged` or `synchronous`; tokens
emitted at the end of the step that commits them). Costs come from latency.py: a
step's forward is built layer range by layer range (segment l_{i-1}+1..l_i carries the
rows of every sequence whose operation reaches l_i; its linear part is read at the
total rows, its attention per sequence, or from the measured kernel for the batch), plus
ONE exit-head call over every sequence's head rows (whatever their exits), the per-forward
overhead and, when the step holds a check, the verification overhead.

Acceptance: each request draws its own rates from the workload's `spread` (empirical:
one measured request's agreement matrix; logit_normal: the workload's rates shifted by
z ~ N(0, sigma) in logit space), else every request has the workload's rates; within a
request, positions are i.i.d. with the Markov-along-levels rates of acceptance.py (the
analytic model's assumptions). Adaptive plans (confidence thresholds): serving_adaptive.py.

Step-time noise (step_noise.py): when the profile's serving calibration has a measured
step noise, every decode step's time is multiplied by one draw (shared by the sequences in
that step), from an RNG stream of its own, so acceptance draws, steps and tokens are the
same with or without it; prefill forwards stay deterministic. Without it (older profiles,
`--step-noise off`): deterministic steps, exactly as before.

Why a small vectorised loop and no discrete-event library (simpy, salabim, ciw): the
process has ONE kind of event, the end of an engine iteration, and every running
sequence acts at every iteration, so there is no event queue to manage; the work per
iteration is a handful of numpy operations over the batch's slots (which op each slot
runs, its rows per layer range, its acceptance draw), which a process-per-request
library would turn into thousands of Python generator switches per step. The loop
simulates >= 10,000 requests at max batch 64 in seconds (tests/bench/bench_serve_sim.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import step_noise
from .acceptance import AgreementModel, RequestRates, Scenarios
from .analytic import predict
from .montecarlo import t95
from .latency import (
    CostModel,
    decode_attention_ms,
    head_ms,
    layout_attention_ms,
    linear_layer_ms,
    pooled_attention_ms,
    prefill_attention_ms,
    prefill_row_ms,
    sequence_attention_ms,
    serving_layer_ms,
    serving_step_overhead_ms,
)
from .schema import (
    MAX_SERVE_FORWARDS,
    MIN_LAYER_MS,
    Acceptance,
    LatencyTable,
    Plan,
    Request,
    RequestMetrics,
    ServeLimits,
    Source,
)
from .traffic import good_requests, p99_slos_met, percentiles

ACC, COR, BON = 0, 1, 2  # how a buffered token got there (acceptance.py's conditional rates)
CTX_BUCKET = 16  # attention is read at the context rounded to this many tokens (lookup tables)
LINEAR_TABLE_CELLS = 1 << 22  # most cells (32 MB) of one linear-part lookup table (the batched grid; the prefill rows); beyond: per call


def buffer_width(plan: Plan) -> int:
    """Columns a slot's buffers need (as the Monte-Carlo token engine): level 1 holds
    `propose`, level j+1 fewer than its window plus the block a check passes up; + 2."""
    cap = [plan.propose]
    for w in plan.windows:
        cap.append(w - 1 + cap[-1] + 1)
    return max(cap) + 2


def reservation(plan: Plan, prompt_len, max_new) -> np.ndarray:
    """KV tokens a request reserves while it runs."""
    return np.asarray(prompt_len) + np.asarray(max_new) + plan.max_overshoot


def check_prefill(plan: Plan, batching: str, limits: ServeLimits) -> None:
    """Chunked prefill is built for the ragged engine (ragged batching, autoregressive plans)."""
    if limits.prefill == "chunked" and (plan.adaptive or (plan.depth > 1 and batching == "synchronous")):
        raise ValueError(f"prefill_chunk: chunked prefill is built for ragged batching and autoregressive plans, not "
                         f"for {'adaptive plans' if plan.adaptive else 'synchronous batching'}; allowed: none (whole "
                         f"prompts in one forward)")


def check_limits(plan: Plan, limits: ServeLimits, prompt_len: np.ndarray, max_new: np.ndarray) -> None:
    """Raise ValueError naming the field when a request can never be admitted, or the
    prefill policy is not built for the plan."""
    check_prefill(plan, plan.batching, limits)
    if limits.kv_tokens is not None:
        need = reservation(plan, prompt_len, max_new)
        worst = int(np.argmax(need))
        if need[worst] > limits.kv_tokens:
            raise ValueError(f"kv_tokens: request {worst} needs {int(need[worst])} KV tokens (prompt {int(prompt_len[worst])} + "
                             f"max_new_tokens {int(max_new[worst])} + {'speculation' if plan.depth > 1 else 'the next step'} {plan.max_overshoot}), more than the "
                             f"capacity {limits.kv_tokens}; allowed: >= {int(need.max())}")


def forwards_per_token(acc: Acceptance, plan: Plan) -> float:
    """Forwards one sequence runs per committed token, expected: the exact model
    (analytic.predict, over the workload's spread) with every forward priced at 1 ms (and
    1 ns a layer: within 0.1 %). Confidence thresholds are left out (they end rounds early:
    a run's forwards stay of this order)."""
    unit = LatencyTable(tokens=[1], contexts=[0], layer_ms=[[MIN_LAYER_MS]], head_ms=[0.0], overhead_ms=1.0,
                        source=Source(kind="assumed", detail="every forward costs 1 ms: a count of forwards"))
    fixed = plan.model_copy(update={"draft_confidence": None, "escalate_confidence": None, "batch": 1})
    return float(predict(CostModel(unit, 1, 0, plan.max_overshoot + 8), AgreementModel(acc), [fixed]).latency_ms[0])


def check_size(acc: Acceptance, plan: Plan, max_new: np.ndarray, runs: int = 1) -> None:
    """Refuse `runs` runs of these requests expected to walk more than MAX_SERVE_FORWARDS
    forwards in all (time grows with them, one run's memory too): deep, wide plans on a
    workload of low agreement draft thousands of tokens per committed one."""
    per = forwards_per_token(acc, plan)
    tokens = float(np.sum(max_new)) * runs
    if per * tokens > MAX_SERVE_FORWARDS:
        raise ValueError(f"plan: {plan.describe()} runs {per:,.1f} forwards per generated token on this workload; "
                         f"{tokens:,.0f} output tokens ({runs} run(s)) need ~{per * tokens:.2e} forwards, at most "
                         f"{MAX_SERVE_FORWARDS:.2e}: fewer --requests or --seeds, a shorter --output-len, or a shorter "
                         f"propose or window")


# --------------------------------------------------------------------------- acceptance per request


def level_rates(acc: Acceptance, levels: list[int]) -> np.ndarray:
    """(k-1, 3) rates [after_accept, after_reject, marginal] of the checks of a chain."""
    model = AgreementModel(acc)
    out = np.zeros((max(len(levels) - 1, 0), 3))
    for j in range(len(levels) - 1):
        r = model.rates(None if j == 0 else np.array([levels[j - 1]]), np.array([levels[j]]), np.array([levels[j + 1]]))
        out[j] = [r.after_accept[0], r.after_reject[0], r.marginal[0]]
    return out


def request_rates(acc: Acceptance, plan: Plan, n: int, rng: np.random.Generator, picks: list | None = None) -> np.ndarray:
    """(n, k-1, 3) per-request acceptance rates drawn from the workload's spread (empirical:
    the measured request each one drew is appended to `picks`, when given)."""
    base = level_rates(acc, plan.levels)
    if plan.depth == 1 or acc.spread is None:
        return np.broadcast_to(base, (n,) + base.shape).copy()
    sp = acc.spread
    if sp.family == "logit_normal":
        p = np.clip(base, 1e-9, 1 - 1e-9)
        z = sp.sigma * rng.standard_normal(n)
        logit = np.log(p) - np.log1p(-p)
        return 1.0 / (1.0 + np.exp(-(logit[None] + z[:, None, None])))
    w = np.asarray(sp.weights if sp.weights else np.ones(len(sp.per_request)), float)
    pick = rng.choice(len(sp.per_request), size=n, p=w / w.sum())
    if picks is not None:
        picks.append(pick)
    return _measured_request_rates(acc, plan.levels)[pick]


def _measured_request_rates(acc: Acceptance, levels: list[int]) -> np.ndarray:
    """(requests, k-1, 3) rates of each measured request of an empirical spread, as the
    analytic model takes them (acceptance.RequestRates): its own marginals, and with a
    trace-based joint the workload's conditional rates shifted as far as its marginal moved."""
    mats = np.asarray(acc.spread.per_request, float)
    R = len(mats)
    rates = RequestRates(AgreementModel(acc), Scenarios(np.full(R, 1.0 / R), matrices=mats), np.arange(R))
    out = np.zeros((R, len(levels) - 1, 3))
    at = lambda layer: np.full(R, layer)  # noqa: E731
    for j in range(len(levels) - 1):
        r = rates.rates(None if j == 0 else at(levels[j - 1]), at(levels[j]), at(levels[j + 1]))
        out[:, j] = np.stack([r.after_accept, r.after_reject, r.marginal], -1)
    return out


# --------------------------------------------------------------------------- cost lookups


def chunk_takes(left: list[int], budget: int) -> list[int]:
    """Chunked prefill: the prompt tokens each prefilling request (FIFO order; `left`: its
    prompt tokens but the last not cached yet) puts in this iteration's prefill forward of
    at most `budget` tokens. A request with none left joins the batch (hispec_exec.serve
    and the simulator take this one rule)."""
    takes = []
    for x in left:
        takes.append(min(x, budget))
        budget -= takes[-1]
    return takes


class StepCost:
    """Lookup tables that cost a decode step and a prefill from the rows it carries."""

    def __init__(self, table: LatencyTable, plan: Plan, num_layers: int, max_batch: int, max_context: int,
                 prompts: np.ndarray | None = None, seed: int | None = None):
        self.table, self.plan = table, plan
        # step-time noise (step_noise.py): decode steps x one draw each, from a stream of its
        # own (the acceptance draws do not move); None without a measured noise or a seed
        self.noise = step_noise.stream_for(table, seed) if seed is not None else None
        lv = [0] + list(plan.levels)
        self.span = np.diff(lv).astype(float)  # layers per range l_{i-1}+1..l_i
        k = plan.depth
        max_rows = 1 + (plan.propose + sum(plan.windows) + k if k > 1 else 0)  # rows one sequence carries in one range
        self.max_rows = max_rows
        tot = np.arange(max_batch * max_rows + 1)
        self.calibrated = table.serving is not None
        # the calibration's forward scale (the grid as the serve loop runs it) on every layer
        # cost, here, so that every engine costing from these tables carries it
        self.scale = table.serving.forward_scale if self.calibrated else 1.0
        # one layer's cost but the table's per-sequence attention increments, by (sequences,
        # total rows): the serving calibration's batched grid when the profile has one (each
        # sequence pays its own bookkeeping and attention), else the table's linear part, the
        # same for any number of sequences (one row). The grid's table grows as max_batch^2 x
        # rows: tabulated up to LINEAR_TABLE_CELLS, beyond computed per call (the same values)
        self._linear_row = self._linear_grid = None
        if not self.calibrated:
            self._linear_row = serving_layer_ms(table, np.minimum(tot, 1), tot)
        elif (max_batch + 1) * len(tot) <= LINEAR_TABLE_CELLS:
            # row by row: one call over the whole grid holds ~8 grid-sized temporaries
            self._linear_grid = self.scale * np.stack([serving_layer_ms(table, n, tot) for n in range(max_batch + 1)])
        self.head = np.where(tot > 0, head_ms(table, np.maximum(tot, 1)), 0.0)
        nb = max_context // CTX_BUCKET + 2
        ctx = np.arange(nb) * CTX_BUCKET
        self.measured = table.attention is not None and bool(table.attention.decode_ms)
        if self.measured:  # kernel for b sequences at mean context: (b, ctx bucket); rows beyond 1 add to context
            b = np.arange(max_batch + 1)[:, None]
            self.att = decode_attention_ms(table, b, ctx[None, :])
        else:  # one sequence's attention for r rows at context: (rows, ctx bucket)
            r = np.arange(max_rows + 1)[:, None]
            self.att = np.where(r > 0, sequence_attention_ms(table, np.maximum(r, 1), ctx[None, :]), 0.0)
        self.floor = table.attention.floor_ms if table.attention is not None else 0.0
        # the executor's own profiles (a serving calibration, per-sequence increments): its
        # attention runs every sequence of a forward against the longest one and, in a pool
        # at least half full, every slot (latency.padded_attention_ms); the pool holds
        # min(max batch, requests) slots, as hispec_exec.serve allocates it
        self.padded = self.calibrated and not self.measured
        self.slots = min(max_batch, len(prompts)) if prompts is not None and len(prompts) else max_batch
        if self.padded:  # latency.pooled_attention_ms: (first gathered, each further, each slot, rows, ctx bucket)
            r = np.arange(max_rows + 1)[:, None]
            self.pooled = np.where(r > 0, pooled_attention_ms(table, np.maximum(r, 1), ctx[None, :]), 0.0) * self.scale
        # prefill forwards run at their own scale (compute-bound tiles, not decode rows);
        # older calibrations: the decode steps' forward_scale
        sv = table.serving
        self.prefill_scale = (sv.prefill_scale or sv.forward_scale) if self.calibrated else 1.0
        self.admit, self.wake = (sv.admit_ms, sv.wake_ms) if self.calibrated else (0.0, 0.0)
        # number of prompts -> the grid ms of every token total they can reach (a row, computed
        # on first use, vectorised: admissions of one or two prompts repeat with new totals)
        self.prefill_linear_at: dict[int, np.ndarray] = {}
        self.prefill_cells = 0
        self.prefill_top = (np.arange(1, len(prompts) + 1) * int(np.max(prompts - 1, initial=0))
                            if prompts is not None and len(prompts) else np.zeros(1, np.int64))  # p prompts padded: [p - 1]
        self.att, self.floor = self.att * self.scale, self.floor * self.scale
        self.per_layer = 0.0 if self.calibrated else table.layer_overhead_ms  # inside the measured grid
        self.fixed = table.overhead_ms
        self.verify = table.verify_overhead_ms
        self.overhead_at = None  # (sequences, checks) -> ms, up to max batch 512 (2 MB; beyond: per call)
        if max_batch <= 512:
            b = np.arange(max_batch + 1)
            self.overhead_at = serving_step_overhead_ms(table, b[:, None], b[None, :])
        self.layers = self.span.sum()
        # prefill: one sequence's attention per prompt length, linear part per total rows (lookups)
        top = int(np.sort(np.maximum(prompts - 1, 0))[-max_batch:].sum()) if prompts is not None and len(prompts) else 1
        plen = np.arange(int(prompts.max()) if prompts is not None and len(prompts) else 1)
        # a calibration's prefill grid holds each prompt's attention among its own tokens: a
        # piece then adds only its attention over its cached part (the table's increment at
        # that context); without one, the causal estimate (prefill_attention_ms) of it all
        self.grid_attention = self.calibrated and sv.prefill_layer_ms is not None
        self.prefill_row = self.prefill_scale * prefill_row_ms(table)  # pieces padded to the longest
        self.prefill_att = (np.zeros(len(plen)) if self.grid_attention else
                            self.prefill_scale * np.where(plen > 0, prefill_attention_ms(table, np.maximum(plen, 1), 0), 0.0))
        tot = np.arange(min(top, 2**21) + 1)
        self.prefill_linear = linear_layer_ms(table, np.maximum(tot, 1))  # read without a calibration only

    def padded_att(self, nseq, rmax, end) -> np.ndarray:
        """Attention of one layer (arrays, elementwise) over `nseq` sequences whose most rows
        are `rmax` and whose longest reaches `end` tokens (cached + new):
        latency.padded_attention_ms at (rmax, end - rmax), read from the lookup tables."""
        cb = np.minimum(np.maximum(end - rmax, 0) // CTX_BUCKET, self.att.shape[1] - 1)
        return layout_attention_ms(nseq, self.slots, *self.pooled[:, rmax, cb])

    def seq_att(self, rows: np.ndarray, ctx: np.ndarray) -> np.ndarray:
        """Attention of steps' layer ranges without a measured kernel: rows (n, ..., k) each
        of n sequences carries through each range, ctx (n, ...) its cached tokens (the
        middle axes: several steps at once); padded (the executor's profiles) or each
        sequence's own increment, summed. Returns (..., k)."""
        if self.padded:
            on = rows > 0
            rmax = rows.max(0)
            return self.padded_att(on.sum(0), rmax, np.where(on, ctx[..., None] + rows, 0).max(0))
        cb = np.minimum(ctx // CTX_BUCKET, self.att.shape[1] - 1)
        att = self.att[rows, cb[..., None]].sum(0)
        return np.where(rows.sum(0) > 0, np.maximum(att, self.floor), 0.0) if self.floor else att

    def linear(self, nseq, tot) -> np.ndarray:
        """One layer's cost but attention (forward scale applied) for `nseq` sequences carrying
        `tot` rows in total (integer arrays, elementwise)."""
        if self._linear_row is not None:
            return self._linear_row[tot]
        if self._linear_grid is not None:
            return self._linear_grid[nseq, tot]
        return self.scale * serving_layer_ms(self.table, nseq, tot)

    def jitter(self, ms: float) -> float:
        """A decode step's time x the next noise draw (unchanged without noise)."""
        return ms if self.noise is None else ms * float(self.noise.scale(self.noise.take(1), ms)[0])

    def overhead(self, nseq, nchecks) -> np.ndarray:
        """Host time of steps beyond forward and head (latency.serving_step_overhead_ms, read
        from its table over 0..max_batch sequences and checks: the same elementwise values)."""
        if self.overhead_at is None:
            return serving_step_overhead_ms(self.table, nseq, nchecks)
        return self.overhead_at[nseq, nchecks]

    def step(self, rows: np.ndarray, ctx: np.ndarray, head_rows: np.ndarray, checks: int) -> float:
        """rows (n, k): rows each running sequence carries through each layer range;
        ctx (n,): its cached tokens; head_rows (k,): rows exiting at each level's exit;
        checks: sequences whose operation is a check."""
        tot = rows.sum(0)
        nseq_r = (rows > 0).sum(0)
        if self.measured:
            on = rows > 0
            nseq = on.sum(0)
            mean_ctx = (on * (ctx[:, None] + rows - 1)).sum(0) / np.maximum(nseq, 1)
            att = self.att[nseq, np.minimum(mean_ctx.astype(np.int64) // CTX_BUCKET, self.att.shape[1] - 1)]
        else:
            att = self.seq_att(rows, ctx)
        per = self.linear(nseq_r, tot) + att + np.where(tot > 0, self.per_layer, 0.0)
        # ONE exit-head call over every sequence's head rows (heads at different exits share norm + LM head)
        return float(self.overhead(len(rows), checks) + (self.span * per).sum() + self.head[head_rows.sum()])

    def drafts(self, ctx: np.ndarray, g: int, m: int) -> float:
        """g consecutive draft steps of m sequences (cached tokens ctx, growing by one per
        step): one row each through range 1, head at exit 1."""
        c = ctx[None, :] + np.arange(g)[:, None]  # (g, m)
        nb = self.att.shape[1] - 1
        if self.measured:
            att = self.att[m, np.minimum(c.mean(1).astype(np.int64) // CTX_BUCKET, nb)]
        elif self.padded:
            att = self.padded_att(m, 1, c.max(1) + 1)
        else:
            att = self.att[1][np.minimum(c // CTX_BUCKET, nb)].sum(1)
            if self.floor:
                att = np.maximum(att, self.floor)
        per = self.linear(m, m) + att + self.per_layer
        return float(g * (self.overhead(m, 0) + self.head[m]) + self.span[0] * per.sum())

    def prefill(self, prompt_tokens: np.ndarray) -> float:
        """ONE forward prefilling several prompts: their P - 1 tokens concatenated through
        all layers (linear at the total, attention per prompt), no head."""
        return self.prefill_pieces(np.maximum(np.asarray(prompt_tokens) - 1, 0))

    def prefill_pieces(self, n: np.ndarray, cached: np.ndarray | None = None) -> float:
        """ONE prefill forward of pieces of prompts: n[i] new tokens after cached[i] ones
        (None: none) of each, concatenated through all layers, no head. With a calibration's
        prefill grid (each piece's attention among its own tokens), as the executor computes
        it (hispec_exec.model._Rows): every piece runs the longest piece's query tiles against
        the key blocks of the forward's furthest reach (prompts of 100 and 400 tokens took
        0.84 x two of 400, 1.8-1.9 x two of 250) -- the grid at p pieces of the longest, less
        the padding rows' linear part (latency.prefill_row_ms), plus p x the table's
        increment of the longest piece over the reach before it. Otherwise: the linear part
        at the total rows and each piece's own attention."""
        total = int(n.sum())
        if total == 0:
            return 0.0
        L = self.layers
        after_cached = cached is not None and bool(cached.any())
        if self.grid_attention:  # every piece padded to the longest (see prefill_pieces' docstring)
            on = n > 0
            p, longest = int(on.sum()), int(n.max())
            lin = self._prefill_grid_ms(p, p * longest) - self.prefill_row * (p * longest - total)
            att = 0.0  # among each piece's own tokens: in the grid
            if after_cached:  # and over the forward's furthest reach before the longest piece
                reach = int((cached + n)[on].max()) - longest
                att = self.prefill_scale * p * float(sequence_attention_ms(self.table, longest, reach))
        else:
            if self.calibrated:  # the batched grid, its rows beyond the grid by the table's linear part
                lin = self._prefill_grid_ms(int((n > 0).sum()), total)
            else:
                lin = self.prefill_linear[total] if total < len(self.prefill_linear) else float(linear_layer_ms(self.table, total))
            att = ((self.prefill_scale * prefill_attention_ms(self.table, n, cached)).sum() if after_cached
                   else self.prefill_att[n].sum())
        per = lin + att
        return float(L * (per + self.per_layer) + self.fixed)

    def admission(self, prompt_tokens: np.ndarray, woke: bool) -> tuple[float, bool]:
        """(ms, whether a prefill forward ran) of admitting these prompts: the prefill, the
        admitting iteration's admit_ms, and wake_ms when the engine idled before it."""
        pf = self.prefill(prompt_tokens)
        return self.iteration(pf, True, woke), pf > 0

    def iteration(self, prefill_ms: float, admitted: bool, woke: bool) -> float:
        """An iteration's time beside its decode step: its prefill forward, admit_ms when it
        admitted a request, and wake_ms when the engine idled before it."""
        return prefill_ms + (self.admit + (self.wake if woke else 0.0) if admitted else 0.0)

    def _prefill_grid_ms(self, prompts: int, total: int) -> float:
        """prefill_scale x serving_layer_ms(prompts, total, prefill=True), read from the row of `prompts` (the same
        elementwise arithmetic as one scalar call, so the same value)."""
        row = self.prefill_linear_at.get(prompts)
        if row is None and self.prefill_cells < LINEAR_TABLE_CELLS:
            top = int(self.prefill_top[min(prompts, len(self.prefill_top)) - 1])
            # a row of at most 2^21 totals (prompts of thousands of tokens: beyond, one call each);
            # rows until they hold LINEAR_TABLE_CELLS (many admission sizes: one call each beyond)
            row = self.prefill_scale * serving_layer_ms(self.table, prompts, np.arange(min(top, 1 << 21) + 1), prefill=True)
            self.prefill_linear_at[prompts] = row
            self.prefill_cells += len(row)
        if row is not None and total < len(row):
            return float(row[total])
        return self.prefill_scale * float(serving_layer_ms(self.table, prompts, total, prefill=True))  # prompts not among the given ones


# --------------------------------------------------------------------------- the engine


@dataclass
class ServeRun:
    """One simulated run: per request, arrival (s), admission and emission times (ms from
    the first arrival), and every emission event (time, tokens)."""

    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    admit_ms: np.ndarray
    first_ms: np.ndarray
    last_ms: np.ndarray
    event_req: np.ndarray  # emission events: request, end time (ms), tokens committed
    event_ms: np.ndarray
    event_tokens: np.ndarray
    steps: int
    prefills: int

    def tbt_gaps(self) -> list[np.ndarray]:
        """Per request, every gap between consecutive tokens (ms)."""
        order = np.lexsort((self.event_ms, self.event_req))
        req, t, n = self.event_req[order], self.event_ms[order], self.event_tokens[order]
        bounds = np.searchsorted(req, np.arange(len(self.arrival_s) + 1))
        out = []
        for i in range(len(self.arrival_s)):
            tt, nn = t[bounds[i]:bounds[i + 1]], n[bounds[i]:bounds[i + 1]]
            gaps = np.zeros(int(nn.sum()) - 1)
            if len(tt) > 1:  # the first token of each later event waits since the previous event; the rest come at once
                gaps[np.cumsum(nn)[:-1] - 1] = np.diff(tt)
            out.append(gaps)
        return out

    def metrics(self) -> list[RequestMetrics]:
        arr_ms = self.arrival_s * 1e3
        return [RequestMetrics(id=i, arrival_s=float(self.arrival_s[i]), prompt_tokens=int(self.prompt_tokens[i]),
                               output_tokens=int(self.output_tokens[i]), queue_ms=float(self.admit_ms[i] - arr_ms[i]),
                               ttft_ms=float(self.first_ms[i] - arr_ms[i]), e2e_ms=float(self.last_ms[i] - arr_ms[i]),
                               tbt_ms=g.tolist())
                for i, g in enumerate(self.tbt_gaps())]


def simulate(table: LatencyTable, num_layers: int, acc: Acceptance, plan: Plan, requests: list[Request],
             limits: ServeLimits, seed: int = 0) -> ServeRun:
    """Serve `requests` (prompt lengths known: `prompt_tokens`) with `plan` on one replica."""
    arrival = np.array([r.arrival_s for r in requests], float)
    prompt = np.array([r.prompt_len if r.prompt_len is not None else len(r.prompt.encode("utf-8")) for r in requests],
                      np.int64)
    out = np.array([r.max_new_tokens for r in requests], np.int64)
    return simulate_arrays(table, num_layers, acc, plan, arrival, prompt, out, limits, seed)


def simulate_arrays(table: LatencyTable, num_layers: int, acc: Acceptance, plan: Plan, arrival_s: np.ndarray,
                    prompt: np.ndarray, max_new: np.ndarray, limits: ServeLimits, seed: int = 0) -> ServeRun:
    if np.any(np.diff(arrival_s) < 0) or np.any(arrival_s < 0):
        raise ValueError("arrival_s: arrival times must be >= 0 and must not decrease")
    plan.check_depth(num_layers)
    check_limits(plan, limits, prompt, max_new)
    check_size(acc, plan, max_new)
    if plan.adaptive:  # confidence thresholds: one confidence class per position (serving_adaptive)
        from .serving_adaptive import simulate_adaptive

        return simulate_adaptive(table, num_layers, acc, plan, arrival_s, prompt, max_new, limits, seed)
    rng = np.random.default_rng(seed)
    n = len(arrival_s)
    k, g = plan.depth, plan.propose
    B = limits.max_batch
    rates = request_rates(acc, plan, n, rng)  # (n, k-1, 3)
    need = reservation(plan, prompt, max_new)
    kv_cap = limits.kv_tokens if limits.kv_tokens is not None else np.inf
    max_ctx = int((prompt + max_new).max()) + plan.max_overshoot + CTX_BUCKET
    cost = StepCost(table, plan, num_layers, B, max_ctx, prompt, seed=seed)
    sync = plan.batching == "synchronous" and k > 1
    if not sync or k == 2:  # single-level synchronous: the batch-1 schedules, in phase (join at round ends)
        return _run_scheduled(cost, plan, draw_schedules(plan, rates, max_new, rng), arrival_s, prompt, max_new, need,
                              kv_cap, B, align=g + 1 if sync else 1, chunk=limits.prefill_chunk)
    return _run_synchronous(cost, plan, rates, arrival_s, prompt, max_new, need, kv_cap, B, rng)


def _run_synchronous(cost: StepCost, plan: Plan, rates: np.ndarray, arrival_s, prompt, max_new, need, kv_cap, B,
                     rng: np.random.Generator) -> ServeRun:
    """The synchronous policy for plans of depth >= 3 (hispec_exec.generate.Batch): rounds
    of g draft steps, the level-2 check step, then a level-(j+1) check step of every
    sequence while ANY running sequence's buffer j holds >= its window; new sequences
    join at round ends only. A round's shape depends on every running sequence's buffers,
    so rounds cannot be drawn per request up front as `_run_scheduled` does; the engine
    runs step by step, cheaply:

    - the running sequences' state is compact (one row per sequence, in slot order,
      rebuilt only when a sequence joins or leaves) and every step is ONE operation for
      the whole batch: its acceptance draws and buffer update are a few array operations;
      buffers hold each token's pass probability at the level that checks it (-1 beyond
      the buffer's end: the first failure is one argmax);
    - steps are costed later, together (`_DeferredClock`): the clock is only needed when an
      admission depends on it (a free slot and a next request that arrived after the last
      time known) or when the batch empties; emission and admission times are filled in then.

    The draws and their order are those of the slot-by-slot engine this replaced (one
    (sequences x width) uniform array per check step, rows in slot order, new sequences in
    the lowest free slots), and every cost is the StepCost.step / StepCost.drafts figure:
    tests/serving/test_synchronous_engine.py pins the two engines equal, value for value."""
    n, k, g, windows = len(arrival_s), plan.depth, plan.propose, list(plan.windows)
    width = buffer_width(plan)
    cols = np.arange(width)[None, :]
    arr_ms = arrival_s * 1e3
    admit_ms = np.full(n, np.nan)
    cap_ev = int(max_new.sum()) + 1  # at most one emission event per token
    ev_req = np.zeros(cap_ev, np.int64)
    ev_ms = np.zeros(cap_ev)
    ev_tok = np.zeros(cap_ev, np.int64)
    ev_at = np.zeros(cap_ev, np.int64)  # the clock entry after which the event happens
    admit_at = np.zeros(n, np.int64)
    n_ev = 0
    clock = _DeferredClock(cost, k, g, float(arr_ms[0]) if n else 0.0)
    uniforms = _UniformStream(rng)
    # the running sequences, one row each in slot order: slot, request, tokens left, cached
    # committed tokens, buffer lengths (levels 1..k-1), per buffered token its pass
    # probability at the next level, and the acceptance rates of each check
    slot = np.zeros(0, np.int64)
    req = np.zeros(0, np.int64)
    left = np.zeros(0, np.int64)
    committed = np.zeros(0, np.int64)
    blen = np.zeros((0, k - 1), np.int64)
    bprob = np.zeros((0, k - 1, width))
    r_acc = np.zeros((0, k - 1))
    r_cor = np.zeros((0, k - 1))
    r_bon = np.zeros((0, k - 1))
    committed_sum = 0  # cached committed tokens of the running sequences
    buffered = [0] * (k - 1)  # tokens in each buffer, summed over the running sequences
    reserved = 0.0
    nxt = 0  # first request not admitted yet (FIFO)
    ev_done = adm_done = 0  # events and admissions whose times are filled in
    steps = prefills = 0

    def settle():  # cost the pending steps; fill in the times that waited for them
        nonlocal ev_done, adm_done
        first_entry, times = clock.flush()
        ev_ms[ev_done:n_ev] = times[ev_at[ev_done:n_ev] - first_entry]
        admit_ms[adm_done:nxt] = times[admit_at[adm_done:nxt] - first_entry]
        ev_done, adm_done = n_ev, nxt

    while nxt < n or len(req):
        # a round boundary: admission (FIFO, head of line), then ONE prefill forward
        woke = False
        if not len(req):
            settle()
            if arr_ms[nxt] > clock.t:
                clock.t = float(arr_ms[nxt])  # idle: sleep until the next arrival
                woke = True
        first = nxt
        while nxt < n and len(req) + nxt - first < B and reserved + need[nxt] <= kv_cap:
            if arr_ms[nxt] > clock.t:  # the last time known is a lower bound (steps cost >= 0)
                if clock.pending:
                    settle()
                if arr_ms[nxt] > clock.t:
                    break
            admit_at[nxt] = clock.entries
            reserved += need[nxt]
            nxt += 1
        if nxt > first:
            new = np.arange(first, nxt)
            used = np.zeros(B, bool)
            used[slot] = True
            free = np.flatnonzero(~used)[:len(new)]  # the lowest free slots
            order = np.argsort(np.concatenate([slot, free]), kind="stable")
            fresh = np.full((len(new), k - 1, width), -1.0)
            fresh[:, 0, :g] = rates[new, 0, BON][:, None]  # buffer 1 holds g drafts: no lower level has seen them
            slot = np.concatenate([slot, free])[order]
            req = np.concatenate([req, new])[order]
            left = np.concatenate([left, max_new[new]])[order]
            committed = np.concatenate([committed, prompt[new] - 1])[order]
            blen = np.concatenate([blen, np.zeros((len(new), k - 1), np.int64)])[order]
            bprob = np.concatenate([bprob, fresh])[order]
            r_acc, r_cor, r_bon = rates[req, :, ACC], rates[req, :, COR], rates[req, :, BON]
            committed_sum = int(committed.sum())
            ms, prefilled = cost.admission(prompt[new], woke)
            if ms > 0:
                clock.fixed(ms)
            prefills += prefilled
        m = len(req)
        # the round's g draft steps at once: every sequence one row through 1..l_1
        clock.drafts(m, committed_sum + sum(buffered), None if cost.measured else committed + blen.sum(1))
        steps += g
        blen[:, 0] = g
        buffered[0] = g * m
        o = 1  # the level-(o+1) check of buffer o
        while True:
            j = o - 1  # 0-based buffer checked
            clock.check(m, o, committed_sum + sum(buffered), buffered[j],
                        None if cost.measured else (committed + blen.sum(1), blen[:, j]))
            steps += 1
            a = (uniforms.take(m * width).reshape(m, width) >= bprob[:, j]).argmax(1)  # accepted prefix
            if o == k - 1:  # the top: commit the accepted prefix + the full model's token
                break
            # pass up: the accepted tokens, then the check's own token (a correction, or the bonus)
            start = blen[:, o]
            end = (start + a)[:, None]
            last = np.where(a == blen[:, j], r_bon[:, o], r_cor[:, o])[:, None]
            up = np.where(cols < end, r_acc[:, o, None], np.where(cols == end, last, -1.0))
            bprob[:, o] = np.where(cols < start[:, None], bprob[:, o], up)
            blen[:, o] = end[:, 0] + 1
            blen[:, j] = 0
            buffered[o] += int(a.sum()) + m
            buffered[j] = 0
            if blen[:, o].max() < windows[o - 1]:  # no window reached: the round ends
                break
            o += 1
        if o < k - 1:
            continue
        blen[:] = 0
        buffered = [0] * (k - 1)
        take = np.minimum(a + 1, left)
        left -= take
        committed += take
        committed_sum += int(take.sum())
        ev_req[n_ev:n_ev + m] = req
        ev_tok[n_ev:n_ev + m] = take
        ev_at[n_ev:n_ev + m] = clock.entries
        n_ev += m
        fin = left == 0
        if fin.any():
            reserved -= float(need[req[fin]].sum())
            stay = ~fin
            slot, req, left, committed, blen, bprob = slot[stay], req[stay], left[stay], committed[stay], blen[stay], bprob[stay]
            r_acc, r_cor, r_bon = r_acc[stay], r_cor[stay], r_bon[stay]
            committed_sum = int(committed.sum())
    settle()
    ev_req, ev_ms, ev_tok = ev_req[:n_ev], ev_ms[:n_ev], ev_tok[:n_ev]
    first_ms, last_ms = emission_times(n, ev_req, ev_ms)
    return ServeRun(arrival_s, prompt, max_new, admit_ms, first_ms, last_ms, ev_req, ev_ms, ev_tok, steps, prefills)


def emission_times(n: int, ev_req: np.ndarray, ev_ms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each of n requests' first and last token time, from emission events in time order
    (every request must have emitted)."""
    first_ms, last_ms = np.full(n, np.nan), np.full(n, np.nan)
    _, at = np.unique(ev_req, return_index=True)
    first_ms[ev_req[at]] = ev_ms[at]
    _, at = np.unique(ev_req[::-1], return_index=True)
    last_ms[ev_req[::-1][at]] = ev_ms[::-1][at]
    if n and np.isnan(first_ms).any():
        raise AssertionError("serving: a request never emitted a token")
    return first_ms, last_ms


class _UniformStream:
    """rng.random's uniforms drawn in large blocks and handed out in order: the same
    values, in the same order, as drawing each (m x width) array when it is needed."""

    BLOCK = 1 << 16

    def __init__(self, rng: np.random.Generator):
        self.rng, self.buf, self.pos = rng, np.zeros(0), 0

    def take(self, count: int) -> np.ndarray:
        if self.pos + count > len(self.buf):
            self.buf = np.concatenate([self.buf[self.pos:], self.rng.random(max(self.BLOCK, count))])
            self.pos = 0
        self.pos += count
        return self.buf[self.pos - count:self.pos]


class EntryClock:
    """A synchronous engine's clock whose entries -- prefill forwards (fixed ms) and decode
    steps -- are recorded and costed together in `flush` (subclasses), then added to the
    clock one by one (np.cumsum), as a step-by-step engine adds each to its clock."""

    def __init__(self, cost: StepCost, k: int, t: float):
        self.cost, self.k = cost, k
        self.t = t  # the time after the last flushed entry
        self.entries = 0  # entries recorded so far (flushed or not)
        self._reset()

    def _reset(self):
        self.base = self.entries
        self.fx_at, self.fx_ms = [], []

    @property
    def pending(self) -> int:
        return self.entries - self.base

    def fixed(self, ms: float) -> None:
        self.fx_at.append(self.entries)
        self.fx_ms.append(ms)
        self.entries += 1

    def _advance(self, costs: np.ndarray) -> tuple[int, np.ndarray]:
        """Add the pending entries' costs: (the first one's number, the time before each and
        after the last -- pending + 1 values, the first the time known before)."""
        times = np.cumsum(np.concatenate([[self.t], costs]))  # sequential, as the clock adding each step
        self.t = float(times[-1])
        first = self.base
        self._reset()
        return first, times


class _DeferredClock(EntryClock):
    """The synchronous engine's clock: steps are recorded (sequences, operation, summed
    cached tokens, buffered tokens) and costed together in `flush`, as arrays. The costs
    are StepCost.step's and StepCost.drafts' figures computed for many steps at once, with
    the same operations in the same order (so the same values; the equivalence test
    checks it): under a synchronous step every sequence performs the same operation, so
    with the measured decode kernel a step's rows and mean contexts follow from sums.
    Without it (per-sequence attention increments) each step's attention is summed when
    it is recorded."""

    def __init__(self, cost: StepCost, k: int, g: int, t: float):
        self.g = g
        super().__init__(cost, k, t)

    def _reset(self):
        super()._reset()
        self.dr_at, self.dr_m, self.dr_s, self.dr_att = [], [], [], []
        self.ck_at, self.ck_m, self.ck_o, self.ck_s, self.ck_nb, self.ck_att = [], [], [], [], [], []

    def drafts(self, m: int, ctx_sum: int, ctx: np.ndarray | None) -> None:
        """g draft steps of m sequences whose cached tokens sum to ctx_sum (ctx: each one's,
        when attention is per sequence)."""
        c = self.cost
        self.dr_at.append(self.entries)
        self.dr_m.append(m)
        self.dr_s.append(ctx_sum)
        if ctx is not None:  # StepCost.drafts' per-sequence attention
            cc = ctx[None, :] + np.arange(self.g)[:, None]
            if c.padded:
                self.dr_att.append(c.padded_att(m, 1, cc.max(1) + 1))
            else:
                att = c.att[1][np.minimum(cc // CTX_BUCKET, c.att.shape[1] - 1)].sum(1)
                self.dr_att.append(np.maximum(att, c.floor) if c.floor else att)
        self.entries += 1

    def check(self, m: int, o: int, ctx_sum: int, nb_sum: int, per_seq: tuple | None) -> None:
        """A level-(o+1) check step of m sequences (their cached tokens summing to ctx_sum,
        their buffers o to nb_sum); per_seq: (cached tokens, buffer o) of each sequence,
        when attention is per sequence."""
        c = self.cost
        self.ck_at.append(self.entries)
        self.ck_m.append(m)
        self.ck_o.append(o)
        self.ck_s.append(ctx_sum)
        self.ck_nb.append(nb_sum)
        if per_seq is not None:  # StepCost.step's per-sequence attention
            ctx, nb = per_seq
            rows = np.repeat((np.arange(self.k) < o).astype(np.int64)[None, :], m, 0)
            rows[:, o] = nb + 1
            self.ck_att.append(c.seq_att(rows, ctx))
        self.entries += 1

    def flush(self) -> tuple[int, np.ndarray]:
        """Cost the pending entries; returns the first one's number and the time before
        each and after the last (pending + 1 values, the first the time known before)."""
        c, k, g = self.cost, self.k, self.g
        costs = np.zeros(self.pending)
        nb_last = c.att.shape[1] - 1
        if c.noise is not None:  # one normal score per decode step, in time order (a drafts entry is g steps)
            nsteps = np.zeros(self.pending, np.int64)
            nsteps[np.array(self.dr_at, np.int64) - self.base] = g
            nsteps[np.array(self.ck_at, np.int64) - self.base] = 1
            first_draw = np.cumsum(nsteps) - nsteps
            draws = c.noise.take(int(nsteps.sum()))
        if self.fx_at:
            costs[np.array(self.fx_at) - self.base] = self.fx_ms
        if self.dr_at:  # StepCost.drafts, many rounds at once
            m = np.array(self.dr_m)
            if c.measured:  # the kernel at the drafts' mean context, one more token per step
                mean = (np.array(self.dr_s)[:, None] + np.arange(g)[None, :] * m[:, None]) / m[:, None]
                att = c.att[m[:, None], np.minimum(mean.astype(np.int64) // CTX_BUCKET, nb_last)]
            else:
                att = np.array(self.dr_att)
            per = c.linear(m, m)[:, None] + att + c.per_layer
            at = np.array(self.dr_at) - self.base
            if c.noise is None:
                costs[at] = g * (c.overhead(m, 0) + c.head[m]) + c.span[0] * per.sum(1)
            else:  # each of the g draft steps its own draw
                each = (c.overhead(m, 0) + c.head[m])[:, None] + c.span[0] * per
                z = draws[first_draw[at][:, None] + np.arange(g)[None, :]]
                costs[at] = (each * c.noise.scale(z, each)).sum(1)
        if self.ck_at:  # StepCost.step, many steps at once: one row per sequence below range o+1, nb + 1 in it
            m, o, s, nb = (np.array(x) for x in (self.ck_m, self.ck_o, self.ck_s, self.ck_nb))
            lv = np.arange(k)[None, :]
            below, at = lv < o[:, None], lv == o[:, None]
            tot = np.where(below, m[:, None], np.where(at, (nb + m)[:, None], 0))
            nseq = np.where(lv <= o[:, None], m[:, None], 0)
            if c.measured:
                ctx = np.where(below, s[:, None], np.where(at, (s + nb)[:, None], 0))
                mean = ctx / np.maximum(nseq, 1)
                att = c.att[nseq, np.minimum(mean.astype(np.int64) // CTX_BUCKET, nb_last)]
            else:
                att = np.array(self.ck_att)
            per = c.linear(nseq, tot) + att + np.where(tot > 0, c.per_layer, 0.0)
            at = np.array(self.ck_at) - self.base
            costs[at] = c.overhead(m, m) + (c.span[None, :] * per).sum(1) + c.head[nb + m]
            if c.noise is not None:
                costs[at] *= c.noise.scale(draws[first_draw[at]], costs[at])
        return self._advance(costs)


@dataclass
class Schedules:
    """Ragged policy (and autoregressive): every request's operations, drawn up front (a
    sequence's schedule is its batch-1 schedule whatever shares its batch), stored flat:
    request r's ops are [start[r], start[r] + count[r]). code = op * (width + 1) +
    buffered tokens (op 0 = draft, j = level-(j+1) check of buffer j); commit = tokens a
    full check commits (0 otherwise); tentative = buffered tokens before the op (cached
    positions beyond the committed ones)."""

    code: np.ndarray
    commit: np.ndarray
    tentative: np.ndarray
    start: np.ndarray
    count: np.ndarray
    width: int


def draw_schedules(plan: Plan, rates: np.ndarray, max_new: np.ndarray, rng: np.random.Generator) -> Schedules:
    """Run every request's batch-1 schedule (vectorised over requests) until it has
    committed max_new_tokens."""
    n, k, g, windows = len(max_new), plan.depth, plan.propose, list(plan.windows)
    if k == 1:  # one op per token, each committing it
        count = np.asarray(max_new, np.int64)
        start = np.concatenate([[0], np.cumsum(count)[:-1]])
        tot = int(count.sum())
        return Schedules(np.zeros(tot, np.int32), np.ones(tot, np.int32), np.zeros(tot, np.int32), start, count, 0)
    width = buffer_width(plan)
    cols = np.arange(width)
    blen = np.zeros((n, k - 1), np.int64)
    btype = np.full((n, k - 1, width), BON, np.int8)
    op = np.zeros(n, np.int64)
    done = np.zeros(n, np.int64)
    codes, commits, tents, who = [], [], [], []
    idx = np.arange(n)
    while len(idx):
        o = op[idx]
        nbuf = np.where(o > 0, blen[idx, np.maximum(o - 1, 0)], 0)
        codes.append((o * (width + 1) + nbuf).astype(np.int32))
        tents.append(blen[idx].sum(1).astype(np.int32))
        who.append(idx)
        commit, committing = _advance(idx, o, nbuf, blen, btype, rates, rng, cols, k, g, windows, op)
        c = np.zeros(n, np.int32)
        c[committing] = commit
        commits.append(c[idx])
        done[committing] += commit
        idx = idx[done[idx] < max_new[idx]]
    return pack_schedules(n, who, codes, commits, tents, width)


def pack_schedules(n: int, who: list, codes: list, commits: list, tents: list, width: int) -> Schedules:
    """Schedules from per-step arrays: at step t, requests who[t] ran codes[t], committed
    commits[t], held tents[t] tentative tokens; each request's ops laid out contiguously."""
    count = np.zeros(n, np.int64)
    for w_ in who:
        count[w_] += 1
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    tot = int(count.sum())
    code, com, ten = np.zeros(tot, np.int32), np.zeros(tot, np.int32), np.zeros(tot, np.int32)
    for t_, (w_, c_, m_, e_) in enumerate(zip(who, codes, commits, tents)):  # request w_'s op number t_
        code[start[w_] + t_] = c_
        com[start[w_] + t_] = m_
        ten[start[w_] + t_] = e_
    return Schedules(code, com, ten, start, count, width)


def _first_positive(x: np.ndarray, start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Flat index of the first positive entry of each segment [start, start + count)."""
    idx = np.flatnonzero(x > 0)
    return idx[np.searchsorted(idx, start)]


MACRO = 256  # steps costed at once between events (an arrival that can be admitted, a request leaving)


def _run_scheduled(cost: StepCost, plan: Plan, sch: Schedules, arrival_s, prompt, max_new, need, kv_cap, B,
                   align: int = 1, chunk: int | None = None) -> ServeRun:
    """The event loop when every sequence's operations are known in advance (ragged,
    autoregressive; and single-level synchronous, whose rounds of g drafts + one check are
    each sequence's batch-1 schedule: `align` = g + 1 keeps the batch in phase by admitting
    only at round ends). Between two events the batch does not change, so the next steps are
    costed together: their rows per layer range, attention and heads as (steps x slots)
    arrays; the chunk is cut at the step during which the next admissible request arrives
    (it is admitted when that step ends) or at the first request to finish. `chunk`:
    chunked prefill of at most that many prompt tokens per iteration (one step per
    iteration while a prompt is being prefilled)."""
    n, k = len(arrival_s), plan.depth
    W = sch.width + 1
    lv_idx = np.arange(k)
    codes = np.arange(k * W)
    o_c = codes // W
    ROWS = (lv_idx[None, :] < o_c[:, None]).astype(np.int64)
    ROWS[codes, o_c] = np.where(o_c > 0, codes % W + 1, 1)
    HEAD = np.zeros_like(ROWS)
    HEAD[codes, o_c] = ROWS[codes, o_c]
    CHECK = o_c > 0
    # per op (flat): rows per layer range, rows at each exit, cached tokens, attention, tokens emitted
    owner = np.repeat(np.arange(n), sch.count)
    before = np.cumsum(sch.commit) - sch.commit - np.repeat(np.cumsum(sch.commit)[sch.start] - sch.commit[sch.start],
                                                            sch.count)  # committed before the op, within its request
    op_rows = ROWS[sch.code]
    op_head = HEAD[sch.code].sum(1)  # rows at the op's exit
    op_check = CHECK[sch.code]
    op_ctx = prompt[owner] - 1 + before + sch.tentative
    nb_last = cost.att.shape[1] - 1
    if not cost.measured and not cost.padded:
        op_att = cost.att[op_rows, np.minimum(op_ctx // CTX_BUCKET, nb_last)[:, None]]
    cap_new = max_new[owner]
    op_take = np.minimum(before + sch.commit, cap_new) - np.minimum(before, cap_new)
    first_op = _first_positive(op_take, sch.start, sch.count)
    end_op = sch.start + sch.count
    arr_ms = arrival_s * 1e3
    admit_ms = np.full(n, np.nan)
    first_ms = np.full(n, np.nan)
    last_ms = np.full(n, np.nan)
    cap_ev = int(max_new.sum()) + 1
    ev_req = np.zeros(cap_ev, np.int64)
    ev_ms = np.zeros(cap_ev)
    ev_tok = np.zeros(cap_ev, np.int64)
    n_ev = 0
    running = np.zeros(0, np.int64)  # requests decoding, in admission order
    fp = sch.start.copy()  # each request's next op (flat index)
    reserved = 0.0
    nxt = 0
    t = float(arr_ms[0]) if n else 0.0
    steps = prefills = 0
    span = cost.span
    last_step = 0.0
    steps_ar = np.arange(MACRO)
    cached = np.zeros(n, np.int64)  # chunked prefill: prompt tokens each request has cached
    prefilling: list[int] = []  # chunked prefill: admitted requests not in the batch yet, FIFO
    while nxt < n or len(running) or prefilling:
        # admission (FIFO, head of line), then ONE prefill forward: of everything admitted
        # (separate), or of the next chunk of the admitted prompts (chunked)
        woke = not len(running) and not prefilling and nxt < n and arr_ms[nxt] > t
        if woke:
            t = float(arr_ms[nxt])
        new = []
        phase = int((fp[running[0]] - sch.start[running[0]]) % align) if len(running) and align > 1 else 0
        while (phase == 0 and nxt < n and arr_ms[nxt] <= t and len(running) + len(prefilling) + len(new) < B
               and reserved + need[nxt] <= kv_cap):
            new.append(nxt)
            admit_ms[nxt] = t
            reserved += need[nxt]
            nxt += 1
        if chunk is not None:
            prefilling += new
            if prefilling:
                ids = np.array(prefilling, np.int64)
                left = np.maximum(prompt[ids] - 1, 0) - cached[ids]
                take = np.array(chunk_takes(left.tolist(), chunk), np.int64)
                pf = cost.prefill_pieces(take, cached[ids])
                t += cost.iteration(pf, bool(new), woke)
                prefills += pf > 0
                cached[ids] += take
                joined = take == left
                running = np.concatenate([running, ids[joined]])
                prefilling = ids[~joined].tolist()
        elif new:
            new = np.array(new, np.int64)
            running = np.concatenate([running, new])
            ms, prefilled = cost.admission(prompt[new], woke)
            t += ms
            prefills += prefilled
        m = len(running)
        if not m:  # chunked: nothing decodes until a prompt is cached
            continue
        base = fp[running]
        s = int(min((end_op[running] - base).min(), MACRO)) if not prefilling else 1  # a chunk per step
        if nxt < n and m < B and last_step > 0:  # cost only about as many steps as fit before the next arrival
            s = max(1, min(s, int((arr_ms[nxt] - t) / last_step * 1.25) + 2))
        pos = base[:, None] + steps_ar[None, :s]  # (m, s)
        rows = op_rows[pos]  # (m, s, k)
        tot = rows.sum(0)  # (s, k)
        if cost.measured:
            on = rows > 0
            nseq = on.sum(0)
            mc = (on * (op_ctx[pos][:, :, None] + rows - 1)).sum(0) // np.maximum(nseq, 1)
            att = cost.att[nseq, np.minimum(mc // CTX_BUCKET, nb_last)]
        elif cost.padded:  # every sequence against the longest, per step and range
            att = cost.seq_att(rows, op_ctx[pos])
        else:  # each op's own increment, looked up once for the whole run
            att = op_att[pos].sum(0)
            if cost.floor:
                att = np.where(tot > 0, np.maximum(att, cost.floor), 0.0)
        nseq_r = (rows > 0).sum(0)  # (s, k)
        per = cost.linear(nseq_r, tot) + att + np.where(tot > 0, cost.per_layer, 0.0)
        heads = cost.head[op_head[pos].sum(0)]  # (s,): one head call over all head rows of the step
        step_ms = cost.overhead(m, op_check[pos].sum(0)) + (per * span[None, :]).sum(1) + heads
        if cost.noise is not None:  # step i of the run takes the noise's draw i, however the run is chunked
            step_ms = step_ms * cost.noise.scale(cost.noise.peek(s), step_ms)
        ends = t + np.cumsum(step_ms)
        # cut at the step during which the next admissible request arrives (admitted when it ends)
        if nxt < n and m < B and reserved + need[nxt] <= kv_cap:
            cut = int(np.searchsorted(ends, arr_ms[nxt])) + 1
            if align > 1:  # synchronous: the arrival waits for the end of the round
                cut = -(-(phase + cut) // align) * align - phase
            s = min(s, cut)
        steps += s
        if cost.noise is not None:
            cost.noise.advance(s)
        last_step = float(step_ms[s - 1])
        t = float(ends[s - 1])
        # emissions: every (request, step) that emits tokens
        take = op_take[pos[:, :s]]
        ri, si = np.nonzero(take)
        e = len(ri)
        ev_req[n_ev:n_ev + e] = running[ri]
        ev_ms[n_ev:n_ev + e] = ends[si]
        ev_tok[n_ev:n_ev + e] = take[ri, si]
        n_ev += e
        f = first_op[running] - base
        hit = (f >= 0) & (f < s)
        if hit.any():
            first_ms[running[hit]] = ends[f[hit]]
        fp[running] = base + s
        fin = base + s >= end_op[running]
        if fin.any():
            gone = running[fin]
            last_ms[gone] = t
            reserved -= float(need[gone].sum())
            running = running[~fin]
    if n and np.isnan(first_ms).any():
        raise AssertionError("serving: a request never emitted a token")
    return ServeRun(arrival_s, prompt, max_new, admit_ms, first_ms, last_ms, ev_req[:n_ev], ev_ms[:n_ev],
                    ev_tok[:n_ev], steps, prefills)


def _advance(idx, o, nbuf, blen, btype, slot_rates, rng, cols, k, g, windows, op):
    """Apply one operation per running slot: drafts append a token to buffer 1; a check of
    buffer j by level j+1 keeps the accepted prefix plus one token of its own and passes
    it up (or commits it, at the top). Returns (tokens committed, slots committing)."""
    is_draft = o == 0
    d = idx[is_draft]
    if len(d):
        btype[d, 0, blen[d, 0]] = BON  # a draft: no lower level has seen it
        blen[d, 0] += 1
    chk = ~is_draft
    commit = np.zeros(0, np.int64)
    committing = np.zeros(0, np.int64)
    if chk.any():
        c = idx[chk]
        j = o[chk] - 1  # 0-based buffer index checked
        nb = nbuf[chk]
        types = btype[c, j]  # (m, width)
        p = np.take_along_axis(slot_rates[c, j], types.astype(np.int64), 1)  # per-token pass probability
        ok = (rng.random(p.shape) < p) & (cols[None, :] < nb[:, None])
        a = np.where(ok.all(1), nb, np.argmin(ok, 1))
        a = np.minimum(a, nb)
        blen[c, j] = 0
        top = j == k - 2
        if top.any():
            committing = c[top]
            commit = a[top] + 1
            blen[committing] = 0
        up = ~top
        if up.any():
            cu, ju, au, nu = c[up], j[up], a[up], nb[up]
            start = blen[cu, ju + 1]
            span = cols[None, :]
            fill = np.where(span < (start + au)[:, None], ACC, np.where(au == nu, BON, COR)[:, None]).astype(np.int8)
            new = (span >= start[:, None]) & (span <= (start + au)[:, None])
            cur = btype[cu, ju + 1]
            btype[cu, ju + 1] = np.where(new, fill, cur)
            blen[cu, ju + 1] = start + au + 1
    # each slot's next operation from its own buffers (the batch-1 schedule)
    nxt = np.zeros(len(idx), np.int64)
    full1 = blen[idx, 0] >= g
    nxt[full1] = 1
    for jj in range(1, k - 1):  # cascade: a full buffer j -> level-(j+1) check
        due = (blen[idx, jj] >= windows[jj - 1]) & ~full1
        nxt = np.where(due & (nxt == 0), jj + 1, nxt)
    op[idx] = nxt
    return commit, committing


# --------------------------------------------------------------------------- summaries


def quick_summary(run: ServeRun, limits: ServeLimits) -> dict:
    """traffic.summarize's figures computed straight from the arrays (no per-request
    objects); tests check that both agree."""
    arr_ms = run.arrival_s * 1e3
    ttft = run.first_ms - arr_ms
    e2e = run.last_ms - arr_ms
    outn = run.output_tokens
    tpot = np.where(outn > 1, (e2e - ttft) / np.maximum(outn - 1, 1), 0.0)
    start = float(run.arrival_s.min())
    span = max(float(run.last_ms.max()) / 1e3 - start, 1e-12)
    good = good_requests(ttft, tpot, limits)
    gaps = _all_gaps(run)
    tokens = int(outn.sum())
    out = {"requests": len(ttft), "duration_s": span, "output_tokens": tokens,
           "throughput_tokens_per_s": tokens / span, "requests_per_s": len(ttft) / span,
           "goodput_requests_per_s": float(good.sum()) / span, "slo_attained": float(good.mean()),
           "slo_ttft_ms": limits.slo_ttft_ms, "slo_tbt_ms": limits.slo_tbt_ms, "slo_tpot_ms": limits.tpot_slo,
           "ttft_ms": percentiles(ttft), "tbt_ms": percentiles(gaps), "tpot_ms": percentiles(tpot[outn > 1]),
           "e2e_ms": percentiles(e2e), "queue_ms": percentiles(run.admit_ms - arr_ms)}
    out["p99_slos_met"] = p99_slos_met(out["ttft_ms"]["p99"], out["tbt_ms"]["p99"], limits)
    return out


def _all_gaps(run: ServeRun) -> np.ndarray:
    """Every TBT gap of every request, pooled (order irrelevant)."""
    order = np.lexsort((run.event_ms, run.event_req))
    req, t, n = run.event_req[order], run.event_ms[order], run.event_tokens[order]
    same = req[1:] == req[:-1]
    waits = (t[1:] - t[:-1])[same]  # the first token of each later event
    zeros = int(n.sum()) - len(run.arrival_s) - len(waits)
    return np.concatenate([waits, np.zeros(max(zeros, 0))])


METRIC_KEYS = (("throughput_tokens_per_s", None), ("goodput_requests_per_s", None), ("slo_attained", None),
               *((key, stat) for key in ("ttft_ms", "tbt_ms", "tpot_ms", "e2e_ms", "queue_ms")
                 for stat in ("mean", "p50", "p90", "p99")))  # every statistic a seed's summary has


def over_seeds(summaries: list[dict]) -> dict:
    """Mean over seeds of every figure with a 95 % confidence interval (Student t over
    the seeds' values; one seed: no interval). A figure some seeds lack (TBT of runs whose
    every request emitted one token) is over the seeds that have it, their count in
    "seeds"; one no seed has is left out."""
    out: dict = {}
    for key, sub in METRIC_KEYS:
        vals = np.array([s[key] if sub is None else s[key][sub] for s in summaries], dtype=float)
        vals = vals[~np.isnan(vals)]
        k = len(vals)
        if k == 0:
            continue
        m = float(vals.mean())
        half = float(t95(k - 1) * vals.std(ddof=1) / math.sqrt(k)) if k > 1 else None
        lo_bound = 0.0  # every figure is >= 0 (and slo_attained <= 1)
        hi_bound = 1.0 if key == "slo_attained" else math.inf
        entry = {"mean": m, "ci95": [max(m - half, lo_bound), min(m + half, hi_bound)] if half is not None else None}
        if k < len(summaries):
            entry["seeds"] = k
        if sub is None:
            out[key] = entry
        else:
            out.setdefault(key, {})[sub] = entry
    return out


