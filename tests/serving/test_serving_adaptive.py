"""Adaptive plans in the serving simulator (hispec_sim.serving_adaptive): tau = 0 is the
fixed plan's run exactly, at batch 1 without queueing the simulated time per token is the
batch-1 analytic adaptive model's, under both batching policies; refusals."""
import numpy as np
import pytest
from factories import confident_profile, make_profile

from hispec_sim import serving
from hispec_sim.acceptance import AgreementModel
from hispec_sim.adaptive import (
    analytic_four_level,
    analytic_single_level,
    analytic_three_level,
    with_thresholds,
)
from hispec_sim.cli import main
from hispec_sim.latency import CostModel
from hispec_sim.schema import LatencyTable, Plan, Profile, ServeLimits, load_profile
from hispec_sim.serving_adaptive import simulate_adaptive


def flat_cost_profile(seed=0, layers=8, positions=1200):
    """factories.confident_profile with costs that depend on tokens but not on context (so a
    long generation keeps one cost per step)."""
    prof = confident_profile(seed, layers, positions)
    t = prof.latency[0]
    flat = LatencyTable.model_validate({**t.model_dump(), "contexts": [0, 1 << 20],
                                        "layer_ms": [[0.6 + 0.02 * n] * 2 for n in t.tokens]})
    return Profile.model_validate({**prof.model_dump(), "latency": [flat.model_dump()]})


@pytest.fixture(scope="module")
def prof():
    return flat_cost_profile()


def _run(p, plan, arrival, prompt, out, limits, seed=0, adaptive_engine=False):
    f = simulate_adaptive if adaptive_engine else serving.simulate_arrays
    return f(p.latency[0], p.model.num_layers, p.workload(), plan, np.asarray(arrival, float), np.asarray(prompt),
             np.asarray(out), limits, seed)


def _traffic(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(0.02, n)), rng.integers(4, 40, n), rng.integers(3, 30, n)


FIELDS = ("admit_ms", "first_ms", "last_ms", "event_req", "event_ms", "event_tokens")


@pytest.mark.parametrize("plan", [Plan(levels=[2, 8], propose=4), Plan(levels=[2, 5, 8], propose=3, windows=[4]),
                                  Plan(levels=[1, 3, 5, 8], propose=2, windows=[3, 2])], ids=Plan.describe)
@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_tau_zero_is_the_fixed_plan_run(prof, plan, batching):
    """The adaptive engine with every threshold 0 draws and costs exactly what the fixed
    simulation does: the same seeds give the same run (ragged: bit for bit; synchronous:
    the same steps, times equal up to the order of float additions)."""
    plan = plan.model_copy(update={"batching": batching})
    zero = with_thresholds(plan, 0.0, [0.0] * (plan.depth - 2) or None)
    zero = zero.model_copy(update={"draft_confidence": 0.0})
    assert not zero.adaptive
    arr, pl, ol = _traffic()
    lim = ServeLimits(max_batch=6)
    for seed in (0, 5):
        fixed = _run(prof, plan, arr, pl, ol, lim, seed)
        ad = _run(prof, zero, arr, pl, ol, lim, seed, adaptive_engine=True)
        assert ad.steps == fixed.steps and ad.prefills == fixed.prefills
        if batching == "ragged":
            assert all(np.array_equal(getattr(ad, f), getattr(fixed, f)) for f in FIELDS)
        else:
            for f in ("admit_ms", "first_ms", "last_ms"):
                assert np.allclose(getattr(ad, f), getattr(fixed, f), rtol=1e-12, atol=1e-9), f
            oa, of = np.lexsort((ad.event_ms, ad.event_req)), np.lexsort((fixed.event_ms, fixed.event_req))
            assert np.array_equal(ad.event_req[oa], fixed.event_req[of])
            assert np.array_equal(ad.event_tokens[oa], fixed.event_tokens[of])
            assert np.allclose(ad.event_ms[oa], fixed.event_ms[of], rtol=1e-12, atol=1e-9)


def _per_token_ci(run):
    """ms per generated token over the requests (ratio estimator) and its standard error."""
    ms = run.last_ms - run.arrival_s * 1e3  # one-token prompts: no prefill
    tok = run.output_tokens.astype(float)
    r = ms.sum() / tok.sum()
    z = ms - r * tok
    return r, float(np.std(z, ddof=1) / np.sqrt(len(ms)) / tok.mean())


SINGLE = Plan(levels=[2, 8], propose=5, draft_confidence=0.5)
THREE = Plan(levels=[1, 4, 8], propose=4, windows=[6], draft_confidence=0.4, escalate_confidence=[0.5])
FOUR = Plan(levels=[1, 3, 5, 8], propose=3, windows=[4, 3], draft_confidence=0.4, escalate_confidence=[0.5, 0.6])


@pytest.mark.parametrize("plan,batching,n,out", [
    (SINGLE, "ragged", 16, 1500), (THREE, "ragged", 16, 1500), (FOUR, "ragged", 16, 1500),
    (SINGLE, "synchronous", 8, 1000), (THREE, "synchronous", 8, 1000),
], ids=["single-ragged", "three-ragged", "four-ragged", "single-synchronous", "three-synchronous"])
def test_alone_matches_the_batch_one_analytic_adaptive_model(prof, plan, batching, n, out):
    """One request at a time (arrivals far apart), batch 1: the simulated time per token
    is the analytic adaptive model's (exact: 2, 3 and 4 levels) within Monte-Carlo error (4
    standard errors over the requests), and the thresholds move it by more than that (the
    check can fail)."""
    plan = plan.model_copy(update={"batching": batching})
    run = _run(prof, plan, np.arange(n) * 1e5, np.ones(n, int), np.full(n, out), ServeLimits(max_batch=1), seed=2)
    assert (run.admit_ms == run.arrival_s * 1e3).all()  # no queueing
    sim, se = _per_token_ci(run)
    acc = prof.workload()
    cost = CostModel(prof.latency[0], 1, acc.context, 64)
    model = {2: analytic_single_level, 3: analytic_three_level, 4: analytic_four_level}[plan.depth]
    a = model(cost, AgreementModel(acc), plan)
    ana = a.cycle_ms / a.tokens_per_full_forward
    f = model(cost, AgreementModel(acc), with_thresholds(plan, None, None))
    fixed = f.cycle_ms / f.tokens_per_full_forward
    assert abs(ana - fixed) > 6 * se  # the thresholds matter here
    assert abs(sim - ana) <= 4 * se + 1e-3 * ana, (sim, ana, se, fixed)


def test_escalation_on_measured_requests_matches_the_analytic_adaptive_model():
    """On the shipped profile (an empirical spread with a trace joint and per-request
    confidence) a request's corrections keep the workload's after-reject rate, shifted by its
    marginal, so escalation is priced as the analytic model prices it (twenty-first fuzz
    round, D3: -3.6 % per token at tau_e = 0.5, when each request's levels were drawn
    independently; now within 0.1 %)."""
    from hispec_sim.adaptive import adaptive_tokens_per_second
    from hispec_sim.evaluate import Setting

    p = load_profile("cpu_hispec_tiny")
    p = p.model_copy(update={"latency": [p.latency[0].model_copy(update={"serving": None})]})  # batch-1 table prices
    plan = Plan(levels=[1, 4, 16], propose=1, windows=[3], escalate_confidence=[0.5])
    n = 800  # the requests differ widely: 200 put the standard error at 0.8 % of a step
    run = _run(p, plan, np.arange(n) * 1e5, np.ones(n, int), np.full(n, 400), ServeLimits(max_batch=1), seed=0)
    sim, se = _per_token_ci(run)
    ana = 1e3 / adaptive_tokens_per_second(Setting(p, context=200), plan)[0]
    fixed = 1e3 / adaptive_tokens_per_second(Setting(p, context=200), with_thresholds(plan, None, None))[0]
    assert abs(ana - fixed) > 6 * se and abs(sim - ana) <= 4 * se, (sim, ana, se, fixed)


def test_unsure_drafts_end_the_round(prof):
    """tau_d = 1 (every draft is unsure): every round is one draft and its check, whatever
    propose; a fixed plan checks `propose` drafts (ragged: the batch-1 schedules; synchronous:
    two steps per round)."""
    from hispec_sim.adaptive import token_classes
    from hispec_sim.serving_adaptive import draw_adaptive_schedules

    acc = prof.workload()
    out = np.full(30, 40)
    for tau, drafts in ((1.0, 1), (None, 6)):
        plan = Plan(levels=[3, 8], propose=6, draft_confidence=tau)
        rng = np.random.default_rng(0)
        sch = draw_adaptive_schedules(plan, serving.request_rates(acc, plan, 30, rng), token_classes(acc, plan), out, rng)
        op, nbuf = sch.code // (sch.width + 1), sch.code % (sch.width + 1)
        assert (nbuf[op == 1] == drafts).all() and (op == 0).sum() == drafts * (op == 1).sum()
    arr, pl, ol = _traffic(30, 1)
    run = _run(prof, Plan(levels=[3, 8], propose=6, draft_confidence=1.0, batching="synchronous"), arr, pl, ol,
               ServeLimits(max_batch=4), 3)
    assert run.steps == 2 * len(np.unique(run.event_ms))  # one draft step and one check step per round


def test_serve_cli_runs_adaptive_plans(capsys, tmp_path):
    import json

    plan = tmp_path / "a.json"
    plan.write_text(Plan(levels=[2, 16], propose=6, draft_confidence=0.3).model_dump_json())
    for b in ("ragged", "synchronous"):
        code = main(["serve", "--profile", "cpu_hispec_tiny", "--plan", str(plan), "--qps", "4", "--requests", "20",
                     "--seeds", "2", "--prompt-len", "64", "--output-len", "32", "--batching", b, "--json"])
        o, e = capsys.readouterr()
        assert code == 0, e
        res = json.loads(o)
        assert res["plan"]["draft_confidence"] == 0.3 and res["batching"] == b
        assert res["mean_over_seeds"]["throughput_tokens_per_s"]["mean"] > 0


def test_serve_cli_refuses_adaptive_plans_without_confidence(capsys, tmp_path):
    prof = load_profile("h100_llama2_7b")
    plan = tmp_path / "a.json"
    plan.write_text(Plan(levels=[prof.workload().exits[0], prof.model.num_layers], propose=4,
                         draft_confidence=0.3).model_dump_json())
    code = main(["serve", "--profile", "h100_llama2_7b", "--plan", str(plan), "--qps", "2", "--requests", "20",
                 "--seeds", "1"])
    e = capsys.readouterr().err
    assert code == 2 and len(e.strip().splitlines()) == 1 and "draft_confidence" in e and "confidence statistics" in e, e


def test_simulator_refuses_without_confidence_in_one_line():
    p = make_profile(layers=8, constant=0.7)
    with pytest.raises(ValueError, match="^draft_confidence: .*confidence statistics"):
        _run(p, Plan(levels=[2, 8], propose=3, draft_confidence=0.5), [0.0], [5], [5], ServeLimits(max_batch=2))


# --------------------------------------------------------------------------- per-request confidence


def test_request_rows_pair_trace_blocks_with_the_spread():
    """request_rows: the measured requests' rows when the spread describes the same
    requests as trace_starts, None (pooled confidence) otherwise; confidence_by_request
    groups top1 by them."""
    from factories import two_request_profile

    from hispec_sim.adaptive import confidence_by_request, request_rows

    acc = two_request_profile(positions=400).workload()
    assert request_rows(acc) == [slice(0, 200), slice(200, 400)]
    per = confidence_by_request(acc)
    top = np.asarray(acc.confidence.top1)
    assert np.array_equal(per[0], top[:200]) and np.array_equal(per[1], top[200:])
    assert per[0][:, 0].mean() > per[1][:, 0].mean() + 0.2  # request 0 is the confident one
    assert request_rows(acc.model_copy(update={"trace_starts": None})) is None
    assert request_rows(acc.model_copy(update={"trace_starts": [0, 100, 200]})) is None  # 3 blocks, 2 matrices
    swapped = acc.spread.model_copy(update={"per_request": acc.spread.per_request[::-1]})
    assert request_rows(acc.model_copy(update={"spread": swapped})) is None  # matrices not the blocks'
    assert request_rows(acc.model_copy(update={"spread": None})) is None
    assert confidence_by_request(acc.model_copy(update={"spread": None})) is None


def _one_request(prof, starts):
    acc = prof.workload()
    sp = acc.spread.model_copy(update={"per_request": [acc.agreement], "weights": None})
    acc = acc.model_copy(update={"spread": sp, "trace_starts": starts})
    return Profile.model_validate({**prof.model_dump(), "workloads": {"w": acc.model_dump()}})


@pytest.mark.parametrize("plan", [SINGLE, THREE], ids=Plan.describe)
@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_one_request_workload_is_the_pooled_run(plan, batching):
    """A workload of one measured request: its per-request confidence is the pooled one, so
    the run equals the pooled fallback's (the same workload without trace_starts) bit for
    bit, same seed."""
    from factories import two_request_profile

    from hispec_sim.adaptive import request_rows

    base = two_request_profile(positions=600)
    one, pooled = _one_request(base, [0]), _one_request(base, None)
    assert request_rows(one.workload()) == [slice(0, 600)] and request_rows(pooled.workload()) is None
    plan = plan.model_copy(update={"batching": batching})
    arr, pl, ol = _traffic(30, 2)
    a = _run(one, plan, arr, pl, ol, ServeLimits(max_batch=5), 4, adaptive_engine=True)
    b = _run(pooled, plan, arr, pl, ol, ServeLimits(max_batch=5), 4, adaptive_engine=True)
    assert a.steps == b.steps and all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def test_each_request_drafts_with_its_measured_confidence():
    """Every simulated request takes the confidence of the measured request whose agreement
    it drew: drafts per round, per group of simulated requests, are
    sum_n h_r^(n-1) with h_r = P(top-1 >= tau_d) over measured request r's rows (within 4
    standard errors), and the two groups differ by far more than that; without the
    pairing (pooled) they do not differ."""
    from factories import two_request_profile

    from hispec_sim.serving_adaptive import draw_adaptive_schedules, request_classes

    acc = two_request_profile(positions=800).workload()
    plan = Plan(levels=[2, 8], propose=6, draft_confidence=0.5)
    n = 600
    top = np.asarray(acc.confidence.top1)[:, 1]
    h = [(top[:400] >= 0.5).mean(), (top[400:] >= 0.5).mean()]
    expect = [float(sum(x ** i for i in range(6))) for x in h]
    for paired in (True, False):
        rng = np.random.default_rng(1)
        picks: list = []
        rates = serving.request_rates(acc, plan, n, rng, picks)
        cls = request_classes(acc if paired else acc.model_copy(update={"trace_starts": None}), plan, n, picks)
        sch = draw_adaptive_schedules(plan, rates, cls, np.full(n, 120), rng)
        op = sch.code // (sch.width + 1)
        nbuf = sch.code % (sch.width + 1)
        req = np.repeat(np.arange(n), sch.count)
        means = []
        for r in (0, 1):
            d = nbuf[(op == 1) & (picks[0][req] == r)]
            means.append((d.mean(), d.std(ddof=1) / np.sqrt(len(d))))
        if paired:
            for (m, se), e in zip(means, expect):
                assert abs(m - e) <= 4 * se, (means, expect)
            assert means[0][0] - means[1][0] > 20 * max(means[0][1], means[1][1])
        else:
            assert abs(means[0][0] - means[1][0]) <= 4 * np.hypot(means[0][1], means[1][1]), means


@pytest.mark.parametrize("plan", [Plan(levels=[2, 8], propose=4), Plan(levels=[2, 5, 8], propose=3, windows=[4])],
                         ids=Plan.describe)
@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_tau_zero_is_the_fixed_plan_run_with_a_spread(plan, batching):
    """With per-request confidence (a workload with a spread and trace_starts) tau = 0
    still draws what the fixed simulation draws: the same steps and tokens, same seed."""
    from factories import two_request_profile

    prof = two_request_profile(positions=600)
    plan = plan.model_copy(update={"batching": batching})
    zero = plan.model_copy(update={"draft_confidence": 0.0})
    arr, pl, ol = _traffic(30, 3)
    lim = ServeLimits(max_batch=6)
    fixed = _run(prof, plan, arr, pl, ol, lim, 7)
    ad = _run(prof, zero, arr, pl, ol, lim, 7, adaptive_engine=True)
    assert ad.steps == fixed.steps
    oa, of = np.lexsort((ad.event_ms, ad.event_req)), np.lexsort((fixed.event_ms, fixed.event_req))
    assert np.array_equal(ad.event_req[oa], fixed.event_req[of])
    assert np.array_equal(ad.event_tokens[oa], fixed.event_tokens[of])
    assert np.allclose(ad.last_ms, fixed.last_ms, rtol=1e-12, atol=1e-9)
