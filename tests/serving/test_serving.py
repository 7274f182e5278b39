"""Properties of the request-level serving simulator (hispec_sim.serving)."""
import numpy as np
import pytest

from hispec_sim import latency, schema, serving, traffic
from hispec_sim.acceptance import AgreementModel
from hispec_sim.analytic import predict
from hispec_sim.latency import CostModel
from hispec_sim.synthetic import synthetic_profile


def _profile(agreement=0.7, layers=16):
    """Synthetic costs that depend on tokens (so batching matters), not on context."""
    p = synthetic_profile(layers, 0.5, agreement, head_ms=0.2, overhead_ms=0.3)
    t = p.latency[0].model_copy(update={"tokens": [1, 64, 4096], "layer_ms": [[0.5, 0.5], [0.8, 0.8], [20.0, 20.0]],
                                        "head_ms": [0.2, 0.3, 5.0]})
    return p.model_copy(update={"latency": [t]})


def _run(p, plan, arrival, prompt, out, limits, seed=0):
    return serving.simulate_arrays(p.latency[0], p.model.num_layers, p.workload(), plan, np.asarray(arrival, float),
                                   np.asarray(prompt), np.asarray(out), limits, seed)


def test_autoregressive_alone_reproduces_the_analytic_step():
    p = _profile()
    t = p.latency[0]
    plan = schema.Plan(levels=[16])
    run = _run(p, plan, [0.0, 100.0], [40, 7], [50, 3], schema.ServeLimits(max_batch=1))
    step = CostModel(t, 1, 0).autoregressive_ms(16)
    m = run.metrics()
    for r, prompt in zip(m, [40, 7]):
        assert r.queue_ms == 0
        assert r.ttft_ms == pytest.approx(float(latency.prefill_ms(t, 16, prompt - 1)) + step, rel=1e-9)
        assert r.tbt_ms == pytest.approx([step] * (r.output_tokens - 1), rel=1e-9)


@pytest.mark.parametrize("levels,propose,windows", [([4, 16], 3, []), ([2, 6, 16], 2, [3])])
def test_speculative_alone_matches_the_analytic_time_per_token(levels, propose, windows):
    p = _profile(agreement=0.75)
    plan = schema.Plan(levels=levels, propose=propose, windows=windows)
    n = 20
    run = _run(p, plan, np.arange(n) * 1e4, np.full(n, 1), np.full(n, 3000), schema.ServeLimits(max_batch=1))
    decode_ms = (run.last_ms - run.arrival_s * 1e3).sum()  # a one-token prompt needs no prefill
    per_token = decode_ms / run.output_tokens.sum()
    acc = p.workload()
    ana = predict(CostModel(p.latency[0], 1, acc.context, 64), AgreementModel(acc), [plan])
    assert per_token == pytest.approx(float(ana.latency_ms[0]), rel=0.03)


def test_latency_grows_with_load():
    p = _profile()
    plan = schema.Plan(levels=[4, 16], propose=3)
    lim = schema.ServeLimits(max_batch=8)
    e2e = []
    for qps in (5.0, 20.0, 80.0):
        tr = schema.Traffic(qps=qps, requests=300, prompt_len=schema.LengthDist.parse("uniform:8:64", "p"),
                            output_len=schema.LengthDist.parse("uniform:8:64", "o"), seed=2)
        reqs = traffic.generate(tr)
        s = serving.quick_summary(serving.simulate(p.latency[0], 16, p.workload(), plan, reqs, lim, 0), lim)
        e2e.append((s["e2e_ms"]["mean"], s["ttft_ms"]["p99"]))
    assert e2e[0][0] < e2e[1][0] < e2e[2][0]
    assert e2e[0][1] < e2e[2][1]


def test_prefill_cost_grows_with_the_prompt():
    prof = schema.load_profile("a100_llama70b")
    t = prof.table()
    n = np.array([1, 16, 128, 1024, 4096, 8192])
    pf = latency.prefill_ms(t, 80, n)
    assert np.all(np.diff(pf) > 0)
    att = latency.prefill_attention_ms(t, n)
    # measured kernel (the profile's A100 FlashAttention file): launch-bound floor up to a few dozen tokens
    assert np.all(np.diff(att) >= 0) and np.all(np.diff(att[2:]) > 0) and att[0] == t.attention.floor_ms
    assert att[-1] / att[-2] > 2.5  # causal attention: superlinear
    # beyond the table (4096 tokens) the linear part is extrapolated in proportion
    assert latency.linear_layer_ms(t, 8192) == pytest.approx(2 * latency.linear_layer_ms(t, 4096))


def test_measured_attention_kernel_and_floor():
    prof = schema.load_profile("a100_llama70b")
    t = prof.table().model_copy(update={"attention": None})  # the roofline (the shipped table carries the kernel)
    k = schema.AttentionKernel(decode_batch=[1, 32], decode_context=[32, 2048], decode_ms=[[0.015, 0.017], [0.012, 0.108]],
                               floor_ms=0.012, source=schema.Source(kind="measured", detail="test"))
    tk = t.model_copy(update={"attention": k})
    assert float(latency.decode_attention_ms(tk, 1, 512)) == pytest.approx(0.015 + 0.002 * (512 - 32) / 2016)
    assert float(latency.decode_attention_ms(t, 1, 512)) < 0.001  # roofline without the kernel
    floor_only = t.model_copy(update={"attention": schema.AttentionKernel(floor_ms=0.013, source=k.source)})
    assert float(latency.decode_attention_ms(floor_only, 1, 512)) == pytest.approx(0.013)
    # the analytic cost model reads the same kernel
    assert CostModel(tk, 1, 512).autoregressive_ms(80) > CostModel(t, 1, 512).autoregressive_ms(80) + 80 * 0.014
    run = serving.simulate_arrays(tk, 80, prof.workload(), schema.Plan(levels=[80]), np.zeros(4), np.full(4, 100),
                                  np.full(4, 10), schema.ServeLimits(max_batch=4))
    assert run.steps == 10


def test_summary_agrees_with_traffic_summarize_and_kv_limit_holds():
    p = _profile()
    plan = schema.Plan(levels=[2, 6, 16], propose=2, windows=[3], batching="synchronous")
    tr = schema.Traffic(qps=50.0, requests=60, prompt_len=schema.LengthDist.parse("uniform:4:40", "p"),
                        output_len=schema.LengthDist.parse("uniform:1:30", "o"), seed=5)
    reqs = traffic.generate(tr)
    lim = schema.ServeLimits(max_batch=8, kv_tokens=2 * (40 + 30 + plan.max_overshoot), slo_ttft_ms=50,
                             slo_tbt_ms=5)
    run = serving.simulate(p.latency[0], 16, p.workload(), plan, reqs, lim, 3)
    ref = traffic.summarize(run.metrics(), lim)
    got = serving.quick_summary(run, lim)
    for key in ("throughput_tokens_per_s", "goodput_requests_per_s", "slo_attained"):
        assert got[key] == pytest.approx(ref[key])
    for key in ("ttft_ms", "tbt_ms", "tpot_ms", "e2e_ms", "queue_ms"):
        for q in ("mean", "p50", "p99"):
            assert got[key][q] == pytest.approx(ref[key][q], abs=1e-9)
    # the KV reservations of the requests running together never exceed the capacity
    starts, ends = run.admit_ms, run.last_ms
    need = serving.reservation(plan, run.prompt_tokens, run.output_tokens)
    held = [need[(starts <= t) & (ends > t)].sum() for t in starts]
    assert max(held) <= lim.kv_tokens and max(held) > lim.kv_tokens / 2
    assert all(m.output_tokens == r.max_new_tokens for m, r in zip(run.metrics(), reqs))


def test_per_request_acceptance_spread():
    acc = _profile().workload()
    plan = schema.Plan(levels=[4, 16], propose=2)
    rng = np.random.default_rng(0)
    flat = serving.request_rates(acc, plan, 500, rng)
    assert np.ptp(flat) == 0
    src = schema.Source(kind="assumed", detail="test")
    spread = acc.model_copy(update={"spread": schema.AcceptanceSpread(family="logit_normal", sigma=1.0, source=src)})
    r = serving.request_rates(spread, plan, 4000, rng)[:, 0, 2]
    assert 0.1 < r.std() < 0.3 and abs(np.median(r) - 0.7) < 0.03
    m = np.asarray(acc.agreement)
    emp = acc.model_copy(update={"spread": schema.AcceptanceSpread(
        family="empirical", per_request=[(m * 0.5).tolist(), m.tolist()], weights=[1, 3], source=src)})
    r = serving.request_rates(emp, plan, 4000, rng)[:, 0, 2]
    assert set(np.round(r, 6)) == {0.35, 0.7} and abs((r == 0.7).mean() - 0.75) < 0.03


def test_measured_requests_keep_the_workloads_joint_rates():
    """On an empirical spread with a trace-based joint (the shipped profile), each served
    request's conditional rates are the workload's shifted as its marginal moved, as the
    analytic model takes them: requests served one at a time cost what `evaluate` predicts
    (twenty-first fuzz round: serve drew levels independently, +3.1 % per token on this plan,
    where the independent model is)."""
    p = schema.load_profile("cpu_hispec_tiny")
    t = p.latency[0].model_copy(update={"serving": None})  # steps priced from the batch-1 table, as predict prices
    acc = p.workload()
    assert acc.joint == "traces" and acc.spread.family == "empirical"
    plan = schema.Plan(levels=[1, 4, 16], propose=2, windows=[1])
    n, out = 300, 400  # one-token prompts, no overlap: mean context ~200
    ana = float(predict(CostModel(t, 1, 200, 64), AgreementModel(acc), [plan]).latency_ms[0])
    errs = []
    for seed in range(6):
        run = serving.simulate_arrays(t, 16, acc, plan, np.arange(n) * 1e4, np.full(n, 1), np.full(n, out),
                                      schema.ServeLimits(max_batch=1), seed)
        errs.append((run.last_ms - run.arrival_s * 1e3).sum() / run.output_tokens.sum() / ana - 1)
    assert abs(np.mean(errs)) < 0.015  # measured: -0.14 % (seed-to-seed sd 1.0 %); levels independent: +3.14 %


def test_synchronous_at_batch_one_matches_ragged_statistically():
    p = _profile(agreement=0.8)
    n = 10
    res = {}
    for b in ("ragged", "synchronous"):
        plan = schema.Plan(levels=[2, 6, 16], propose=2, windows=[3], batching=b)
        run = _run(p, plan, np.arange(n) * 1e4, np.full(n, 1), np.full(n, 800), schema.ServeLimits(max_batch=1), 1)
        res[b] = (run.last_ms - run.arrival_s * 1e3).sum() / run.output_tokens.sum()
    assert res["ragged"] == pytest.approx(res["synchronous"], rel=0.05)


def test_bad_limits_are_named():
    p = _profile()
    with pytest.raises(ValueError, match="^kv_tokens: "):
        _run(p, schema.Plan(levels=[16]), [0.0], [100], [100], schema.ServeLimits(kv_tokens=150))
    with pytest.raises(ValueError, match="^arrival_s: "):
        _run(p, schema.Plan(levels=[16]), [1.0, 0.5], [4, 4], [4, 4], schema.ServeLimits())


@pytest.mark.parametrize("levels, propose, windows", [([2, 16], 3, []), ([2, 8, 16], 4, [8]), ([1, 2, 4, 16], 4, [8, 8])])
def test_expected_forwards_count_the_drawn_schedules(levels, propose, windows):
    """check_size's estimate (the analytic model with every forward at 1 ms) is the number of
    operations the ragged engine draws, within 5 % over 2,000 requests (300 requests of this
    spread put a 4-level plan's draws anywhere from -4.6 to +8.2 % off over five seeds; 2,000:
    +1.0 to +5.0 %, mostly the last round's overshoot, which the estimate leaves out)."""
    prof = schema.load_profile("cpu_hispec_tiny")
    acc, plan = prof.workload(), schema.Plan(levels=levels, propose=propose, windows=windows)
    rng = np.random.default_rng(0)
    max_new = rng.integers(50, 300, 2000)
    drawn = serving.draw_schedules(plan, serving.request_rates(acc, plan, len(max_new), rng), max_new, rng).count.sum()
    assert drawn == pytest.approx(serving.forwards_per_token(acc, plan) * max_new.sum(), rel=0.05)


def _chunked(limits, chunk):
    return limits.model_copy(update={"prefill": "chunked", "prefill_chunk": chunk})


RUN_FIELDS = ("admit_ms", "first_ms", "last_ms", "event_req", "event_ms", "event_tokens", "steps", "prefills")


@pytest.mark.parametrize("profile", ["a100_llama70b", "cpu_hispec_tiny"])
@pytest.mark.parametrize("levels, propose, windows", [([16], 1, []), ([4, 16], 3, []), ([2, 6, 16], 2, [3])])
def test_a_chunk_that_holds_every_admitted_prompt_is_the_separate_prefill(profile, levels, propose, windows):
    """Chunked prefill with a chunk no admission exceeds runs the separate policy's process,
    value for value (one prefill forward of whole prompts per admitting iteration)."""
    p = schema.load_profile(profile)
    L = p.model.num_layers
    plan = schema.Plan(levels=[round(x * L / 16) for x in levels], propose=propose, windows=windows)
    rng = np.random.default_rng(5)
    n = 120
    arrival, prompt, out = np.cumsum(rng.exponential(0.05, n)), rng.integers(1, 200, n), rng.integers(1, 60, n)
    lim = schema.ServeLimits(max_batch=8)
    a = serving.simulate_arrays(p.table(), L, p.workload(), plan, arrival, prompt, out, lim, 3)
    b = serving.simulate_arrays(p.table(), L, p.workload(), plan, arrival, prompt, out, _chunked(lim, 10**6), 3)
    for f in RUN_FIELDS:
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f


def test_chunked_prefill_bounds_the_decode_stall():
    """Long prompts arriving while others decode: whole, each stalls the batch for its
    whole prefill; in chunks of 256 tokens, a step waits for one chunk at most (the largest
    token gap far below the whole prompts'), at the price of more prefill forwards."""
    p = schema.load_profile("a100_llama70b")
    plan = schema.Plan(levels=[80])
    n = 40
    arrival, prompt, out = np.arange(n) * 0.5, np.full(n, 4000), np.full(n, 100)
    lim = schema.ServeLimits(max_batch=16)
    runs = {c: serving.simulate_arrays(p.table(), 80, p.workload(), plan, arrival, prompt, out,
                                       lim if c is None else _chunked(lim, c), 0) for c in (None, 256)}
    gap = {c: max(g.max() for g in r.tbt_gaps()) for c, r in runs.items()}
    one_chunk = serving.StepCost(p.table(), plan, 80, 16, 4200, prompt).prefill_pieces(np.array([256]), np.array([3743]))
    assert gap[256] < one_chunk + 2 * gap[None] / 16 < gap[None] / 4
    assert runs[None].prefills <= n and runs[256].prefills >= -(-n * 3999 // 256)  # <= 256 tokens per forward
    assert int(runs[256].event_tokens.sum()) == int(runs[None].event_tokens.sum()) == n * 100


def test_chunked_prefill_limits_are_checked():
    with pytest.raises(ValueError, match="prefill_chunk"):
        schema.ServeLimits(prefill="chunked")
    with pytest.raises(ValueError, match="prefill_chunk"):
        schema.ServeLimits(prefill_chunk=64)
    p = _profile()
    lim = schema.ServeLimits(prefill="chunked", prefill_chunk=8)
    for plan in (schema.Plan(levels=[2, 6, 16], propose=2, windows=[3], batching="synchronous"),
                 schema.Plan(levels=[4, 16], propose=3, draft_confidence=0.5)):
        with pytest.raises(ValueError, match="^prefill_chunk: chunked prefill is built for ragged"):
            _run(p, plan, [0.0], [10], [10], lim)
    _run(p, schema.Plan(levels=[16], batching="synchronous"), [0.0], [10], [10], lim)
