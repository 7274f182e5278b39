"""Step-time noise (hispec_sim.step_noise, schema.StepNoise): without it every engine is
today's, value for value; with it the mean step time is kept, the tail grows, the
acceptance draws do not move; the sampler reproduces the stored quantiles and the
stored lag-1 autocorrelation; bad noise fields are refused at the boundary."""
import json

import numpy as np
import pytest
from factories import TEST_SOURCE, make_profile
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hispec_sim import schema, serving, step_noise
from hispec_sim.cli import main

PLANS = [schema.Plan(levels=[8]), schema.Plan(levels=[2, 8], propose=4),
         schema.Plan(levels=[2, 8], propose=4, batching="synchronous"),
         schema.Plan(levels=[2, 5, 8], propose=3, windows=[4], batching="synchronous"),
         schema.Plan(levels=[2, 5, 8], propose=3, windows=[4])]
IDS = ["ar", "ragged-2", "sync-2", "sync-3", "ragged-3"]

# (steps, sum of event times, sum of first-token times, last time) of each PLANS run below,
# computed by the engines before step noise existed (commit bbf8a78), then again when a
# calibrated profile's attention became the executor's padded attention (2026-12-03:
# latency.padded_sequences; +0.3 to +0.7 % here, the same steps)
GOLDEN = [(307, 10286094.200982763, 469143.30993121467, 8728.138459760115),
          (1117, 16226591.5865806, 1049873.1540512145, 19494.149739760112),
          (1120, 14334399.70002061, 927874.7769712151, 17222.99677976013),
          (1031, 8754751.957185805, 813382.1099712134, 15437.935539760098),
          (1445, 11226727.296053559, 1273117.6852912148, 23857.826459760123)]


def _calibration(noise: schema.StepNoise | None = None) -> schema.ServingCalibration:
    batches, rows = (1, 2, 4, 8), (1, 2, 4, 8)
    grid = [[1.0 + 0.2 * (b - 1) + 0.1 * b * (n - 1) for n in rows] for b in batches]
    return schema.ServingCalibration(batches=list(batches), rows=list(rows), layer_ms=grid, step_ms=0.5,
                                     sequence_ms=0.05, check_ms=0.1, forward_scale=1.1, step_noise=noise,
                                     source=TEST_SOURCE)


def _noise(rho=0.0, sigma=0.3, seed=0) -> schema.StepNoise:
    """A lognormal ratio, as the measurement summarises it."""
    rng = np.random.default_rng(seed)
    d = step_noise.describe(np.exp(sigma * rng.standard_normal(4000)), np.zeros(4000, int))
    return schema.StepNoise(**{**d, "lag1_autocorrelation": rho})


def _run(plan, noise=None, n=120, gap_s=0.01, max_batch=8, seed=3, traffic_seed=5):
    p = make_profile(layers=8)
    t = p.latency[0].model_copy(update={"serving": _calibration(noise)})
    rng = np.random.default_rng(traffic_seed)
    arr = np.cumsum(rng.exponential(gap_s, n)) if gap_s else np.zeros(n)
    pl, ol = rng.integers(4, 60, n), rng.integers(3, 40, n)
    return serving.simulate_arrays(t, p.model.num_layers, p.workload(), plan, arr, pl, ol,
                                   schema.ServeLimits(max_batch=max_batch), seed=seed)


@pytest.mark.parametrize("plan,gold", list(zip(PLANS, GOLDEN)), ids=IDS)
def test_without_noise_every_engine_is_todays(plan, gold):
    r = _run(plan)
    assert r.steps == gold[0]
    assert (float(r.event_ms.sum()), float(r.first_ms.sum()), float(r.last_ms.max())) == pytest.approx(gold[1:], rel=1e-12)


@pytest.mark.parametrize("plan", PLANS, ids=IDS)
def test_noise_moves_times_not_tokens_and_keeps_the_mean(plan):
    """A closed batch (every request at 0): admissions follow completions, so the steps
    are the same with and without noise and the makespan is the sum of the steps; the
    noise (mean 1) keeps it within a few per cent, and every request gets the tokens it
    got without noise (the noise has its own RNG stream)."""
    noise = _noise(rho=0.5)
    off = _run(plan, gap_s=0.0, n=200)
    on = _run(plan, noise, gap_s=0.0, n=200)
    assert on.steps == off.steps
    assert on.prefills == off.prefills
    for a, b in ((off, on),):
        ka, kb = np.lexsort((a.event_ms, a.event_req)), np.lexsort((b.event_ms, b.event_req))
        assert np.array_equal(a.event_req[ka], b.event_req[kb])
        assert np.array_equal(a.event_tokens[ka], b.event_tokens[kb])
    # 4 standard deviations of a mean of `steps` AR(1) draws (variance x (1 + rho) / (1 - rho))
    sd = np.std(noise.quantiles) * np.sqrt((1 + 0.5) / (1 - 0.5) / off.steps)
    assert float(on.last_ms.max()) == pytest.approx(float(off.last_ms.max()), rel=4 * sd)
    assert not np.allclose(on.event_ms, off.event_ms)


@pytest.mark.parametrize("plan", [PLANS[1], PLANS[3]], ids=["ragged-2", "sync-3"])
def test_noise_raises_the_p99_tbt_and_keeps_the_throughput(plan):
    lim = schema.ServeLimits(max_batch=8)
    off = serving.quick_summary(_run(plan, n=300, gap_s=0.05), lim)
    on = serving.quick_summary(_run(plan, _noise(sigma=0.4), n=300, gap_s=0.05), lim)
    assert on["tbt_ms"]["p99"] > 1.1 * off["tbt_ms"]["p99"]
    assert on["throughput_tokens_per_s"] == pytest.approx(off["throughput_tokens_per_s"], rel=0.05)


def test_one_seed_one_run():
    a, b = _run(PLANS[3], _noise(rho=0.3)), _run(PLANS[3], _noise(rho=0.3))
    assert np.array_equal(a.event_ms, b.event_ms)
    c = _run(PLANS[3], _noise(rho=0.3), seed=4)
    assert not np.array_equal(a.event_ms, c.event_ms)


@settings(max_examples=15, deadline=None)
@given(steps=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=64), lo=st.floats(0.05, 2.0),
       rho=st.sampled_from([0.0, 0.4]), seed=st.integers(0, 2**16))
def test_draws_reproduce_the_stored_quantiles(steps, lo, rho, seed):
    """At each stored quantile q_i (probability p_i), the share of draws <= q_i is p_i
    (after the rescaling to mean 1, which the stored quantiles of a measurement already have)."""
    q = lo + np.cumsum(steps)
    q = q / step_noise.sampler_mean(q)
    draws = step_noise.NoiseStream(q, rho, seed).ratios(40_000)
    p = step_noise.probabilities(len(q))
    tol = 0.01 * np.sqrt((1 + rho) / (1 - rho))  # 4 standard deviations of a share
    for i in range(len(q)):
        share = (draws <= q[i] * (1 + 1e-12)).mean()
        # quantiles closer than 1e-9 count as tied: the lookup's 1e-12 slack above q_i would cover a
        # visible part of a narrower gap (1.4e-11 apart: 7 % of the next interval's draws)
        tied = np.isclose(q, q[i], rtol=1e-9, atol=0)
        assert share >= p[i] - tol
        if tied.sum() == 1 and i < len(q) - 1:  # (beyond the last quantile: flat, all draws <= it)
            assert share <= p[i] + tol
    assert draws.mean() == pytest.approx(1.0, abs=0.02 * q.std() / max(q.mean(), 1e-9) * 3 + 1e-3)


@pytest.mark.parametrize("rho", [0.0, 0.3, 0.7])
def test_simulated_lag1_autocorrelation_is_the_stored_one(rho):
    s = step_noise.NoiseStream(_noise().quantiles, rho, seed=1)
    draws = np.concatenate([s.ratios(7000) for _ in range(10)])  # across block boundaries
    got, _ = step_noise.lag1_normal_scores(draws, np.zeros(len(draws), int))
    assert got == pytest.approx(rho, abs=0.03)


def test_the_measurement_recovers_an_ar1_and_calls_white_noise_iid():
    rng = np.random.default_rng(2)
    e = rng.standard_normal(3000)
    z = np.empty_like(e)
    z[0] = e[0]
    for i in range(1, len(e)):
        z[i] = 0.6 * z[i - 1] + np.sqrt(1 - 0.36) * e[i]
    group = np.repeat(np.arange(30), 100)
    d = step_noise.describe(np.exp(0.2 * z), group)
    assert d["lag1_autocorrelation"] == pytest.approx(0.6, abs=0.06)
    assert step_noise.sampler_mean(d["quantiles"]) == pytest.approx(1.0, abs=1e-5)
    white = step_noise.describe(np.exp(0.2 * rng.standard_normal(3000)), group)
    assert white["lag1_autocorrelation"] == 0.0 and abs(white["lag1_measured"]) < 0.05


def test_a_measured_autocorrelation_beyond_the_cap_is_capped_not_refused():
    """A loaded machine's step times can drift almost as a random walk (CI measured 0.9514):
    `profile measure` keeps going with the AR(1) coefficient capped at the schema's bound
    (the measured value stays beside it)."""
    z = np.cumsum(np.random.default_rng(3).standard_normal(600))  # a random walk: lag-1 ~ 1
    d = step_noise.describe(np.exp(0.05 * z), np.zeros(600, int))
    assert d["lag1_measured"] > schema.MAX_LAG1 and d["lag1_autocorrelation"] == schema.MAX_LAG1
    schema.StepNoise(**{k: v for k, v in d.items() if k in schema.StepNoise.model_fields})


@pytest.mark.parametrize("bad,field", [({"quantiles": [1.0, 0.9, 1.1]}, "non-decreasing"),
                                       ({"quantiles": [0.0, 1.0, 1.2]}, "> 0"),
                                       ({"quantiles": [0.9, float("nan"), 1.2]}, "finite"),
                                       ({"quantiles": [0.9, 1.0, float("inf")]}, "finite"),
                                       ({"quantiles": [1.0, 1.0]}, "quantiles"),
                                       ({"lag1_autocorrelation": 0.99}, "lag1_autocorrelation"),
                                       ({"iterations": 0}, "iterations")])
def test_schema_refuses_bad_noise(bad, field):
    good = {"quantiles": [0.8, 1.0, 1.2], "lag1_autocorrelation": 0.2, "iterations": 100}
    with pytest.raises(ValidationError, match=field.replace("+", r"\+")):
        schema.StepNoise(**{**good, **bad})


def _noisy_profile(tmp_path, noise: dict | None):
    p = make_profile(layers=8)
    t = p.latency[0].model_copy(update={"serving": _calibration()}).model_dump(mode="json")
    if noise is not None:
        t["serving"]["step_noise"] = noise
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**p.model_dump(mode="json"), "latency": [t]}))
    return str(path)


def _serve(capsys, path, *extra):
    rc = main(["serve", "--profile", path, "--qps", "20", "--requests", "60", "--seeds", "1", "--levels", "2,8",
               "--propose", "3", "--prompt-len", "16", "--output-len", "12", "--json", *extra])
    out = capsys.readouterr()
    return rc, out


def test_cli_says_whether_noise_was_used_and_off_is_deterministic(tmp_path, capsys):
    noisy = _noisy_profile(tmp_path, _noise(rho=0.2).model_dump())
    rc, on = _serve(capsys, noisy)
    assert rc == 0
    on = json.loads(on.out)
    assert on["step_noise"]["used"] is True and on["step_noise"]["lag1_autocorrelation"] == 0.2
    rc, off = _serve(capsys, noisy, "--step-noise", "off")
    off = json.loads(off.out)
    assert off["step_noise"] == {"used": False, "why": "switched off (--step-noise off)"}
    plain = _noisy_profile(tmp_path, None)
    rc, none = _serve(capsys, plain)
    none = json.loads(none.out)
    assert none["step_noise"]["used"] is False and "no measured step noise" in none["step_noise"]["why"]
    assert none["per_seed"] == off["per_seed"]  # off == a profile without noise, value for value
    assert on["per_seed"] != off["per_seed"]


@pytest.mark.parametrize("noise,arg,needle", [({"quantiles": [1.2, 1.0, 0.8], "iterations": 5}, [], "quantiles"),
                                              (None, ["--step-noise", "sometimes"], "step-noise: must be on or off")])
def test_cli_refuses_bad_noise_in_one_line(tmp_path, capsys, noise, arg, needle):
    path = _noisy_profile(tmp_path, noise)
    rc, out = _serve(capsys, path, *arg)
    assert rc == 2
    assert needle in out.err and len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err
    assert out.out == ""


class _NoisyReferenceCost:
    """StepCost for the slot-by-slot synchronous reference engine, with each step's time x
    the next noise draw: a round's g draft steps one by one (StepCost.drafts of one step at
    each context), then each check step."""

    def __init__(self, cost):
        self.cost = cost

    def __getattr__(self, name):
        return getattr(self.cost, name)

    def drafts(self, ctx, g, m):
        return sum(self.cost.jitter(self.cost.drafts(ctx + i, 1, m)) for i in range(g))

    def step(self, *a):
        return self.cost.jitter(self.cost.step(*a))


@pytest.mark.parametrize("case", ["calibrated_light", "calibrated_depth4"])
def test_noisy_synchronous_engine_equals_the_noisy_slot_by_slot_reference(case):
    """The compact engine draws the noise per step in time order (g draws per round of
    drafts, one per check), as the reference does step by step: the same runs (times up to
    the order of float additions)."""
    import test_synchronous_engine as ref

    load, edit, levels, g, windows, count, qps, batch, kv, prompts, outputs = ref.CASES[case]
    table, acc, layers = load()
    table = edit(table)
    table = table.model_copy(update={"serving": table.serving.model_copy(update={"step_noise": _noise(rho=0.4)})})
    plan = schema.Plan(levels=levels, propose=g, windows=windows, batching="synchronous")
    limits = schema.ServeLimits(max_batch=batch, kv_tokens=kv)
    arrival, prompt, out = ref._requests(qps, count, prompts, outputs, seed=len(case))
    seed = 2
    got = serving.simulate_arrays(table, layers, acc, plan, arrival, prompt, out, limits, seed)
    rng = np.random.default_rng(seed)
    rates = serving.request_rates(acc, plan, len(arrival), rng)
    need = serving.reservation(plan, prompt, out)
    max_ctx = int((prompt + out).max()) + plan.max_overshoot + serving.CTX_BUCKET
    cost = _NoisyReferenceCost(serving.StepCost(table, plan, layers, batch, max_ctx, prompt, seed=seed))
    want = ref.reference_synchronous(cost, plan, rates, arrival, prompt, out, need,
                                     kv if kv is not None else np.inf, batch, rng)
    assert (got.steps, got.prefills) == (want.steps, want.prefills)
    for field in ("event_req", "event_tokens"):
        assert np.array_equal(getattr(got, field), getattr(want, field)), field
    for field in ("admit_ms", "first_ms", "last_ms", "event_ms"):
        assert np.allclose(getattr(got, field), getattr(want, field), rtol=1e-9, atol=1e-9), field
    plain = serving.simulate_arrays(table.model_copy(update={"serving": table.serving.model_copy(
        update={"step_noise": None})}), layers, acc, plan, arrival, prompt, out, limits, seed)
    assert not np.allclose(plain.last_ms, got.last_ms)


@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_adaptive_plans_carry_the_noise_and_keep_their_tokens(batching):
    from factories import confident_profile

    p = confident_profile(layers=8)
    plan = schema.Plan(levels=[2, 5, 8], propose=3, windows=[4], draft_confidence=0.4, escalate_confidence=[0.3],
                       batching=batching)
    rng = np.random.default_rng(1)
    n = 60
    arr, pl, ol = np.zeros(n), rng.integers(4, 40, n), rng.integers(3, 30, n)
    runs = {}
    for key, noise in (("off", None), ("on", _noise(rho=0.3))):
        t = p.latency[0].model_copy(update={"serving": _calibration(noise)})
        runs[key] = serving.simulate_arrays(t, p.model.num_layers, p.workload(), plan, arr, pl, ol,
                                            schema.ServeLimits(max_batch=8), seed=0)
    off, on = runs["off"], runs["on"]
    assert on.steps == off.steps
    ka, kb = np.lexsort((off.event_ms, off.event_req)), np.lexsort((on.event_ms, on.event_req))
    assert np.array_equal(off.event_tokens[ka], on.event_tokens[kb])
    assert not np.allclose(off.last_ms, on.last_ms)
    sd = np.std(_noise().quantiles) * np.sqrt((1 + 0.3) / (1 - 0.3) / off.steps)
    assert float(on.last_ms.max()) == pytest.approx(float(off.last_ms.max()), rel=4 * sd)


@pytest.mark.parametrize("plan", [PLANS[1], PLANS[3]], ids=["ragged-2", "sync-3"])
def test_each_step_draws_from_its_size_class(plan):
    """Two classes split at split_ms: below it short_quantiles, at or above quantiles. A
    split above every step with constant short quantiles 1 = deterministic steps; a split
    below every step = the pooled noise of `quantiles`, step for step."""
    pooled = _noise(rho=0.3)
    flat = [1.0] * len(pooled.quantiles)
    wide = schema.StepNoise(**{**pooled.model_dump(), "short_quantiles": flat, "split_ms": 1e5})
    narrow = schema.StepNoise(**{**pooled.model_dump(), "short_quantiles": flat, "split_ms": 1e-6})
    off, all_short, all_long, ref = _run(plan), _run(plan, wide), _run(plan, narrow), _run(plan, pooled)
    assert np.allclose(all_short.last_ms, off.last_ms, rtol=1e-12)
    assert np.array_equal(all_long.event_ms, ref.event_ms)
    assert not np.allclose(ref.last_ms, off.last_ms)


def test_the_measurement_splits_step_sizes_when_both_classes_are_large():
    rng = np.random.default_rng(3)
    fitted = np.tile([4.0, 16.0], 1000) * rng.uniform(0.9, 1.1, 2000)  # half short, half long: the median splits them
    ratio = np.where(fitted < 10, np.exp(0.5 * rng.standard_normal(2000)), np.exp(0.1 * rng.standard_normal(2000)))
    d = step_noise.describe(ratio, np.arange(2000) // 50, fitted)
    noise = schema.StepNoise(**d)
    assert 4.4 <= noise.split_ms <= 14.4
    short, long = np.asarray(noise.short_quantiles), np.asarray(noise.quantiles)
    assert step_noise.sampler_mean(short) == pytest.approx(1, abs=1e-5) == step_noise.sampler_mean(long)
    assert np.std(short) > 3 * np.std(long)
    s = step_noise.stream_for(schema.LatencyTable.model_construct(serving=_calibration(noise)), seed=0)
    z = s.take(50_000)
    assert np.std(s.scale(z, 4.0)) > 3 * np.std(s.scale(z, 16.0))
    few = step_noise.describe(ratio[:200], np.zeros(200, int), fitted[:200])  # classes too small: pooled
    assert "split_ms" not in few and "short_quantiles" not in few


@pytest.mark.parametrize("bad,field", [({"short_quantiles": [1.0, 0.9, 1.1], "split_ms": 3.0}, "short_quantiles"),
                                       ({"short_quantiles": [0.9, 1.0, 1.1]}, "split_ms"),
                                       ({"split_ms": 3.0}, "split_ms"),
                                       ({"short_quantiles": [0.9, 1.0, 1.1], "split_ms": -1.0}, "split_ms")])
def test_schema_refuses_bad_size_classes(bad, field):
    good = {"quantiles": [0.8, 1.0, 1.2], "iterations": 100}
    with pytest.raises(ValidationError, match=field):
        schema.StepNoise(**{**good, **bad})
