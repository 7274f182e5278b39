"""The statistics of `validate`: speed-ups from runs interleaved with autoregressive ones
(drift cancels), the noise floor measured the same way, and the verdict. Synthetic timings
only: no timing of this machine."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hispec_sim.validate import block_order, interleaved_speedups, timing_noise, verdict

AR_SPT = 0.01  # seconds per token of autoregressive decoding at speed 1


def synthetic_runs(speedups, prompts=4, rounds=1, ar_every=1, tokens=100, speed=lambda t: 1.0, noise=None,
                   seed=0, prompt_tokens=None):
    """Runs as the executor would record them on a machine whose speed factor at time t is
    speed(t) (time per token x speed), each plan k `speedups[k]` x faster than
    autoregressive; noise(run index) multiplies a run's time."""
    rng = random.Random(seed)
    runs, t, n = [], 0.0, 0
    for rd in range(rounds):
        for i in range(prompts):
            toks = prompt_tokens[i] if prompt_tokens else tokens
            for k in block_order(len(speedups), ar_every, rng):
                spt = AR_SPT / (1.0 if k < 0 else speedups[k])
                sec = toks * spt * (noise(n) if noise else 1.0)
                base = sec
                for _ in range(60):  # the speed at the run's mid time (a run's average under linear drift)
                    sec = base * speed(t + sec / 2)
                runs.append({"round": rd, "prompt": i, "plan": k, "tokens": toks, "seconds": sec, "mid": t + sec / 2})
                t += sec
                n += 1
    return runs


def test_block_order_brackets_every_plan():
    rng = random.Random(0)
    assert block_order(3, 1, rng)[::2] == [-1, -1, -1, -1] and sorted(block_order(3, 1, rng)[1::2]) == [0, 1, 2]
    b = block_order(5, 2, rng)
    assert [i for i, k in enumerate(b) if k < 0] == [0, 3, 6, 8] and sorted(k for k in b if k >= 0) == list(range(5))
    assert block_order(1, 4, rng) == [-1, 0, -1]


def test_quiet_machine_gives_the_true_speedups_and_zero_noise():
    out = interleaved_speedups(synthetic_runs([1.0, 1.5, 2.0], rounds=3), 3)
    assert out["speedup"] == pytest.approx([1.0, 1.5, 2.0]) and out["rounds"] == 3
    assert out["noise_floor"] == pytest.approx(0.0, abs=1e-12) and len(out["noise_floor_slots"]) == 4
    assert out["tokens_per_second"] == pytest.approx([100.0, 150.0, 200.0])
    assert out["autoregressive_tokens_per_second"] == pytest.approx(100.0)


@pytest.mark.parametrize("ar_every", [1, 2, 5])
def test_linear_drift_cancels_in_the_speedup_not_in_tokens_per_second(ar_every):
    # the machine slows down by 40 % over the run: absolute tokens/s are off, speed-ups are not
    speeds = [1.0, 1.3, 1.8, 2.2, 1.1]
    runs = synthetic_runs(speeds, prompts=6, ar_every=ar_every, speed=lambda t: 1.0 + 0.4 * t / 60.0)
    total = runs[-1]["mid"]
    out = interleaved_speedups(runs, len(speeds))
    assert out["speedup"] == pytest.approx(speeds, rel=1e-9)  # linear in time: interpolation is exact
    assert out["noise_floor"] == pytest.approx(0.0, abs=1e-9)
    slowdown = 1.0 + 0.4 * total / 60.0
    assert slowdown > 1.2 and max(abs(t / (100 * s) - 1) for t, s in zip(out["tokens_per_second"], speeds)) > 0.1


def test_aggregate_is_tokens_over_time_not_a_mean_of_per_prompt_ratios():
    # plan 0 commits 100 tokens per prompt but spends different times on two prompts
    runs = synthetic_runs([1.0], prompts=2)
    plan = [r for r in runs if r["plan"] == 0]
    plan[0]["seconds"], plan[1]["seconds"] = 0.5, 1.5  # per-prompt speed-ups 2.0 and 0.667
    out = interleaved_speedups(runs, 1)
    assert out["speedup"][0] == pytest.approx(200 * AR_SPT / 2.0)  # 200 tokens in 2 s vs 1 s per 100 AR tokens
    assert out["speedup"][0] != pytest.approx((2.0 + 2 / 3) / 2)


def test_median_over_rounds_rejects_a_round_hit_by_a_burst():
    runs = synthetic_runs([1.5, 2.0], prompts=2, rounds=3)
    for r in runs:
        if r["round"] == 1 and r["plan"] == 0:
            r["seconds"] *= 3  # a burst of other load during round 1's runs of plan 0
    out = interleaved_speedups(runs, 2)
    assert out["speedup"] == pytest.approx([1.5, 2.0])
    assert [r[0] for r in out["speedup_by_round"]] == pytest.approx([1.5, 0.5, 1.5])


def test_noise_floor_measures_identical_runs_like_plans():
    # every third run 10 % slower: autoregressive runs measured as plans see it
    runs = synthetic_runs([1.0, 1.5, 2.0, 1.2], prompts=5, noise=lambda n: 1.1 if n % 3 == 0 else 1.0)
    out = interleaved_speedups(runs, 4)
    assert 0.02 < out["noise_floor"] < 0.15 and len(out["noise_floor_slots"]) == 5
    assert max(abs(s / t - 1) for s, t in zip(out["speedup"], [1.0, 1.5, 2.0, 1.2])) < 0.15
    # one plan, one autoregressive run on each side: the first-vs-last ratio
    two = synthetic_runs([1.5], prompts=1, speed=lambda t: 1.0 + t / 10.0)
    out2 = interleaved_speedups(two, 1)
    assert out2["noise_floor_method"].startswith("first vs last") and out2["noise_floor"] > 0.05
    assert out2["speedup"] == pytest.approx([1.5])


def test_a_block_without_autoregressive_runs_is_refused():
    with pytest.raises(ValueError, match="runs:"):
        interleaved_speedups([{"round": 0, "prompt": 0, "plan": 0, "tokens": 10, "seconds": 1.0, "mid": 0.5}], 1)


@given(st.lists(st.floats(0.5, 3.0), min_size=1, max_size=6), st.floats(-0.05, 0.05), st.integers(1, 3),
       st.integers(1, 4))
@settings(max_examples=40, deadline=None)
def test_speedups_are_exact_under_any_linear_drift(speeds, slope, ar_every, prompts):
    runs = synthetic_runs(speeds, prompts=prompts, ar_every=ar_every, speed=lambda t: max(0.2, 1.0 + slope * t))
    if any(1.0 + slope * r["mid"] <= 0.25 for r in runs):
        return  # the clamp makes the drift non-linear
    out = interleaved_speedups(runs, len(speeds))
    assert np.allclose(out["speedup"], speeds, rtol=1e-6)


@pytest.mark.parametrize("errors,floor,status", [
    ([0.01, -0.02, 0.03, 0.07], 0.01, "met"),
    ([0.01, -0.02, 0.03, 0.09], 0.01, "not_met"),  # worst above 8 %
    ([0.04, -0.04, 0.04, 0.04], 0.02, "not_met"),  # median above 3 %
    ([0.04, -0.05, 0.06, 0.12], 0.13, "within_noise"),
    ([0.04, -0.05, 0.06, 0.12], 0.10, "not_met"),
    ([0.04, -0.05, 0.06, 0.12], None, "not_met"),
    ([0.02, 0.09], float("nan"), "not_met"),
])
def test_verdict(errors, floor, status):
    v = verdict(errors, floor)
    assert v["status"] == status and v["worst"] == pytest.approx(max(abs(e) for e in errors))
    assert ("bar met" in v["line"]) == (status == "met") and ("noise floor" in v["line"]) == (status != "met")


def test_verdict_with_a_worst_floor_of_its_own():
    errors = [0.02, -0.025, 0.03, 0.11]
    assert verdict(errors, 0.02, 0.12)["status"] == "within_noise"
    assert verdict(errors, 0.02, 0.10)["status"] == "not_met"
    assert verdict([0.04, 0.04, 0.05, 0.05], 0.035, 0.12)["status"] == "not_met"  # the median above both
    assert "median 2.00 %, worst 12.00 %" in verdict(errors, 0.02, 0.12)["line"]


def test_timing_noise_of_identical_rounds_is_zero():
    tn = timing_noise([[1.5, 1.5], [2.0, 2.0], [1.1, 1.1]])
    assert tn["sigma_per_round"] == 0 and tn["plan"] == tn["median"] == tn["worst"] == 0


@settings(max_examples=8, deadline=None)
@given(sigma=st.floats(0.01, 0.08), rounds=st.integers(2, 4), seed=st.integers(0, 10_000))
def test_timing_noise_bounds_a_perfect_prediction(sigma, rounds, seed):
    """Rounds of 12 plans with lognormal timing noise: sigma is recovered, and a perfect
    prediction (the true speed-ups) lands within the 95 % floors in about 95 % of studies."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(1.0, 2.0, 12)
    inside, sigmas = [], []
    for _ in range(120):
        by_round = true[:, None] * np.exp(rng.normal(0, sigma, (12, rounds)))
        tn = timing_noise(by_round.tolist(), draws=1000)
        err = np.abs(true / np.median(by_round, axis=1) - 1)
        inside.append((np.median(err) <= tn["median"], err.max() <= tn["worst"]))
        sigmas.append(tn["sigma_per_round"])
    assert np.mean(sigmas) == pytest.approx(sigma, rel=0.1)
    med_in, worst_in = np.mean(inside, axis=0)
    assert 0.88 <= med_in <= 1.0 and 0.88 <= worst_in <= 1.0


def test_a_burst_on_one_reference_run_is_dropped_drift_is_kept():
    speeds = [1.2, 1.5, 2.0, 1.1]
    runs = synthetic_runs(speeds, prompts=3, speed=lambda t: 1.0 + 0.01 * t)
    second_ar = [r for r in runs if r["plan"] < 0][2]  # an interior reference run of the first block
    second_ar["seconds"] *= 2.5
    out = interleaved_speedups(runs, len(speeds))
    # replaced by a neighbour's value: off by the drift over one run, not by the burst
    assert out["speedup"] == pytest.approx(speeds, rel=1e-2)
    assert out["noise_floor"] > 0.3  # measured as a plan, the burst run itself is far from 1
