"""Request-level serving simulation: the serving process of `hispec-exec serve`, costed.

The process simulated is exactly the one specified at the top of hispec_exec/serve.py
(admission FIFO head-of-line under max_batch and a KV reservation of prompt +
max_new_tokens + the plan's overshoot; every request admitted in an iteration prefilled
in ONE forward of its P - 1 tokens through all layers; then one decode step over the
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

from .acceptance import AgreementModel
from .latency import (
    decode_attention_ms,
    head_ms,
    linear_layer_ms,
    prefill_attention_ms,
    sequence_attention_ms,
    serving_layer_ms,
    serving_step_overhead_ms,
)
from .schema import Acceptance, LatencyTable, Plan, Request, RequestMetrics, ServeLimits

ACC, COR, BON = 0, 1, 2  # how a buffered token got there (acceptance.py's conditional rates)
CTX_BUCKET = 16  # attention is read at the context rounded to this many tokens (lookup tables)


def max_overshoot(plan: Plan) -> int:
    """Tentative tokens a sequence may hold beyond its committed ones (the executor's
    hispec_exec.generate.max_overshoot, repeated here because hispec_sim imports no torch)."""
    return 1 if plan.depth == 1 else plan.propose + sum(plan.windows) + plan.depth + 1


def reservation(plan: Plan, prompt_len, max_new) -> np.ndarray:
    """KV tokens a request reserves while it runs."""
    return np.asarray(prompt_len) + np.asarray(max_new) + max_overshoot(plan)


def check_limits(plan: Plan, limits: ServeLimits, prompt_len: np.ndarray, max_new: np.ndarray) -> None:
    """Raise ValueError naming the field when a request can never be admitted."""
    if limits.kv_tokens is not None:
        need = reservation(plan, prompt_len, max_new)
        worst = int(np.argmax(need))
        if need[worst] > limits.kv_tokens:
            raise ValueError(f"kv-tokens: request {worst} needs {int(need[worst])} KV tokens (prompt {int(prompt_len[worst])} + "
                             f"max_new_tokens {int(max_new[worst])} + speculation {max_overshoot(plan)}), more than the "
                             f"capacity {limits.kv_tokens}; allowed: >= {int(need.max())}")


# --------------------------------------------------------------------------- acceptance per request


def level_rates(acc: Acceptance, levels: list[int]) -> np.ndarray:
    """(k-1, 3) rates [after_accept, after_reject, marginal] of the checks of a chain."""
    model = AgreementModel(acc)
    out = np.zeros((max(len(levels) - 1, 0), 3))
    for j in range(len(levels) - 1):
        r = model.rates(None if j == 0 else np.array([levels[j - 1]]), np.array([levels[j]]), np.array([levels[j + 1]]))
        out[j] = [r.after_accept[0], r.after_reject[0], r.marginal[0]]
    return out


def request_rates(acc: Acceptance, plan: Plan, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, k-1, 3) per-request acceptance rates drawn from the workload's spread."""
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
    per = np.stack([level_rates(acc.model_copy(update={"agreement": m, "joint": "independent", "spread": None}),
                                plan.levels) for m in sp.per_request])
    return per[pick]


# --------------------------------------------------------------------------- cost lookups


class StepCost:
    """Lookup tables that cost a decode step and a prefill from the rows it carries."""

    def __init__(self, table: LatencyTable, plan: Plan, num_layers: int, max_batch: int, max_context: int,
                 prompts: np.ndarray | None = None):
        self.table, self.plan = table, plan
        lv = [0] + list(plan.levels)
        self.span = np.diff(lv).astype(float)  # layers per range l_{i-1}+1..l_i
        k = plan.depth
        max_rows = 1 + (plan.propose + sum(plan.windows) + k if k > 1 else 0)  # rows one sequence carries in one range
        self.max_rows = max_rows
        tot = np.arange(max_batch * max_rows + 1)
        # one layer's cost but the table's per-sequence attention increments, by (sequences,
        # total rows): the serving calibration's batched grid when the profile has one (each
        # sequence pays its own bookkeeping and attention), else the table's linear part
        if table.serving is not None:
            self.linear = serving_layer_ms(table, np.arange(max_batch + 1)[:, None], tot[None, :])
        else:  # the same for any number of sequences: one row, broadcast (large batches stay cheap)
            self.linear = np.broadcast_to(serving_layer_ms(table, np.minimum(tot, 1), tot)[None, :],
                                          (max_batch + 1, len(tot)))
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
        self.calibrated = table.serving is not None
        self.per_layer = 0.0 if self.calibrated else table.layer_overhead_ms  # inside the measured grid
        self.fixed = table.overhead_ms
        self.verify = table.verify_overhead_ms
        # prefill: one sequence's attention per prompt length, linear part per total rows (lookups)
        top = int(np.sort(np.maximum(prompts - 1, 0))[-max_batch:].sum()) if prompts is not None and len(prompts) else 1
        plen = np.arange(int(prompts.max()) if prompts is not None and len(prompts) else 1)
        self.prefill_att = np.where(plen > 0, prefill_attention_ms(table, np.maximum(plen, 1), 0), 0.0)
        tot = np.arange(min(top, 2**21) + 1)
        self.prefill_linear = linear_layer_ms(table, np.maximum(tot, 1))

    def overhead(self, nseq, nchecks) -> np.ndarray:
        """Host time of steps beyond forward and head (latency.serving_step_overhead_ms)."""
        return serving_step_overhead_ms(self.table, nseq, nchecks)

    def step(self, rows: np.ndarray, ctx: np.ndarray, head_rows: np.ndarray, checks: int) -> float:
        """rows (n, k): rows each running sequence carries through each layer range;
        ctx (n,): its cached tokens; head_rows (k,): rows exiting at each level's exit;
        checks: sequences whose operation is a check."""
        tot = rows.sum(0)
        nseq_r = (rows > 0).sum(0)
        cb = np.minimum(ctx // CTX_BUCKET, self.att.shape[1] - 1)
        if self.measured:
            on = rows > 0
            nseq = on.sum(0)
            mean_ctx = (on * (ctx[:, None] + rows - 1)).sum(0) / np.maximum(nseq, 1)
            att = self.att[nseq, np.minimum(mean_ctx.astype(np.int64) // CTX_BUCKET, self.att.shape[1] - 1)]
        else:
            att = self.att[rows, cb[:, None]].sum(0)
            if self.floor:
                att = np.where(tot > 0, np.maximum(att, self.floor), 0.0)
        per = self.linear[nseq_r, tot] + att + np.where(tot > 0, self.per_layer, 0.0)
        # ONE exit-head call over every sequence's head rows (heads at different exits share norm + LM head)
        return float(self.overhead(len(rows), checks) + (self.span * per).sum() + self.head[head_rows.sum()])

    def drafts(self, ctx: np.ndarray, g: int, m: int) -> float:
        """g consecutive draft steps of m sequences (cached tokens ctx, growing by one per
        step): one row each through range 1, head at exit 1."""
        c = ctx[None, :] + np.arange(g)[:, None]  # (g, m)
        nb = self.att.shape[1] - 1
        if self.measured:
            att = self.att[m, np.minimum(c.mean(1).astype(np.int64) // CTX_BUCKET, nb)]
        else:
            att = self.att[1][np.minimum(c // CTX_BUCKET, nb)].sum(1)
            if self.floor:
                att = np.maximum(att, self.floor)
        per = self.linear[m, m] + att + self.per_layer
        return float(g * (self.overhead(m, 0) + self.head[m]) + self.span[0] * per.sum())

    def prefill(self, prompt_tokens: np.ndarray) -> float:
        """ONE forward prefilling several prompts: their P - 1 tokens concatenated through
        all layers (linear at the total, attention per prompt), no head."""
        n = np.maximum(np.asarray(prompt_tokens) - 1, 0)
        total = int(n.sum())
        if total == 0:
            return 0.0
        L = self.span.sum()
        if self.calibrated:  # the batched grid, its rows beyond the grid by the table's linear part
            lin = float(serving_layer_ms(self.table, int((n > 0).sum()), total))
        else:
            lin = self.prefill_linear[total] if total < len(self.prefill_linear) else float(linear_layer_ms(self.table, total))
        per = lin + self.prefill_att[n].sum()
        return float(L * (per + self.per_layer) + self.fixed)


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
    if plan.adaptive:  # confidence thresholds: one confidence class per position (serving_adaptive)
        from .serving_adaptive import simulate_adaptive

        return simulate_adaptive(table, num_layers, acc, plan, arrival_s, prompt, max_new, limits, seed)
    rng = np.random.default_rng(seed)
    n = len(arrival_s)
    k, g, windows = plan.depth, plan.propose, list(plan.windows)
    B = limits.max_batch
    rates = request_rates(acc, plan, n, rng)  # (n, k-1, 3)
    need = reservation(plan, prompt, max_new)
    kv_cap = limits.kv_tokens if limits.kv_tokens is not None else np.inf
    max_ctx = int((prompt + max_new).max()) + max_overshoot(plan) + CTX_BUCKET
    cost = StepCost(table, plan, num_layers, B, max_ctx, prompt)
    sync = plan.batching == "synchronous" and k > 1
    if not sync or k == 2:  # single-level synchronous: the batch-1 schedules, in phase (join at round ends)
        return _run_scheduled(cost, plan, draw_schedules(plan, rates, max_new, rng), arrival_s, prompt, max_new, need,
                              kv_cap, B, align=g + 1 if sync else 1)

    # buffer capacity of each level (as the Monte-Carlo token engine): level 1 holds g, level j+1 < w + block
    cap = [g]
    for w in windows:
        cap.append(w - 1 + cap[-1] + 1)
    width = max(cap) + 2 if k > 1 else 1
    cols = np.arange(width)

    # slot state
    req = np.full(B, -1, np.int64)
    active = np.zeros(B, bool)
    blen = np.zeros((B, max(k - 1, 1)), np.int64)  # buffer lengths of levels 1..k-1
    btype = np.full((B, max(k - 1, 1), width), BON, np.int8)
    op = np.zeros(B, np.int64)  # 0 = draft, j >= 1 = level-(j+1) check of buffer j
    done_tok = np.zeros(B, np.int64)
    ctx = np.zeros(B, np.int64)
    slot_rates = np.zeros((B, max(k - 1, 1), 3))

    arr_ms = arrival_s * 1e3
    admit_ms = np.full(n, np.nan)
    first_ms = np.full(n, np.nan)
    last_ms = np.full(n, np.nan)
    cap_ev = int(max_new.sum()) + 1  # at most one emission event per token
    ev_req = np.zeros(cap_ev, np.int64)
    ev_ms = np.zeros(cap_ev)
    ev_tok = np.zeros(cap_ev, np.int64)
    n_ev = 0
    reserved = 0.0
    nxt = 0  # first request not admitted yet (FIFO)
    t = float(arr_ms[0]) if n else 0.0  # the clock, ms (0 = time 0 of the arrival times)
    finished = running = 0
    steps = prefills = 0
    sync_phase = 0  # synchronous: 0..g-1 drafts, then checks; back to 0 -> a new round (admission)
    head_exit_rows = np.zeros(k, np.int64)
    lv_idx = np.arange(k)
    idx = np.zeros(0, np.int64)  # running slots
    while finished < n:  # synchronous rounds (ragged and autoregressive run in _run_scheduled)
        if sync_phase == 0:
            if running == 0 and nxt < n and arr_ms[nxt] > t:
                t = float(arr_ms[nxt])  # idle: sleep until the next arrival
            if nxt < n and arr_ms[nxt] <= t and running < B:
                new = []
                free = np.flatnonzero(~active)
                while nxt < n and arr_ms[nxt] <= t and len(new) < len(free) and reserved + need[nxt] <= kv_cap:
                    s = free[len(new)]
                    new.append(s)
                    req[s] = nxt
                    admit_ms[nxt] = t
                    reserved += need[nxt]
                    nxt += 1
                if new:
                    new = np.array(new)
                    active[new] = True
                    blen[new] = 0
                    op[new] = 0
                    done_tok[new] = 0
                    ctx[new] = prompt[req[new]] - 1
                    slot_rates[new] = rates[req[new]]
                    running += len(new)
                    idx = np.flatnonzero(active)
                    pf = cost.prefill(prompt[req[new]])
                    if pf > 0:
                        t += pf
                        prefills += 1
        if running == 0:
            continue
        steps += 1
        if sync_phase == 0:  # a round's g draft steps at once: every sequence one row through 1..l_1
            m = len(idx)
            base = ctx[idx] + blen[idx].sum(1)
            t += cost.drafts(base, g, m)
            steps += g - 1
            blen[idx, 0] = g
            btype[idx, 0, :g] = BON
            commit, committing = np.zeros(0, np.int64), np.zeros(0, np.int64)
            sync_phase = g - 1  # the next phase is the level-2 check
        else:
            o = np.full(len(idx), 0 if sync_phase < g else sync_phase - g + 1, np.int64)
            # rows per layer range: a draft carries 1 row through range 1; a level-(j+1) check
            # of an n-token buffer carries 1 row through ranges 1..j and n+1 rows through j+1
            ar_rows = np.arange(len(idx))
            nbuf = np.where(o > 0, blen[idx, np.maximum(o - 1, 0)], 0)
            rows = (lv_idx[None, :] < o[:, None]).astype(np.int64)
            rows[ar_rows, o] = np.where(o > 0, nbuf + 1, 1)
            head_exit_rows[:] = np.bincount(o, weights=rows[ar_rows, o], minlength=k)[:k]
            # cached positions: committed + tentative ones (the buffers); the newest token is the input
            t += cost.step(rows, ctx[idx] + blen[idx].sum(1), head_exit_rows, int((o > 0).sum()))
            commit, committing = _advance(idx, o, nbuf, blen, btype, slot_rates, rng, cols, k, g, windows, op, sync)
        if len(committing):
            r = req[committing]
            take = np.minimum(commit, max_new[r] - done_tok[committing])
            done_tok[committing] += take
            ctx[committing] = prompt[r] - 1 + done_tok[committing]
            fresh = r[np.isnan(first_ms[r])]
            if len(fresh):
                first_ms[fresh] = t
            last_ms[r] = t
            e = len(r)
            ev_req[n_ev:n_ev + e] = r
            ev_ms[n_ev:n_ev + e] = t
            ev_tok[n_ev:n_ev + e] = take
            n_ev += e
            gone = committing[done_tok[committing] >= max_new[r]]
            if len(gone):
                active[gone] = False
                reserved -= float(need[req[gone]].sum())
                finished += len(gone)
                running -= len(gone)
                req[gone] = -1
                idx = np.flatnonzero(active)
        sync_phase = _next_sync_phase(sync_phase, g, k, windows, blen, active)
    if n and np.isnan(first_ms).any():
        raise AssertionError("serving: a request never emitted a token")
    return ServeRun(arrival_s, prompt, max_new, admit_ms, first_ms, last_ms, ev_req[:n_ev], ev_ms[:n_ev],
                    ev_tok[:n_ev], steps, prefills)


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
    cap = [g]
    for w in windows:
        cap.append(w - 1 + cap[-1] + 1)
    width = max(cap) + 2
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
        commit, committing = _advance(idx, o, nbuf, blen, btype, rates, rng, cols, k, g, windows, op, False)
        c = np.zeros(n, np.int32)
        c[committing] = commit
        commits.append(c[idx])
        done[committing] += commit
        idx = idx[done[idx] < max_new[idx]]
    count = np.zeros(n, np.int64)
    for w_ in who:
        count[w_] += 1
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    tot = int(count.sum())
    code = np.zeros(tot, np.int32)
    com = np.zeros(tot, np.int32)
    ten = np.zeros(tot, np.int32)
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
                   align: int = 1) -> ServeRun:
    """The event loop when every sequence's operations are known in advance (ragged,
    autoregressive; and single-level synchronous, whose rounds of g drafts + one check are
    each sequence's batch-1 schedule: `align` = g + 1 keeps the batch in phase by admitting
    only at round ends). Between two events the batch does not change, so the next steps are
    costed together: their rows per layer range, attention and heads as (steps x slots)
    arrays; the chunk is cut at the step during which the next admissible request arrives
    (it is admitted when that step ends) or at the first request to finish."""
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
    if not cost.measured:
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
    while nxt < n or len(running):
        # admission (FIFO, head of line), then ONE prefill forward for everything admitted
        if not len(running) and nxt < n and arr_ms[nxt] > t:
            t = float(arr_ms[nxt])
        new = []
        phase = int((fp[running[0]] - sch.start[running[0]]) % align) if len(running) and align > 1 else 0
        while phase == 0 and nxt < n and arr_ms[nxt] <= t and len(running) + len(new) < B and reserved + need[nxt] <= kv_cap:
            new.append(nxt)
            admit_ms[nxt] = t
            reserved += need[nxt]
            nxt += 1
        if new:
            new = np.array(new, np.int64)
            running = np.concatenate([running, new])
            pf = cost.prefill(prompt[new])
            if pf > 0:
                t += pf
                prefills += 1
        m = len(running)
        base = fp[running]
        s = int(min((end_op[running] - base).min(), MACRO))
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
        else:
            att = op_att[pos].sum(0)
            if cost.floor:
                att = np.where(tot > 0, np.maximum(att, cost.floor), 0.0)
        nseq_r = (rows > 0).sum(0)  # (s, k)
        per = cost.linear[nseq_r, tot] + att + np.where(tot > 0, cost.per_layer, 0.0)
        heads = cost.head[op_head[pos].sum(0)]  # (s,): one head call over all head rows of the step
        step_ms = cost.overhead(m, op_check[pos].sum(0)) + (per * span[None, :]).sum(1) + heads
        ends = t + np.cumsum(step_ms)
        # cut at the step during which the next admissible request arrives (admitted when it ends)
        if nxt < n and m < B and reserved + need[nxt] <= kv_cap:
            cut = int(np.searchsorted(ends, arr_ms[nxt])) + 1
            if align > 1:  # synchronous: the arrival waits for the end of the round
                cut = -(-(phase + cut) // align) * align - phase
            s = min(s, cut)
        steps += s
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


def _advance(idx, o, nbuf, blen, btype, slot_rates, rng, cols, k, g, windows, op, sync):
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
    if not sync:  # ragged: each slot's next operation from its own buffers (the batch-1 schedule)
        nxt = np.zeros(len(idx), np.int64)
        full1 = blen[idx, 0] >= g
        nxt[full1] = 1
        for jj in range(1, k - 1):  # cascade: a full buffer j -> level-(j+1) check
            due = (blen[idx, jj] >= windows[jj - 1]) & ~full1
            nxt = np.where(due & (nxt == 0), jj + 1, nxt)
        op[idx] = nxt
    return commit, committing


def _next_sync_phase(phase, g, k, windows, blen, active) -> int:
    """Synchronous rounds: g draft steps, the level-2 check, then a level-(j+1) check step
    while ANY running sequence's buffer j holds >= its window; otherwise a new round."""
    if phase < g - 1:
        return phase + 1
    if phase == g - 1:
        return g  # level-2 check (buffer index 1 in op numbering)
    j = phase - g + 1  # the check just done: of buffer j (1-based), by level j+1
    if j + 1 <= k - 1:
        nxt = j + 1  # could check buffer j+1 with level j+2
        if active.any() and (blen[active, nxt - 1] >= windows[nxt - 2]).any():
            return g + nxt - 1
    return 0


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
    good = np.ones(len(ttft), bool)
    if limits.slo_ttft_ms is not None:
        good &= ttft <= limits.slo_ttft_ms
    if limits.slo_tbt_ms is not None:
        good &= tpot <= limits.slo_tbt_ms
    gaps = _all_gaps(run)

    def stats(x):
        if x.size == 0:
            return {"mean": None, "p50": None, "p90": None, "p99": None}
        p50, p90, p99 = np.percentile(x, [50, 90, 99])
        return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}

    tokens = int(outn.sum())
    return {"requests": len(ttft), "duration_s": span, "output_tokens": tokens,
            "throughput_tokens_per_s": tokens / span, "requests_per_s": len(ttft) / span,
            "goodput_requests_per_s": float(good.sum()) / span, "slo_attained": float(good.mean()),
            "slo_ttft_ms": limits.slo_ttft_ms, "slo_tbt_ms": limits.slo_tbt_ms,
            "ttft_ms": stats(ttft), "tbt_ms": stats(gaps), "tpot_ms": stats(tpot), "e2e_ms": stats(e2e),
            "queue_ms": stats(run.admit_ms - arr_ms)}


def _all_gaps(run: ServeRun) -> np.ndarray:
    """Every TBT gap of every request, pooled (order irrelevant)."""
    order = np.lexsort((run.event_ms, run.event_req))
    req, t, n = run.event_req[order], run.event_ms[order], run.event_tokens[order]
    same = req[1:] == req[:-1]
    waits = (t[1:] - t[:-1])[same]  # the first token of each later event
    zeros = int(n.sum()) - len(run.arrival_s) - len(waits)
    return np.concatenate([waits, np.zeros(max(zeros, 0))])


METRIC_KEYS = (("throughput_tokens_per_s", None), ("goodput_requests_per_s", None), ("slo_attained", None),
               ("ttft_ms", "mean"), ("ttft_ms", "p50"), ("ttft_ms", "p90"), ("ttft_ms", "p99"),
               ("tbt_ms", "mean"), ("tbt_ms", "p50"), ("tbt_ms", "p90"), ("tbt_ms", "p99"),
               ("tpot_ms", "mean"), ("tpot_ms", "p50"), ("tpot_ms", "p99"),
               ("e2e_ms", "mean"), ("e2e_ms", "p50"), ("e2e_ms", "p99"), ("queue_ms", "mean"), ("queue_ms", "p99"))


def over_seeds(summaries: list[dict]) -> dict:
    """Mean over seeds of every figure with a 95 % confidence interval (Student t over
    the seeds' values; one seed: no interval)."""
    k = len(summaries)
    out: dict = {}
    for key, sub in METRIC_KEYS:
        vals = np.array([s[key] if sub is None else s[key][sub] for s in summaries], dtype=float)
        if np.isnan(vals).any():
            continue
        m = float(vals.mean())
        half = float(_t95(k - 1) * vals.std(ddof=1) / math.sqrt(k)) if k > 1 else None
        lo_bound = 0.0  # every figure is >= 0 (and slo_attained <= 1)
        hi_bound = 1.0 if key == "slo_attained" else math.inf
        entry = {"mean": m, "ci95": [max(m - half, lo_bound), min(m + half, hi_bound)] if half is not None else None}
        if sub is None:
            out[key] = entry
        else:
            out.setdefault(key, {})[sub] = entry
    return out


def _t95(dof: int) -> float:
    """Two-sided 95 % Student t quantile (table for small dof, normal beyond)."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
             12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
    if dof in table:
        return table[dof]
    for d in sorted(table):
        if d > dof:
            return table[d]
    return 1.96 + 2.5 / max(dof, 1)
