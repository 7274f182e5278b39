"""`profile measure`: robust statistics, the user's prompts files, Hugging Face checkpoints with
their own tokenizer.json, acceptance-only workloads and merging, bad input."""
from __future__ import annotations


import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hispec_exec.measure as measure
from hispec_exec.checkpoint import load_model
from hispec_exec.generate import Forward
from hispec_exec.prompts import tokenizer_digest
from hispec_exec.measure import (_fill_beyond_capacity, _scaled_working_set, calibration_plans, drifting_nnls, isotonic, isotonic_2d,
                                 measure_profile, measure_working_set, measurement_unrest, measurement_warning,
                                 overhead_rows, robust_mean, scaled_nnls, working_set_grid)
from hispec_exec.model import ModelArgs, Transformer
from hispec_exec.prompts import read_prompts
from hispec_sim.cli import main
from hispec_sim.schema import Plan, load_profile

finite = st.floats(0.0, 100.0, allow_nan=False)


@given(st.lists(finite, min_size=1, max_size=30), st.data())
@settings(max_examples=60, deadline=None)
def test_isotonic_is_the_monotone_least_squares_fit(y, data):
    w = np.array(data.draw(st.lists(st.floats(0.1, 10.0), min_size=len(y), max_size=len(y))))
    y = np.array(y)
    fit = isotonic(y, w)
    assert (np.diff(fit) >= -1e-12).all()
    assert np.isclose((fit * w).sum(), (y * w).sum())  # pooling keeps the weighted mean
    # no monotone sequence is closer: any other monotone candidate (sorted y, constant mean) fits worse or equal
    for other in (np.sort(y), np.full_like(y, np.average(y, weights=w)), np.maximum.accumulate(y)):
        assert (w * (fit - y) ** 2).sum() <= (w * (other - y) ** 2).sum() + 1e-9
    assert np.allclose(isotonic(fit, w), fit)  # already monotone: unchanged


@given(st.integers(1, 6), st.integers(1, 5), st.data())
@settings(max_examples=40, deadline=None)
def test_isotonic_2d_is_monotone_along_both_axes(rows, cols, data):
    y = np.array(data.draw(st.lists(finite, min_size=rows * cols, max_size=rows * cols))).reshape(rows, cols)
    fit = isotonic_2d(y)
    assert (np.diff(fit, axis=0) >= 0).all() and (np.diff(fit, axis=1) >= 0).all()
    mono = np.maximum.accumulate(np.maximum.accumulate(y, axis=0), axis=1)
    assert np.allclose(isotonic_2d(mono), mono)
    assert ((fit - y) ** 2).sum() <= ((mono - y) ** 2).sum() + 1e-6


def test_robust_mean_drops_an_interrupted_sample():
    mean, se, kept = robust_mean([1.0, 1.01, 0.99, 1.02, 0.98, 9.0])
    assert kept == 5 and mean == pytest.approx(1.0) and 0 < se < 0.01


def test_cells_beyond_capacity_are_extrapolated_from_the_context_slope():
    raw = np.array([[1.0, 1.5], [2.0, 3.0], [4.0, np.nan]])  # tokens 1, 2, 4; contexts 0, 100
    filled = _fill_beyond_capacity(raw, [1, 2, 4], [0, 100])
    assert filled == [(4, 100)] and raw[2, 1] == pytest.approx(4.0 + (3.0 - 2.0) * 4 / 2)


def _tiny(layers: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(n_layers=layers, dim=32, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=128)).eval()


@pytest.mark.parametrize("L", [1, 2, 5, 16, 17, 32, 80, 126])
def test_working_set_grid_spans_the_depth(L):
    ks = working_set_grid(L)
    assert ks[0] == 1 and ks[-1] == L and ks == sorted(set(ks)) and len(ks) <= max(L, 1) and len(ks) <= 16


def test_working_set_is_the_excess_of_a_layer_in_short_forwards(monkeypatch):
    """On a machine whose cache holds 6 layers' weights (each layer beyond the sixth of a
    forward costs 0.05 ms more), a layer of a forward over the first k layers is cheaper than
    the table's by w = slope(k) - slope(L): non-decreasing, 0 at L; the per-forward cost
    cancels."""
    model, L = _tiny(12), 12
    depth = []
    real_run = model.run
    monkeypatch.setattr(model, "run", lambda cache, first, k, toks: (depth.append(k), real_run(cache, first, k, toks)))

    def timed(f, cuda):
        f()
        k = depth[-1]
        return 0.3 + 0.1 * k + 0.05 * max(k - 6, 0)
    monkeypatch.setattr(measure, "_timed", timed)
    ws = measure_working_set(model, repeats=3)
    slope = lambda k: 0.1 + 0.05 * max(k - 6, 0) / (k - 1)
    assert ws["layers"] == list(range(1, L + 1))
    assert ws["ms"] == pytest.approx([slope(max(k, 2)) - slope(L) for k in ws["layers"]])
    assert ws["ms"][0] == pytest.approx(-0.05 * 6 / 11) and ws["ms"][-1] == 0.0


def test_working_set_on_a_real_forward_is_monotone_and_zero_at_full_depth():
    ws = measure_working_set(_tiny(4), repeats=2, burst=1)
    assert ws["layers"] == [1, 2, 3, 4] and ws["ms"][-1] == 0.0
    assert np.all(np.diff(ws["ms"]) >= 0) and max(ws["ms"]) <= 0 and all(np.isfinite(ws["forward_ms"]))


def test_the_working_set_is_timed_without_autograd(monkeypatch):
    """Its forwards run under torch.no_grad, as the layer table's: autograd's bookkeeping
    would slow the forwards over 1..k and skew w(k)."""
    seen, forward = [], measure.layers_forward
    monkeypatch.setattr(measure, "layers_forward", lambda *a: seen.append(torch.is_grad_enabled()) or forward(*a))
    measure_working_set(_tiny(2), repeats=1, burst=1)
    assert seen and not any(seen)


def test_a_noisy_working_set_never_saves_more_than_the_smallest_layer():
    """A noisy timing (or a large calibration scale) can say a layer saves more than the
    table's smallest layer time, which the profile refuses (schema.LatencyTable): floored."""
    lat = {"layer_ms": [[0.16, 0.2], [0.3, 0.4]]}
    assert _scaled_working_set([-0.2, -0.01, 0.0], 1.0, lat) == pytest.approx([-0.999 * 0.16, -0.01, 0.0])
    assert _scaled_working_set([-0.1, 0.0], 3.0, lat) == pytest.approx([-0.999 * 0.16, 0.0])


def test_the_calibration_prices_each_forward_at_its_working_set():
    """overhead_rows' table column: each layer of each forward carries w(depth of the forward
    that last ran it) -- the prefill ran all 8 -- so the fitted overheads see only what the
    table does not."""
    model = _tiny(8)
    table = measure_profile(model, "rand8", "cpu", "heldout", n_prompts=1, prompt_len=16, max_new_tokens=8, repeats=1,
                            tokens=[1, 2, 4, 8], calibration_rounds=1, attempts=1).table()
    assert table.working_set_layers == list(range(1, 9)) and table.working_set_ms[-1] == 0.0
    w = [-0.05, -0.05, -0.04, -0.04, -0.03, -0.02, -0.01, 0.0]
    table = table.model_copy(update={"working_set_ms": w})
    plain = table.model_copy(update={"working_set_layers": None, "working_set_ms": None})
    draft = lambda ms: Forward(1, [(1, 2, 1)], 2, 1, ms)
    forwards = [draft(1.0), draft(1.0), Forward(2, [(1, 2, 1), (3, 6, 4)], 6, 4, 2.0), draft(1.0), draft(0.5)]
    rows, y = overhead_rows(forwards, 6.5, 16, table, 8)
    base, _ = overhead_rows(forwards, 6.5, 16, plain, 8)
    d = lambda depth: w[depth - 1]
    assert rows[:, 5] == pytest.approx([2 * d(8), 2 * d(2), 2 * d(2) + 4 * d(8), 2 * d(6), 2 * d(2)])
    assert np.all(base[:, 5] == 0) and np.array_equal(rows[:, :5], base[:, :5])
    assert rows[:, 6] == pytest.approx([0, 0, 4 * 3, 0, 0])  # the check's 3 extra rows through layers 3-6
    assert y == pytest.approx([1.2, 1.2, 2.2, 1.2, 0.7])  # the time outside forwards spread evenly


def test_forwards_record_their_context_and_the_calibration_prices_layers_there():
    """A forward's context: the tokens cached before its first new token (the prompt's last
    token is the first draft's input). overhead_rows prices its layers at that context."""
    from hispec_exec import decode

    model = _tiny(4)
    prompt = list(range(10, 26))
    ar = decode(model, Plan(levels=[4]), prompt, 6)
    assert [f.context for f in ar.forwards] == list(range(15, 21))
    spec = decode(model, Plan(levels=[1, 4], propose=3), prompt, 12)
    fs = spec.forwards
    for i, f in enumerate(fs):
        if f.level == 2:  # checks the n drafts before it from the first one's position, then resumes after what it kept
            n = f.head_tokens - 1
            assert [g.level for g in fs[i - n:i]] == [1] * n and f.context == fs[i - n].context
            if i + 1 < len(fs):
                assert fs[i + 1].context == f.context + f.kept + 1
        elif i and fs[i - 1].level == 1:
            assert f.context == fs[i - 1].context + 1
    table = measure_profile(model, "rand4", "cpu", "heldout", n_prompts=1, prompt_len=16, max_new_tokens=8, repeats=1,
                            tokens=[1, 2, 4, 8], calibration_rounds=1, attempts=1).table()
    table = table.model_copy(update={"layer_ms": [[0.1 + 0.001 * c for c in table.contexts] for _ in table.tokens]})
    rows, _ = overhead_rows(ar.forwards, 10.0, 16, table, 4)
    assert rows[:, 3] - table.head_ms[0] == pytest.approx([4 * (0.1 + 0.001 * c) for c in range(15, 21)])


def test_the_decode_loop_sets_the_working_sets_scale():
    """Forwards whose time holds half the micro-benchmark's working-set gain (w = -0.1 ms per
    layer at depths <= 4, 0 at 16), on drifting runs: the fit's working-set coefficient comes
    out 0.5, the other prices as they were."""
    rng = np.random.default_rng(0)
    plans = [[16], [2, 2, 2, 16], [4, 4, 12], [1, 1, 8, 16]]
    wms = lambda depth: -0.1 * np.clip((16 - depth) / 12, 0, 1)
    X, y, group = [], [], []
    speeds = rng.uniform(0.85, 1.2, 48)
    for run, speed in enumerate(speeds / np.median(speeds)):  # the fit prices the median run
        last = np.full(16, 16)
        for _ in range(8):
            for depth in plans[run % 4]:
                warm = float(wms(last[:depth]).sum())
                last[:depth] = depth
                row = [1.0, depth, float(depth > 4), 0.15 * depth + 0.03, 0.0, warm]
                X.append(row)
                y.append(speed * (0.12 + 0.01 * depth + 0.1 * row[2] + row[3] + 0.5 * warm) * rng.normal(1, 0.01))
                group.append(run)
    f = drifting_nnls(np.array(X), np.array(y), np.array(group), scale_col=3, bootstrap=20)
    assert f["coef"][5] == pytest.approx(0.5, abs=3 * f["se"][5]) and f["se"][5] < 0.1


def test_the_decode_loop_prices_a_checks_extra_rows():
    """Checks whose every row beyond the first costs 0.03 ms per layer more than the table's
    token increment (as on the Intel Xeon VM), on drifting runs: the fit's row coefficient
    comes out 0.03 and a check is priced right against an autoregressive step; without the
    column the fit misprices that ratio."""
    rng = np.random.default_rng(1)
    plans = [[(16, 1)], [(4, 1)] * 3 + [(12, 4)], [(2, 1)] * 6 + [(14, 7)], [(1, 1)] * 2 + [(15, 3)]]
    X, y, group = [], [], []
    speeds = rng.uniform(0.85, 1.2, 48)
    for run, speed in enumerate(speeds / np.median(speeds)):
        for _ in range(8):
            for layers, n in plans[run % 4]:
                row = [1.0, layers, float(n > 1), layers * (0.4 + 0.02 * (n - 1)) + 0.07, 0.0, 0.0, layers * (n - 1)]
                X.append(row)
                y.append(speed * (0.5 + 0.3 * row[2] + row[3] + 0.03 * row[6]) * rng.normal(1, 0.01))
                group.append(run)
    X, y, group = np.array(X), np.array(y), np.array(group)
    f = drifting_nnls(X, y, group, scale_col=3, bootstrap=20)
    assert f["coef"][6] == pytest.approx(0.03, abs=max(3 * f["se"][6], 0.002)) and f["se"][6] < 0.005
    check, ar = [1.0, 14, 1.0, 14 * 0.52 + 0.07, 0.0, 0.0, 14 * 6], [1.0, 16, 0.0, 16 * 0.4 + 0.07, 0.0, 0.0, 0.0]
    truth = (0.8 + check[3] + 0.03 * check[6]) / (0.5 + ar[3])
    assert np.dot(check, f["coef"]) / np.dot(ar, f["coef"]) == pytest.approx(truth, rel=0.01)
    without = drifting_nnls(X[:, :6], y, group, scale_col=3, bootstrap=0)["coef"]
    assert np.dot(check[:6], without) / np.dot(ar[:6], without) < 0.97 * truth


def test_a_table_timed_slower_than_the_decode_loop_gets_a_per_layer_credit():
    """The machine ran 12 % faster in the calibration than while the table was timed (a VM's
    speed moves that much in a minute): every layer of the decode loop costs 0.05 ms less
    than the table says. NNLS pins the per-layer term at 0 and prices autoregressive steps
    too dear against drafts and checks; with a lower bound below 0 the credit comes back."""
    X, y, group = _drifting_runs(per_layer=-0.05)
    shapes = np.array([[1, 2, 0, 1.2], [1, 6, 1, 4.3], [1, 16, 0, 9.6]])
    truth = shapes @ [0.7, -0.05, 0.4, 1.0]
    lower = np.array([0.0, -0.5 * 0.6, 0.0, 0.0])  # half the smallest layer (0.6 ms per layer)
    credit = drifting_nnls(X, y, group, scale_col=3, bootstrap=0, lower=lower)["coef"]
    pinned = drifting_nnls(X, y, group, scale_col=3, bootstrap=0)["coef"]
    assert credit[1] < 0 and pinned[1] == 0.0
    ratio = lambda c: (shapes @ c) / (shapes[-1] @ c)
    assert ratio(credit) == pytest.approx(truth / truth[-1], rel=0.01)
    assert not ratio(pinned) == pytest.approx(truth / truth[-1], rel=0.02)


@pytest.mark.parametrize("L", [2, 3, 4, 6, 8, 16, 22, 32, 80])
def test_calibration_plans_reach_the_ends_of_the_search_space(L):
    """Valid distinct chains for any depth; from 8 layers on, the forwards the fit contrasts
    span 1-layer drafts, a 3-layer final check of 7 tokens after long drafts, a 1-layer middle check and
    4 levels (not only the three core shapes, which serving calibrates with)."""
    plans = calibration_plans(L)
    assert plans[0].levels == [L] and len({tuple(p.levels) for p in plans}) == len(plans)
    assert all(p.levels[-1] == L and all(0 < a < b for a, b in zip(p.levels, p.levels[1:])) for p in plans)
    assert calibration_plans(L, spread=False) == plans[:len(calibration_plans(L, spread=False))]
    if L >= 8:
        assert len(plans) == 8 and len(calibration_plans(L, spread=False)) == 3
        assert any(p.levels[0] == 1 for p in plans) and any(p.levels == [L - 3, L] and p.propose == 6 for p in plans)
        assert any(p.depth == 3 and p.levels[1] - p.levels[0] == 1 for p in plans)  # a 1-layer middle check
        assert max(p.depth for p in plans) == 4


def _drifting_runs(seed: int = 0, noise: float = 0.01, per_layer: float = 0.05):
    """The calibration plans' forwards (layers, check?, table ms): autoregressive 16-layer
    steps; 4-layer drafts and 12-layer checks of 4 tokens; 2-layer drafts and 6- and 8-layer
    checks of 3 tokens. Forward ms = speed x (table + 0.7 + per_layer x layers + 0.4 x check),
    each decode run at its own speed in [0.8, 1.25] (a shared VM), noise proportional to the time."""
    plans = [[(16, 0, 9.6)], [(4, 0, 2.4)] * 3 + [(12, 1, 8.9)], [(2, 0, 1.2)] * 2 + [(6, 1, 4.3), (2, 0, 1.2), (8, 1, 5.6)]]
    rng = np.random.default_rng(seed)
    X, y, group = [], [], []
    for run in range(36):
        speed = rng.uniform(0.8, 1.25)
        for _ in range(10):
            for layers, check, table in plans[run % 3]:
                X.append([1.0, layers, check, table])
                y.append(speed * (table + 0.7 + per_layer * layers + 0.4 * check) * rng.normal(1, noise))
                group.append(run)
    return np.array(X), np.array(y), np.array(group)


def test_per_run_speed_keeps_drift_out_of_the_overheads():
    """Pooled, the runs' drift lands in the additive overheads (short forwards mispriced
    against long ones); with a speed per run the relative prices come back. The absolute
    level is the median run's speed (the truth's is its runs' median speed)."""
    X, y, group = _drifting_runs()
    f = drifting_nnls(X, y, group, scale_col=3, bootstrap=20)
    assert f["keep"].mean() > 0.9 and np.all(f["se"] < 0.05)
    shapes = np.array([[1, 2, 0, 1.2], [1, 4, 0, 2.4], [1, 6, 1, 4.3], [1, 12, 1, 8.9], [1, 16, 0, 9.6]])
    truth = shapes @ [0.7, 0.05, 0.4, 1.0]
    # (the overheads themselves are ill-determined here: the table is nearly proportional to
    # the layer count; prices relative to an autoregressive step are what predictions use)
    assert (shapes @ f["coef"]) / (shapes[-1] @ f["coef"]) == pytest.approx(truth / truth[-1], rel=0.01)
    pooled = shapes @ scaled_nnls(X, y, group, scale_col=3, bootstrap=20)["coef"]
    assert abs(pooled[0] / pooled[-1] / (truth[0] / truth[-1]) - 1) > 0.02  # what the speed per run fixes
    assert np.median(f["speed"]) == pytest.approx(1.0) and f["speed"].min() < 0.9 < 1.15 < f["speed"].max()
    # an interrupted forward is dropped
    y[5] += 50.0
    assert not drifting_nnls(X, y, group, scale_col=3, bootstrap=0)["keep"][5]


def test_a_block_whose_every_forward_is_an_outlier_keeps_its_speed_slot():
    """Speeds are indexed by block: a block all of whose forwards are dropped (two forwards
    that disagree 50-fold: no speed fits either) still has one (neutral), so speed[group]
    indexes every row."""
    X, y, group = _drifting_runs()
    X = np.vstack([X, X[:2]])
    y = np.r_[y, y[0], 50 * y[1]]
    group = np.r_[group, group.max() + 1, group.max() + 1]
    f = drifting_nnls(X, y, group, scale_col=3, bootstrap=0)
    assert not f["keep"][-2:].any() and len(f["speed"]) == len(np.unique(group))
    assert f["speed"][-1] == pytest.approx(1.0, rel=1e-3)  # neutral: about the median block's
    assert np.isfinite(y / f["speed"][group]).all()


def test_noise_proportional_to_the_time_is_not_taken_for_outliers():
    """With 5 % noise on every forward, a long forward's ordinary noise is several short
    forwards' worth of milliseconds: judged in milliseconds, the unweighted fit drops it as an
    outlier; weighted by 1 / price (relative residuals) only the interrupted forwards go."""
    X, y, group = _drifting_runs(noise=0.05)
    short = np.flatnonzero(X[:, 1] == 2)[:5]
    y[short] *= 1.8  # five interrupted 2-layer drafts
    weighted, plain = (drifting_nnls(X, y, group, scale_col=3, bootstrap=0, relative=r) for r in (True, False))
    assert not weighted["keep"][short].any() and weighted["keep"].mean() > 0.98
    assert plain["keep"].mean() < 0.96


# --------------------------------------------------------------------------- prompts files


@pytest.mark.parametrize("spread,err,warned", [(0.018, 0.011, False), (float("nan"), 0.02, False), (0.155, -0.042, True),
                                               (0.148, 0.041, True), (0.02, -0.042, True), (0.06, 0.0, True)])
def test_a_measurement_the_machine_moved_in_says_so(spread, err, warned):
    w = measurement_warning(spread, err)
    assert (w is not None) == warned == (measurement_unrest(spread, err) > 1)
    if warned:
        assert w.startswith("warning: ") and "re-measure" in w and f"{100 * err:+.1f} %" in w


@pytest.mark.parametrize("spreads,attempts,kept", [([0.20, 0.01, 0.30], 3, 2), ([0.20, 0.08, 0.30], 3, 2),
                                                   ([0.20, 0.30], 2, 1), ([0.01, 0.30], 3, 1)])
def test_timing_is_repeated_while_the_machine_moves_and_the_calmest_kept(monkeypatch, spreads, attempts, kept):
    """The calibration rounds' spread of each attempt is set (the self-check's error is real
    but not judged here: on a CI machine it is whatever that machine does); the timing stops
    at the first calm attempt, and the calmest of those made is kept, warning if it warns."""
    seen = iter(spreads)
    real_fit = measure.fit_overheads

    def fit(*a, **k):
        return {**real_fit(*a, **k), "noise_floor": next(seen)}

    monkeypatch.setattr(measure, "fit_overheads", fit)
    monkeypatch.setattr(measure, "measurement_unrest", lambda spread, err: spread / 0.05)
    torch.manual_seed(0)
    model = Transformer(ModelArgs(n_layers=3, dim=32, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=128)).eval()
    profile = measure_profile(model, "rand3", "cpu", "heldout", n_prompts=1, prompt_len=16, max_new_tokens=8, repeats=1,
                              tokens=[1, 2, 4, 8, 16, 32, 64, 128], calibration_rounds=2, attempts=attempts)
    meas = profile.provenance["measurement"]
    made = next((i + 1 for i, s in enumerate(spreads) if s <= 0.05), attempts)  # stops at the first calm one
    assert [a["calibration_spread"] for a in meas["attempts"]] == spreads[:made]
    assert meas["attempt_kept"] == kept and meas["noise_floor"] == spreads[kept - 1]
    assert all(a["seconds"] > 0 and a["overhead_ms"] >= 0 for a in meas["attempts"])
    table = profile.table()
    assert table.notes["attempts"].startswith(f"attempt {kept} of {made} kept")
    assert (meas["self_check"]["warning"] is None) == (spreads[kept - 1] <= 0.05)
    assert round(table.overhead_ms, 6) == meas["attempts"][kept - 1]["overhead_ms"] == meas["overhead_ms"]


@pytest.mark.parametrize("content,fmt,field,match", [
    (b"", "jsonl", "prompt", "prompts_file: .* holds no prompts"),
    (b"\n  \n", "text", "prompt", "holds no prompts"),
    (b'{"prompt": "a"}\n{"prompt": "b"\n', "jsonl", "prompt", "prompts_file: line 2: malformed JSON"),
    (b'{"prompt": "a"}\n[1, 2]\n', "jsonl", "prompt", "prompts_file: line 2 is a JSON array"),
    (b'{"prompt": "a"}\n{"text": "b"}\n', "jsonl", "prompt", "field: line 2 has no field 'prompt' \\(it has: text\\)"),
    (b'{"prompt": 3}\n', "jsonl", "prompt", "field: line 1: 'prompt' must be a string, got a JSON number"),
    (b'{"prompt": ""}\n', "jsonl", "prompt", "prompts_file: line 1: the prompt is empty"),
    (b'{"prompt": "caf\xe9"}\n', "jsonl", "prompt", "prompts_file: .* is not UTF-8 text \\(line 1"),
    (b"[" * 100000 + b"]" * 100000 + b"\n", "jsonl", "prompt", "nested more than 32"),
    (b'{"conversations": []}', "sharegpt", None, "ShareGPT file is a JSON array of conversations, got a JSON object"),
    (b'[{"id": 1}]', "sharegpt", None, "field: record 1 has no list 'conversations'"),
    (b'{"prompt": "a", "prompt": "b"}\n', "jsonl", "prompt", "prompts_file: line 1: key 'prompt' appears twice"),
    (b'[{"conversations": [{"from": "gpt", "value": "hi"}]}, {"conversations": []}]', "sharegpt", None,
     "holds no prompts \\(format sharegpt\\): none of its 2 conversations has a human/user turn with text$"),
], ids=["empty", "blank", "malformed", "not_object", "missing_field", "not_string", "empty_prompt", "not_utf8",
        "deep", "sharegpt_not_array", "sharegpt_no_turns", "key_twice", "sharegpt_no_human"])
def test_bad_prompts_files(tmp_path, content, fmt, field, match):
    f = tmp_path / "p.in"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_prompts(f, fmt, field)


def test_prompts_file_formats(tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text('{"q": "def f(x):\\n    return"}\n\n{"q": "import os"}\n')
    assert read_prompts(tmp_path / "a.jsonl", None, "q") == [("line 1", "def f(x):\n    return"), ("line 3", "import os")]
    (tmp_path / "b.txt").write_text("one\n\ntwo\n")
    assert read_prompts(tmp_path / "b.txt") == [("line 1", "one"), ("line 3", "two")]
    share = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}]},
             {"conversations": [{"from": "gpt", "value": "no human turn"}]},
             {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "second"}]}]
    (tmp_path / "c.json").write_text(json.dumps(share))
    assert read_prompts(tmp_path / "c.json") == [("record 1", "hi"), ("record 3", "second")]
    assert "1 of 3 conversations have no human/user turn" in capsys.readouterr().err  # skipped, and said
    # an empty first human turn is no prompt either, and a null 'from' leaves 'role' to say (fifteenth round)
    odd = share + [{"conversations": [{"from": "human", "value": " "}]},
                   {"conversations": [{"from": None, "role": "user", "value": "", "content": "by role"}]}]
    (tmp_path / "o.json").write_text(json.dumps(odd))
    assert read_prompts(tmp_path / "o.json")[-1] == ("record 5", "by role")
    assert "2 of 5 conversations have no human/user turn, or an empty first one" in capsys.readouterr().err
    share[1]["conversations"][0]["from"] = "HUMAN"  # roles in any case
    (tmp_path / "c.json").write_text(json.dumps(share))
    assert read_prompts(tmp_path / "c.json") == [("record 1", "hi"), ("record 2", "no human turn"), ("record 3", "second")]
    # lines split at LF (CRLF's CR dropped) only: JSON allows U+2028 / U+0085 raw in a string, text a form feed in a line
    (tmp_path / "d.jsonl").write_text(json.dumps({"q": "a\u2028b\x85c"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert read_prompts(tmp_path / "d.jsonl", None, "q") == [("line 1", "a\u2028b\x85c")]
    (tmp_path / "e.txt").write_text("def f():\x0c    return 1\r\nx\n", encoding="utf-8", newline="")
    assert read_prompts(tmp_path / "e.txt") == [("line 1", "def f():\x0c    return 1"), ("line 2", "x")]
    # a ShareGPT conversation list named `prompt` is read when --field says so (fuzz round 26, M7)
    (tmp_path / "f.json").write_text(json.dumps([{"prompt": [{"role": "user", "content": "named prompt"}]}]))
    assert read_prompts(tmp_path / "f.json", None, "prompt") == [("record 1", "named prompt")]


@pytest.mark.parametrize("content, match", [(b'{"prompt": "a"}\n{"prompt": "b"}\n', "malformed JSON \\(Extra data at line 2, column 1\\)"),
                                            (b'{"prompt": "a"}\n', "got a JSON object")])
def test_a_jsonl_file_named_json_says_how_it_was_read(tmp_path, content, match):
    """A .json file is read as ShareGPT; a JSONL one under that name is told so and how to
    read it (fuzz round 26, M8); given --format, no hint."""
    f = tmp_path / "p.json"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=f"{match} \\(.*p.json is read as ShareGPT for its .json suffix; a JSONL file\\? "
                                         "pass --format jsonl\\)$"):
        read_prompts(f)
    with pytest.raises(ValueError, match=f"{match}$"):
        read_prompts(f, "sharegpt")
    assert read_prompts(f, "jsonl") == [("line 1", "a")] + ([("line 2", "b")] if b"b" in content else [])


# --------------------------------------------------------------------------- the CLI on a Hugging Face folder


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def f(x):\n    return x + 1\n", "import os\nclass A:\n    pass\n"] * 20,
                            trainers.BpeTrainer(vocab_size=vocab_size,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers-made tiny Llama folder with its own tokenizer.json (no network)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("hf")
    tok = _tokenizer(300)
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def _prompts_jsonl(path, texts):
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def test_measure_hf_checkpoint_on_prompts_files_merges_workloads(hf_folder, tmp_path, capsys):
    a = _prompts_jsonl(tmp_path / "code.jsonl", ["def f(x):\n    return x", "import os\n", "class A:\n    pass"])
    b = tmp_path / "more.txt"
    b.write_text("def g(y):\nclass B:\n")
    out = tmp_path / "p.json"
    small = ["--model", str(hf_folder), "--max-new-tokens", "12", "--out", str(out)]
    assert main(["profile", "measure", "--prompts-file", str(a), "--workload", "code", "--repeats", "1", "--attempts", "1",
                 "--progress", *small]) == 0
    printed = capsys.readouterr()
    assert "workload code measured" in printed.out
    # --progress: every stage on stderr, off a terminal too, with the seconds since the start
    assert re.search(r"^\[measure +\d+ s\] layer table done in \d+ s", printed.err, re.M)
    assert "measuring acceptance" in printed.err
    p = load_profile(str(out))
    vocab = json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    assert p.model.name == hf_folder.name and p.model.vocab == vocab and p.default_workload == "code"
    assert p.model.text == "tokenizer" and not p.model.reads_bytes
    assert p.model.tokenizer == tokenizer_digest((hf_folder / "tokenizer.json").read_text(encoding="utf-8"))
    assert p.model.max_context == load_model(str(hf_folder)).args.max_seq_len  # what the executor can hold
    acc = p.workload("code")
    assert len(acc.trace_starts) == 3 and len(acc.traces) == 36 and len(acc.spread.per_request) == 3
    assert p.provenance["prompts"]["n"] == 3 and "tokenizer.json" in p.provenance["prompts"]["source"]
    table = p.table()
    before = table.model_dump()
    # a second file, acceptance only: added next to the first, the timing untouched
    assert main(["profile", "measure", "--prompts-file", str(b), "--format", "text", "--workload", "more",
                 "--acceptance-only", *small]) == 0
    assert "workload more added" in capsys.readouterr().out
    p2 = load_profile(str(out))
    assert sorted(p2.workloads) == ["code", "more"] and p2.table().model_dump() == before
    assert p2.workloads["code"] == acc and len(p2.workload("more").trace_starts) == 2
    assert p2.provenance["workloads_added"]["more"]["n"] == 2
    # held-out prompts go through the checkpoint's own tokenizer.json too
    assert main(["profile", "measure", "--workload", "held", "--prompts", "2", "--acceptance-only", *small]) == 0
    capsys.readouterr()
    held = load_profile(str(out)).workload("held")
    assert len(held.trace_starts) == 2 and max(max(r) for r in held.traces) < vocab
    # and validate runs plans of that checkpoint on the user's prompts (this machine measured it: no override)
    assert main(["validate", "--profile", str(out), "--workload", "code", "--model", str(hf_folder), "--prompts-file",
                 str(a), "--max-new-tokens", "12", "--plans", "2", "--json"]) == 0
    v = json.loads(capsys.readouterr().out)
    assert v["prompts"] == 3 and len(v["plans"]) == 2 and v["machine_drift"]["then_tokens_per_second"] > 0
    assert v["noise_floor_absolute"] >= v["noise_floor"] >= 0 and "machine_warning" not in v
    # a timed measure into it again keeps the other workloads, their records and the profile's name
    # (round 24, D5: the records were dropped and validate then ran held-out prompts for "more")
    d = json.loads(out.read_text(encoding="utf-8"))
    records = d["provenance"]["workloads_added"]
    assert sorted(records) == ["held", "more"]
    d["name"] = "renamed"
    out.write_text(json.dumps(d), encoding="utf-8")
    assert main(["profile", "measure", "--prompts-file", str(a), "--workload", "code", "--repeats", "1",
                 "--attempts", "1", *small]) == 0
    assert capsys.readouterr().out.startswith("profile renamed written")
    p3 = load_profile(str(out))
    assert sorted(p3.workloads) == ["code", "held", "more"]
    assert p3.provenance["workloads_added"] == records
    # measuring another workload keeps the first one's record too (it was provenance.prompts, which the
    # new measure replaces: the review of round 24's fixes)
    from hispec_exec.measure import prompts_of

    code_record = prompts_of(p3, "code")[0]
    assert main(["profile", "measure", "--workload", "held2", "--prompts", "2", "--repeats", "1", "--attempts", "1",
                 *small]) == 0
    capsys.readouterr()
    p4 = load_profile(str(out))
    assert sorted(p4.workloads) == ["code", "held", "held2", "more"]
    assert prompts_of(p4, "code")[0] == code_record and p4.provenance["prompts"]["n"] == 2


def test_measure_shipped_model_acceptance_only(tmp_path, capsys):
    from hispec_sim.schema import save_profile

    out = tmp_path / "tiny.json"
    save_profile(load_profile("cpu_hispec_tiny"), out)
    f = _prompts_jsonl(tmp_path / "mine.jsonl", ["def main():\n    ", "for i in range(10):\n"])
    assert main(["profile", "measure", "--prompts-file", str(f), "--workload", "mine", "--acceptance-only",
                 "--max-new-tokens", "16", "--out", str(out)]) == 0
    p = load_profile(str(out))
    acc = p.workload("mine")
    assert p.default_workload == "heldout" and acc.exits == list(range(1, 17)) and len(acc.traces) == 32
    assert acc.context == round((len("def main():\n    ") + len("for i in range(10):\n")) / 2 + 8)
    # a workload named in any script the profile's keys take (fifteenth fuzz round: a vowel sign was
    # refused as not a letter); a decomposed name given on the command line is stored composed
    for name, stored in (("हिन्दी", "हिन्दी"), ("cafe\u0301", "caf\u00e9")):
        assert main(["profile", "measure", "--prompts-file", str(f), "--workload", name, "--acceptance-only",
                     "--max-new-tokens", "4", "--out", str(out)]) == 0
        assert stored in load_profile(str(out)).workloads


def test_shipped_profile_records_the_shipped_weights(tmp_path, capsys):
    """The shipped profile's weights digest is the shipped checkpoint's (a retrained
    checkpoint must come with a re-measured profile); a profile of the same model name and
    shape with other weights is refused, one line, nothing written."""
    from hispec_exec.checkpoint import weights_digest
    from hispec_sim.schema import save_profile

    shipped = load_profile("cpu_hispec_tiny")
    assert shipped.model.weights == weights_digest(load_model())
    other = shipped.model_copy(update={"model": shipped.model.model_copy(update={"weights": "sha256:" + "0" * 64})})
    out = tmp_path / "tiny.json"
    save_profile(other, out)
    before = out.read_bytes()
    f = _prompts_jsonl(tmp_path / "mine.jsonl", ["def main():\n    "])
    assert main(["profile", "measure", "--prompts-file", str(f), "--workload", "mine", "--acceptance-only",
                 "--max-new-tokens", "4", "--out", str(out)]) == 2
    _one_line_error(capsys, "with weights sha256:000000000000...")
    assert out.read_bytes() == before


def test_measures_into_one_profile_at_once_keep_both_workloads(tmp_path, capsys, monkeypatch):
    """Another command writes the profile while this one measures: this one merges into
    what the file holds then (under a lock), so neither workload is lost."""
    import hispec_exec.measure as measure
    from hispec_sim.schema import save_profile

    out = tmp_path / "tiny.json"
    save_profile(load_profile("cpu_hispec_tiny"), out)
    f = _prompts_jsonl(tmp_path / "mine.jsonl", ["def main():\n    "])
    real = measure.acceptance_workload

    def meanwhile(*a, **k):  # the other command finishes first, adding its workload
        acc = real(*a, **k)
        p = load_profile(str(out))
        save_profile(measure.with_workload(p, "theirs", p.workload("heldout"), {"command": "other"}), out)
        return acc

    monkeypatch.setattr(measure, "acceptance_workload", meanwhile)
    assert main(["profile", "measure", "--prompts-file", str(f), "--workload", "mine", "--acceptance-only",
                 "--max-new-tokens", "8", "--out", str(out)]) == 0
    p = load_profile(str(out))
    assert sorted(p.workloads) == ["heldout", "mine", "theirs"]
    assert sorted(p.provenance["workloads_added"]) == ["mine", "theirs"]
    assert "workloads heldout, mine, theirs" in capsys.readouterr().out


def _one_line_error(capsys, field):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and field in err and "Traceback" not in err, err


def test_a_workload_read_with_another_codec_is_refused(tmp_path, capsys):
    """One codec per profile (a review, 2026-12-03): a checkpoint folder with a tokenizer.json
    added a workload to a profile measured on bytes, and model.text stayed "bytes"."""
    from pathlib import Path

    import hispec_exec

    ck = tmp_path / "ck"
    ck.mkdir()
    for f in ("config.json", "model.safetensors"):
        (ck / f).write_bytes((Path(hispec_exec.__file__).parent / "checkpoints" / f).read_bytes())
    _tokenizer(256).save(str(ck / "tokenizer.json"))
    prof = load_profile("cpu_hispec_tiny")
    out = tmp_path / "p.json"
    out.write_text(prof.model_copy(update={"model": prof.model.model_copy(update={"text": "bytes"})}).model_dump_json())
    before = out.read_bytes()
    prompts = _prompts_jsonl(tmp_path / "a.jsonl", ["def f(x):"])
    assert main(["profile", "measure", "--model", str(ck), "--prompts-file", str(prompts), "--workload", "t",
                 "--acceptance-only", "--max-new-tokens", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer: " in err and "reading text as bytes, but this model reads it as tokenizer" in err
    assert out.read_bytes() == before


def test_a_workload_read_with_another_tokenizer_is_refused(tmp_path, capsys):
    """The same weights with another tokenizer.json (a review, 2026-12-03): the codec check
    compared bytes-or-tokenizer only, and the workload merged, read as other token ids;
    `validate` ran them alike. The profile records the tokenizer's digest."""
    from pathlib import Path

    from tokenizers import pre_tokenizers

    import hispec_exec

    ck = tmp_path / "ck"
    ck.mkdir()
    for f in ("config.json", "model.safetensors"):
        (ck / f).write_bytes((Path(hispec_exec.__file__).parent / "checkpoints" / f).read_bytes())
    _tokenizer(256).save(str(ck / "tokenizer.json"))
    digest = tokenizer_digest((ck / "tokenizer.json").read_text(encoding="utf-8"))
    prof = load_profile("cpu_hispec_tiny")
    out = tmp_path / "p.json"
    out.write_text(prof.model_copy(update={"model": prof.model.model_copy(update={"text": "tokenizer",
                                                                                  "tokenizer": digest})}).model_dump_json())
    prompts = _prompts_jsonl(tmp_path / "a.jsonl", ["def f(x):"])
    measure = ["profile", "measure", "--model", str(ck), "--prompts-file", str(prompts), "--workload", "t",
               "--acceptance-only", "--max-new-tokens", "8", "--out", str(out)]
    assert main(measure) == 0  # its own tokenizer: added
    capsys.readouterr()
    other = _tokenizer(256)
    other.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # " def": other token ids
    other.save(str(ck / "tokenizer.json"))
    before = out.read_bytes()
    assert main([a if a != "t" else "u" for a in measure]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "tokenizer: " in err and digest[:19] in err and "allowed: the tokenizer.json" in err
    assert out.read_bytes() == before
    assert main(["validate", "--profile", str(out), "--workload", "t", "--model", str(ck), "--prompts-file",
                 str(prompts), "--max-new-tokens", "8", "--plans", "1", "--allow-other-machine"]) == 2
    assert "tokenizer: " in capsys.readouterr().err
    with pytest.raises(ValueError, match="tokenizer: a tokenizer.json digest with text 'bytes'"):
        type(prof.model).model_validate({**prof.model.model_dump(), "text": "bytes", "tokenizer": digest})


def test_timing_a_model_of_too_short_a_context_is_refused_first(tmp_path, capsys):
    """A context of 64 or less (a review, 2026-12-03): the serving calibration's attention grid
    had no context above 0 to time, and failed after all the timing (32: a traceback)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "short"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
                     ).save_pretrained(folder, safe_serialization=True)
    _tokenizer(300).save(str(folder / "tokenizer.json"))
    prompts = _prompts_jsonl(tmp_path / "a.jsonl", ["def f(x):"])
    out = tmp_path / "p.json"
    capsys.readouterr()  # transformers' progress bars
    assert main(["profile", "measure", "--model", str(folder), "--prompts-file", str(prompts), "--workload", "c",
                 "--repeats", "1", "--attempts", "1", "--max-new-tokens", "8", "--out", str(out)]) == 2
    _one_line_error(capsys, "model: timing needs a context of at least 65 tokens, this model's is 64")
    assert not out.exists()


@pytest.mark.parametrize("case", ["empty", "malformed", "missing", "utf8", "long", "tokenizer", "no_workload",
                                  "acceptance_only_new", "out_is_input", "out_not_profile", "attempts"])
def test_measure_bad_input_exit_2_nothing_written(hf_folder, tmp_path, capsys, case):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "def f(x):"}\n')
    out = tmp_path / "out.json"
    model = hf_folder
    extra = ["--workload", "w"]
    field = {"empty": "prompts_file", "malformed": "line 2", "missing": "field: line 1", "utf8": "UTF-8",
             "long": "allows at most", "tokenizer": "tokenizer:", "no_workload": "workload:",
             "acceptance_only_new": "--acceptance-only", "out_is_input": "out:", "out_not_profile": "out:",
             "attempts": "attempts"}[case]
    if case == "empty":
        f.write_text("")
    elif case == "malformed":
        f.write_text('{"prompt": "a"}\n{"prompt": \n')
    elif case == "missing":
        f.write_text('{"text": "a"}\n')
    elif case == "utf8":
        f.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    elif case == "long":
        f.write_text(json.dumps({"prompt": "x = 1\n" * 200}) + "\n")
    elif case == "tokenizer":  # a tokenizer.json of another (larger) vocabulary next to the 300-token checkpoint
        model = tmp_path / "m"
        model.mkdir()
        for name in ("config.json", "model.safetensors"):
            (model / name).write_bytes((hf_folder / name).read_bytes())
        other = _tokenizer(300)
        other.add_tokens([f"<extra_{i}>" for i in range(64)])  # a larger vocabulary than the checkpoint's
        other.save(str(model / "tokenizer.json"))
    elif case == "no_workload":
        extra = []
    elif case == "acceptance_only_new":
        extra.append("--acceptance-only")
    elif case == "out_is_input":
        out = f
    elif case == "out_not_profile":
        out.write_text('{"not": "a profile"}')
    elif case == "attempts":
        extra += ["--attempts", "0"]
    before = out.read_bytes() if out.exists() else None
    code = main(["profile", "measure", "--model", str(model), "--prompts-file", str(f), "--max-new-tokens", "16",
                 "--repeats", "1", "--out", str(out), *extra])
    assert code == 2
    _one_line_error(capsys, field)
    assert (out.read_bytes() if out.exists() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
