"""Claims audit: round trip to the profile's own level, the ceiling, bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from factories import make_profile, resolve_depth_traces
from hispec_sim.audit import BEST_SINGLE_LEVEL, audit
from hispec_sim.cli import main
from hispec_sim.evaluate import Setting, predict_plans
from hispec_sim.schema import Plan, load_profile

PLAN = Plan(levels=[3, 8, 32], propose=2, windows=[4])


def _speedup(s: Setting, plan: Plan) -> float:
    pr = predict_plans(s, [Plan(levels=[s.num_layers]), plan]).tokens_per_second
    return float(pr[1] / pr[0])


@pytest.mark.parametrize("workload", ["sharegpt", "cnn_dm_per_position"])
def test_round_trip_returns_the_profiles_own_level(workload):
    s = Setting(load_profile("h100_llama3_8b"), workload)
    own = _speedup(s, PLAN)
    r = audit(s, PLAN, own)
    # the profile's matrix is rounded to 5 digits, the audit's curve is not
    assert r["required_level"] == pytest.approx(r["profile_level"], abs=2e-3)
    assert r["speedup_at_required_level"] == pytest.approx(own, rel=1e-6)
    for row in r["agreement_with_final_at_exits"]:
        assert row["required"] == pytest.approx(row["profile"], abs=2e-4)
    if workload == "sharegpt":  # the fit reproduced the published point: distance ~0, within its band
        assert r["reconciled"] is True and r["required_level_within_band"] is True
        lo, hi = r["profile_level_band"]
        assert lo < r["profile_level"] < hi
        assert all(abs(p["distance"]) < 1e-3 for p in r["published_points"])


@pytest.mark.parametrize("profile,workload", [("h100_llama3_8b", "cnn_dm"), ("h100_llama3_8b", "xsum_per_position"),
                                              ("a100_llama70b", None)])
def test_at_the_profiles_level_every_published_figure_is_what_the_fit_predicted(profile, workload):
    """Published figures are recomputed as the builders' refit read them, averaged over the
    workload's per-request spread: cnn_dm's per_draft [8,32] figure came back 0.697 against
    the fit's 0.690 at the profile's own level (the curve's mean rates), which moved
    codellama_34b cnn_dm's verdict (a review, 2026-12-03)."""
    s = Setting(load_profile(profile), workload)
    plan = PLAN if profile == "h100_llama3_8b" else Plan(levels=[20, 80], propose=3)
    r = audit(s, plan, audit(s, plan, 1.0)["speedup_at_profile_level"])
    assert r["required_level"] == pytest.approx(r["profile_level"], abs=1e-5)
    fitted = [d["predicted"] for d in s.acceptance.fit["points"] if "used_for" not in d]
    assert len(fitted) >= 1 and [p["required_curve_gives"] for p in r["published_points"]] == pytest.approx(fitted, abs=2e-5)


def test_round_trip_on_a_measured_workload_with_traces():
    s = Setting(make_profile(layers=12, traces=resolve_depth_traces(12, 2000, 3)))
    plan = Plan(levels=[2, 6, 12], propose=2, windows=[3])
    r = audit(s, plan, _speedup(s, plan))
    assert r["family"] == "logit_shift" and r["required_level"] == pytest.approx(0.0, abs=1e-5)
    assert r["reconciled"] is None  # no published points


@pytest.mark.parametrize("joint", ["traces", "independent"])
@pytest.mark.parametrize("plan", [Plan(levels=[2, 16], propose=3), Plan(levels=[2, 8, 16], propose=2, windows=[2])])
def test_a_measured_spread_is_kept_the_profiles_level_is_evaluates_prediction(plan, joint):
    """A profile `profile measure` wrote (per-request matrices): at level 0 the audit prices
    the plan as `evaluate` does (the fourteenth fuzz round: the spread was dropped, 1.617x
    against 1.605x), and a level moves every request's matrix with the workload's."""
    prof = load_profile("cpu_hispec_tiny")
    wl = {k: w.model_copy(update={"joint": joint, "traces": w.traces if joint == "traces" else None})
          for k, w in prof.workloads.items()}
    s = Setting(prof.model_copy(update={"workloads": wl}))
    assert s.acceptance.spread.family == "empirical"
    own = _speedup(s, plan)
    r = audit(s, plan, own)
    assert r["speedup_at_profile_level"] == pytest.approx(own, rel=1e-6)
    assert r["required_level"] == pytest.approx(0.0, abs=1e-5)
    assert audit(s, plan, own * 1.05)["required_level"] > 0.05


def test_more_speedup_needs_more_acceptance_and_the_best_single_level_needs_less():
    s = Setting(load_profile("h100_llama3_8b"))
    a, b = audit(s, PLAN, 1.2), audit(s, PLAN, 1.6)
    assert a["required_level"] < b["required_level"]
    best = audit(s, BEST_SINGLE_LEVEL, 1.6)
    single = audit(s, Plan(levels=[8, 32], propose=2), 1.6)
    assert best["required_level"] <= single["required_level"] + 1e-9


def test_above_the_ceiling_is_unreachable_not_an_error(capsys):
    s = Setting(load_profile("h100_llama3_8b"))
    r = audit(s, PLAN, 100.0)
    assert r["reachable"] is False and r["required_level"] is None
    assert r["unreachable_by_pct"] == pytest.approx(100 * (100.0 / r["ceiling_speedup"] - 1), rel=1e-4)
    assert main(["audit", "--profile", "h100_llama3_8b", "--levels", "3,8,32", "--propose", "2", "--window", "4",
                 "--speedup", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reachable"] is False and "unreachable" in out["verdict"]


def test_the_printed_ceiling_given_back_is_at_the_ceiling():
    """The JSON's ceiling (6 decimals), rounded up from the true one, is reachable at the
    ceiling, not "unreachable by 1e-05 %" (round 23, M7); a unit more is above it."""
    s = Setting(load_profile("a100_llama70b"))
    plan = Plan(levels=[17, 42, 80], propose=2, windows=[8])
    top = audit(s, plan, 1.5)["ceiling_speedup"]
    for claim in (top, math.nextafter(top, 0), top - 4e-7):
        r = audit(s, plan, claim)
        assert r["reachable"] is True and r["required_level_note"] == "perfect acceptance"
    above = audit(s, plan, top + 1e-6)
    assert above["reachable"] is False and f"above the ceiling {top}x" in above["verdict"]  # the JSON's figure, not 6 digits


def test_ceiling_is_perfect_acceptance():
    s = Setting(make_profile(layers=12, constant=1.0))
    plan = Plan(levels=[2, 5, 12], propose=3, windows=[4])
    r = audit(Setting(make_profile(layers=12)), plan, 1.0)
    assert r["ceiling_note"] == "perfect acceptance"
    assert r["ceiling_speedup"] == pytest.approx(_speedup(s, plan), rel=1e-6)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc", "1e308", "1000001", "0x10", "1_5"])
def test_bad_speedup_is_one_line_exit_2(value, capsys):
    rc = main(["audit", "--profile", "h100_llama3_8b", "--levels", "3,8,32", "--propose", "2", "--window", "4",
               "--speedup", value])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "speedup: must be a number in (0, 1e+06]" in err  # the range, always


def test_cli_text_and_json(capsys):
    assert main(["audit", "--profile", "h100_llama3_8b", "--levels", BEST_SINGLE_LEVEL, "--speedup", "1.14"]) == 0
    assert "required level" in capsys.readouterr().out
    assert main(["audit", "--profile", "h100_llama3_8b", "--levels", "3,9,32", "--speedup", "1.5", "--window", "4"]) == 0
    out = capsys.readouterr().out
    assert main(["audit", "--profile", "h100_llama3_8b", "--levels", "3,99", "--speedup", "1.5"]) == 2
    assert "levels" in capsys.readouterr().err


def test_a_plan_file_is_audited_at_its_batch_and_an_adaptive_plan_is_refused(tmp_path, capsys):
    """The plan file's batch, as evaluate reads it; thresholds are not a fixed plan's curve."""
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"levels": [2, 16], "propose": 7, "batch": 8}))
    assert main(["audit", "--profile", "cpu_hispec_tiny", "--plan", str(plan), "--speedup", "1.2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch"] == 8
    plan.write_text(json.dumps({"levels": [2, 16], "propose": 7, "draft_confidence": 0.3}))
    assert main(["audit", "--profile", "cpu_hispec_tiny", "--plan", str(plan), "--speedup", "1.2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "confidence thresholds" in err and "without them" in err


def test_a_claim_below_the_floor_is_unreachable(capsys):
    """Every level beats a claim below the floor, so none reproduces it: unreachable, by how
    much, as above the ceiling (docs check 20: JSON said reachable, with the floor's speed-up
    as the one at the required level)."""
    assert main(["audit", "--profile", "a100_llama70b", "--levels", "20,80", "--speedup", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "verdict: unreachable: 0.5x is" in out and "% below the floor" in out and "every level of this family gives more" in out
    assert "every draft is rejected in the limit" in out  # a single-level plan: no pair of exits below the last
    assert "None" not in out and "required level" not in out
    assert main(["audit", "--profile", "h100_llama3_8b", "--levels", "3,8,32", "--propose", "2", "--window", "4",
                 "--speedup", "0.2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["reachable"] is False and r["required_level"] is None and "speedup_at_required_level" not in r
    assert r["below_floor_by_pct"] == pytest.approx(100 * (1 - 0.2 / r["floor_speedup"]), rel=1e-4)


def test_the_floor_is_the_curves_own_limit():
    """As a curve's level falls, F(a)/F(b) for two exits below the last tends to
    exp(-c |logit(a/L) - logit(b/L)|), not 0: the floor is that limit, the infimum of every
    finite level's speed-up, and the verdict says why (eighteenth round, D2: 0.298x was
    printed where no level gives less than 0.3215x)."""
    s = Setting(load_profile("h100_llama3_8b"))
    plan = Plan(levels=[3, 8, 32], propose=2, windows=[4])
    r = audit(s, plan, 0.2)
    assert r["reachable"] is False and "not 0, as the level falls" in r["verdict"]
    limit = ((3 / 29) / (8 / 24)) ** r["slope_c"]
    low = audit(s, plan, r["floor_speedup"] * (1 + 1e-6))  # just above the floor: a finite level reaches it
    assert low["required_level"] is not None and low["speedup_at_required_level"] == pytest.approx(
        r["floor_speedup"] * (1 + 1e-6), rel=1e-5)
    assert low["agreement_between_consecutive_levels"][0]["required"] == pytest.approx(limit, abs=1e-5)
    assert low["agreement_between_consecutive_levels"][1]["required"] == 0.0


def test_published_points_without_a_band_are_said_so(capsys):
    """a100_llama70b's workload has published points but no _low / _high readings to judge them by."""
    assert main(["audit", "--profile", "a100_llama70b", "--levels", "10,20,80", "--window", "4", "--speedup", "2"]) == 0
    out = capsys.readouterr().out
    assert "published per_draft" in out and "published points but no reading band" in out


def test_a_per_draft_figure_measured_with_a_long_round_is_priced(tmp_path, capsys):
    """The audit prices a published figure's own plan, however long its round (propose 64
    ran past a 64-row cost lookup)."""
    from hispec_sim.acceptance_fit import curve

    p = json.loads(make_profile(layers=16).model_dump_json())
    F = curve(np.asarray(p["workloads"]["w"]["exits"]) / 16, 1.0, 1.0)
    p["workloads"]["w"]["agreement"] = (np.minimum.outer(F, F) / np.maximum.outer(F, F)).tolist()  # the curve's matrix
    p["workloads"]["w"]["fit"] = {"family": "F(e) = sigmoid(m + c*logit(e/L))", "num_layers": 16,
                                  "params": {"m": 1.0, "c": 1.0},
                                  "points": [{"workload": "w", "kind": "per_draft", "value": 0.5,
                                              "config": {"levels": [4, 16], "propose": 64, "windows": [], "level": 2}}]}
    (tmp_path / "p.json").write_text(json.dumps(p))
    assert main(["audit", "--profile", str(tmp_path / "p.json"), "--levels", "4,16", "--speedup", "1.2"]) == 0
    assert "published per_draft [4,16] g=64: 0.500; the required curve gives" in capsys.readouterr().out


def test_the_floor_of_a_measured_profile_keeps_each_requests_own_rates_of_one():
    """Some requests of cpu_hispec_tiny agree at (14,16) always: no shift moves them, so the
    floor is what every finite level gives, not the speed-up at zero acceptance (nineteenth
    round, D1: a floor of 0.270x under a speed-up of 0.298x at every level, and a claim in
    between answered with the search's bound, -40)."""
    s = Setting(load_profile("cpu_hispec_tiny"))
    plan = Plan(levels=[14, 16], propose=3)
    r = audit(s, plan, 0.28)
    assert r["reachable"] is False and r["floor_speedup"] == pytest.approx(0.29844, abs=1e-5)
    assert "in some requests' own" in r["verdict"]
    deep_plan = Plan(levels=[1, 15, 16], propose=2, windows=[4])  # a ratio of vanishing rates stays
    deep = audit(s, deep_plan, 0.1)
    assert deep["floor_speedup"] == pytest.approx(audit(s, deep_plan, deep["floor_speedup"] * (1 + 1e-6))[
        "speedup_at_required_level"], rel=1e-5)
    just_above = audit(s, plan, r["floor_speedup"] * 1.01)
    assert just_above["required_level"] is not None
    assert just_above["speedup_at_required_level"] == pytest.approx(r["floor_speedup"] * 1.01, rel=1e-5)


def test_rates_of_exactly_one_give_no_finite_level(tmp_path, capsys):
    """A shift in logit space cannot move a rate of exactly 1: the floor keeps them, so a
    claim below what every level gives needs no finite level (it was the search's bound, -40)
    and the verdict says why; a claim equal to what the profile gives needs its own level."""
    assert main(["profile", "synthetic", "--layers", "16", "--layer-ms", "1", "--agreement", "1",
                     "--out", str(tmp_path / "one.json")]) == 0
    s = Setting(load_profile(tmp_path / "one.json"))
    plan = Plan(levels=[2, 8, 16], propose=2, windows=[4])
    r = audit(s, plan, 2.0)
    assert r["reachable"] is False and r["required_level"] is None
    assert r["floor_speedup"] == r["speedup_at_profile_level"]  # nothing moves: the floor is the profile's own
    assert "every level of this family gives more" in r["verdict"] and "rates of exactly 1" in r["verdict"]
    own = audit(s, plan, r["speedup_at_profile_level"])
    assert own["required_level"] == pytest.approx(0.0) and own["level_shift"] == pytest.approx(0.0)


def test_required_agreement_of_a_measured_profile_is_its_requests_mean():
    """The speed-up comes from each request's own shifted rates, so the agreement printed is
    their weighted mean at the required level, as the speed-up saw it (twentieth round, D1:
    the shifted mean matrix was printed, 0.584 where the requests average 0.636)."""
    from hispec_sim.acceptance import shift_logit

    s = Setting(load_profile("cpu_hispec_tiny"))
    r = audit(s, Plan(levels=[14, 16], propose=3), 0.6)
    sp, exits = s.acceptance.spread, s.acceptance.exits
    z = r["level_shift"]
    per = shift_logit(np.asarray(sp.per_request, float)[:, exits.index(14), exits.index(16)], z)
    assert r["agreement_with_final_at_exits"][0]["required"] == pytest.approx(np.average(per, weights=sp.weights), abs=1e-5)
    own = audit(s, Plan(levels=[14, 16], propose=3), r["speedup_at_profile_level"])  # at the profile's level: its matrix
    row = own["agreement_with_final_at_exits"][0]
    assert row["required"] == pytest.approx(row["profile"], abs=2e-3)


@pytest.mark.parametrize("agreement", [0.0, 0.7])
def test_rates_of_exactly_zero_stay_zero_at_the_ceiling(tmp_path, agreement):
    """No logit shift moves a rate of exactly 0, so the ceiling (the family's limit as the
    level grows) keeps it: a claim no level reaches is unreachable, not "reachable only in
    the limit of perfect acceptance" (round 24, D3)."""
    assert main(["profile", "synthetic", "--layers", "8", "--layer-ms", "0.5", "--agreement", str(agreement),
                 "--out", str(tmp_path / "p.json")]) == 0
    d = json.loads((tmp_path / "p.json").read_text())
    A = d["workloads"]["synthetic"]["agreement"]
    A[1][7] = A[7][1] = 0.0  # exits 2 and 8 never agree
    (tmp_path / "p.json").write_text(json.dumps(d))
    s = Setting(load_profile(tmp_path / "p.json"))
    plan = Plan(levels=[2, 8], propose=2)
    r = audit(s, plan, 1.5)
    assert r["reachable"] is False and "above the ceiling" in r["verdict"]
    assert r["ceiling_speedup"] == pytest.approx(r["speedup_at_profile_level"], rel=1e-9)  # every level gives it
    assert "rates of exactly 0 stay 0" in r["ceiling_note"] and "rates of exactly 0 stay 0" in r["verdict"]
    three = audit(s, Plan(levels=[2, 5, 8], propose=2, windows=[3]), 1.0)  # the other pairs rise to 1 where not 0
    assert (three["ceiling_speedup"] > three["speedup_at_profile_level"]) == (agreement > 0)


def test_an_autoregressive_plan_says_acceptance_plays_no_part():
    """Its verdict had an empty clause (round 24, M2)."""
    s = Setting(load_profile("cpu_hispec_tiny"))
    r = audit(s, Plan(levels=[16]), 1.0)
    assert r["reachable"] is True and "): no exit below the last, so acceptance plays no part;" in r["verdict"]
    for claim in (0.9999999, 1.0000001):  # 1x to 6 digits, the ceiling too: the profile's level, not perfect acceptance
        r = audit(s, Plan(levels=[16]), claim)
        assert r["reachable"] is True and r["required_level"] == r["profile_level"]


def test_wording_of_points_floors_bands_and_the_levels_keyword(tmp_path, capsys):
    """Fuzz round 26: M5 the --levels error names the keyword it also takes; M6 a mean_layer
    point has no exit, and an autoregressive plan's floor is 1x with its own reason; M9 a
    band is printed low to high whichever workload holds which end."""
    assert main(["audit", "--profile", "h100_llama3_8b", "--levels", "BEST", "--speedup", "1.1"]) == 2
    assert capsys.readouterr().err.rstrip().endswith("; allowed: those, or best_single_level")
    s = Setting(load_profile("a100_llama2_7b"), "base_no_ee")
    r = audit(s, Plan(levels=[8, 32], propose=2), 1.5)
    assert [p["where"] for p in r["published_points"] if p["kind"] == "mean_layer"] == ["the first layer agreeing with the last, mean"]
    r = audit(Setting(load_profile("h100_llama3_8b")), Plan(levels=[32]), 0.5)
    assert r["verdict"].endswith("(an autoregressive plan drafts nothing: 1x at any level)")
    d = json.loads(load_profile("h100_llama3_8b").model_dump_json())
    w = d["workloads"]
    w["sharegpt_low"], w["sharegpt_high"] = w["sharegpt_high"], w["sharegpt_low"]
    (tmp_path / "swapped.json").write_text(json.dumps(d))
    r = audit(Setting(load_profile(str(tmp_path / "swapped.json"))), PLAN, 2.01)
    bands = [e["band"] for e in r["agreement_with_final_at_exits"] + r["published_points"] if "band" in e]
    assert bands and all(lo <= hi for lo, hi in bands)
