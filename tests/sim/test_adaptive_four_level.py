"""The exact 4-level adaptive model (hispec_sim.adaptive.analytic_four_level): tau = 0 is
analytic.predict's fixed plan exactly, tau_e = 1 is windows of 1, it lies in the i.i.d.
trace-replay interval (the serving simulator's agreement with it at batch 1:
tests/serving/test_serving_adaptive.py)."""
import pytest
from factories import confident_profile
from hypothesis import given, settings
from hypothesis import strategies as st

from hispec_sim.adaptive import (
    adaptive_tokens_per_second,
    analytic_four_level,
    replay,
    with_thresholds,
)
from hispec_sim.analytic import predict
from hispec_sim.evaluate import Setting
from hispec_sim.schema import Plan, load_profile


@pytest.fixture(scope="module")
def tiny_setting():
    prof = load_profile("cpu_hispec_tiny")
    wl = {k: v.model_copy(update={"spread": None}) for k, v in prof.workloads.items()}
    return Setting(prof.model_copy(update={"workloads": wl}), None, None, None, 1, None)


@settings(max_examples=20, deadline=None)
@given(l1=st.integers(1, 5), gaps=st.tuples(st.integers(1, 5), st.integers(1, 5)), g=st.integers(1, 5),
       w=st.tuples(st.integers(1, 6), st.integers(1, 6)), zero=st.booleans())
def test_tau_zero_is_the_fixed_plan_exactly(tiny_setting, l1, gaps, g, w, zero):
    cost = tiny_setting.cost(60)
    p = Plan(levels=[l1, l1 + gaps[0], l1 + gaps[0] + gaps[1], 16], propose=g, windows=list(w))
    fixed = float(predict(cost, tiny_setting.agreement, [p]).tokens_per_second[0])
    if zero:
        p = with_thresholds(p, 0.0, [0.0, 0.0])
    assert analytic_four_level(cost, tiny_setting.agreement, p).tokens_per_second == pytest.approx(fixed, rel=1e-12)


@settings(max_examples=10, deadline=None)
@given(g=st.integers(1, 4), w=st.tuples(st.integers(1, 6), st.integers(1, 6)))
def test_escalation_one_is_window_one(tiny_setting, g, w):
    """tau_e = 1 at both intermediate levels: every check escalates, as windows of 1 do."""
    cost = tiny_setting.cost(60)
    p = Plan(levels=[1, 3, 6, 16], propose=g, windows=list(w), escalate_confidence=[1.0, 1.0])
    one = float(predict(cost, tiny_setting.agreement, [Plan(levels=p.levels, propose=g, windows=[1, 1])]).tokens_per_second[0])
    assert analytic_four_level(cost, tiny_setting.agreement, p).tokens_per_second == pytest.approx(one, rel=1e-9)


@pytest.mark.parametrize("plan", [
    Plan(levels=[1, 3, 5, 8], propose=2, windows=[3, 2], draft_confidence=0.5),
    Plan(levels=[1, 3, 5, 8], propose=3, windows=[4, 3], draft_confidence=0.4, escalate_confidence=[0.5, 0.6]),
    Plan(levels=[2, 4, 6, 8], propose=3, windows=[2, 4], escalate_confidence=[0.0, 0.7]),
], ids=Plan.describe)
def test_within_iid_monte_carlo(plan):
    s = Setting(confident_profile(), None, None, None, 1, None)
    cost = s.cost(60)
    a = analytic_four_level(cost, s.agreement, plan)
    fixed = analytic_four_level(cost, s.agreement, with_thresholds(plan, None, None))
    assert a.tokens_per_second != pytest.approx(fixed.tokens_per_second, rel=2e-2)  # the thresholds matter here
    r = replay(cost, s.acceptance, plan, cycles=1000, streams=16, seed=4, order="iid")
    assert r.ci95[0] <= a.tokens_per_second <= r.ci95[1], (a, r)


def test_predictions_use_it(tiny_setting):
    p = Plan(levels=[1, 3, 6, 16], propose=2, windows=[3, 2], draft_confidence=0.5)
    tps, how = adaptive_tokens_per_second(tiny_setting, p)
    assert how.startswith("analytic 4-level")
    assert tps == pytest.approx(analytic_four_level(tiny_setting.cost(p.propose + sum(p.windows) + 16),
                                                    tiny_setting.agreement, p).tokens_per_second, rel=1e-12)


def test_deeper_chains_are_walked_whatever_windows_the_thresholds_cut_short(tiny_setting, monkeypatch):
    """Beyond 4 levels: the plan's own trace replay, no fixed plan in it -- tau_e = 1 escalates
    every check, so the windows cannot matter, and they do not; a fixed plan too large to
    replay leaves the gain out instead of refusing the plan."""
    from hispec_sim.adaptive import DEEP_NOTE, predict_adaptive, walked

    base = dict(levels=[2, 4, 8, 12, 16], propose=6, escalate_confidence=[1.0] * 3)
    tps, how = adaptive_tokens_per_second(tiny_setting, Plan(**base, windows=[1, 1, 1]))
    assert how == DEEP_NOTE
    assert tps == adaptive_tokens_per_second(tiny_setting, Plan(**base, windows=[9, 9, 9]))[0]
    assert tps == walked(tiny_setting, Plan(levels=base["levels"], propose=6, windows=[1, 1, 1])).tokens_per_second
    out = predict_adaptive(tiny_setting, Plan(**base, windows=[9, 9, 9]))
    assert out["fixed_tokens_per_second"] == pytest.approx(
        walked(tiny_setting, Plan(levels=base["levels"], propose=6, windows=[9, 9, 9])).tokens_per_second, abs=1e-4)
    assert "trace_replay" not in out  # the headline is the replay
    # thresholds of 1 draft one token and escalate at once: ~2,800 forwards where the fixed plan needs ~20,000
    import hispec_sim.adaptive as adaptive

    short = Plan(**{**base, "draft_confidence": 1.0}, windows=[9, 9, 9])
    monkeypatch.setattr(adaptive, "MAX_REPLAY_FORWARDS", 2 * walked(tiny_setting, short).forwards)
    out = predict_adaptive(tiny_setting, short)
    assert out["tokens_per_second"] > 0 and out["fixed_tokens_per_second"] is None and out["gain_over_fixed"] is None
