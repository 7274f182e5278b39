"""Batch semantics: B sequences in lockstep; a forward carries B x the stream's new tokens
through the linear layers and B sequences' attention, each reading its own cache.
Throughput at batch B must be built from exactly those costs, in the analytic model and
in the Monte-Carlo simulator."""
from __future__ import annotations

import numpy as np
import pytest

from factories import make_profile
from hispec_sim.analytic import leviathan_tokens_per_round
from hispec_sim.evaluate import Setting, score
from hispec_sim.latency import head_ms, layer_ms
from hispec_sim.montecarlo import simulate
from hispec_sim.schema import Plan, load_profile

L = 16


def _forward_ms(table, batch, context, ranges, head_tokens):
    """One forward by hand from the latency table: every range of `count` layers carrying
    `tokens` new tokens per sequence: linear part at batch x tokens, plus batch x one
    sequence's attention increment at its context."""
    t = table.overhead_ms + float(head_ms(table, batch * head_tokens))
    for count, tokens in ranges:
        attention = float(layer_ms(table, tokens, context)) - float(layer_ms(table, tokens, 0))
        t += count * (float(layer_ms(table, batch * tokens, 0)) + batch * attention + table.layer_overhead_ms)
    return t


@pytest.mark.parametrize("batch", [1, 4, 32, 256])
def test_autoregressive_throughput_at_batch_uses_batch_costs(batch):
    prof = make_profile(layers=L, slope=0.05)
    s = Setting(prof, batch=batch)
    table = s.table
    step = _forward_ms(table, batch, s.context, [(L, 1)], 1)
    got = score(s, [Plan(levels=[L], batch=batch)])[0]
    assert got.tokens_per_second == pytest.approx(batch * 1000.0 / step, rel=1e-12)
    assert got.latency_ms == pytest.approx(step, rel=1e-12)


@pytest.mark.parametrize("batch,g", [(1, 3), (8, 2), (64, 4)])
def test_single_level_throughput_at_batch_uses_batch_costs(batch, g):
    a, E = 0.7, 4
    prof = make_profile(layers=L, constant=a, slope=0.05)
    s = Setting(prof, batch=batch)
    table = s.table
    draft = _forward_ms(table, batch, s.context, [(E, 1)], 1)
    # the check: the last draft runs layers 1..E (1 token), then g + 1 tokens run E+1..L; head over g + 1
    check = _forward_ms(table, batch, s.context, [(E, 1), (L - E, g + 1)], g + 1) + table.verify_overhead_ms
    tokens = float(leviathan_tokens_per_round(a, g))
    want = batch * 1000.0 * tokens / (g * draft + check)
    got = score(s, [Plan(levels=[E, L], propose=g, batch=batch)])[0]
    assert got.tokens_per_second == pytest.approx(want, rel=1e-9)
    assert got.latency_ms == pytest.approx((g * draft + check) / tokens, rel=1e-9)


def test_larger_batch_reads_more_context_and_carries_more_tokens():
    """Per-sequence speed falls with B when layer time grows with tokens and context;
    aggregate throughput = B x per-sequence throughput."""
    prof = make_profile(layers=L, slope=0.05)
    plan = lambda b: Plan(levels=[3, 6, L], propose=2, windows=[3], batch=b)
    r = {b: score(Setting(prof, batch=b), [plan(b)])[0] for b in (1, 8, 64)}
    assert r[1].latency_ms < r[8].latency_ms < r[64].latency_ms
    for b, s in r.items():
        assert s.tokens_per_second == pytest.approx(b * 1000.0 / s.latency_ms, rel=1e-12)


@pytest.mark.parametrize("levels,propose,windows", [([4, L], 3, []), ([3, 6, L], 2, [3])])
def test_monte_carlo_uses_the_same_batch_costs(levels, propose, windows):
    batch = 16
    prof = make_profile(layers=L, slope=0.05)
    s = Setting(prof, batch=batch)
    plan = Plan(levels=levels, propose=propose, windows=windows, batch=batch)
    analytic = score(s, [plan])[0].tokens_per_second
    mc = simulate(s.cost(propose + sum(windows) + 8), s.agreement, plan, streams=2048, cycles=32, seed=3)
    lo, hi = mc.ci95
    margin = (hi - lo) * 0.5  # widen by half a CI: one test, many seeds in CI
    assert lo - margin <= analytic <= hi + margin
    # and the Monte-Carlo at batch 1 is a different number: the batch reached its costs
    mc1 = simulate(Setting(prof, batch=1).cost(propose + sum(windows) + 8), s.agreement,
                   plan.model_copy(update={"batch": 1}), streams=2048, cycles=32, seed=3)
    assert not np.isclose(mc.tokens_per_second, batch * mc1.tokens_per_second, rtol=1e-3)


def test_beyond_the_grid_the_linear_part_grows_in_proportion():
    """a100_llama70b at tp 4 ends its token grid on a decreasing pair (4064 -> 4096 tokens,
    8.338 -> 8.299 ms): extrapolated from it, a batch's GEMMs cost 0 ms from ~11k tokens on,
    and checking 9 tokens at batch 4096 cost less than decoding 1. Beyond the grid the linear
    part is the last point's cost in proportion to the tokens (latency.linear_layer_ms)."""
    from hispec_sim.latency import batched_layer_ms, linear_layer_ms

    t = load_profile("a100_llama70b").table(4)
    ms = batched_layer_ms(t, 4096, np.arange(1, 10), 512)
    assert np.all(np.diff(ms) > 0)  # more tokens per sequence never cost less
    top = t.tokens[-1]
    assert float(linear_layer_ms(t, 4 * top)) == pytest.approx(4 * float(layer_ms(t, top, 0)), rel=1e-12)
    inside = np.arange(1, top + 1)
    assert np.array_equal(linear_layer_ms(t, inside), np.maximum(layer_ms(t, inside, np.zeros(top)), 0.0))
