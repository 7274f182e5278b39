"""The serving calibration (schema.ServingCalibration): its cost terms are zero-safe,
monotone, reduce to the batch-1 table without a calibration, and drive the simulator."""
import numpy as np
import pytest
from factories import TEST_SOURCE, make_profile
from hypothesis import given, settings
from hypothesis import strategies as st

from hispec_sim import latency, schema, serving
from hispec_sim.latency import serving_layer_ms, serving_step_overhead_ms


def _cal(base=1.0, per_seq=0.2, per_row=0.1, step=0.5, seq=0.05, chk=0.1, batches=(1, 2, 4, 8), rows=(1, 2, 4, 8)):
    grid = [[base + per_seq * (b - 1) + per_row * b * (n - 1) for n in rows] for b in batches]
    return schema.ServingCalibration(batches=list(batches), rows=list(rows), layer_ms=grid, step_ms=step,
                                     sequence_ms=seq, check_ms=chk, source=TEST_SOURCE)


def _table(cal=None):
    t = make_profile().latency[0]
    return t.model_copy(update={"serving": cal})


def test_without_a_calibration_the_terms_are_the_tables():
    t = _table()
    rows = np.arange(1, 40)
    assert np.allclose(serving_layer_ms(t, 1, rows), latency.linear_layer_ms(t, rows))
    assert np.allclose(serving_layer_ms(t, 5, rows), latency.linear_layer_ms(t, rows))
    assert serving_step_overhead_ms(t, 3, 0) == pytest.approx(t.overhead_ms)
    assert serving_step_overhead_ms(t, 3, 2) == pytest.approx(t.overhead_ms + t.verify_overhead_ms)


def test_grid_points_are_read_exactly_and_nothing_costs_nothing():
    cal = _cal()
    t = _table(cal)
    for i, b in enumerate(cal.batches):
        for j, n in enumerate(cal.rows):
            assert float(serving_layer_ms(t, b, b * n)) == pytest.approx(cal.layer_ms[i][j])
    assert float(serving_layer_ms(t, 0, 0)) == 0.0
    assert float(serving_step_overhead_ms(t, 0, 0)) == 0.0
    assert float(serving_step_overhead_ms(t, 4, 1)) == pytest.approx(0.5 + 4 * 0.05 + 0.1)


@settings(max_examples=60, deadline=None)
@given(base=st.floats(schema.MIN_LAYER_MS, 5.0), per_seq=st.floats(0.0, 2.0), per_row=st.floats(0.0, 2.0),
       b=st.integers(1, 40), n=st.integers(1, 100))
def test_more_sequences_or_more_rows_never_cost_less(base, per_seq, per_row, b, n):
    """Inside the grid, beyond its last batch and beyond its last rows per sequence."""
    t = _table(_cal(base, per_seq, per_row))
    here = float(serving_layer_ms(t, b, b * n))
    assert here >= 0
    assert float(serving_layer_ms(t, b + 1, (b + 1) * n)) >= here - 1e-9  # one more sequence of n rows
    assert float(serving_layer_ms(t, b, b * (n + 1))) >= here - 1e-9  # one more row for each sequence
    assert float(serving_step_overhead_ms(t, b + 1, 0)) >= float(serving_step_overhead_ms(t, b, 0))
    assert float(serving_step_overhead_ms(t, b, 1)) >= float(serving_step_overhead_ms(t, b, 0))


def test_a_layer_costs_at_least_a_nanosecond_and_overheads_may_be_zero():
    """As the layer table: a calibration of 0 ms layers is refused (it simulated steps of
    nothing); zero overheads are a calibration that found none."""
    with pytest.raises(ValueError, match=r"serving.layer_ms: must be in \[1e-06"):
        _cal(0.0, 0.0, 0.0)
    t = _table(_cal(schema.MIN_LAYER_MS, 0.0, 0.0, 0.0, 0.0, 0.0))
    assert float(serving_layer_ms(t, 3, 12)) == pytest.approx(schema.MIN_LAYER_MS)
    assert float(serving_step_overhead_ms(t, 3, 2)) == 0.0


def test_schema_checks_the_grid():
    with pytest.raises(ValueError, match="serving.layer_ms"):
        schema.ServingCalibration(batches=[1, 2], rows=[1], layer_ms=[[1.0]], source=TEST_SOURCE)
    with pytest.raises(ValueError, match="serving.batches"):
        schema.ServingCalibration(batches=[2, 1], rows=[1], layer_ms=[[1.0], [1.0]], source=TEST_SOURCE)
    p = make_profile()
    p2 = p.model_copy(update={"latency": [_table(_cal())]})
    back = schema.Profile.model_validate_json(p2.model_dump_json())
    assert back.latency[0].serving == _cal()


def _simulate(table, plan, seed=0):
    p = make_profile()
    rng = np.random.default_rng(3)
    n = 40
    arrival = np.cumsum(rng.exponential(0.05, n))
    return serving.quick_summary(serving.simulate_arrays(
        table, 16, p.workload(), plan, arrival, rng.integers(8, 40, n), rng.integers(8, 40, n),
        schema.ServeLimits(max_batch=8), seed), schema.ServeLimits(max_batch=8))


@pytest.mark.parametrize("plan", [schema.Plan(levels=[16]), schema.Plan(levels=[4, 16], propose=3),
                                  schema.Plan(levels=[2, 6, 16], propose=2, windows=[3]),
                                  schema.Plan(levels=[4, 16], propose=3, batching="synchronous")])
def test_a_costlier_calibration_slows_serving(plan):
    cheap = _simulate(_table(_cal(0.2, 0.01, 0.01, 0.1, 0.0, 0.0)), plan)
    dear = _simulate(_table(_cal(0.4, 0.2, 0.05, 0.5, 0.1, 0.1)), plan)
    assert dear["tpot_ms"]["mean"] > cheap["tpot_ms"]["mean"]
    assert dear["ttft_ms"]["p50"] > cheap["ttft_ms"]["p50"]
    assert dear["throughput_tokens_per_s"] <= cheap["throughput_tokens_per_s"] * (1 + 1e-9)


def test_a_lone_autoregressive_request_pays_the_grid_at_batch_one():
    """One request alone: every decode step is L x grid(1, 1) + head(1) + step + sequence."""
    cal = _cal(0.7, 0.3, 0.1, 0.25, 0.05, 0.0)
    t = _table(cal)
    p = make_profile()
    run = serving.simulate_arrays(t, 16, p.workload(), schema.Plan(levels=[16]), np.array([0.0]), np.array([1]),
                                  np.array([6]), schema.ServeLimits(max_batch=4))
    step = 16 * 0.7 + float(latency.head_ms(t, 1)) + 0.25 + 0.05
    assert run.metrics()[0].tbt_ms == pytest.approx([step] * 5)


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.7])
def test_the_forward_scale_multiplies_the_layers_only(scale):
    """A lone autoregressive request: every step is scale x L x grid(1, 1) + head + host terms."""
    cal = _cal(0.7, 0.3, 0.1, 0.25, 0.05, 0.0).model_copy(update={"forward_scale": scale})
    t = _table(cal)
    run = serving.simulate_arrays(t, 16, make_profile().workload(), schema.Plan(levels=[16]), np.array([0.0]),
                                  np.array([1]), np.array([6]), schema.ServeLimits(max_batch=4))
    step = scale * 16 * 0.7 + float(latency.head_ms(t, 1)) + 0.25 + 0.05
    assert run.metrics()[0].tbt_ms == pytest.approx([step] * 5)


def test_prefills_read_the_prefill_grid():
    """A calibration with a prefill grid: prefill forwards are read from it (the executor
    runs prompts in larger tiles), decode steps from layer_ms; without one, both from layer_ms."""
    base = _cal()
    rows = [4, 16, 64]
    pre = [[0.5 * (1.0 + 0.2 * (b - 1) + 0.1 * b * (n - 1)) for n in rows] for b in base.batches]
    t = _table(base.model_copy(update={"prefill_rows": rows, "prefill_layer_ms": pre}))
    for i, b in enumerate(base.batches):
        for j, n in enumerate(rows):
            assert float(serving_layer_ms(t, b, b * n, prefill=True)) == pytest.approx(pre[i][j])
        assert float(serving_layer_ms(t, b, b * 2)) == pytest.approx(base.layer_ms[i][1])
    plain = _table(base)
    assert float(serving_layer_ms(plain, 2, 16, prefill=True)) == float(serving_layer_ms(plain, 2, 16))
    # the simulator's prefill forward: the prefill grid's layers (each prompt's attention among its
    # own tokens inside them) and the fixed part; without a prefill grid, the decode grid's layers
    # and each prompt's attention from the table
    prompts = np.array([33, 17])
    costs = [serving.StepCost(x, schema.Plan(levels=[16]), 16, 4, 256, prompts) for x in (t, plain)]
    lin = [16 * c.prefill_scale * float(serving_layer_ms(x, 2, 48, prefill=True)) for c, x in zip(costs, (t, plain))]
    assert costs[0].prefill(prompts) == pytest.approx(lin[0] + t.overhead_ms)
    att = 16 * costs[1].prefill_scale * float(latency.prefill_attention_ms(plain, prompts - 1, 0).sum())
    assert att > 0 and costs[1].prefill(prompts) == pytest.approx(lin[1] + att + plain.overhead_ms)


def test_a_prefill_grid_prices_pieces_after_cached_parts_padded_and_long_prompts_each_alone():
    """With a prefill grid (each piece's attention among its own rows), pieces after cached
    parts add, each, the table's attention increment of the longest piece's rows over the
    forward's furthest reach before them, as the executor pads them (a piece of 16 after 0
    and one after 40 cost 2 x 16 rows at context 40; 4 after 60 beside 16 after 0 cost
    2 x 16 rows at 48); prompts longer than the grid's last rows add, each, the table's linear
    part for their own extra rows (b prompts of n rows cost b x one prompt's extra, not one
    prompt of b x n rows)."""
    base = _cal()
    rows = [4, 16, 64]
    pre = [[0.5 * (1.0 + 0.2 * (b - 1) + 0.1 * b * (n - 1)) for n in rows] for b in base.batches]
    t = _table(base.model_copy(update={"prefill_rows": rows, "prefill_layer_ms": pre, "prefill_scale": 1.3}))
    cost = serving.StepCost(t, schema.Plan(levels=[16]), 16, 4, 256, np.array([200, 200]))
    n, c = np.array([16, 16]), np.array([0, 40])
    whole = cost.prefill_pieces(n)
    extra = 2 * 16 * 1.3 * float(latency.sequence_attention_ms(t, 16, 40))
    assert extra > 0 and cost.prefill_pieces(n, c) - whole == pytest.approx(extra)
    short = np.array([4, 16])
    extra = 2 * 16 * 1.3 * float(latency.sequence_attention_ms(t, 16, 48))
    assert cost.prefill_pieces(short, np.array([60, 0])) - cost.prefill_pieces(short) == pytest.approx(extra)
    for b in (1, 2, 3):
        beyond = b * (latency.linear_layer_ms(t, 150) - latency.linear_layer_ms(t, 64))
        assert float(serving_layer_ms(t, b, b * 150, prefill=True)) == pytest.approx(
            float(serving_layer_ms(t, b, b * 64, prefill=True)) + beyond)


def test_prompts_of_mixed_lengths_pay_the_longest_ones_attention():
    """The executor runs every prompt of a prefill forward through the longest one's query
    tiles and key blocks: with a prefill grid of fixed, per-prompt, linear and quadratic
    (attention) parts, latency.prefill_row_ms recovers the linear part, and prompts of 16
    and 64 tokens cost two of 64 less 48 rows' linear part -- more than two of 40."""
    base = _cal()
    rows = [4, 16, 32, 64]
    a, a1, c, d = 0.3, 0.05, 0.01, 2e-4
    pre = [[a + a1 * b + c * b * n + d * b * n * n for n in rows] for b in base.batches]
    t = _table(base.model_copy(update={"prefill_rows": rows, "prefill_layer_ms": pre, "prefill_scale": 1.3}))
    assert latency.prefill_row_ms(t) == pytest.approx(c, rel=1e-6)
    assert latency.prefill_row_ms(_table(base)) == 0.0
    cost = serving.StepCost(t, schema.Plan(levels=[16]), 16, 4, 256, np.array([65, 65]))
    mixed, padded, even = (cost.prefill_pieces(np.array(n)) for n in ([16, 64], [64, 64], [40, 40]))
    assert mixed == pytest.approx(padded - 16 * 1.3 * c * 48) and mixed > even
    assert cost.prefill_pieces(np.array([16, 16])) == pytest.approx(16 * 1.3 * pre[1][1] + t.overhead_ms)


@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_admissions_pay_their_prefill_scale_admit_and_wake_ms(batching):
    """Isolated requests (the engine idles between them): each one's TTFT grows by exactly
    the prefill's extra scale + admit_ms, + wake_ms except for the first (the engine starts at
    its arrival, not from an idle spell); prefill_scale None prices prefills at forward_scale."""
    base = _cal().model_copy(update={"forward_scale": 0.9})
    plan = schema.Plan(levels=[4, 16], propose=2, batching=batching)
    arrival, prompt, out = np.array([0.0, 1.0, 2.0]), np.array([33, 9, 17]), np.array([4, 4, 4])
    limits = schema.ServeLimits(max_batch=4)

    def ttft(**update):
        t = _table(base.model_copy(update=update))
        run = serving.simulate_arrays(t, 16, make_profile().workload(), plan, arrival, prompt, out, limits)
        return np.array([m.ttft_ms for m in run.metrics()]), serving.StepCost(t, plan, 16, 4, 256, prompt)

    plain, c0 = ttft()
    assert c0.prefill_scale == 0.9  # an older calibration: prefills at the decode steps' scale
    scaled, c1 = ttft(prefill_scale=1.2)
    extra = np.array([c1.prefill(np.array([p])) - c0.prefill(np.array([p])) for p in prompt])
    assert extra.min() > 0 and scaled - plain == pytest.approx(extra)
    costs, _ = ttft(prefill_scale=1.2, admit_ms=0.3, wake_ms=0.9)
    assert costs - scaled == pytest.approx([0.3, 1.2, 1.2])


def test_schema_checks_the_prefill_grid():
    with pytest.raises(ValueError, match="prefill_rows and prefill_layer_ms come together"):
        schema.ServingCalibration.model_validate(_cal().model_dump() | {"prefill_rows": [4]})
    with pytest.raises(ValueError, match="serving.prefill_layer_ms: must be len"):
        schema.ServingCalibration.model_validate(_cal().model_dump() | {"prefill_rows": [4, 8], "prefill_layer_ms": [[1.0]] * 4})
    with pytest.raises(ValueError, match="serving.prefill_rows: must be increasing"):
        schema.ServingCalibration.model_validate(_cal().model_dump() | {"prefill_rows": [8, 4], "prefill_layer_ms": [[1.0, 1.0]] * 4})


@settings(max_examples=80, deadline=None)
@given(nseq=st.integers(0, 64), slots=st.integers(1, 64))
def test_padded_sequences_is_each_sequence_or_the_whole_pool(nseq, slots):
    n = int(latency.padded_sequences(nseq, slots))
    assert n == (0 if nseq == 0 else slots if slots <= 2 * nseq else nseq)


def test_a_calibrated_step_runs_every_sequence_against_the_longest():
    """The executor's attention (hispec_exec.model._Rows, latency.padded_sequences): every
    sequence of a forward against the longest context -- two sequences at 150 and 4,000
    cached tokens cost what two at 4,000 cost -- and, once they fill half of the pool, every
    slot of it. A profile without a calibration (GPU kernels) sums each sequence's own."""
    cal = _table(_cal())
    cost = serving.StepCost(cal, schema.Plan(levels=[16]), 16, 8, 8192, np.full(8, 10))  # a pool of 8 slots
    one = float(cost.padded_att(1, 1, 4001))
    assert one > float(cost.padded_att(1, 1, 151)) > 0
    for n, paid in ((1, 1), (2, 2), (3, 3), (4, 8), (8, 8)):
        ctx = np.array([150] * (n - 1) + [4000])
        assert cost.seq_att(np.ones((n, 1), np.int64), ctx)[0] == pytest.approx(paid * one)

    def step(*ctx):
        return cost.step(np.ones((len(ctx), 1), np.int64), np.array(ctx), np.array([len(ctx)]), 0)
    assert step(150, 4000) == pytest.approx(step(4000, 4000)) and step(150, 4000) > step(150, 150)
    plain = serving.StepCost(_table(), schema.Plan(levels=[16]), 16, 8, 8192, np.full(8, 10))
    ctx = np.array([150, 4000])
    own = plain.att[1, ctx // serving.CTX_BUCKET].sum()
    assert not plain.padded and plain.seq_att(np.ones((2, 1), np.int64), ctx)[0] == pytest.approx(own)


@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_the_engines_price_a_batch_of_mixed_contexts_as_step_does(batching):
    """Two requests decoding side by side, 10 and 300 prompt tokens: every token gap is
    StepCost.step at that step's contexts (the ragged engine prices steps in arrays, not
    through step)."""
    t = _table(_cal())
    plan = schema.Plan(levels=[16], batching=batching)
    prompt, out = np.array([10, 300]), np.array([6, 6])
    run = serving.simulate_arrays(t, 16, make_profile().workload(), plan, np.zeros(2), prompt, out,
                                  schema.ServeLimits(max_batch=4))
    cost = serving.StepCost(t, plan, 16, 4, 512, prompt)
    expect = [cost.step(np.ones((2, 1), np.int64), prompt - 1 + j, np.array([2]), 0) for j in range(1, 6)]
    for m in run.metrics():
        assert m.tbt_ms == pytest.approx(expect)
    assert expect[0] > cost.step(np.ones((2, 1), np.int64), np.array([299, 299]), np.array([2]), 0) - 1e-9


def _with_attention(cal, gathered=((0.0, 0.2, 0.6), (0.0, 0.3, 0.9)), in_place=((0.0, 0.1, 0.4), (0.0, 0.2, 0.7)),
                    single=None):
    return cal.model_copy(update={"attention_rows": [1, 4], "attention_contexts": [0, 100, 300],
                                  "attention_gathered_ms": [list(r) for r in gathered],
                                  "attention_in_place_ms": [list(r) for r in in_place],
                                  "attention_single_ms": single and [list(r) for r in single]})


def test_a_measured_attention_grid_prices_each_way_of_reading_the_pool():
    """With the calibration's attention grids, a padded sequence costs the gathered grid in a
    pool more than twice the sequences, the in-place one otherwise -- read exactly at the
    grid's points, bilinear between them; without them, the batch-1 table's increment."""
    t = _table(_with_attention(_cal()))
    first, more, slot = latency.pooled_attention_ms(t, 1, 300)
    assert (float(first), float(more), float(slot)) == pytest.approx((0.6, 0.6, 0.4))  # no single grid: the pair's
    assert float(latency.pooled_attention_ms(t, 4, 100)[2]) == pytest.approx(0.2)
    assert float(latency.pooled_attention_ms(t, 2.5, 200)[0]) == pytest.approx((0.4 + 0.6) / 2)
    assert float(latency.padded_attention_ms(t, 2, 8, 1, 300)) == pytest.approx(2 * 0.6)  # gathered: 2 computed
    assert float(latency.padded_attention_ms(t, 4, 8, 1, 300)) == pytest.approx(8 * 0.4)  # in place: 8 slots
    assert float(latency.padded_attention_ms(t, 0, 8, 1, 300)) == 0.0
    plain = _table(_cal())
    assert float(latency.padded_attention_ms(plain, 2, 8, 3, 300)) == pytest.approx(
        2 * float(latency.sequence_attention_ms(plain, 3, 300)))
    cost = serving.StepCost(t, schema.Plan(levels=[16]), 16, 8, 512, np.full(8, 10))
    for n in (1, 2, 3, 4, 8):
        ctx = np.full(n, 16 * 18)  # a whole context bucket: read exactly
        expect = float(latency.padded_attention_ms(t, n, 8, 1, 16 * 18)) * cost.scale
        assert cost.seq_att(np.ones((n, 1), np.int64), ctx)[0] == pytest.approx(expect)


def test_one_sequence_alone_pays_its_own_grid_and_a_pair_the_pairs():
    """attention_single_ms (one sequence gathered) prices a step of one sequence; a pair
    still costs 2 x the pair's grid, each further sequence what the second adds (never
    negative); in place, the slots as before. StepCost reads the same."""
    t = _table(_with_attention(_cal(), single=((0.0, 0.3, 1.0), (0.0, 0.5, 1.5))))
    pad = lambda n, rows=1: float(latency.padded_attention_ms(t, n, 8, rows, 300))  # noqa: E731
    assert pad(1) == pytest.approx(1.0) and pad(1, 4) == pytest.approx(1.5)
    assert pad(2) == pytest.approx(2 * 0.6) and pad(3) == pytest.approx(1.0 + 2 * (2 * 0.6 - 1.0))
    assert pad(4) == pytest.approx(8 * 0.4)
    heavy = _table(_with_attention(_cal(), single=((0.0, 0.3, 2.0), (0.0, 0.5, 2.0))))  # alone > the pair
    assert float(latency.padded_attention_ms(heavy, 3, 8, 1, 300)) == pytest.approx(2.0)
    cost = serving.StepCost(t, schema.Plan(levels=[16]), 16, 8, 512, np.full(8, 10))
    for n in (1, 2, 3):
        expect = float(latency.padded_attention_ms(t, n, 8, 1, 16 * 18)) * cost.scale
        assert cost.seq_att(np.ones((n, 1), np.int64), np.full(n, 16 * 18))[0] == pytest.approx(expect)


def test_schema_checks_the_attention_grids():
    ok = _with_attention(_cal()).model_dump()
    schema.ServingCalibration.model_validate(ok)
    with pytest.raises(ValueError, match="come together"):
        schema.ServingCalibration.model_validate(ok | {"attention_in_place_ms": None})
    with pytest.raises(ValueError, match="attention_contexts: must start at 0"):
        schema.ServingCalibration.model_validate(ok | {"attention_contexts": [1, 100, 300]})
    with pytest.raises(ValueError, match="attention_rows: must be increasing"):
        schema.ServingCalibration.model_validate(ok | {"attention_rows": [4, 1]})
    with pytest.raises(ValueError, match="attention_gathered_ms: must be len"):
        schema.ServingCalibration.model_validate(ok | {"attention_gathered_ms": [[0.0, 0.1]] * 2})
    with pytest.raises(ValueError, match="attention_in_place_ms: must be in"):
        schema.ServingCalibration.model_validate(ok | {"attention_in_place_ms": [[0.0, -0.1, 0.2]] * 2})
    with pytest.raises(ValueError, match="attention_single_ms: must be len"):
        schema.ServingCalibration.model_validate(ok | {"attention_single_ms": [[0.0, 0.1]] * 2})
    bare = ok | {k: None for k in ("attention_rows", "attention_contexts", "attention_gathered_ms",
                                   "attention_in_place_ms")}
    with pytest.raises(ValueError, match="attention_single_ms: needs attention_rows"):
        schema.ServingCalibration.model_validate(bare | {"attention_single_ms": [[0.0, 0.1, 0.2]] * 2})
