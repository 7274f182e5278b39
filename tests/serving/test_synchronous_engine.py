"""The synchronous engine for plans of depth >= 3 (serving._run_synchronous) against the
slot-by-slot engine it replaced, kept here as the reference: the same seed gives the same
run, value for value (admission, emission and finish times, every emission event, steps,
prefills), across cost tables (measured decode kernel, per-sequence attention with and
without a kernel floor, a serving calibration), depths 3 and 4, a binding KV capacity,
per-request acceptance spreads, idle gaps and a saturated queue."""
import numpy as np
import pytest

from hispec_sim import schema, serving, traffic
from hispec_sim.serving import BON, CTX_BUCKET, ServeRun, _advance


def reference_synchronous(cost, plan, rates, arrival_s, prompt, max_new, need, kv_cap, B, rng):
    """hispec_sim/serving.py's synchronous loop as it stood before the compact engine
    (git c5366eb, simulate_arrays after `if not sync or k == 2:`), verbatim; its buffer
    updates are serving._advance's (shared with the ragged engine; the next operation it
    sets per slot is the ragged schedule's, which this loop does not read)."""
    n = len(arrival_s)
    k, g, windows = plan.depth, plan.propose, list(plan.windows)
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
            woke = running == 0 and nxt < n and arr_ms[nxt] > t
            if woke:
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
                    ms, prefilled = cost.admission(prompt[req[new]], woke)
                    t += ms
                    prefills += prefilled
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
            commit, committing = _advance(idx, o, nbuf, blen, btype, slot_rates, rng, cols, k, g, windows, op)
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



# --------------------------------------------------------------------------- the comparison


def _reference_run(table, num_layers, acc, plan, arrival_s, prompt, max_new, limits, seed):
    """simulate_arrays' set-up (same draws before the engine), then the reference engine."""
    rng = np.random.default_rng(seed)
    n, B = len(arrival_s), limits.max_batch
    rates = serving.request_rates(acc, plan, n, rng)
    need = serving.reservation(plan, prompt, max_new)
    kv_cap = limits.kv_tokens if limits.kv_tokens is not None else np.inf
    max_ctx = int((prompt + max_new).max()) + plan.max_overshoot + CTX_BUCKET
    cost = serving.StepCost(table, plan, num_layers, B, max_ctx, prompt)
    return reference_synchronous(cost, plan, rates, arrival_s, prompt, max_new, need, kv_cap, B, rng)


def _requests(qps, count, prompts, outputs, seed):
    tr = schema.Traffic(qps=qps, requests=count, prompt_len=schema.LengthDist.parse(prompts, "p"),
                        output_len=schema.LengthDist.parse(outputs, "o"), seed=seed)
    reqs = traffic.generate(tr)
    return (np.array([r.arrival_s for r in reqs]), np.array([r.prompt_len for r in reqs]),
            np.array([r.max_new_tokens for r in reqs]))


def _without_kernel(table, floor):
    """The table with no measured decode kernel: per-sequence attention increments (floor or not)."""
    att = table.attention.model_copy(update={"decode_batch": [], "decode_context": [], "decode_ms": [], "floor_ms": floor})
    return table.model_copy(update={"attention": att})


def _scaled_forward(table):
    """The calibration's forward scale away from 1 (every layer cost times it)."""
    return table.model_copy(update={"serving": table.serving.model_copy(update={"forward_scale": 1.3})})


def _admission_costs(table):
    """Admissions priced beyond the prefill grid: their own prefill scale, admit and wake ms."""
    return table.model_copy(update={"serving": table.serving.model_copy(
        update={"prefill_scale": 1.1, "admit_ms": 0.3, "wake_ms": 0.9})})


def _a100():
    p = schema.load_profile("a100_llama70b")
    return p.table(), p.workload(), p.model.num_layers


def _tiny():
    """The shipped CPU profile with deterministic steps: the noisy engines are compared (to
    1e-9: the order of float products differs) in tests/serving/test_step_noise.py."""
    p = schema.load_profile("cpu_hispec_tiny")
    t = p.table()
    return t.model_copy(update={"serving": t.serving.model_copy(update={"step_noise": None})}), p.workload(), \
        p.model.num_layers


def _tiny_joint(sigma=None):
    """The measured joint (traces): a level's pass rate depends on how the token got into
    its buffer (accepted, a correction, a bonus); per-request rates drawn logit-normal or not."""
    table, acc, layers = _tiny()
    spread = None if sigma is None else schema.AcceptanceSpread(
        family="logit_normal", sigma=sigma, source=schema.Source(kind="assumed", detail="test"))
    return table, acc.model_copy(update={"spread": spread}), layers


CASES = {
    # measured decode kernel (+ floor), saturated: a queue, the batch full, churn at every top check
    "kernel_saturated": (_a100, lambda t: t, [17, 42, 80], 2, [9], 300, 40.0, 16, None, "uniform:64:512",
                         "uniform:8:96"),
    # per-sequence attention with the kernel floor, depth 4, a moderate load: admissions wait for the clock
    "floor_depth4": (_a100, lambda t: _without_kernel(t, 0.015), [10, 30, 55, 80], 2, [4, 5], 200, 5.0, 12, None,
                     "uniform:16:300", "uniform:4:64"),
    # per-sequence attention, no floor, a binding KV capacity
    "no_floor_kv": (_a100, lambda t: _without_kernel(t, 0.0), [23, 50, 80], 3, [6], 200, 40.0, 32, 6000,
                    "uniform:16:300", "uniform:4:64"),
    # the measured joint with logit-normal per-request rates
    "joint_logit_normal": (lambda: _tiny_joint(0.8), lambda t: t, [4, 10, 16], 3, [4], 150, 30.0, 16, None,
                           "uniform:8:128", "uniform:1:64"),
    # a serving calibration (per-sequence / per-check host costs, layer overhead, verification), an
    # empirical per-request spread, light load: idle gaps (admissions after them pay wake_ms)
    "calibrated_light": (_tiny, _admission_costs, [4, 10, 16], 2, [3], 150, 3.0, 8, None, "uniform:8:128",
                         "uniform:1:48"),
    # the measured joint: the three conditional rates differ; the forward scale != 1
    "calibrated_depth4": (_tiny_joint, _scaled_forward, [2, 6, 10, 16], 1, [2, 3], 150, 60.0, 8, 900,
                          "uniform:8:128", "uniform:1:48"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_synchronous_engine_equals_the_slot_by_slot_reference(case):
    load, edit, levels, g, windows, count, qps, batch, kv, prompts, outputs = CASES[case]
    table, acc, layers = load()
    table = edit(table)
    plan = schema.Plan(levels=levels, propose=g, windows=windows, batching="synchronous")
    limits = schema.ServeLimits(max_batch=batch, kv_tokens=kv)
    arrival, prompt, out = _requests(qps, count, prompts, outputs, seed=len(case))
    for seed in (0, 1):
        got = serving.simulate_arrays(table, layers, acc, plan, arrival, prompt, out, limits, seed)
        want = _reference_run(table, layers, acc, plan, arrival, prompt, out, limits, seed)
        assert (got.steps, got.prefills) == (want.steps, want.prefills)
        for field in ("admit_ms", "first_ms", "last_ms", "event_req", "event_ms", "event_tokens"):
            assert np.array_equal(getattr(got, field), getattr(want, field)), field
        assert want.prefills > 1 and want.event_req.size > count  # the case exercised admissions and several events


def test_the_cases_exercise_what_they_claim():
    """Saturated: requests queue; moderate: most are admitted at the next round end; light: the
    replica idles (admission at the arrival itself); kv: the capacity holds requests back."""
    def run(case, seed=0):
        load, edit, levels, g, windows, count, qps, batch, kv, prompts, outputs = CASES[case]
        table, acc, layers = load()
        plan = schema.Plan(levels=levels, propose=g, windows=windows, batching="synchronous")
        arrival, prompt, out = _requests(qps, count, prompts, outputs, seed=len(case))
        lim = schema.ServeLimits(max_batch=batch, kv_tokens=kv)
        return serving.simulate_arrays(edit(table), layers, acc, plan, arrival, prompt, out, lim, seed), lim, plan, prompt, out

    r, lim, *_ = run("kernel_saturated")
    assert np.median(r.admit_ms - r.arrival_s * 1e3) > 0  # most requests wait in the queue
    r, *_ = run("floor_depth4")
    assert np.median(r.admit_ms - r.arrival_s * 1e3) < 100
    r, *_ = run("calibrated_light")
    assert (r.admit_ms == r.arrival_s * 1e3).sum() > 10
    for case in ("calibrated_depth4", "joint_logit_normal"):
        load = CASES[case][0]
        rates = serving.request_rates(load()[1], schema.Plan(levels=CASES[case][2], propose=1, windows=CASES[case][4]),
                                      50, np.random.default_rng(0))
        assert (np.ptp(rates[:, 1:, :], axis=2) > 0.05).all()  # after accept / after reject / marginal differ
    r, lim, plan, prompt, out = run("no_floor_kv")
    need = serving.reservation(plan, prompt, out)
    # at some admission the next request in line did not fit although a slot was free
    starts = np.unique(r.admit_ms)
    blocked = 0
    for t in starts:
        inside = (r.admit_ms <= t) & (r.last_ms > t)
        nxt = np.flatnonzero(r.admit_ms > t)
        if len(nxt) and inside.sum() < lim.max_batch and r.arrival_s[nxt[0]] * 1e3 <= t:
            blocked += need[inside].sum() + need[nxt[0]] > lim.kv_tokens
    assert blocked > 0
