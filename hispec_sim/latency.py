"""Forward-pass cost from a latency table: pure functions over numpy arrays.

Assumption: all decoder layers of a model have the same shape, so a range of n layers
costs n times one layer. A forward = its layers + one exit head + fixed overheads.
"""
from __future__ import annotations

import numpy as np

from .schema import LatencyTable


def _interp_extrap(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Linear interpolation along the last axis of fp; linear extrapolation beyond the ends."""
    x = np.asarray(x, dtype=float)
    if len(xp) == 1:
        return fp[..., :1] + 0 * x
    i = np.clip(np.searchsorted(xp, x) - 1, 0, len(xp) - 2)
    x0, x1 = xp[i], xp[i + 1]
    f0, f1 = fp[..., i], fp[..., i + 1]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


def layer_ms(table: LatencyTable, tokens, context) -> np.ndarray:
    """Time of one decoder layer for `tokens` new tokens in total reading `context` cached
    tokens in total (both already multiplied by the batch). Never negative."""
    tokens = np.asarray(tokens, dtype=float)
    context = np.asarray(context, dtype=float)
    grid = np.asarray(table.layer_ms, dtype=float)  # (T, C)
    tk = np.asarray(table.tokens, dtype=float)
    cx = np.asarray(table.contexts, dtype=float)
    # interpolate along context for every token row, then along tokens
    tokens, context = np.broadcast_arrays(tokens, context)
    per_row = _interp_extrap(context.reshape(-1), cx, grid)  # (T, N)
    flat_t = tokens.reshape(-1)
    if len(tk) == 1:
        out = per_row[0]
    else:
        i = np.clip(np.searchsorted(tk, flat_t) - 1, 0, len(tk) - 2)
        cols = np.arange(flat_t.size)
        f0, f1 = per_row[i, cols], per_row[i + 1, cols]
        out = f0 + (f1 - f0) * (flat_t - tk[i]) / (tk[i + 1] - tk[i])
    return np.maximum(out.reshape(tokens.shape), 0.0)


def head_ms(table: LatencyTable, tokens) -> np.ndarray:
    t = np.asarray(tokens, dtype=float)
    return np.maximum(_interp_extrap(t, np.asarray(table.tokens, float), np.asarray(table.head_ms, float)), 0.0)


def batched_layer_ms(table: LatencyTable, batch: int, tokens, context) -> np.ndarray:
    """One layer for `batch` sequences in lockstep, each with `tokens` new tokens after
    `context` cached ones. The table is read at batch 1: the linear part at the total token
    count (context 0), plus `batch` times one sequence's attention increment, because each
    sequence reads only its own KV cache (attention is linear in the batch)."""
    tokens = np.asarray(tokens)
    linear = layer_ms(table, tokens * batch, np.zeros(tokens.shape))
    attention = layer_ms(table, tokens, np.full(tokens.shape, context)) - layer_ms(table, tokens, np.zeros(tokens.shape))
    return linear + batch * np.maximum(attention, 0.0)


class CostModel:
    """Costs of the forwards a chain plan runs, for one batch size and context length.

    Lookup vectors are precomputed for 1..max_tokens new tokens per sequence so that the
    analytic model can index them with arrays of token counts.
    """

    def __init__(self, table: LatencyTable, batch: int = 1, context: int = 512, max_tokens: int = 512):
        self.table, self.batch, self.context = table, batch, context
        n = np.maximum(np.arange(max_tokens + 1), 1)
        self.layer = batched_layer_ms(table, batch, n, context)  # indexed by new tokens per sequence
        self.layer[0] = 0.0
        self.head = head_ms(table, n * batch)
        self.fixed = table.overhead_ms
        self.per_layer = table.layer_overhead_ms
        self.verify_fixed = table.verify_overhead_ms

    def forward(self, ranges, head_tokens, verify: bool = False):
        """ranges: iterable of (layer_count, new_tokens_per_sequence) arrays; returns ms."""
        t = self.fixed + (self.verify_fixed if verify else 0.0) + self.head[np.asarray(head_tokens)]
        for count, tokens in ranges:
            count = np.asarray(count, dtype=float)
            t = t + count * (self.layer[np.asarray(tokens)] + self.per_layer)
        return t

    def autoregressive_ms(self, num_layers: int) -> float:
        """Time of one autoregressive decode step (one token per sequence through every layer)."""
        return float(self.forward([(num_layers, 1)], 1))
