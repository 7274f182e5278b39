"""Adaptive plans (Plan.draft_confidence, Plan.escalate_confidence) in the request-level
serving simulator: the process of hispec_exec.generate (SequenceDecoder, Batch), costed
as hispec_sim.serving costs fixed plans.

What the executor does, and so what is simulated:
* a sequence drafts until it holds `propose` drafts or its last draft was unsure (top-1
  probability at l_1 < tau_d; that draft is kept and checked), then level 2 checks;
* after level j+1's check (j+1 < k), level j+2 checks at once when the buffer reached its
  window or level j+1's own token (correction or bonus) was unsure (< tau_e[j-1]);
* `ragged`: every sequence runs its own batch-1 schedule (drawn up front, costed by
  serving._run_scheduled like a fixed plan's);
* `synchronous`: common rounds; in a draft step only the sequences still drafting are in
  the forward (a sequence whose draft was unsure, or that holds `propose` drafts, sits the
  rest of the round's draft steps out: no padding rows); the level-2 check step comes when
  no sequence drafts any more, and carries every sequence; a level-(j+2) check step of
  every sequence follows when ANY sequence's level-(j+1) check filled its window or
  escalated. New sequences join at round boundaries only.

Acceptance, one draw per position (the batch-1 models' assumptions, hispec_sim.adaptive):
each request's fixed per-level rates (serving.request_rates: the workload's spread, if
any); every token gets a confidence class when its level's exit produces it (P(unsure |
kind) from the trace rows' top-1 probabilities), and its pass probability at each later
check is the fixed rate x the class's agreement factor (adaptive.token_classes). With an
empirical spread whose requests are the trace blocks (adaptive.request_rows), a simulated
request takes both its rates and its confidence statistics from the SAME measured request
(one draw; request_classes); otherwise the classes are pooled over all rows. Positions stay
i.i.d. within a request (runs of confident tokens are not modelled). Class
draws come from a stream of their own (rng.spawn), so tau = 0 draws exactly what the
fixed plan's simulation draws: the same seeds give the same run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .adaptive import TokenClasses, request_token_classes, token_classes
from .schema import Acceptance, LatencyTable, Plan, ServeLimits
from .serving import (
    CTX_BUCKET,
    EntryClock,
    Schedules,
    ServeRun,
    StepCost,
    _run_scheduled,
    _UniformStream,
    buffer_width,
    emission_times,
    pack_schedules,
    request_rates,
    reservation,
)


@dataclass
class RequestClasses:
    """TokenClasses per simulated request: low (n, k-1, 2) and factor (n, tags, k+1) of the
    measured request it drew (or the pooled ones for every request)."""

    low: np.ndarray
    factor: np.ndarray
    kind_at: np.ndarray

    @property
    def tags(self) -> int:
        return self.factor.shape[1]

    @classmethod
    def pooled(cls, tc: TokenClasses, n: int) -> RequestClasses:
        return cls(np.broadcast_to(tc.low, (n,) + tc.low.shape), np.broadcast_to(tc.factor, (n,) + tc.factor.shape),
                   tc.kind_at)


def request_classes(acc: Acceptance, plan: Plan, n: int, picks: list) -> RequestClasses:
    """Every simulated request's confidence classes: those of the measured request whose
    agreement matrix it drew (picks, from serving.request_rates: one index for both, so a
    request that agrees more is also confident more often, as measured), or the pooled
    classes where the workload cannot pair its trace rows with its spread."""
    per = request_token_classes(acc, plan) if picks else None
    if per is None:
        return RequestClasses.pooled(token_classes(acc, plan), n)
    pick = picks[0]
    return RequestClasses(np.stack([c.low for c in per])[pick], np.stack([c.factor for c in per])[pick], per[0].kind_at)


def pass_table(rates: np.ndarray, cls: RequestClasses, k: int) -> np.ndarray:
    """(n, tags, k+1): P(level m accepts a token with this tag) per request, m = 2..k."""
    out = np.zeros((len(rates), cls.tags, k + 1))
    for m in range(2, k + 1):
        out[:, :, m] = np.clip(rates[:, m - 2, :][:, cls.kind_at[:, m]] * cls.factor[:, :, m], 0.0, 1.0)
    return out


class _State:
    """Per-slot speculative state: buffer lengths and token tags, the unsure flag of the
    last draft, the check that falls due next (cascade, 0 = none)."""

    def __init__(self, n: int, plan: Plan, width: int):
        k = plan.depth
        self.blen = np.zeros((n, k - 1), np.int64)
        self.btag = np.zeros((n, k - 1, width), np.int64)
        self.unsure = np.zeros(n, bool)
        self.cascade = np.zeros(n, np.int64)

    def reset(self, s) -> None:
        self.blen[s] = 0
        self.unsure[s] = False
        self.cascade[s] = 0


def _advance(st: _State, idx, o, ptab, low, rng, crng, cols, k, windows):
    """One operation per slot of idx (op o: 0 = draft, j >= 1 = level-(j+1) check of buffer
    j). Acceptance draws exactly as serving._advance draws them (one uniform per buffer
    column of every checking slot, in slot order); class draws from crng. ptab, low: per
    slot pass_table rows and RequestClasses.low rows. Returns (tokens committed, slots
    committing)."""
    d = idx[o == 0]
    if len(d):
        p_unsure = low[d, 0, 0]
        unsure = crng.random(len(d)) < p_unsure if p_unsure.any() else np.zeros(len(d), bool)
        st.btag[d, 0, st.blen[d, 0]] = unsure  # tag of a draft: (1, bonus, class)
        st.blen[d, 0] += 1
        st.unsure[d] = unsure
    chk = o > 0
    commit = committing = np.zeros(0, np.int64)
    if chk.any():
        c = idx[chk]
        j = o[chk] - 1  # 0-based buffer checked, by level j + 2
        nb = st.blen[c, j]
        tags = st.btag[c, j]
        p = ptab[c[:, None], tags, (j + 2)[:, None]]
        ok = (rng.random(p.shape) < p) & (cols[None, :] < nb[:, None])
        a = np.minimum(np.where(ok.all(1), nb, np.argmin(ok, 1)), nb)
        st.blen[c, j] = 0
        st.unsure[c] = False
        st.cascade[c] = 0
        top = j == k - 2
        if top.any():
            committing, commit = c[top], a[top] + 1
            st.blen[committing] = 0
        up = ~top
        if up.any():
            cu, ju, au, nu = c[up], j[up], a[up], nb[up]
            start = st.blen[cu, ju + 1]
            src = np.take_along_axis(st.btag[cu, ju], np.clip(cols[None, :] - start[:, None], 0, len(cols) - 1), 1)
            moved = (cols[None, :] >= start[:, None]) & (cols[None, :] < (start + au)[:, None])
            kind = (au < nu).astype(np.int64)  # correction when a token was rejected
            p_low = low[cu, ju + 1, kind]
            low = (crng.random(len(cu)) < p_low) if p_low.any() else np.zeros(len(cu), bool)
            own = (((ju + 1) * 2 + kind) * 2 + low)  # tag (origin level ju + 2, kind, class)
            cur = st.btag[cu, ju + 1]
            new = np.where(moved, src, cur)
            new[np.arange(len(cu)), start + au] = own
            st.btag[cu, ju + 1] = new
            st.blen[cu, ju + 1] = start + au + 1
            w = np.asarray(windows, np.int64)[ju]
            st.cascade[cu] = np.where((st.blen[cu, ju + 1] >= w) | low, ju + 2, 0)
    return commit, committing


def _advance_phase(st: _State, part, phase: int, ptab, low, rng, crng, cols, k, windows):
    """_advance for a synchronous check step, where every slot of `part` does the same
    operation, the level-(phase+1) check of buffer `phase` (draft steps: _draft_steps): the
    same draws in the same order and the same state afterwards, with the buffer index a
    scalar (fewer, cheaper array operations per step); rng, crng: serving._UniformStream's
    over the generators (the same uniforms in the same order, drawn in blocks). Returns
    (tokens committed, slots committing)."""
    c, j = part, phase - 1  # buffer j checked, by level j + 2
    nb = st.blen[c, j]
    tags = st.btag[c, j]
    p = ptab[c[:, None], tags, j + 2]
    ok = (rng.take(p.size).reshape(p.shape) < p) & (cols[None, :] < nb[:, None])
    if ok[:, -1].any():  # a buffer as wide as the array (never, with buffer_width's margin): _advance's form
        a = np.minimum(np.where(ok.all(1), nb, np.argmin(ok, 1)), nb)
    else:  # every row has a failure (at the buffer's end at the latest): the first one
        a = np.minimum(np.argmin(ok, 1), nb)
    st.blen[c, j] = 0
    st.unsure[c] = False
    st.cascade[c] = 0
    if j == k - 2:  # the top: commit the accepted prefix + the full model's token
        st.blen[c] = 0
        return a + 1, c
    start = st.blen[c, j + 1]
    rows = np.arange(len(c))
    src = tags[rows[:, None], np.maximum(cols[None, :] - start[:, None], 0)]  # (cols < width, start >= 0)
    moved = (cols[None, :] >= start[:, None]) & (cols[None, :] < (start + a)[:, None])
    kind = (a < nb).astype(np.int64)  # correction when a token was rejected
    p_low = low[c, j + 1, kind]
    unsure = (crng.take(len(c)) < p_low) if p_low.any() else np.zeros(len(c), bool)
    new = np.where(moved, src, st.btag[c, j + 1])
    new[rows, start + a] = ((j + 1) * 2 + kind) * 2 + unsure  # tag (origin level j + 2, kind, class)
    st.btag[c, j + 1] = new
    st.blen[c, j + 1] = start + a + 1
    st.cascade[c] = np.where((start + a + 1 >= windows[j]) | unsure, j + 2, 0)
    return np.zeros(0, np.int64), np.zeros(0, np.int64)


def _drafts_left(sch: Schedules, W: int) -> np.ndarray:
    """Per op of the schedules: the drafts from it to the next check (0 at a check; every
    request's schedule ends with the check that commits its last tokens)."""
    check = np.flatnonzero(sch.code // W > 0)
    at = np.arange(len(sch.code))
    return check[np.searchsorted(check, at)] - at


def _draft_steps(st: _State, idx, g: int, low, crng, log: _StepLog, cached) -> int:
    """A synchronous round's draft steps: while any slot of idx may draft (fewer than g
    drafts, the last one sure), one step of those slots (recorded in the log; the class
    draws, from crng's _UniformStream, and the state as _advance's drafts). Returns the
    steps."""
    part = idx[(st.blen[idx, 0] < g) & ~st.unsure[idx]]
    p_unsure = low[:, 0, 0]
    steps = 0
    while len(part):
        log.step(0, cached[part] + st.blen[part].sum(1), np.zeros(len(part), np.int64), 0)
        p = p_unsure[part]
        unsure = crng.take(len(part)) < p if p.any() else np.zeros(len(part), bool)
        st.btag[part, 0, st.blen[part, 0]] = unsure  # tag of a draft: (1, bonus, class)
        st.blen[part, 0] += 1
        st.unsure[part] = unsure
        steps += 1
        part = part[(st.blen[part, 0] < g) & ~unsure]  # slots that stopped stay out (their state is kept)
    return steps


def draw_adaptive_schedules(plan: Plan, rates: np.ndarray, cls: TokenClasses | RequestClasses, max_new: np.ndarray,
                            rng: np.random.Generator) -> Schedules:
    """Every request's batch-1 schedule under the adaptive plan (vectorised over requests),
    in serving.draw_schedules' format; with tau = 0 exactly draw_schedules' draws. cls:
    per request (RequestClasses) or pooled (TokenClasses)."""
    n, k, g = len(max_new), plan.depth, plan.propose
    if isinstance(cls, TokenClasses):
        cls = RequestClasses.pooled(cls, n)
    width = buffer_width(plan)
    cols = np.arange(width)
    crng = rng.spawn(1)[0]
    ptab = pass_table(rates, cls, k)
    st = _State(n, plan, width)
    op = np.zeros(n, np.int64)
    done = np.zeros(n, np.int64)
    codes, commits, tents, who = [], [], [], []
    idx = np.arange(n)
    while len(idx):
        o = op[idx]
        nbuf = np.where(o > 0, st.blen[idx, np.maximum(o - 1, 0)], 0)
        codes.append((o * (width + 1) + nbuf).astype(np.int32))
        tents.append(st.blen[idx].sum(1).astype(np.int32))
        who.append(idx)
        commit, committing = _advance(st, idx, o, ptab, cls.low, rng, crng, cols, k, plan.windows)
        c = np.zeros(n, np.int32)
        c[committing] = commit
        commits.append(c[idx])
        done[committing] += commit
        # the batch-1 schedule (SequenceDecoder.next_op): a due check, else draft while allowed, else level 2
        drafting = (st.blen[idx, 0] < g) & ~st.unsure[idx]
        op[idx] = np.where(st.cascade[idx] > 0, st.cascade[idx], np.where(drafting, 0, 1))
        idx = idx[done[idx] < max_new[idx]]
    return pack_schedules(n, who, codes, commits, tents, width)


def simulate_adaptive(table: LatencyTable, num_layers: int, acc: Acceptance, plan: Plan, arrival_s: np.ndarray,
                      prompt: np.ndarray, max_new: np.ndarray, limits: ServeLimits, seed: int = 0) -> ServeRun:
    """serving.simulate_arrays for an adaptive plan (the caller has validated the inputs).
    Any plan of depth >= 2 is accepted (tau = 0: the fixed plan's run)."""
    rng = np.random.default_rng(seed)
    n = len(arrival_s)
    k = plan.depth
    B = limits.max_batch
    picks: list = []
    rates = request_rates(acc, plan, n, rng, picks)  # (n, k-1, 3), as the fixed simulation draws them
    cls = request_classes(acc, plan, n, picks)
    need = reservation(plan, prompt, max_new)
    kv_cap = limits.kv_tokens if limits.kv_tokens is not None else np.inf
    max_ctx = int((prompt + max_new).max()) + plan.max_overshoot + CTX_BUCKET
    cost = StepCost(table, plan, num_layers, B, max_ctx, prompt, seed=seed)
    if plan.batching == "ragged":
        return _run_scheduled(cost, plan, draw_adaptive_schedules(plan, rates, cls, max_new, rng), arrival_s, prompt,
                              max_new, need, kv_cap, B)
    sch = draw_adaptive_schedules(plan, rates, cls, max_new, rng) if k == 2 else None
    return _run_synchronous(cost, plan, sch, rates, cls, rng, arrival_s, prompt, max_new, need, kv_cap, B)


def _run_synchronous(cost: StepCost, plan: Plan, sch: Schedules | None, rates, cls: RequestClasses, rng, arrival_s, prompt,
                     max_new, need, kv_cap, B) -> ServeRun:
    """hispec_exec.generate.Batch's synchronous rounds, step by step (module docstring).
    Single-level plans (sch given): a sequence's operations do not depend on its batch
    (drafts, then the check that commits), so they are its batch-1 schedule drawn up front
    and only their timing is simulated here. Deeper plans: the level-(j+2) check of every
    sequence comes when any one escalates or fills its window, so each sequence's draws
    are made here, step by step, over the slots in slot order (as serving's synchronous
    engine draws a fixed plan's).

    A step's time never changes what the sequences do, only when the next requests are
    admitted, so steps are recorded and costed later, together (`_StepLog`): the clock is
    read only when an admission depends on it (a free slot and a next request that arrived
    after the last time known) or when the batch empties; admission and emission times are
    filled in then. tests/serving/test_simspeed_equivalence.py pins this engine to the
    step-by-step one it replaced, value for value."""
    n, k, g, windows = len(arrival_s), plan.depth, plan.propose, list(plan.windows)
    width = sch.width if sch is not None else buffer_width(plan)
    W = width + 1
    cols = np.arange(width)
    crng = rng.spawn(1)[0] if sch is None else None
    uniforms = _UniformStream(rng) if sch is None else None  # acceptance draws, in blocks
    class_uniforms = _UniformStream(crng) if sch is None else None  # confidence-class draws
    req = np.full(B, -1, np.int64)
    active = np.zeros(B, bool)
    st = _State(B, plan, width)
    ptab = np.zeros((B, cls.tags, k + 1))
    low = np.zeros((B,) + cls.low.shape[1:])
    all_ptab = pass_table(rates, cls, k) if sch is None else None
    done_tok = np.zeros(B, np.int64)
    cached = np.zeros(B, np.int64)  # committed tokens in the slot's cache: prompt - 1 + done_tok
    ptr = np.zeros(B, np.int64)  # single-level: the slot's next op (flat index into sch)
    drafts_left = _drafts_left(sch, W) if sch is not None else None
    arr_ms = arrival_s * 1e3
    admit_ms = np.full(n, np.nan)
    admit_at = np.zeros(n, np.int64)  # the log entry before which each request was admitted
    cap_ev = int(max_new.sum()) + 1  # at most one emission event per token
    ev_req = np.zeros(cap_ev, np.int64)
    ev_ms = np.zeros(cap_ev)
    ev_tok = np.zeros(cap_ev, np.int64)
    ev_at = np.zeros(cap_ev, np.int64)  # the log entry before which the event happened
    n_ev = ev_done = adm_done = 0
    log = _StepLog(cost, k, float(arr_ms[0]) if n else 0.0)
    reserved = 0.0
    nxt = 0
    finished = steps = prefills = 0
    phase = 0  # 0 = draft steps, j >= 1 = level-(j+1) check of buffer j (every running sequence)
    fresh_round = True
    idx = np.zeros(0, np.int64)

    def settle():  # cost the pending steps; fill in the times that waited for them
        nonlocal ev_done, adm_done
        first_entry, times = log.flush()
        ev_ms[ev_done:n_ev] = times[ev_at[ev_done:n_ev] - first_entry]
        admit_ms[adm_done:nxt] = times[admit_at[adm_done:nxt] - first_entry]
        ev_done, adm_done = n_ev, nxt

    while finished < n:
        if fresh_round:  # round boundary: admission (FIFO, head of line), one prefill forward
            woke = False
            if not len(idx) and nxt < n:
                settle()
                if arr_ms[nxt] > log.t:
                    log.t = float(arr_ms[nxt])  # idle: sleep until the next arrival
                    woke = True
            new = []
            free = np.flatnonzero(~active)
            while nxt < n and len(new) < len(free) and reserved + need[nxt] <= kv_cap:
                if arr_ms[nxt] > log.t:  # the last time known is a lower bound (steps cost >= 0)
                    if log.pending:
                        settle()
                    if arr_ms[nxt] > log.t:
                        break
                s = free[len(new)]
                new.append(s)
                req[s] = nxt
                admit_at[nxt] = log.entries
                reserved += need[nxt]
                nxt += 1
            if new:
                new = np.array(new)
                active[new] = True
                st.reset(new)
                done_tok[new] = 0
                cached[new] = prompt[req[new]] - 1
                if sch is None:
                    ptab[new] = all_ptab[req[new]]
                    low[new] = cls.low[req[new]]
                else:
                    ptr[new] = sch.start[req[new]]
                idx = np.flatnonzero(active)
                ms, prefilled = cost.admission(prompt[req[new]], woke)
                if ms > 0:
                    log.fixed(ms)
                prefills += prefilled
            fresh_round = False
        if not len(idx):
            fresh_round = True
            continue
        if sch is not None:  # single-level: each slot's next ops from its schedule
            if phase == 0:  # the round's draft steps, at once: slot i drafts in the first d[i]
                d = drafts_left[ptr[idx]]
                for s in range(int(d.max())):
                    part = idx[d > s]
                    log.step(0, cached[part] + sch.tentative[ptr[part] + s], np.zeros(len(part), np.int64), 0)
                ptr[idx] += d
                steps += int(d.max())
                phase = 1
            part = idx  # the check step: every slot (none drafts any more)
            nbuf = sch.code[ptr[part]] % W
            tent = sch.tentative[ptr[part]]
        else:
            if phase == 0:  # the round's draft steps, at once (no commit, no admission in between)
                steps += _draft_steps(st, idx, g, low, class_uniforms, log, cached)
                phase = 1
            part = idx
            nbuf = st.blen[part, phase - 1]
            tent = st.blen[part].sum(1)
        # every sequence in this step does the phase's operation (a draft: nbuf = 0, no check)
        log.step(phase, cached[part] + tent, nbuf, len(part) if phase > 0 else 0)
        steps += 1
        if sch is not None:
            commit = sch.commit[ptr[part]].astype(np.int64)
            ptr[part] += 1
            committing = part[commit > 0]
            commit = commit[commit > 0]
        else:
            commit, committing = _advance_phase(st, part, phase, ptab, low, uniforms, class_uniforms, cols, k, windows)
        if len(committing):
            r = req[committing]
            take = np.minimum(commit, max_new[r] - done_tok[committing])
            done_tok[committing] += take
            cached[committing] += take
            e = len(r)
            ev_req[n_ev:n_ev + e] = r
            ev_tok[n_ev:n_ev + e] = take
            ev_at[n_ev:n_ev + e] = log.entries
            n_ev += e
            gone = committing[done_tok[committing] >= max_new[r]]
            if len(gone):
                active[gone] = False
                reserved -= float(need[req[gone]].sum())
                finished += len(gone)
                req[gone] = -1
                idx = np.flatnonzero(active)
        # the next step (Batch._advance)
        if phase > 0:
            j = phase + 1  # the check just done filled buffer j
            if len(idx) and j < k and sch is None and (st.cascade[idx] == j).any():
                phase = j
            else:
                phase, fresh_round = 0, True
    settle()
    ev_req, ev_ms, ev_tok = ev_req[:n_ev], ev_ms[:n_ev], ev_tok[:n_ev]
    first_ms, last_ms = emission_times(n, ev_req, ev_ms)
    return ServeRun(arrival_s, prompt, max_new, admit_ms, first_ms, last_ms, ev_req, ev_ms, ev_tok, steps, prefills)


class _StepLog(EntryClock):
    """The synchronous engine's clock: prefill forwards (fixed ms) and decode steps (the
    phase, each sequence's cached tokens and buffered tokens checked) are recorded, and
    costed together in `flush` with StepCost.step's operations in the same order, over
    arrays (so the same values): sums over a step's sequences are taken in slot order
    (np.bincount adds its weights one by one, as StepCost.step's sum over rows does), the
    noise draws are taken one per decode step in time order, and the clock adds the costs
    one by one (np.cumsum), as the step-by-step engine added each step to its clock."""

    def _reset(self):
        super()._reset()
        self.st_at, self.st_phase, self.st_checks, self.st_ctx, self.st_nbuf = [], [], [], [], []

    def step(self, phase: int, ctx: np.ndarray, nbuf: np.ndarray, checks: int) -> None:
        """A decode step whose sequences (cached tokens ctx) all do the phase's operation:
        a draft (phase 0: one row through range 1) or a level-(phase+1) check of their
        nbuf-token buffer (one row through ranges 1..phase, nbuf + 1 through range phase+1)."""
        self.st_at.append(self.entries)
        self.st_phase.append(phase)
        self.st_checks.append(checks)
        self.st_ctx.append(ctx)
        self.st_nbuf.append(nbuf)
        self.entries += 1

    def flush(self) -> tuple[int, np.ndarray]:
        """Cost the pending entries; returns the first one's number and the time before
        each and after the last (pending + 1 values, the first the time known before)."""
        costs = np.zeros(self.pending)
        if self.fx_at:
            costs[np.array(self.fx_at) - self.base] = self.fx_ms
        if self.st_at:
            costs[np.array(self.st_at) - self.base] = self._step_costs()
        return self._advance(costs)

    def _step_costs(self) -> np.ndarray:
        """StepCost.step (then StepCost.jitter) of every recorded decode step."""
        c, k = self.cost, self.k
        phase = np.array(self.st_phase, np.int64)
        m = np.array([len(x) for x in self.st_ctx], np.int64)
        checks = np.array(self.st_checks, np.int64)
        S = len(m)
        step_of = np.repeat(np.arange(S), m)  # each recorded sequence's step
        ctx = np.concatenate(self.st_ctx).astype(np.int64)
        nbuf = np.concatenate(self.st_nbuf).astype(np.int64)
        lv = np.arange(k)[None, :]
        ph = phase[:, None]
        # rows per layer range of each sequence (StepCost.step's `rows`), then per step
        rows = np.where(lv < phase[step_of][:, None], 1, np.where(lv == phase[step_of][:, None], (nbuf + 1)[:, None], 0))
        nb_sum = np.bincount(step_of, weights=nbuf, minlength=S).astype(np.int64)
        tot = np.where(lv < ph, m[:, None], np.where(lv == ph, (nb_sum + m)[:, None], 0))
        nseq_r = np.where(lv <= ph, m[:, None], 0)
        nb_last = c.att.shape[1] - 1
        if c.measured:  # the kernel at each range's mean context (rows beyond 1 add to it)
            ctx_sum = np.bincount(step_of, weights=ctx, minlength=S).astype(np.int64)
            csum = np.where(lv < ph, ctx_sum[:, None], np.where(lv == ph, (ctx_sum + nb_sum)[:, None], 0))
            mean_ctx = csum / np.maximum(nseq_r, 1)
            att = c.att[nseq_r, np.minimum(mean_ctx.astype(np.int64) // CTX_BUCKET, nb_last)]
        elif c.padded:  # every sequence against the longest (StepCost.seq_att), per step
            on = rows > 0
            rmax, end = np.zeros((S, k), np.int64), np.zeros((S, k), np.int64)
            np.maximum.at(rmax, step_of, rows)
            np.maximum.at(end, step_of, np.where(on, ctx[:, None] + rows, 0))
            att = c.padded_att(nseq_r, rmax, end)
        else:  # per-sequence increments, summed over each step's sequences in slot order
            cb = np.minimum(ctx // CTX_BUCKET, nb_last)
            each = c.att[rows, cb[:, None]]  # (sequences, k)
            att = np.stack([np.bincount(step_of, weights=each[:, j], minlength=S) for j in range(k)], 1)
            if c.floor:
                att = np.where(tot > 0, np.maximum(att, c.floor), 0.0)
        per = c.linear(nseq_r, tot) + att + np.where(tot > 0, c.per_layer, 0.0)
        ms = c.overhead(m, checks) + (c.span[None, :] * per).sum(1) + c.head[nb_sum + m]
        if c.noise is not None:  # StepCost.jitter: one draw per decode step, in time order
            ms = ms * c.noise.scale(c.noise.take(S), ms)
        return ms
