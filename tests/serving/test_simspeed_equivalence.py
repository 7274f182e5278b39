"""Speed work on the serving simulator must not move a single value: the adaptive
synchronous engine (serving_adaptive._run_synchronous, steps costed later together)
against the step-by-step engine it replaced, kept here verbatim as the reference (with the
module's own per-step draws, serving_adaptive._advance, which the speed work left as it was), and
StepCost.prefill's per-prompt-count rows against one scalar serving_layer_ms call. Same
seed, same run, value for value (admission, emission and finish times, every emission
event, steps, prefills): single-level and 3-level adaptive plans, with and without step
noise, with a measured decode kernel and with per-sequence attention, a binding KV
capacity, idle gaps and a saturated queue."""
from __future__ import annotations

import numpy as np
import pytest

from hispec_sim import schema, serving, serving_adaptive, traffic
from hispec_sim.latency import serving_layer_ms
from hispec_sim.schema import Plan
from hispec_sim.serving import ServeRun, StepCost
from hispec_sim.serving_adaptive import (  # _advance: the per-step draws, unchanged since 59dde56
    RequestClasses,
    Schedules,
    _advance,
    _State,
    buffer_width,
    pass_table,
)


def reference_adaptive_synchronous(cost: StepCost, plan: Plan, sch: Schedules | None, rates, cls: RequestClasses, rng, arrival_s, prompt,
                     max_new, need, kv_cap, B) -> ServeRun:
    """hispec_sim/serving_adaptive.py's _run_synchronous at main 59dde56, verbatim
    (step by step, each step costed by StepCost.step + StepCost.jitter as it runs)."""
    n, k, g, windows = len(arrival_s), plan.depth, plan.propose, list(plan.windows)
    width = sch.width if sch is not None else buffer_width(plan)
    W = width + 1
    cols = np.arange(width)
    crng = rng.spawn(1)[0] if sch is None else None
    req = np.full(B, -1, np.int64)
    active = np.zeros(B, bool)
    st = _State(B, plan, width)
    ptab = np.zeros((B, cls.tags, k + 1))
    low = np.zeros((B,) + cls.low.shape[1:])
    all_ptab = pass_table(rates, cls, k) if sch is None else None
    done_tok = np.zeros(B, np.int64)
    ptr = np.zeros(B, np.int64)  # single-level: the slot's next op (flat index into sch)
    arr_ms = arrival_s * 1e3
    admit_ms, first_ms, last_ms = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    ev_req, ev_ms, ev_tok = [], [], []
    reserved = 0.0
    nxt = 0
    t = float(arr_ms[0]) if n else 0.0
    finished = steps = prefills = 0
    phase = 0  # 0 = draft steps, j >= 1 = level-(j+1) check of buffer j (every running sequence)
    fresh_round = True
    idx = np.zeros(0, np.int64)
    while finished < n:
        if fresh_round:  # round boundary: admission (FIFO, head of line), one prefill forward
            woke = not len(idx) and nxt < n and arr_ms[nxt] > t
            if woke:
                t = float(arr_ms[nxt])
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
                st.reset(new)
                done_tok[new] = 0
                if sch is None:
                    ptab[new] = all_ptab[req[new]]
                    low[new] = cls.low[req[new]]
                else:
                    ptr[new] = sch.start[req[new]]
                idx = np.flatnonzero(active)
                ms, prefilled = cost.admission(prompt[req[new]], woke)
                t += ms
                prefills += prefilled
            fresh_round = False
        if not len(idx):
            fresh_round = True
            continue
        if sch is not None:  # single-level: each slot's next op from its schedule
            code = sch.code[ptr[idx]]
            o_all, nbuf_all = code // W, code % W
            part = idx[o_all == phase] if phase == 0 else idx
            if phase == 0 and not len(part):
                phase = 1
                continue
            sel = np.isin(idx, part)
            o, nbuf = o_all[sel], nbuf_all[sel]
            tent = sch.tentative[ptr[part]]
        else:
            part = idx[(st.blen[idx, 0] < g) & ~st.unsure[idx]] if phase == 0 else idx
            if phase == 0 and not len(part):
                phase = 1
                continue
            o = np.full(len(part), phase, np.int64)
            nbuf = st.blen[part, phase - 1] if phase > 0 else np.zeros(len(part), np.int64)
            tent = st.blen[part].sum(1)
        # rows per layer range: a draft 1 row through range 1; a level-(j+1) check of an
        # n-token buffer 1 row through ranges 1..j and n+1 rows through range j+1 (every
        # sequence in this step does the same operation: the phase's)
        rows = np.zeros((len(part), k), np.int64)
        rows[:, :phase] = 1
        rows[:, phase] = nbuf + 1 if phase > 0 else 1
        head_rows = np.zeros(k, np.int64)
        head_rows[phase] = rows[:, phase].sum()
        ctx = prompt[req[part]] - 1 + done_tok[part] + tent
        t += cost.jitter(cost.step(rows, ctx, head_rows, int((o > 0).sum())))
        steps += 1
        if sch is not None:
            commit = sch.commit[ptr[part]].astype(np.int64)
            ptr[part] += 1
            committing = part[commit > 0]
            commit = commit[commit > 0]
        else:
            commit, committing = _advance(st, part, o, ptab, low, rng, crng, cols, k, windows)
        if len(committing):
            r = req[committing]
            take = np.minimum(commit, max_new[r] - done_tok[committing])
            done_tok[committing] += take
            first_ms[r[np.isnan(first_ms[r])]] = t
            last_ms[r] = t
            ev_req.append(r)
            ev_ms.append(np.full(len(r), t))
            ev_tok.append(take)
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
    if n and np.isnan(first_ms).any():
        raise AssertionError("serving: a request never emitted a token")
    cat = lambda x, dt: np.concatenate(x).astype(dt) if x else np.zeros(0, dt)
    return ServeRun(arrival_s, prompt, max_new, admit_ms, first_ms, last_ms, cat(ev_req, np.int64), cat(ev_ms, float),
                    cat(ev_tok, np.int64), steps, prefills)


# --------------------------------------------------------------------------- the cases


def _reference_adaptive(table, layers, acc, plan, arrival_s, prompt, max_new, limits, seed):
    """serving_adaptive.simulate_adaptive's set-up (the same draws before the engine), then
    the reference engine."""
    rng = np.random.default_rng(seed)
    n, B = len(arrival_s), limits.max_batch
    picks: list = []
    rates = serving.request_rates(acc, plan, n, rng, picks)
    cls = serving_adaptive.request_classes(acc, plan, n, picks)
    need = serving.reservation(plan, prompt, max_new)
    kv_cap = limits.kv_tokens if limits.kv_tokens is not None else np.inf
    max_ctx = int((prompt + max_new).max()) + plan.max_overshoot + serving.CTX_BUCKET
    cost = StepCost(table, plan, layers, B, max_ctx, prompt, seed=seed)
    sch = serving_adaptive.draw_adaptive_schedules(plan, rates, cls, max_new, rng) if plan.depth == 2 else None
    return reference_adaptive_synchronous(cost, plan, sch, rates, cls, rng, arrival_s, prompt, max_new, need, kv_cap, B)


def _requests(qps, count, prompts, outputs, seed):
    tr = schema.Traffic(qps=qps, requests=count, prompt_len=schema.LengthDist.parse(prompts, "p"),
                        output_len=schema.LengthDist.parse(outputs, "o"), seed=seed)
    reqs = traffic.generate(tr)
    return (np.array([r.arrival_s for r in reqs]), np.array([r.prompt_len for r in reqs]),
            np.array([r.max_new_tokens for r in reqs]))


def _tiny(noise=True):
    """The shipped CPU profile (a serving calibration with step noise, an empirical
    per-request spread paired with its trace rows, per-sequence attention); noise=False:
    deterministic steps."""
    p = schema.load_profile("cpu_hispec_tiny")
    t = p.table()
    if not noise:
        t = t.model_copy(update={"serving": t.serving.model_copy(update={"step_noise": None})})
    return t, p.workload(), p.model.num_layers


def _tiny_admission_costs():
    """Deterministic steps; admissions at their own prefill scale, plus admit and wake ms."""
    t, acc, layers = _tiny(noise=False)
    sv = t.serving.model_copy(update={"prefill_scale": 1.1, "admit_ms": 0.3, "wake_ms": 0.9})
    return t.model_copy(update={"serving": sv}), acc, layers


def _tiny_kernel():
    """The CPU profile with a measured decode kernel and a floor (a100_llama70b's grids,
    scaled down): attention read at the batch's mean context."""
    t, acc, layers = _tiny()
    att = schema.load_profile("a100_llama70b").table().attention
    scaled = att.model_copy(update={"decode_ms": [[v * 0.05 for v in r] for r in att.decode_ms], "floor_ms": 0.001})
    return t.model_copy(update={"attention": scaled}), acc, layers


def _tiny_floor():
    """Per-sequence attention increments floored (no kernel grid)."""
    t, acc, layers = _tiny(noise=False)
    att = schema.load_profile("a100_llama70b").table().attention
    floor = att.model_copy(update={"decode_batch": [], "decode_context": [], "decode_ms": [], "prefill_tokens": [],
                                   "prefill_context": [], "prefill_ms": [], "floor_ms": 0.0005})
    return t.model_copy(update={"attention": floor}), acc, layers


SINGLE = {"levels": [2, 16], "propose": 6, "draft_confidence": 0.3}
DEEP = {"levels": [1, 4, 16], "propose": 3, "windows": [4], "draft_confidence": 0.5, "escalate_confidence": [0.5]}
ESCALATE = {"levels": [1, 2, 16], "propose": 1, "windows": [3], "escalate_confidence": [0.3]}
CASES = {  # profile, plan, requests, qps, max batch, KV tokens, prompt lengths, output lengths
    # a queue, the batch full, churn at every commit; step noise
    "single_saturated": (_tiny, SINGLE, 150, 40.0, 16, None, "uniform:8:128", "uniform:1:64"),
    "deep_saturated": (_tiny, DEEP, 150, 40.0, 16, None, "uniform:8:128", "uniform:1:64"),
    # light load: idle gaps (admission at the arrival itself, then wake_ms), deterministic steps
    "escalate_light": (_tiny_admission_costs, ESCALATE, 120, 3.0, 8, None, "uniform:8:128", "uniform:1:48"),
    # a binding KV capacity
    "deep_kv": (_tiny, DEEP, 120, 30.0, 16, 900, "uniform:8:128", "uniform:1:48"),
    # a measured decode kernel; per-sequence attention with a floor
    "single_kernel": (_tiny_kernel, SINGLE, 120, 30.0, 16, None, "uniform:8:128", "uniform:1:48"),
    "escalate_floor": (_tiny_floor, ESCALATE, 120, 30.0, 16, None, "uniform:8:128", "uniform:1:48"),
}


def same_run(got: ServeRun, want: ServeRun) -> None:
    assert (got.steps, got.prefills) == (want.steps, want.prefills)
    for field in ("admit_ms", "first_ms", "last_ms", "event_req", "event_ms", "event_tokens"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field


@pytest.mark.parametrize("case", sorted(CASES))
def test_adaptive_synchronous_engine_equals_the_step_by_step_reference(case):
    load, kw, count, qps, batch, kv, prompts, outputs = CASES[case]
    table, acc, layers = load()
    plan = schema.Plan(**kw, batching="synchronous")
    limits = schema.ServeLimits(max_batch=batch, kv_tokens=kv)
    arrival, prompt, out = _requests(qps, count, prompts, outputs, seed=len(case))
    for seed in (0, 1):
        got = serving.simulate_arrays(table, layers, acc, plan, arrival, prompt, out, limits, seed)
        want = _reference_adaptive(table, layers, acc, plan, arrival, prompt, out, limits, seed)
        same_run(got, want)
        assert want.prefills > 1 and want.event_req.size > count  # admissions and several events exercised
    if case == "escalate_light":
        assert (got.admit_ms == arrival * 1e3).sum() > 10  # the replica idled
    if case == "single_saturated":
        assert np.median(got.admit_ms - arrival * 1e3) > 0  # requests queued


@pytest.mark.parametrize("noise", [True, False])
def test_prefill_rows_equal_one_scalar_call(noise):
    """StepCost.prefill reads the prefill grid from a row per number of prompts: the value of
    one serving_layer_ms(prefill=True) call at (prompts, prompts x the longest) x the prefill
    scale, less the padding rows' linear part, bit for bit."""
    table, _, layers = _tiny(noise)
    table = table.model_copy(update={"serving": table.serving.model_copy(update={"forward_scale": 0.7,
                                                                                 "prefill_scale": 1.3})})
    rng = np.random.default_rng(3)
    prompts = rng.integers(1, 700, 300)
    cost = StepCost(table, schema.Plan(levels=[2, 16], propose=3), layers, 64, 2000, prompts)
    for i in range(200):
        p = 64 if i % 50 == 0 else int(rng.integers(1, 9))  # mostly a few prompts, as admissions run
        pick = rng.choice(prompts, p)
        n = np.maximum(pick - 1, 0)
        total = int(n.sum())
        if total == 0:
            continue
        k, top = int((n > 0).sum()), int(n.max())  # every prompt padded to the longest, less the padding's rows
        lin = 1.3 * float(serving_layer_ms(table, k, k * top, prefill=True)) - cost.prefill_row * (k * top - total)
        want = float(n.size and layers * (lin + cost.prefill_att[n].sum() + cost.per_layer) + cost.fixed)
        assert cost.prefill(pick) == want
    assert cost._prefill_grid_ms(3, 10 ** 6) == 1.3 * float(serving_layer_ms(table, 3, 10 ** 6, prefill=True))  # beyond the rows


def test_step_overhead_table_equals_the_function():
    """StepCost.overhead reads a (sequences, checks) table (up to max batch 512; beyond, and
    here with the table dropped, it calls latency.serving_step_overhead_ms): the same
    values either way, scalars and arrays."""
    table, _, layers = _tiny(noise=False)
    cost = StepCost(table, schema.Plan(levels=[2, 16], propose=1), layers, 64, 64)
    nseq = np.arange(65)
    for checks in (0, 1, 17, 64):
        got = cost.overhead(nseq, np.minimum(checks, nseq))
        assert got[0] == 0.0 and float(cost.overhead(5, min(checks, 5))) == float(got[5])
        cost.overhead_at, table_at = None, cost.overhead_at
        assert np.array_equal(got, cost.overhead(nseq, np.minimum(checks, nseq)))
        cost.overhead_at = table_at


@pytest.mark.parametrize("case", ["single_saturated", "deep_kv", "single_kernel"])
@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_linear_and_prefill_tables_cut_short_give_the_same_run(monkeypatch, case, batching):
    """StepCost tabulates the batched grid (sequences x rows) and the prefill rows up to
    LINEAR_TABLE_CELLS cells (their size grows as max_batch^2); beyond, one call each. With
    no table at all, every engine's run is the same, value for value."""
    load, kw, count, qps, batch, kv, prompts, outputs = CASES[case]
    table, acc, layers = load()
    plan = schema.Plan(**{k: v for k, v in kw.items() if "confidence" not in k}, batching=batching)
    limits = schema.ServeLimits(max_batch=batch, kv_tokens=kv)
    arrival, prompt, out = _requests(qps, count, prompts, outputs, seed=len(case))
    want = serving.simulate_arrays(table, layers, acc, plan, arrival, prompt, out, limits, 0)
    monkeypatch.setattr(serving, "LINEAR_TABLE_CELLS", 0)
    cost = StepCost(table, plan, layers, batch, 4096, prompt)
    assert cost._linear_grid is None and cost.prefill(prompt[:3]) > 0 and not cost.prefill_linear_at
    same_run(serving.simulate_arrays(table, layers, acc, plan, arrival, prompt, out, limits, 0), want)
