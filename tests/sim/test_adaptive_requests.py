"""The exact adaptive models over a workload's request distribution (hispec_sim.adaptive.
over_requests): every measured request at its own agreement matrix and its own confidence
statistics, aggregated as E[tokens] / E[time]. A one-request workload is the mean-rate
model; tau = 0 is analytic.predict of the fixed plan WITH the spread; the aggregate lies in
the interval of a per-request i.i.d. trace replay; the confidence pairing matters."""
import numpy as np
import pytest
from factories import two_request_profile
from hypothesis import given, settings
from hypothesis import strategies as st

from hispec_sim.acceptance import AgreementModel
from hispec_sim.adaptive import (
    adaptive_tokens_per_second,
    analytic_four_level,
    analytic_single_level,
    analytic_three_level,
    over_requests,
    replay,
    request_views,
    with_thresholds,
)
from hispec_sim.analytic import predict
from hispec_sim.evaluate import Setting
from hispec_sim.latency import CostModel
from hispec_sim.schema import AcceptanceSpread, Plan, Source, load_profile

FN = {2: analytic_single_level, 3: analytic_three_level, 4: analytic_four_level}
PLANS = [Plan(levels=[2, 8], propose=5, draft_confidence=0.5),
         Plan(levels=[1, 4, 8], propose=3, windows=[4], draft_confidence=0.4, escalate_confidence=[0.5]),
         Plan(levels=[1, 3, 5, 8], propose=2, windows=[3, 2], draft_confidence=0.4, escalate_confidence=[0.5, 0.6])]


@pytest.fixture(scope="module")
def two():
    return two_request_profile(positions=800)


@pytest.fixture(scope="module")
def tiny():
    """The shipped profile WITH its per-request spread (16 measured prompts)."""
    return Setting(load_profile("cpu_hispec_tiny"), None, None, None, 1, None)


def _cost(prof):
    return CostModel(prof.latency[0], 1, prof.workload().context, 64)


@pytest.mark.parametrize("plan", PLANS, ids=Plan.describe)
def test_one_request_workload_is_the_mean_rate_model(two, plan):
    """One measured request (its matrix = the workload's, its rows = all rows): over_requests
    evaluates it per request and gives the mean-rate model exactly."""
    acc = two.workload()
    one = acc.model_copy(update={"trace_starts": [0], "spread": acc.spread.model_copy(
        update={"per_request": [acc.agreement], "weights": None})})
    model = AgreementModel(one)
    views = request_views(model)
    assert views is not None and len(views) == 1 and views[0][1].rows == slice(0, 800)
    mean = FN[plan.depth](_cost(two), AgreementModel(acc.model_copy(update={"spread": None})), plan)
    got = over_requests(FN[plan.depth], _cost(two), model, plan)
    assert got.tokens_per_second == pytest.approx(mean.tokens_per_second, rel=1e-12)
    assert got.tokens_per_full_forward == pytest.approx(mean.tokens_per_full_forward, rel=1e-12)


@settings(max_examples=15, deadline=None)
@given(e=st.integers(1, 15), g=st.integers(1, 8), zero=st.booleans())
def test_tau_zero_is_the_fixed_plan_with_the_spread_single_level(tiny, e, g, zero):
    cost = tiny.cost(40)
    p = Plan(levels=[e, 16], propose=g)
    fixed = float(predict(cost, tiny.agreement, [p]).tokens_per_second[0])
    got = over_requests(analytic_single_level, cost, tiny.agreement, with_thresholds(p, 0.0 if zero else None))
    assert got.tokens_per_second == pytest.approx(fixed, rel=1e-12)


@settings(max_examples=10, deadline=None)
@given(l1=st.integers(1, 7), gap=st.integers(1, 8), g=st.integers(1, 6), w=st.integers(1, 9))
def test_tau_zero_is_the_fixed_plan_with_the_spread_three_level(tiny, l1, gap, g, w):
    cost = tiny.cost(40)
    p = Plan(levels=[l1, l1 + gap, 16], propose=g, windows=[w])
    fixed = float(predict(cost, tiny.agreement, [p]).tokens_per_second[0])
    got = over_requests(analytic_three_level, cost, tiny.agreement, with_thresholds(p, 0.0, [0.0]))
    assert got.tokens_per_second == pytest.approx(fixed, rel=1e-12)


@pytest.mark.parametrize("plan", [Plan(levels=[2, 5, 9, 16], propose=2, windows=[3, 2]),
                                  Plan(levels=[1, 3, 4, 16], propose=4, windows=[1, 5])], ids=Plan.describe)
def test_tau_zero_is_the_fixed_plan_with_the_spread_four_level(tiny, plan):
    cost = tiny.cost(60)
    fixed = float(predict(cost, tiny.agreement, [plan]).tokens_per_second[0])
    got = over_requests(analytic_four_level, cost, tiny.agreement, with_thresholds(plan, 0.0, [0.0, 0.0]))
    assert got.tokens_per_second == pytest.approx(fixed, rel=1e-12)


def test_logit_normal_spread_uses_its_scenarios_with_pooled_confidence(two):
    """A logit-normal spread (no measured requests): the quadrature nodes, pooled rows; tau = 0
    is analytic.predict with that spread, and the spread changes the adaptive prediction."""
    acc = two.workload().model_copy(update={"spread": AcceptanceSpread(
        family="logit_normal", sigma=0.8, source=Source(kind="assumed", detail="test"))})
    model = AgreementModel(acc)
    views = request_views(model)
    assert views is not None and len(views) == 16 and all(v.rows is None for _, v in views)
    for plan in PLANS[:2]:
        fixed = with_thresholds(plan, None, None)
        ref = float(predict(_cost(two), model, [fixed]).tokens_per_second[0])
        zero = with_thresholds(plan, 0.0, [0.0] * (plan.depth - 2) or None)
        assert over_requests(FN[plan.depth], _cost(two), model, zero).tokens_per_second == pytest.approx(ref, rel=1e-12)
        mean = FN[plan.depth](_cost(two), AgreementModel(acc.model_copy(update={"spread": None})), plan)
        assert over_requests(FN[plan.depth], _cost(two), model, plan).tokens_per_second != pytest.approx(
            mean.tokens_per_second, rel=1e-3)


def test_per_request_confidence_moves_the_prediction(two):
    """The two requests differ in confidence: pairing each request's matrix with its own
    rows differs from pairing it with the pooled rows (the same matrices), by more than the
    rounding of a model."""
    acc = two.workload()
    paired = AgreementModel(acc)
    pooled = AgreementModel(acc.model_copy(update={"trace_starts": None}))  # spread kept, confidence pooled
    assert all(v.rows is not None for _, v in request_views(paired))
    assert all(v.rows is None for _, v in request_views(pooled))
    for plan in PLANS:
        a = over_requests(FN[plan.depth], _cost(two), paired, plan).tokens_per_second
        b = over_requests(FN[plan.depth], _cost(two), pooled, plan).tokens_per_second
        assert abs(a / b - 1) > 5e-3, (plan.describe(), a, b)


@pytest.mark.slow  # ~6 s: an i.i.d. replay of each measured request
def test_each_request_lies_in_its_iid_replay_interval(two):
    """Single-level plans depend on a request's marginal agreement and its rows' confidence
    only, so an i.i.d. replay of each request's own rows is the Monte-Carlo of its exact
    model: each request's value (request_views) lies in its replay's 95 % interval, the two
    requests differ by far more than that, and over_requests aggregates them as
    1 / E_w[1 / tokens_per_second_r]."""
    acc = two.workload()
    cost = _cost(two)
    plan = Plan(levels=[2, 8], propose=6, draft_confidence=0.6)
    model = AgreementModel(acc)
    views = request_views(model)
    vals = []
    for (w, view), r in zip(views, (slice(0, 400), slice(400, 800))):
        assert view.rows == r and w == pytest.approx(0.5)
        sub = acc.model_copy(update={"traces": acc.traces[r], "trace_starts": [0], "spread": None,
                                     "confidence": acc.confidence.model_copy(update={"top1": acc.confidence.top1[r]})})
        rep = replay(cost, sub, plan, cycles=1500, streams=16, seed=2, order="iid")
        v = analytic_single_level(cost, view, plan).tokens_per_second
        assert rep.ci95[0] <= v <= rep.ci95[1], (r, v, rep.ci95)
        vals.append((v, rep.ci95[1] - rep.ci95[0]))
    assert abs(vals[0][0] - vals[1][0]) > 5 * max(vals[0][1], vals[1][1])
    got = over_requests(analytic_single_level, cost, model, plan).tokens_per_second
    assert got == pytest.approx(1.0 / (0.5 / vals[0][0] + 0.5 / vals[1][0]), rel=1e-12)


def test_evaluate_and_optimize_score_over_the_spread(tiny):
    """adaptive_tokens_per_second (evaluate --plan, optimize --adaptive, the Optuna search)
    is over_requests' value; the rates note says so."""
    from hispec_sim.adaptive import RATES_NOTE, predict_adaptive

    plan = Plan(levels=[2, 16], propose=6, draft_confidence=0.3)
    tps, _ = adaptive_tokens_per_second(tiny, plan)
    assert tps == over_requests(analytic_single_level, tiny.cost(plan.propose + 16), tiny.agreement, plan).tokens_per_second
    out = predict_adaptive(tiny, plan)
    assert out["rates"] == RATES_NOTE and out["tokens_per_second"] == pytest.approx(tps, abs=1e-4)
    fixed = float(predict(tiny.cost(40), tiny.agreement, [with_thresholds(plan, None)]).tokens_per_second[0])
    assert out["fixed_tokens_per_second"] == pytest.approx(fixed, rel=1e-6)
    assert len(request_views(tiny.agreement)) == 16
    assert np.isclose(sum(w for w, _ in request_views(tiny.agreement)), 1.0)
