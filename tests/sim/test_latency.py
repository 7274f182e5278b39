"""The latency table read beyond its grid, and profiles at the edges of the allowed
latencies: every command ends with finite figures; a check's extra rows priced by the
fitted row overhead."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import TEST_SOURCE, make_profile
from hispec_sim import latency
from hispec_sim.cli import main
from hispec_sim.schema import MIN_LAYER_MS, LatencyTable, save_profile

ms = st.floats(MIN_LAYER_MS, 10.0)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(ms, ms, ms), min_size=2, max_size=4), beyond=st.floats(1.0, 1e4))
def test_beyond_the_last_grid_point_nothing_gets_cheaper(rows, beyond):
    """A last pair that decreases (measurement noise) is not extrapolated down: beyond the
    grid a layer or head costs at least the grid's last entry, and a layer at least MIN_LAYER_MS."""
    tokens = [2 ** i for i in range(len(rows))]
    table = LatencyTable(tokens=tokens, contexts=[0, 512], layer_ms=[[a, a + b] for a, b, _ in rows],
                         head_ms=[h for _, _, h in rows], source=TEST_SOURCE)
    top, ctx_top = tokens[-1], 512
    for t in (top + beyond, top * (1 + beyond)):
        assert latency.layer_ms(table, t, 0) >= table.layer_ms[-1][0] * (1 - 1e-12)
        assert latency.layer_ms(table, top, ctx_top + beyond) >= table.layer_ms[-1][1] * (1 - 1e-12)
        assert latency.head_ms(table, t) >= table.head_ms[-1] * (1 - 1e-12)
    grid = latency.layer_ms(table, np.arange(0, 4 * top), np.arange(0, 4 * top))
    assert (grid >= MIN_LAYER_MS).all()


def _edge_profile(path, edit) -> str:
    d = json.loads(make_profile(layers=16).model_dump_json())
    edit(d["latency"][0])
    path.write_text(json.dumps(d))
    return str(path)


def _falls_to_nothing(t):  # 1 ms at one token, 1 ns at two, a free head: once priced at 0 beyond
    t.update(tokens=[1, 2], contexts=[0], layer_ms=[[1.0], [1e-6]], head_ms=[1.0, 0.0], overhead_ms=0.0,
             verify_overhead_ms=0.0, layer_overhead_ms=0.0)


def _slowest(t):  # every figure at the schema's limit: tokens/s far below the report's 3 decimals
    t.update(layer_ms=[[1e6] * len(r) for r in t["layer_ms"]], head_ms=[1e6] * len(t["head_ms"]), overhead_ms=1e6)


def test_a_table_falling_to_nothing_is_priced_finite_everywhere(tmp_path, capsys):
    prof = _edge_profile(tmp_path / "p.json", _falls_to_nothing)
    assert main(["evaluate", "--profile", prof, "--levels", "2,16", "--propose", "3", "--batch", "64", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 < res["tokens_per_second"] < 1e12
    assert main(["report", "--profile", prof, "--out", str(tmp_path / "r.html")]) == 0
    # capacity doubles its load up to twice the saturation load: a finite one ends the search
    assert main(["capacity", "--profile", prof, "--qps", "5", "--slo-ttft-ms", "1000", "--slo-tbt-ms", "100",
                 "--requests", "20", "--seeds", "1", "--json"]) == 0
    capsys.readouterr()


def test_the_slowest_allowed_profile_reports(tmp_path, capsys):
    prof = _edge_profile(tmp_path / "p.json", _slowest)
    out = tmp_path / "r.md"
    assert main(["report", "--profile", prof, "--format", "md", "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "no plan meets the per-token latency SLO" in said.err
    assert " 0.00 tokens/s" not in said.out and "e-05 tokens/s" in said.out  # 1.7e-5: significant digits, not 0
    assert "ms/token" in out.read_text(encoding="utf-8")


def test_a_grid_starting_above_zero_is_not_extrapolated_down_to_nothing(tmp_path, capsys):
    """Below its first token count or context a layer table holds its first value (its
    slope extended down once priced a 1-token decode step near 0); the linear part stays at
    MIN_LAYER_MS or more (it once reached 0 ms: an infinite tokens/s)."""
    steep = LatencyTable(tokens=[64, 128], contexts=[4096, 8192], layer_ms=[[0.2, 0.4], [5.0, 5.2]], head_ms=[0.05, 0.5],
                         source=TEST_SOURCE)
    assert latency.layer_ms(steep, 1, 0) == pytest.approx(0.2)
    assert latency.layer_ms(steep, 96, 128) == pytest.approx(2.6)  # tokens interpolated, context held
    assert latency.linear_layer_ms(steep, 1) == pytest.approx(0.2) and latency.head_ms(steep, 1) == pytest.approx(0.05)
    low = LatencyTable(tokens=[2, 3], contexts=[0], layer_ms=[[1e-6], [1.0]], head_ms=[0.0, 0.0], source=TEST_SOURCE)
    far = LatencyTable(tokens=[1000, 2000], contexts=[100000, 200000], layer_ms=[[1.0, 10.0], [2.0, 20.0]],
                       head_ms=[0.0, 0.0], source=TEST_SOURCE)
    for table in (low, far):
        assert (latency.linear_layer_ms(table, np.arange(1, 5000)) >= MIN_LAYER_MS).all()
    prof = _edge_profile(tmp_path / "p.json", lambda t: t.update(tokens=[2, 3], contexts=[0], layer_ms=[[1e-6], [1.0]],
                                                                  head_ms=[0.0, 0.0], overhead_ms=0.0,
                                                                  verify_overhead_ms=0.0, layer_overhead_ms=0.0))
    assert main(["evaluate", "--profile", prof, "--levels", "2,16", "--batch", "64", "--json"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["tokens_per_second"] < float("inf")


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(ms, ms), min_size=2, max_size=4), extra=st.floats(0.0, 1.0),
       batch=st.integers(1, 8), n=st.integers(1, 16), count=st.integers(1, 40))
def test_a_checks_extra_rows_pay_the_row_overhead_in_decode_forwards_only(rows, extra, batch, n, count):
    """row_overhead_ms: each sequence's new tokens beyond its first pay it in every layer of
    a decode forward (batch x (n - 1) x layers); one-token forwards and prefills do not."""
    grid = np.maximum.accumulate(np.asarray(rows), axis=0).tolist()
    table = LatencyTable(tokens=list(range(1, len(grid) + 1)), contexts=[0, 64], layer_ms=grid,
                         head_ms=[0.1] * len(grid), source=TEST_SOURCE)
    priced = table.model_copy(update={"row_overhead_ms": extra})
    plain, more = latency.CostModel(table, batch, 32, 16), latency.CostModel(priced, batch, 32, 16)
    assert more.forward([(count, n)], n) == pytest.approx(
        plain.forward([(count, n)], n) + count * batch * (n - 1) * extra)
    assert more.autoregressive_ms(count) == plain.autoregressive_ms(count)  # one token per sequence
    assert latency.prefill_ms(priced, count, 64) == latency.prefill_ms(table, count, 64)
