"""hispec_exec.measure_serving on the shipped model with tiny arguments: sane fitted
values through the real run_jobs / serve() path (no timing assertions), and the serve
loop's instrumentation."""
import math

import numpy as np
import pytest

from exec_helpers import VirtualClock
from hispec_exec.measure_serving import (
    attention_grid,
    batch_layer_grid,
    measure_serving,
    serve_iterations,
    step_features,
)
from hispec_exec.serve import CpuClock
from hispec_sim.schema import LatencyTable, Plan, ServingCalibration, Source

SRC = Source(kind="assumed", detail="test")


def _table(shipped):
    return LatencyTable(stack="hispec_exec", tokens=[1, 64], contexts=[0, 256], layer_ms=[[0.5, 0.6], [2.0, 2.2]],
                        head_ms=[0.1, 0.5], overhead_ms=0.3, source=SRC)


def test_batch_grid_is_positive_monotone_and_filled(shipped):
    g = batch_layer_grid(shipped, [1, 2], [1, 2, 300], repeats=1, table=_table(shipped))
    grid = np.asarray(g["layer_ms"])
    assert grid.shape == (2, 3) and np.all(np.isfinite(grid)) and np.all(grid > 0)
    assert np.all(np.diff(grid, axis=0) >= 0) and np.all(np.diff(grid, axis=1) >= 0)
    assert (2, 300) in g["filled"]  # 600 rows in all: not timed, extended by the table's linear part


def test_the_attention_grid_times_both_ways_of_reading_a_pool(shipped, monkeypatch):
    """attention_grid: contexts 0, 64, ... up to the capacity - 64; 2 sequences of a pool
    of 8 gathered, 4 read in place, 1 alone gathered (the executor's layouts,
    hispec_exec.model._Rows); non-negative, 0 at context 0, non-decreasing in rows and context."""
    layouts = []
    row_plan = type(shipped)._row_plan

    def spy(self, key):
        plan = row_plan(self, key)
        layouts.append((len(key[3]), plan["in_place"]))
        return plan
    monkeypatch.setattr(type(shipped), "_row_plan", spy)
    g = attention_grid(shipped, [1, 4], repeats=1)
    cap = shipped.new_pool(1).capacity
    assert g["contexts"][0] == 0 and g["contexts"][-1] == cap - 64 and 64 in g["contexts"]
    assert {(1, False), (2, False), (4, True)} <= set(layouts) and g["sequences"] == [2, 4, 1] and g["slots"] == 8
    for name in ("gathered", "in_place", "single"):
        grid = g[name]
        assert grid.shape == (2, len(g["contexts"])) and np.all(grid >= 0) and np.all(grid[:, 0] == 0)
        assert np.all(np.diff(grid, axis=0) >= 0) and np.all(np.diff(grid, axis=1) >= 0)


def test_an_untimed_prefill_cell_is_its_timed_batch_scaled(shipped, monkeypatch):
    """A prefill cell of more rows than PREFILL_CELL_ROWS: the largest timed batch's cell of
    the same prompt length x b / that batch (long prompts cost what they cost alone)."""
    import hispec_exec.measure_serving as ms

    monkeypatch.setattr(ms, "PREFILL_CELL_ROWS", 30)
    g = batch_layer_grid(shipped, [1, 2, 3], [4, 20], repeats=1, prefill=True)
    raw = np.asarray(g["raw_layer_ms"])
    assert sorted(g["filled"]) == [(2, 20), (3, 20)]
    assert raw[1, 1] == pytest.approx(2 * raw[0, 1]) and raw[2, 1] == pytest.approx(3 * raw[0, 1])
    assert np.all(np.isfinite(raw[:, 0]))  # 4-row prompts: every batch timed


def test_the_prefill_grid_times_prefill_forwards(shipped, monkeypatch):
    """batch_layer_grid(prefill=True) runs the prefill forwards generate.run_prefill runs."""
    seen = []
    run_jobs = type(shipped).run_jobs

    def spy(self, jobs, prefill=False):
        seen.append(prefill)
        return run_jobs(self, jobs, prefill=prefill)
    monkeypatch.setattr(type(shipped), "run_jobs", spy)
    batch_layer_grid(shipped, [1], [4], repeats=1, prefill=True)
    assert seen and all(seen)
    seen.clear()
    batch_layer_grid(shipped, [1], [4], repeats=1)
    assert seen and not any(seen)


def test_serve_log_has_one_entry_per_step_with_the_ops(shipped):
    plan = Plan(levels=[4, 16], propose=2)
    prompts = [[65 + i] * (5 + i) for i in range(3)]
    log = serve_iterations(shipped, plan, prompts, 6, 2, clock=CpuClock())
    assert log and all(e["step_ms"] >= 0 and e["prefill_ms"] >= 0 for e in log)
    assert all(1 <= len(e["ops"]) <= 2 for e in log)
    assert any(op > 0 and nbuf == 2 for e in log for op, nbuf, _ in e["ops"])  # level-2 checks of 2 drafts
    fwd, head, nseq, nchk = step_features(plan.levels, log[-1]["ops"], _table(shipped))
    assert fwd > 0 and head > 0 and nseq == len(log[-1]["ops"]) and 0 <= nchk <= nseq


def test_measure_serving_returns_a_valid_calibration(shipped):
    cal = measure_serving(shipped, _table(shipped), "test", repeats=1, rounds=1, batches=[1, 2], rows=[1, 3],
                          max_new=4, prefill_rows=[4, 8])
    assert isinstance(cal, ServingCalibration)
    ServingCalibration.model_validate(cal.model_dump())
    assert cal.batches == [1, 2] and cal.rows == [1, 3] and cal.context == 0
    assert cal.prefill_rows == [4, 8] and np.asarray(cal.prefill_layer_ms).shape == (2, 2)
    assert cal.attention_contexts[0] == 0 and "in place" in cal.source.detail and "one alone" in cal.source.detail
    for grid in (cal.attention_gathered_ms, cal.attention_in_place_ms, cal.attention_single_ms):
        assert np.asarray(grid).shape == (len(cal.attention_rows), len(cal.attention_contexts))
    assert "prefill=True" in cal.source.detail
    for v in (cal.step_ms, cal.sequence_ms, cal.check_ms):
        assert math.isfinite(v) and v >= 0
    for v in (cal.step_ms_se, cal.sequence_ms_se, cal.check_ms_se):
        assert v is not None and math.isfinite(v) and v >= 0
    assert 0.5 <= cal.forward_scale <= 2.0
    assert cal.admit_ms >= 0 and cal.wake_ms >= 0 and "wake_ms" in cal.source.detail
    assert cal.prefill_scale is None or 0.5 <= cal.prefill_scale <= 2.0
    assert cal.source.kind == "measured" and "run_jobs" in cal.source.detail
    noise = cal.step_noise  # the iterations' measured / fitted ratios (hispec_sim.step_noise)
    assert noise is not None and noise.iterations >= 3 and "step noise" in cal.source.detail


def test_cpu_clock_sleep_advances_without_waiting():
    c = CpuClock()
    t = c()
    c.sleep(100.0)
    assert c() - t >= 100.0
    c.sleep(-5.0)  # a negative wait is no wait
    assert c() - t < 200.0


def test_scaled_nnls_recovers_a_scale_and_a_fixed_cost_from_short_and_long_steps():
    """Iterations of 2-layer and 16-layer steps: ms = 0.8 x grid + 1.1 + 0.05 x sequences,
    noise and a few outliers; runs of iterations as bootstrap groups."""
    from hispec_exec.measure import scaled_nnls

    rng = np.random.default_rng(0)
    n = 600
    grid = rng.choice([2.2, 2.5, 17.6, 18.4], n)
    nseq = rng.integers(1, 9, n).astype(float)
    y = 0.8 * grid + 1.1 + 0.05 * nseq + rng.normal(0, 0.05, n)
    y[:6] += 30.0  # interrupted iterations
    X = np.column_stack([grid, np.ones(n), nseq])
    f = scaled_nnls(X, y, np.arange(n) // 20, scale_col=0, bootstrap=50)
    assert f["scaled"] and not f["keep"][:6].any()
    assert f["coef"] == pytest.approx([0.8, 1.1, 0.05], abs=0.02)
    assert np.all(f["se"] < 0.02)
    # a scale outside [0.5, 2] is not believed: fixed to 1, the rest refitted
    f = scaled_nnls(X, 3.0 * grid + 1.0, np.arange(n) // 20, scale_col=0, bootstrap=10)
    assert not f["scaled"] and f["coef"][0] == 1.0


def test_the_probe_puts_every_run_back_into_the_grids_window(shipped, monkeypatch):
    """Runs timed while the machine ran 0.8-1.3x as slow as during the grid: with the probe
    timed before each run, the fit recovers the loop's own scale and host terms, and the
    admissions' terms: the prefill forwards' own scale, admit_ms on every admitting
    iteration, wake_ms on those after an idle spell (the idle runs' requests arrive apart)."""
    from hispec_exec import measure_serving as ms
    from hispec_sim.schema import load_profile
    from hispec_sim.serving import StepCost

    table = load_profile("cpu_hispec_tiny").table()
    unit = table.model_copy(update={"serving": table.serving.model_copy(update={"forward_scale": 1.0,
                                                                                "prefill_scale": None})})
    slowdowns = iter([1.0, 1.3, 0.8, 1.2, 0.9, 1.1] * 4)
    now = {}

    def probe():
        now["slow"] = next(slowdowns)
        return 10.0 * now["slow"]

    real = ms.serve_iterations
    gaps = []

    def drifting(model, plan, prompts, max_new, max_batch, seed=0, clock=None, gap_s=0.0):
        gaps.append(gap_s)
        log = real(model, plan, prompts, max_new, max_batch, seed, VirtualClock(1e-6), gap_s)  # the real ops; times synthetic
        cost = StepCost(unit, plan, 16, 2, 256, np.array([len(p) for p in prompts]))
        for it in log:
            fwd, head, nseq, nchk = ms.step_features(plan.levels, it["ops"], table)
            admitting = it["prefill_ms"] > 0
            it["step_ms"] = (0.9 * fwd + 1.0 + 0.1 * nseq + 0.5 * nchk + head + 0.4 * admitting
                             + 0.7 * it["woke"]) * now["slow"]
            if admitting:
                priced = cost.prefill(np.array([len(p) for p in prompts[:len(it["ops"])]])) - cost.fixed
                it["prefill_ms"] = (1.15 * priced + cost.fixed) * now["slow"]
        return log

    monkeypatch.setattr(ms, "serve_iterations", drifting)
    fit = ms.fit_step_overheads(shipped, table, [1, 2], rounds=1, max_new=6, bootstrap=10, probe=probe, reference=10.0)
    assert fit["drift"] == pytest.approx((1 / 1.3, 1 / 0.8))
    got = [fit[k] for k in ("forward_scale", "step_ms", "sequence_ms", "check_ms", "admit_ms")]
    assert got == pytest.approx([0.9, 1.0, 0.1, 0.5, 0.4], rel=1e-6, abs=1e-6)
    assert fit["prefill_scale"] == pytest.approx(1.15) and fit["prefills"] == 6
    assert gaps[-1] > 0.03 and fit["wakes"] == 3 * (ms.IDLE_REQUESTS - 1)  # all but each idle run's first
    assert fit["wake_ms"] == pytest.approx(0.7, abs=1e-6)
