"""Forward-pass cost from a latency table: pure functions over numpy arrays.

Assumption: all decoder layers of a model have the same shape, so a range of n layers
costs n times one layer. A forward = its layers + one exit head + fixed overheads.

Attention. Without `table.attention` the attention in `layer_ms` is used as is: one
sequence's increment layer(t, c) - layer(t, 0), times the batch (the shipped GPU profiles
model it by roofline, which gives ~0.3 us per layer for Llama-2-70B at batch 1, against
~15 us that FlashAttention decode kernels measure). With `table.attention`
(schema.AttentionKernel), the linear part is read at context 0 and attention comes from
the measured kernel grids: decode(batch, mean context) for the whole batch, one kernel;
prefill(new tokens, cached context) per prompt. Where a grid is missing, the roofline
increment is floored at `attention.floor_ms` (the measured time of the smallest kernel).

Prefill (serving). A prompt of n tokens runs n tokens through every layer; its attention
is causal over the growing context: measured prefill grid where present, else the table's
increment at context c + n/2 (the causal mean: FLOPs 4 n (c + n/2) h d), floored. Token
counts beyond the table's grid (prompts longer than its last `tokens` entry, 4096 for the
shipped GPU profiles, 64 for the CPU one) are priced in proportion to the last grid point
(linear_layer_ms): the linear part of a layer is linear in tokens once the GEMMs are
compute-bound. Elsewhere the grids extrapolate linearly from their last two points, never
below the last one: more work never costs less. Below its first point a layer table holds
that point's value (the attention kernel grids extrapolate down to their floor).

Working set (decode). A forward over layers 1..k repeated back to back, as drafts run,
touches k layers' weights, not the whole model's: on a CPU whose cache holds the one but
not the other its layers run faster than the table's (measured in forwards over all
layers). `table.working_set_ms` (measured by `profile measure`) says by how much, per
layer, as a function of the depth of the forward that last ran that layer (the distinct
layers run since: LRU). The executor's side (validate's time split, the calibration fit)
charges it so, forward by forward (working_set_history); the cost model charges every
layer of a forward at that forward's own depth -- what the next run of the layer pays --
which gives any sequence of forwards the same total: a layer's every run but the first
pays w(depth of its previous run), i.e. the previous forward charges it.
"""
from __future__ import annotations

import numpy as np

from .schema import MIN_LAYER_MS, LatencyTable


def _interp_extrap(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, hold_below: bool = False) -> np.ndarray:
    """Linear interpolation along the last axis of fp; linear extrapolation beyond the ends,
    never decreasing beyond the last point: more work never costs less than the grid's
    largest entry (a last pair that decreases is measurement noise, and extrapolated down
    it would price large inputs at 0). hold_below: below the first point, its value (a
    layer table that starts at 64 tokens says nothing of 1; its slope, extended down,
    priced a decode step near 0)."""
    x = np.asarray(x, dtype=float)
    if hold_below:
        x = np.maximum(x, xp[0])
    if len(xp) == 1:
        return fp[..., :1] + 0 * x
    i = np.clip(np.searchsorted(xp, x) - 1, 0, len(xp) - 2)
    x0, x1 = xp[i], xp[i + 1]
    f0, f1 = fp[..., i], fp[..., i + 1]
    out = f0 + (f1 - f0) * (x - x0) / (x1 - x0)
    return np.where(x > xp[-1], np.maximum(out, fp[..., -1:] if fp.ndim > 1 else fp[-1]), out)


def layer_ms(table: LatencyTable, tokens, context) -> np.ndarray:
    """Time of one decoder layer for `tokens` new tokens in total reading `context` cached
    tokens in total (both already multiplied by the batch). At least MIN_LAYER_MS, as every
    grid entry."""
    return np.maximum(_grid2(table.tokens, table.contexts, table.layer_ms, tokens, context, hold_below=True), MIN_LAYER_MS)


def head_ms(table: LatencyTable, tokens) -> np.ndarray:
    t = np.asarray(tokens, dtype=float)
    return np.maximum(_interp_extrap(t, np.asarray(table.tokens, float), np.asarray(table.head_ms, float), True), 0.0)


def linear_layer_ms(table: LatencyTable, tokens) -> np.ndarray:
    """One layer's linear part (GEMMs, all-reduces: everything but attention) at `tokens`
    new tokens in total: the table at context 0 (at least MIN_LAYER_MS, as layer_ms, also
    where the grid starts above 0 tokens or context). Beyond the grid's last token count T the
    cost is extrapolated in proportion, layer(T) x tokens / T (compute-bound GEMMs), not
    from the last two points, whose difference is measurement noise at that size."""
    tokens = np.asarray(tokens, dtype=float)
    top = float(table.tokens[-1])
    tk = np.asarray(table.tokens, dtype=float)
    col = _interp_extrap(np.zeros(1), np.asarray(table.contexts, float), np.asarray(table.layer_ms, float), True)[:, 0]
    inside = col[:1] + 0 * tokens if len(tk) == 1 else _interp_extrap(np.minimum(tokens, top), tk, col, True)
    inside = np.maximum(inside, MIN_LAYER_MS)  # as layer_ms, read at context 0
    return np.where(tokens > top, inside * tokens / max(top, 1.0), inside)


def sequence_attention_ms(table: LatencyTable, tokens, context) -> np.ndarray:
    """The table's attention increment of ONE sequence: `tokens` new tokens reading
    `context` cached ones, layer(tokens, context) - layer(tokens, 0), never negative."""
    tokens = np.asarray(tokens, dtype=float)
    context = np.asarray(context, dtype=float)
    tokens, context = np.broadcast_arrays(tokens, context)
    return np.maximum(layer_ms(table, tokens, context) - layer_ms(table, tokens, np.zeros(tokens.shape)), 0.0)


def padded_sequences(nseq, slots) -> np.ndarray:
    """How many sequences' attention the executor computes in a forward over `nseq`
    sequences of a cache pool of `slots` (hispec_exec.model._Rows): each of them, or, once
    they fill at least half of the pool, every slot, idle ones included (the store is read
    in place). Each one runs against the forward's longest context and most rows (blocks
    past a sequence's own length are masked, not skipped): a serving step over sequences
    whose longest rows and context are r and c costs padded_sequences x sequence_attention_ms(r, c)."""
    nseq = np.asarray(nseq)
    return np.where(nseq > 0, np.where(slots <= 2 * nseq, slots, nseq), 0)


def pooled_attention_ms(table: LatencyTable, rows, context) -> np.ndarray:
    """One serving layer's attention increments (arrays broadcast; stacked on a first axis
    of 3): a step's first sequence with its blocks gathered, each further one gathered, each
    slot of a pool read in place -- `rows` new tokens, the forward's longest sequence holding
    `context` cached. From the calibration's measured grids (the first sequence from its own
    grid where measured, each further one what the pair adds to it); else the batch-1 table's
    increment (timed in place, one slot) for all three."""
    rows, context = np.broadcast_arrays(np.asarray(rows, float), np.asarray(context, float))
    cal = table.serving
    if cal is None or cal.attention_rows is None:
        return np.stack([sequence_attention_ms(table, np.maximum(rows, 1), context)] * 3)
    pair, slot, single = (np.maximum(_grid2(cal.attention_rows, cal.attention_contexts, g, rows, context, True), 0.0)
                          for g in (cal.attention_gathered_ms, cal.attention_in_place_ms,
                                    cal.attention_single_ms or cal.attention_gathered_ms))
    return np.stack([single, np.maximum(2 * pair - single, 0.0), slot])


def layout_attention_ms(nseq, slots, first, more, slot) -> np.ndarray:
    """Attention of one serving layer over `nseq` sequences of a pool of `slots` from the
    increments of pooled_attention_ms (arrays broadcast): every slot once the sequences fill
    half of the pool, else the first sequence and each further one (padded_sequences)."""
    nseq = np.asarray(nseq)
    n = padded_sequences(nseq, slots)
    return np.where(slots <= 2 * nseq, n * slot, np.where(n > 0, first + (n - 1) * more, 0.0))


def padded_attention_ms(table: LatencyTable, nseq, slots, rows, context) -> np.ndarray:
    """Attention of one serving layer over `nseq` sequences of a pool of `slots` whose most
    new tokens are `rows` and whose longest holds `context` cached (arrays broadcast)."""
    return layout_attention_ms(nseq, slots, *pooled_attention_ms(table, rows, context))


def _grid2(rows, cols, grid, r, c, hold_below: bool = False) -> np.ndarray:
    """Bilinear in (r, c) over a (rows x cols) grid, linear extrapolation beyond it (never
    decreasing beyond the last row or column; hold_below: see _interp_extrap)."""
    r, c = np.broadcast_arrays(np.asarray(r, float), np.asarray(c, float))
    per_row = _interp_extrap(c.reshape(-1), np.asarray(cols, float), np.asarray(grid, float), hold_below)  # (R, N)
    rows = np.asarray(rows, float)
    if len(rows) == 1:
        return per_row[0].reshape(r.shape)
    flat = np.maximum(r.reshape(-1), rows[0]) if hold_below else r.reshape(-1)
    i = np.clip(np.searchsorted(rows, flat) - 1, 0, len(rows) - 2)
    cols_i = np.arange(flat.size)
    f0, f1 = per_row[i, cols_i], per_row[i + 1, cols_i]
    out = f0 + (f1 - f0) * (flat - rows[i]) / (rows[i + 1] - rows[i])
    return np.where(flat > rows[-1], np.maximum(out, per_row[-1]), out).reshape(r.shape)  # as _interp_extrap


def decode_attention_ms(table: LatencyTable, batch, context, tokens=1) -> np.ndarray:
    """Attention of one layer for `batch` sequences with `tokens` new tokens each at mean
    cached length `context` (arrays broadcast). Measured decode grid: one kernel for the
    batch, read at context + tokens - 1 (a check of n tokens reads the same cache as one
    decode step, plus its n - 1 new positions); else batch x the table's increment, with
    the kernel floor when `table.attention` gives one. Batch 0 costs nothing."""
    batch, context, tokens = np.broadcast_arrays(np.asarray(batch, float), np.asarray(context, float),
                                                 np.asarray(tokens, float))
    att = table.attention
    if att is not None and att.decode_ms:
        t = _grid2(att.decode_batch, att.decode_context, att.decode_ms, batch, context + tokens - 1)
    else:
        t = batch * sequence_attention_ms(table, np.maximum(tokens, 1), context)
    if att is not None:
        t = np.maximum(t, att.floor_ms)
    return np.where(batch > 0, np.maximum(t, 0.0), 0.0)


def prefill_attention_ms(table: LatencyTable, tokens, context=0) -> np.ndarray:
    """Attention of one layer for a prompt chunk of `tokens` new tokens after `context`
    cached ones, causal among the new ones: measured prefill grid where the profile has
    one, else the table's increment at context + tokens / 2 (floored when given)."""
    tokens, context = np.broadcast_arrays(np.asarray(tokens, float), np.asarray(context, float))
    att = table.attention
    if att is not None and att.prefill_ms:
        t = _grid2(att.prefill_tokens, att.prefill_context, att.prefill_ms, tokens, context)
    else:
        t = sequence_attention_ms(table, np.maximum(tokens, 1), context + tokens / 2.0)
    if att is not None:
        t = np.maximum(t, att.floor_ms)
    return np.where(tokens > 0, np.maximum(t, 0.0), 0.0)


def prefill_ms(table: LatencyTable, num_layers: int, tokens, context=0) -> np.ndarray:
    """One prefill forward: `tokens` prompt tokens (after `context` cached ones) through
    all `num_layers` layers, no exit head (the last prompt token is decoded, not
    prefilled: it is the first decode step's input), one fixed per-forward overhead."""
    tokens = np.asarray(tokens, float)
    per_layer = linear_layer_ms(table, np.maximum(tokens, 1)) + prefill_attention_ms(table, tokens, context)
    t = num_layers * (per_layer + table.layer_overhead_ms) + table.overhead_ms
    return np.where(tokens > 0, t, 0.0)



def working_set_ms(table: LatencyTable, depth) -> np.ndarray:
    """Time added to one layer (arrays) whose weights were last used by a forward over layers
    1..`depth` (every decode forward starts at layer 1): since then only `depth` layers'
    weights went through the cache, which may hold them when it cannot hold the whole model
    (the layer table is measured in forwards over all layers). Linear in the measured grid,
    constant beyond it (0 at the full depth); 0 without one (GPUs stream the weights from
    memory either way)."""
    if not table.working_set_layers:
        return np.zeros(np.shape(depth))
    return np.interp(np.asarray(depth, float), table.working_set_layers, table.working_set_ms)


def working_set_history(table: LatencyTable, depths, num_layers: int) -> np.ndarray:
    """Working-set time of each forward of one decode run, in order (forward t runs layers
    1..depths[t]; the prefill ran all num_layers): each layer at working_set_ms of the depth
    of the forward that last ran it -- exact under LRU, where that depth is the number of
    distinct layers run since."""
    last = np.full(num_layers, num_layers)
    out = np.zeros(len(depths))
    if table.working_set_layers:
        for t, d in enumerate(depths):
            out[t] = working_set_ms(table, last[:d]).sum()
            last[:d] = d
    return out


def batched_layer_ms(table: LatencyTable, batch: int, tokens, context) -> np.ndarray:
    """One layer for `batch` sequences in lockstep, each with `tokens` new tokens after
    `context` cached ones. The table is read at batch 1: the linear part at the total token
    count (context 0), plus the batch's attention: `batch` times one sequence's increment,
    because each sequence reads only its own KV cache (attention is linear in the batch),
    or the measured kernel when the table has one (decode_attention_ms)."""
    tokens = np.asarray(tokens)
    linear = linear_layer_ms(table, tokens * batch)  # beyond the grid: in proportion (its last pair may decrease)
    if table.attention is not None:
        return linear + decode_attention_ms(table, batch, context, tokens)
    attention = layer_ms(table, tokens, np.full(tokens.shape, context)) - layer_ms(table, tokens, np.zeros(tokens.shape))
    return linear + batch * np.maximum(attention, 0.0)


class CostModel:
    """Costs of the forwards a chain plan runs, for one batch size and context length.

    Lookup vectors are precomputed for 1..max_tokens new tokens per sequence so that the
    analytic model can index them with arrays of token counts. A layer over n tokens per
    sequence also pays row_overhead_ms for each sequence's n - 1 tokens beyond its first
    (fitted on batch-1 decode runs; at batch B assumed per sequence, B x (n - 1)).
    """

    def __init__(self, table: LatencyTable, batch: int = 1, context: int = 512, max_tokens: int = 512):
        self.table, self.batch, self.context = table, batch, context
        n = np.maximum(np.arange(max_tokens + 1), 1)
        # indexed by new tokens per sequence; each sequence's tokens beyond its first pay row_overhead_ms
        self.layer = batched_layer_ms(table, batch, n, context) + batch * (n - 1) * (table.row_overhead_ms or 0.0)
        self.layer[0] = 0.0
        self.head = head_ms(table, n * batch)
        self.fixed = table.overhead_ms
        self.per_layer = table.layer_overhead_ms
        self.verify_fixed = table.verify_overhead_ms

    def forward(self, ranges, head_tokens, verify: bool = False, working_set: bool = True):
        """ranges: iterable of (layer_count, new_tokens_per_sequence) arrays, consecutive from
        layer 1 as every decode forward runs them; returns ms. Working set: every layer at
        working_set_ms(the forward's depth) -- what the next run of its layers pays under
        working_set_history, so any long enough sequence of forwards costs the same both ways
        (a draft right after a check costs more than priced, the check less). working_set=False
        leaves it out, for callers that charge it by history instead (validate.forward_ms)."""
        t = self.fixed + (self.verify_fixed if verify else 0.0) + self.head[np.asarray(head_tokens)]
        ranges = [(np.asarray(count, dtype=float), np.asarray(tokens)) for count, tokens in ranges]
        per_layer = self.per_layer
        if working_set and self.table.working_set_layers:
            per_layer = per_layer + working_set_ms(self.table, sum(count for count, _ in ranges))
        for count, tokens in ranges:
            t = t + count * (self.layer[tokens] + per_layer)
        return t

    def autoregressive_ms(self, num_layers: int) -> float:
        """Time of one autoregressive decode step (one token per sequence through every layer)."""
        return float(self.forward([(num_layers, 1)], 1))


def serving_layer_ms(table: LatencyTable, nseq, rows, prefill: bool = False) -> np.ndarray:
    """One layer of a serving step for `nseq` sequences carrying `rows` new tokens in total
    (arrays broadcast), at the calibration's context: `table.serving`'s measured grid read
    at (nseq, rows / nseq); beyond its last rows per sequence, plus the table's linear part
    for the extra rows; beyond its last batch, extrapolated along the batch from the last
    two batches (slope >= 0). prefill: a prefill forward, read from the calibration's
    prefill grid (the executor runs prompts in larger tiles) where it has one -- its cells
    hold each prompt's attention among its own tokens; beyond its last rows, each of the
    `nseq` prompts adds the table's linear part for its own extra rows. Without a
    calibration: the table's linear part at `rows` (one sequence of that many tokens). No
    sequence costs nothing."""
    nseq, rows = np.broadcast_arrays(np.asarray(nseq, float), np.asarray(rows, float))
    cal = table.serving
    if cal is None:
        return np.where(nseq > 0, linear_layer_ms(table, np.maximum(rows, 1)), 0.0)
    b_ax = np.asarray(cal.batches, float)
    prefill = prefill and cal.prefill_layer_ms is not None  # without a prefill grid: the decode grid's
    if prefill:
        r_ax, grid = np.asarray(cal.prefill_rows, float), np.asarray(cal.prefill_layer_ms, float)
    else:
        r_ax, grid = np.asarray(cal.rows, float), np.asarray(cal.layer_ms, float)
    b = np.maximum(nseq, 1.0)
    per = np.maximum(rows, 1.0) / b
    r_in = np.clip(per, r_ax[0], r_ax[-1])
    b_in = np.clip(b, b_ax[0], b_ax[-1])
    t = _grid2(b_ax, r_ax, grid, b_in, r_in)
    if len(b_ax) > 1:  # more sequences than measured: the last measured cost per added sequence
        hi = _grid2(b_ax, r_ax, grid, np.full(b.shape, b_ax[-1]), r_in)
        lo = _grid2(b_ax, r_ax, grid, np.full(b.shape, b_ax[-2]), r_in)
        t = t + np.maximum(b - b_ax[-1], 0.0) * np.maximum(hi - lo, 0.0) / (b_ax[-1] - b_ax[-2])
    over = per > r_ax[-1]  # more rows per sequence than measured: the table's linear part for the rest
    if over.any():
        if prefill:  # each prompt's own rows (its attention is its own)
            extra = b * (linear_layer_ms(table, per) - linear_layer_ms(table, r_ax[-1]))
        else:
            extra = linear_layer_ms(table, b * per) - linear_layer_ms(table, b * r_ax[-1])
        t = np.where(over, t + np.maximum(extra, 0.0), t)
    return np.where(nseq > 0, np.maximum(t, 0.0), 0.0)


def prefill_row_ms(table: LatencyTable) -> float:
    """ONE layer's linear cost per row of a prefill forward, from the calibration's prefill
    grid: cell(b, n) = a + a' b + c b n + d b n^2 (fixed, per prompt, linear rows, each
    prompt's attention among its own n tokens: query tiles x key blocks), fitted
    non-negative with relative weights; c. 0 without a prefill grid."""
    from scipy.optimize import nnls

    cal = table.serving
    if cal is None or cal.prefill_layer_ms is None:
        return 0.0
    b, n = (a.ravel() for a in np.meshgrid(np.asarray(cal.batches, float), np.asarray(cal.prefill_rows, float),
                                            indexing="ij"))
    y = np.asarray(cal.prefill_layer_ms, float).ravel()
    X = np.stack([np.ones_like(b), b, b * n, b * n * n], 1) / y[:, None]
    return float(nnls(X, np.ones_like(y))[0][2])


def serving_step_overhead_ms(table: LatencyTable, nseq, nchecks) -> np.ndarray:
    """Host time of a serving step beyond its forward and exit head: the calibration's
    step + per-sequence + per-check parts; without one, the table's per-forward overhead
    (+ the verification overhead when the step holds a check). An empty step costs nothing."""
    nseq, nchecks = np.broadcast_arrays(np.asarray(nseq, float), np.asarray(nchecks, float))
    cal = table.serving
    if cal is None:
        t = table.overhead_ms + np.where(nchecks > 0, table.verify_overhead_ms, 0.0)
    else:
        t = cal.step_ms + cal.sequence_ms * nseq + cal.check_ms * nchecks
    return np.where(nseq > 0, t, 0.0)
