"""Measure a profile with the executor: per-layer latency, exit head, fixed overheads (with
their uncertainty), the machine's noise floor, and the acceptance statistics (per-position
traces and per-prompt agreement) of every exit pair.

The result is a normal `hispec_sim.schema.Profile`, so the simulator predicts any plan on
this model and machine, and `hispec-sim validate` can check the prediction.

Robust to a noisy CPU: timings are taken in interleaved rounds (every cell of the grid once
per round, in a fresh random order), outliers are rejected (median +- 3.5 MAD) before
averaging, and the per-layer table is made monotone (non-decreasing in tokens and in
context: more work never takes less time) by weighted isotonic regression; a layer's time in
forwards over the first k layers alone (drafts: a smaller working set of weights) is measured
the same way; the fixed costs are
fitted with one speed per block of back-to-back calibration runs; and the whole timing is
repeated while the machine's speed moved during it, keeping the calmest attempt.
"""
from __future__ import annotations

import datetime
import json
import math
import time

import numpy as np
import torch

from hispec_sim.schema import Acceptance, AcceptanceSpread, Hardware, LatencyTable, ModelShape, Plan, Profile, Source

from .checkpoint import weights_digest
from .data import heldout_prompts
from .generate import decode
from .model import Transformer

# 1..32 dense (decode steps, verification windows), then coarser up to prefill sizes (the
# shipped model's context is 512)
TOKENS = list(range(1, 33)) + [40, 48, 56, 64, 96, 128, 192, 256, 384, 512]
CALIBRATION_SEED = 1000  # prompts for calibration runs: disjoint from measurement/validation seeds
OUTLIER_MADS = 3.5
SCALE_RANGE = (0.5, 2.0)  # a table scale scaled_nnls accepts (the serving calibration's forward scale)
SCALE_MAX_SE = 0.05
# the fitted fixed costs a profile's table carries (fit_overheads)
OVERHEADS = ("overhead_ms", "layer_overhead_ms", "verify_overhead_ms", "row_overhead_ms")
# the per-layer overhead may be a credit down to this share of the smallest layer time: the table timed up to
# 2x slower than the decode loop (a VM's speed moves by 10-30 % between the table and the calibration)
LAYER_CREDIT = 0.5


# --------------------------------------------------------------------------- statistics (pure numpy)


def robust_mean(x) -> tuple[float, float, int]:
    """(mean, standard error, samples kept) after dropping samples further than 3.5 MADs
    from the median (a timer interrupted by another process is not this kernel's time)."""
    x = np.asarray(x, dtype=float)
    med = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - med))
    keep = x[np.abs(x - med) <= OUTLIER_MADS * mad] if mad > 0 else x[x == med] if np.any(x == med) else x
    if keep.size == 0:
        keep = x
    se = float(keep.std(ddof=1) / np.sqrt(keep.size)) if keep.size > 1 else float("nan")
    return float(keep.mean()), se, int(keep.size)


def isotonic(y, w=None) -> np.ndarray:
    """Weighted least-squares non-decreasing fit (pool adjacent violators)."""
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    vals, wts, lens = [], [], []
    for v, wi in zip(y, w):
        vals.append(v)
        wts.append(wi)
        lens.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            tw = wts[-2] + wts[-1]
            v2 = (vals[-2] * wts[-2] + vals[-1] * wts[-1]) / tw
            n = lens[-2] + lens[-1]
            del vals[-2:], wts[-2:], lens[-2:]
            vals.append(v2)
            wts.append(tw)
            lens.append(n)
    return np.repeat(vals, lens)


def isotonic_2d(y, w=None, iterations: int = 200) -> np.ndarray:
    """Weighted least-squares fit non-decreasing along both axes (Dykstra's alternating
    projections onto row-monotone and column-monotone tables), then an exact cumulative max
    so the result is monotone even if the iteration stopped early."""
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    x, p, q = y.copy(), np.zeros_like(y), np.zeros_like(y)
    for _ in range(iterations):
        z = np.stack([isotonic(col, wc) for col, wc in zip((x + p).T, w.T)], axis=1)  # along tokens
        p = x + p - z
        x_new = np.stack([isotonic(row, wr) for row, wr in zip(z + q, w)])  # along contexts
        q = z + q - x_new
        done = np.max(np.abs(x_new - x)) < 1e-12 * max(1.0, float(np.max(np.abs(y))))
        x = x_new
        if done:
            break
    return np.maximum.accumulate(np.maximum.accumulate(x, axis=0), axis=1)


# --------------------------------------------------------------------------- timing


def _timed(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3


def _timings(fn, repeats: int, dev) -> np.ndarray:
    """Wall times (ms) of repeated calls, after discarding three warm-up calls."""
    cuda = torch.device(dev).type == "cuda"
    for _ in range(3):
        fn()
    return np.asarray([_timed(fn, cuda) for _ in range(repeats)])


def layers_forward(model: Transformer, cache, layers: int, toks: torch.Tensor, context: int):
    """A call that runs `toks` through layers 1..`layers` after `context` cached tokens (the
    cache rewound first, so it can repeat): the path decoding takes."""
    def forward():
        cache.lens[1:layers + 1] = [context] * layers
        model.run(cache, 0, layers, toks)
    return forward


@torch.no_grad()
def forward_timings(model: Transformer, layers: int, n_tokens: int, context: int, repeats: int) -> np.ndarray:
    """ms of the executor's own forward (Transformer.run) over layers 1..`layers` with
    n_tokens new tokens after `context` cached ones: the path decoding takes, Python
    per-layer overhead included."""
    cache = model.new_cache()
    if context + n_tokens > cache.capacity:
        raise ValueError(f"context: {context} + {n_tokens} tokens exceed the cache capacity {cache.capacity}")
    dev = model.tok_embeddings.weight.device
    toks = torch.randint(0, model.args.vocab_size, (n_tokens,), device=dev)
    return _timings(layers_forward(model, cache, layers, toks, context), repeats, dev)


@torch.no_grad()
def head_timings(model: Transformer, n_tokens: int, repeats: int) -> np.ndarray:
    x = torch.randn(n_tokens, model.args.dim, device=model.tok_embeddings.weight.device)
    return _timings(lambda: model.head(x), repeats, model.tok_embeddings.weight.device)


def rounds_for(n_tokens: int, repeats: int) -> int:
    """Prefill-sized forwards (> 64 tokens) take long and vary little: fewer rounds."""
    return repeats if n_tokens <= 64 else min(repeats, max(4, repeats // 3))


@torch.no_grad()
def measure_latency(model: Transformer, contexts: list[int], repeats: int = 12, tokens: list[int] = TOKENS,
                    seed: int = 0) -> dict:
    """Per-layer time over tokens x contexts, in situ: (forward over all L layers - forward
    over one layer) / (L - 1), so the per-forward part (embedding, mask, call overhead)
    cancels; head time over tokens.

    Interleaved: `repeats` rounds, each timing every cell once (an untimed 1-layer forward
    of the same shape first, then the L-layer and the 1-layer forward) in a fresh random order, so slow drift and bursts of
    other load spread over all cells instead of biasing some. Per cell: mean after
    outlier rejection, and its standard error. Cells beyond the cache capacity
    (context + tokens > capacity) are extrapolated (attention cost grows with
    tokens x context) and listed. Finally the table is fitted non-decreasing in tokens and
    context, weighted by 1 / standard error^2.
    """
    L = model.num_layers
    cap = model.args.max_seq_len
    dev = model.tok_embeddings.weight.device
    cuda = dev.type == "cuda"
    tokens = [n for n in tokens if n <= cap]
    contexts = sorted({c for c in contexts if c + 1 <= cap})
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cache = model.new_cache()
    toks = {n: torch.randint(0, model.args.vocab_size, (n,), generator=gen).to(dev) for n in tokens}
    xs = {n: torch.randn(n, model.args.dim, generator=gen).to(dev) for n in tokens}

    def fwd(layers, n, c):
        return layers_forward(model, cache, layers, toks[n], c)

    cells = [(n, c) for n in tokens for c in contexts if c + n <= cap]
    samples: dict = {cell: [] for cell in cells}
    head_samples: dict = {n: [] for n in tokens}
    fixed_samples: list = []
    t0 = time.perf_counter()
    for r in range(-1, repeats):  # round -1: warm-up, discarded
        order = [cells[i] for i in rng.permutation(len(cells))]
        for n, c in order:
            if r >= rounds_for(n, repeats):
                continue
            fwd(1, n, c)()  # untimed: this shape's kernels and buffers warm, as in decoding's repeated shapes
            full = _timed(fwd(L, n, c), cuda)
            one = _timed(fwd(1, n, c), cuda) if L > 1 else 0.0
            if c == contexts[0]:
                model.head(xs[n])
                h = _timed(lambda: model.head(xs[n]), cuda)
                if r >= 0:
                    head_samples[n].append(h)
            if r >= 0:
                samples[(n, c)].append((full - one) / max(L - 1, 1))
                if n == tokens[0] and c == contexts[0] and L > 1:  # a forward's own fixed cost: one layer's forward
                    fixed_samples.append(one - (full - one) / (L - 1))  # minus one layer

    seconds = time.perf_counter() - t0

    raw = np.full((len(tokens), len(contexts)), np.nan)
    se = np.full_like(raw, np.nan)
    kept = np.zeros_like(raw)
    for (n, c), s in samples.items():
        i, j = tokens.index(n), contexts.index(c)
        raw[i, j], se[i, j], kept[i, j] = robust_mean(s)
    extrapolated = _fill_beyond_capacity(raw, tokens, contexts)
    head = np.array([robust_mean(head_samples[n])[0] for n in tokens])
    finite_se = se[np.isfinite(se) & (se > 0)]
    floor = float(np.median(finite_se)) if finite_se.size else 1e-3
    w = 1.0 / np.maximum(np.nan_to_num(se, nan=10 * floor), floor) ** 2
    w[[tokens.index(n) for n, _ in extrapolated], [contexts.index(c) for _, c in extrapolated]] = 1e-6 / floor ** 2
    layer = np.maximum(isotonic_2d(raw, w), 1e-6)
    head = np.maximum(isotonic(head), 1e-6)
    rel_change = np.abs(layer - raw) / raw
    return {"tokens": tokens, "contexts": contexts, "layer_ms": layer.tolist(), "head_ms": head.tolist(),
            "raw_layer_ms": raw.tolist(), "layer_ms_se": np.nan_to_num(se).tolist(), "extrapolated": extrapolated,
            "samples_kept": int(kept.sum()), "samples": int(sum(len(s) for s in samples.values())),
            "monotone_median_change": float(np.median(rel_change)), "monotone_max_change": float(rel_change.max()),
            "seconds": seconds, "repeats": repeats,
            "forward_fixed_ms": robust_mean(fixed_samples)[:2] if fixed_samples else (float("nan"), float("nan"))}


def working_set_grid(num_layers: int, points: int = 12) -> list[int]:
    """Deepest layers at which measure_working_set times forwards: every one up to 16 layers,
    else 1, 2 and `points` spread geometrically up to the full depth."""
    if num_layers <= 16:
        return list(range(1, num_layers + 1))
    return sorted({1, 2, num_layers, *np.round(np.geomspace(2, num_layers, points)).astype(int).tolist()})


def _scaled_working_set(ms, scale: float, lat: dict, layer_overhead_ms: float = 0.0) -> list[float]:
    """The working-set times x `scale`, kept above minus the smallest layer time with its
    per-layer overhead (a layer cannot save more than it takes: schema.LatencyTable; a noisy
    timing of a small model can say otherwise)."""
    floor = min(min(r) for r in lat["layer_ms"]) + min(layer_overhead_ms, 0.0)
    return np.maximum(scale * np.asarray(ms, float), -0.999 * floor).tolist()


@torch.no_grad()
def measure_working_set(model: Transformer, repeats: int = 12, burst: int = 4, seed: int = 0) -> dict:
    """How much faster a layer runs in a forward over layers 1..k, repeated back to back as
    drafts are, than in a forward over all L layers (the layer table's): per layer,
    w(k) = slope(k) - slope(L), slope(k) = (forward(k) - forward(1)) / (k - 1) at one token,
    so the per-forward part cancels as in measure_latency; w(1) = w(2).

    Interleaved: `repeats` rounds, each over every k in a fresh random order; per k two
    untimed forwards (the working set settles), then the mean of `burst` timed ones. Per k:
    the mean over rounds after outlier rejection. Fitted non-decreasing in k (a smaller
    working set is never slower) and shifted to 0 at L, so w <= 0."""
    L = model.num_layers
    dev = model.tok_embeddings.weight.device
    cuda = dev.type == "cuda"
    cache = model.new_cache()
    toks = torch.randint(0, model.args.vocab_size, (1,), generator=torch.Generator().manual_seed(seed)).to(dev)
    ks = working_set_grid(L)
    rng = np.random.default_rng(seed)
    samples: dict = {k: [] for k in ks}
    t0 = time.perf_counter()
    for r in range(-1, repeats):  # round -1: warm-up, discarded
        for k in (ks[i] for i in rng.permutation(len(ks))):
            f = layers_forward(model, cache, k, toks, 0)
            f(), f()
            t = np.mean([_timed(f, cuda) for _ in range(burst)])
            if r >= 0:
                samples[k].append(t)
    stats = {k: robust_mean(v) for k, v in samples.items()}
    fwd = np.array([stats[k][0] for k in ks])
    fwd_se = np.array([stats[k][1] for k in ks])
    k = np.asarray(ks, float)
    slope, se = np.zeros(len(ks)), np.ones(len(ks))  # one layer: nothing smaller to compare
    if L > 1:
        slope[1:] = (fwd[1:] - fwd[0]) / (k[1:] - 1)
        se[1:] = np.nan_to_num(np.hypot(fwd_se[1:], fwd_se[0]) / (k[1:] - 1), nan=1.0)
        slope[0], se[0] = slope[1], se[1]
    fitted = isotonic(slope, 1.0 / np.maximum(se, 1e-6) ** 2)
    w = np.minimum(fitted - fitted[-1], 0.0)
    return {"layers": ks, "ms": w.tolist(), "raw_ms": (slope - slope[-1]).tolist(), "forward_ms": fwd.tolist(),
            "per_layer_ms": slope.tolist(), "seconds": time.perf_counter() - t0}


def _fill_beyond_capacity(raw: np.ndarray, tokens: list[int], contexts: list[int]) -> list[tuple[int, int]]:
    """Fill cells that do not fit in the cache: the largest measured context of that token
    count plus the context increment of the largest token count measured at every context,
    scaled by tokens (attention reads tokens x context). In place; returns the cells."""
    full_rows = [i for i in range(len(tokens)) if np.all(np.isfinite(raw[i]))]
    ref = full_rows[-1] if full_rows else None
    filled = []
    for i in range(len(tokens)):
        for j in range(len(contexts)):
            if np.isfinite(raw[i, j]):
                continue
            jm = max(k for k in range(len(contexts)) if np.isfinite(raw[i, k]))
            inc = 0.0 if ref is None else (raw[ref, j] - raw[ref, jm]) * tokens[i] / tokens[ref]
            raw[i, j] = raw[i, jm] + max(inc, 0.0)
            filled.append((tokens[i], contexts[j]))
    return filled


# --------------------------------------------------------------------------- fixed overheads


def calibration_plans(L: int, spread: bool = True) -> list[Plan]:
    """Fixed plans whose forwards calibrate the per-forward costs (not chosen from, nor
    fitted to, any validated plan). The first three: autoregressive, mid-size drafts with a
    long check, and a 3-level chain. With `spread`, also the shapes the search reaches at
    the ends: 1-layer drafts, a short final check of 7 tokens after long drafts (the rows
    term's leverage: the other checks carry 3-5 tokens), short and 1-layer
    middle checks, and 4 levels. Why: the fit splits a forward's fixed cost from its per-layer
    and per-check parts by contrasting forwards of different layer counts; with the first
    three alone, short checks and 1-layer drafts are extrapolated, and on a noisy 2-core VM
    the split moved from run to run: three calibrations within minutes gave per forward
    0.57-0.83 ms and per check 0.27-0.95 ms with the three, 0.66-0.68 and 0.46-0.61 ms with
    all eight (studies/fidelity/fit_drift.py, README "Fixed overheads")."""
    q, e = max(1, L // 4), max(1, L // 8)
    shapes = [([L], 1, []), ([q, L], 3, []), ([e, max(e + 1, L // 2), L], 2, [3])]
    if spread:
        third = max(2, L // 3)
        shapes += [([1, L], 2, []), ([L - 3, L], 6, []), ([1, 3, L], 2, [3]),
                   ([3 * L // 8, 3 * L // 8 + 1, L], 2, [4]), ([max(1, L // 5), third, 2 * third, L], 2, [3, 4])]
    plans, seen = [], set()
    for levels, propose, windows in shapes:
        if levels[0] > 0 and all(a < b for a, b in zip(levels, levels[1:])) and tuple(levels) not in seen:
            seen.add(tuple(levels))
            plans.append(Plan(levels=levels, propose=propose, windows=windows))
    return plans


def calibration_prompts(model: Transformer, n: int, prompt_len: int) -> list[list[int]]:
    """Held-out byte prompts (seed 1000) for byte-level models; seeded random ids otherwise
    (the fit needs real forwards, not meaningful text)."""
    if model.args.vocab_size >= 256:
        return heldout_prompts(n, prompt_len, CALIBRATION_SEED)
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    return [torch.randint(0, model.args.vocab_size, (prompt_len,), generator=g).tolist() for _ in range(n)]


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    return nnls(X, y)[0]


def scaled_nnls(X: np.ndarray, y: np.ndarray, group: np.ndarray, scale_col: int, bootstrap: int = 200,
                seed: int = 0) -> dict:
    """Non-negative least squares of y on X, where column `scale_col` is a latency table's
    prediction and its coefficient the table's scale (how much hotter or colder the table
    ran than the loop it predicts). The scale is fixed to 1 when the free fit puts it
    outside [0.5, 2] or its bootstrap standard error exceeds 0.05. Samples with residuals
    beyond 3.5 MADs are dropped and the fit redone; standard errors by bootstrap over
    `group` (whole runs resampled with replacement, seeded).
    Returns coef, se, keep (the inlier mask), scaled, free_scale, free_scale_se."""
    rest = [c for c in range(X.shape[1]) if c != scale_col]

    def fit(idx, scaled: bool) -> np.ndarray:
        if scaled:
            return _nnls(X[idx], y[idx])
        return np.insert(_nnls(X[idx][:, rest], y[idx] - X[idx, scale_col]), scale_col, 1.0)

    every = np.arange(len(y))
    free_scale, free_scale_se = float(fit(every, True)[scale_col]), float("nan")
    scaled = SCALE_RANGE[0] <= free_scale <= SCALE_RANGE[1]
    rng = np.random.default_rng(seed)
    runs = np.unique(group)
    members = {g: np.flatnonzero(group == g) for g in runs}
    picks = [rng.choice(runs, len(runs)) for _ in range(bootstrap)]
    for _ in range(2):  # the scaled fit, unless the scale is out of range or ill-determined
        coef = fit(every, scaled)
        resid = y - X @ coef
        mad = 1.4826 * np.median(np.abs(resid - np.median(resid)))
        keep = np.abs(resid - np.median(resid)) <= OUTLIER_MADS * mad if mad > 0 else np.ones(len(y), bool)
        coef = fit(every[keep], scaled)
        boots = []
        for pick in picks:
            idx = np.concatenate([members[g] for g in pick])
            boots.append(fit(idx[keep[idx]], scaled))
        se = np.std(boots, axis=0, ddof=1) if bootstrap > 1 else np.full(X.shape[1], np.nan)
        if not scaled or se[scale_col] <= SCALE_MAX_SE:
            break
        free_scale_se = float(se[scale_col])
        scaled = False
    return {"coef": coef, "se": se, "keep": keep, "scaled": scaled, "free_scale": free_scale,
            "free_scale_se": free_scale_se}


def drifting_nnls(X: np.ndarray, y: np.ndarray, group: np.ndarray, scale_col: int, bootstrap: int = 200,
                  seed: int = 0, iterations: int = 200, relative: bool = True, lower=None) -> dict:
    """Fit y_i = v_g * (X_i @ coef) with a speed v_g per group (a block of decode runs), median 1 over
    the groups, coef >= lower (default 0) and coef[scale_col] (the latency table's column) held at 1.

    Why: a shared VM's speed moves from one decode run to the next (+-20 %). Pooled, that
    drift lands in the additive overheads and misprices short forwards against long ones.
    The forwards of one run share its speed, so their ratios -- a 2-layer draft against a
    14-layer check -- fix the relative prices whatever the run's speed, and the median run
    sets the level (as one pooled fit would on a steady machine: the table as measured plus
    the overheads). Alternating fits: the other coefficients by NNLS of y / v - table on X,
    then v_g = sum(y p) / sum(p^2) over the group's forwards (p = X @ coef: its least-squares
    factor), renormalised to median 1. The error stays in the dependent variable: solving it
    as linear in 1 / v instead would make the noisy times a regressor and bias the fit.
    relative: a forward's noise is proportional to its time (on this VM the residuals' spread
    is 12-17 % of the price from 1 to 20 ms forwards), so least squares on milliseconds would
    let the long forwards' noise drown the short ones that fix the fixed costs; each row is
    weighted by 1 / its price from an unweighted first pass (feasible weighted least squares:
    the per-check cost's standard error about halves on the same data,
    studies/fidelity/fit_drift.py). Residuals are then relative too.
    Samples with residuals beyond 3.5 MADs are dropped and the fit redone; standard errors by
    bootstrap over groups (whole runs resampled with replacement, seeded). lower: per-column
    bounds below 0 (NNLS of what they leave: coef = lower + c', c' >= 0). Returns coef, se,
    keep (the inlier mask), speed (per group, in np.unique(group) order), boots (the bootstrap
    coefficients)."""
    rest = [c for c in range(X.shape[1]) if c != scale_col]
    low = np.zeros(len(rest)) if lower is None else np.asarray(lower, float)[rest]
    runs, inverse = np.unique(group, return_inverse=True)

    w = np.ones(len(y))  # row weights: 1 / price once the first pass has priced the rows

    def fit(idx, cols):  # cols[i]: the group (speed) of sample idx[i]
        Xr, table, yi, wi = X[idx][:, rest], X[idx, scale_col], y[idx], w[idx]
        order = np.argsort(cols, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(cols[order]) != 0])
        v = np.ones(len(runs))  # every block has a slot, even one whose forwards were all dropped
        floor = Xr @ low  # coef = low + c', c' >= 0: NNLS on what the lower bounds leave
        for _ in range(iterations):
            c = low + _nnls(Xr * wi[:, None], (yi / v[cols] - table - floor) * wi)
            p = Xr @ c + table
            new = np.ones_like(v)
            new[cols[order][starts]] = (np.add.reduceat((yi * p * wi ** 2)[order], starts)
                                        / np.add.reduceat((p * p * wi ** 2)[order], starts))
            new /= np.median(new[cols[order][starts]])
            done = np.max(np.abs(new - v)) < 1e-7
            v = new
            if done:
                break
        return np.insert(c, scale_col, 1.0), v

    every = np.arange(len(y))
    coef, speed = fit(every, inverse)
    if relative:
        w = 1.0 / np.maximum(X @ coef, 1e-9)
        coef, speed = fit(every, inverse)
    resid = (y / speed[inverse] - X @ coef) * w
    mad = 1.4826 * np.median(np.abs(resid - np.median(resid)))
    keep = np.abs(resid - np.median(resid)) <= OUTLIER_MADS * mad if mad > 0 else np.ones(len(y), bool)
    coef, speed = fit(every[keep], inverse[keep])
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(keep & (inverse == g)) for g in range(len(runs))]
    boots = []
    for _ in range(bootstrap):
        pick = rng.choice(len(runs), len(runs))
        idx = np.concatenate([members[g] for g in pick])
        boots.append(fit(idx, np.concatenate([np.full(len(members[g]), j) for j, g in enumerate(pick)]))[0])
    boots = np.array(boots).reshape(-1, X.shape[1])
    se = np.std(boots, axis=0, ddof=1) if bootstrap > 1 else np.full(X.shape[1], np.nan)
    return {"coef": coef, "se": se, "keep": keep, "speed": speed, "boots": boots}


def overhead_rows(forwards, wall_ms: float, prompt_len: int, table: LatencyTable,
                  num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    """fit_overheads' regressors for one decode run's forwards -- 1, layers, check?, the
    table's time of its layers (at the forward's own context) and head, follows a check (or
    the prefill)?, the table's working-set time its history gives (<= 0), layers x new tokens
    beyond the first (a check's extra rows) -- and each forward's time with the run's time
    outside forwards spread evenly over them."""
    from hispec_sim.latency import head_ms, layer_ms, working_set_history

    gap = (wall_ms - sum(f.ms for f in forwards)) / len(forwards)
    warm = working_set_history(table, [f.head_layer for f in forwards], num_layers)
    rows, previous = [], 0  # level 0: the prefill
    for f, w in zip(forwards, warm):
        context = prompt_len if f.context is None else f.context  # (data recorded before forwards had it)
        parts = sum((b - a + 1) * float(layer_ms(table, n, context)) for a, b, n in f.segments)
        layers = sum(b - a + 1 for a, b, _ in f.segments)
        extra_rows = sum((b - a + 1) * (n - 1) for a, b, n in f.segments)
        rows.append([1.0, layers, float(f.level > 1), parts + float(head_ms(table, f.head_tokens)),
                     float(previous != 1), w, extra_rows])
        previous = f.level
    return np.asarray(rows), np.array([f.ms + gap for f in forwards])


def overhead_lower_bounds(table: LatencyTable) -> np.ndarray:
    """drifting_nnls' lower bounds on overhead_rows' columns: 0, but the per-layer term, a
    credit down to LAYER_CREDIT x the table's smallest layer time."""
    lower = np.zeros(7)
    lower[1] = -LAYER_CREDIT * table.smallest_layer_ms
    return lower


def verify_cost(fit: dict) -> tuple[float, float]:
    """The per-check cost the simulator charges from a drifting_nnls fit of overhead_rows:
    the check term plus the after-a-check term (every check is followed by exactly one
    forward), and its bootstrap standard error."""
    boots = fit["boots"][:, 2] + fit["boots"][:, 4]
    se = float(np.std(boots, ddof=1)) if len(boots) > 1 else float("nan")
    return float(fit["coef"][2] + fit["coef"][4]), se


def calibration_runs(model: Transformer, plans: list[Plan], prompts, max_new_tokens: int, rounds: int):
    """After a warm-up, every plan on every prompt, per round, the plans interleaved per prompt
    (which goes first rotates), so drift within a round hits all plans alike: yields (round,
    prompt index, plan index, DecodeResult)."""
    decode(model, plans[-1], prompts[0], min(8, max_new_tokens))
    for r in range(rounds):
        for i, ids in enumerate(prompts):
            for k in np.roll(np.arange(len(plans)), -(r + i)):
                yield r, i, int(k), decode(model, plans[k], ids, max_new_tokens)


def fit_overheads(model: Transformer, table: LatencyTable, prompts, max_new_tokens: int, rounds: int = 3,
                  bootstrap: int = 200, seed: int = 0) -> dict:
    """Fixed costs the micro-benchmarks cannot see, per forward, per layer run, and extra per
    verification forward, by non-negative least squares; plus the run-to-run noise floor.

    Every calibration plan decodes every prompt once per round, the plans interleaved per
    prompt (which goes first rotates), so drift within a round -- seconds on a shared VM --
    hits all plans alike instead of one plan's block. Each forward's time (including the
    decode loop's own Python time between forwards, spread evenly over its forwards) is
    regressed on its layers and head from the table (as measured), on four counts: 1, its
    layers, whether it is a check, and whether it follows a check (or the prefill) -- and on
    the table's working-set time of its layers (measure_working_set, by each layer's last
    run: latency.working_set_history). The last two are cache effects: a draft right after a
    check finds its layers' weights evicted and runs slower than a draft after a draft
    (studies/fidelity/diagnose.py measured 4-7 %). The simulator cannot tell the two drafts
    apart, but every check is followed by exactly one forward, so the check carries the
    after-check term: verify_overhead_ms = check + after-check terms. The working-set term's
    coefficient scales the micro-benchmark's working set to what the decode loop shows: the
    Python between forwards touches memory too (0.74 +- 0.02 on the AVX-512 VM at 17:13 UTC
    on 2026-11-29; README, "Working set"). The last regressor, layers x new tokens beyond
    the first, prices what a check's extra rows cost in the decode loop beyond the table's
    token increment (row_overhead_ms): on an Intel Xeon VM 0.004-0.031 ms per layer and row
    on top of the table's 0.02, and without the term every multi-token check there was
    priced too cheap against autoregressive. Every coefficient is >= 0 but the per-layer
    one, which may be a credit down to LAYER_CREDIT x the smallest layer time: the table is
    timed in another minute than these runs, and when the machine ran slower then, nothing
    else can price its layers down (on that VM the fit held >= 0 priced its own
    autoregressive runs +6 to +20 % too dear; docs/fidelity.md).
    One speed factor per block (drifting_nnls), a block being every plan's run on one prompt in
    one round, back to back (seconds): the machine's drift between blocks scales their forwards
    alike and does not leak into the overheads; the fit prices the median block. Not one per
    run: a run's own factor absorbs whatever its plan costs beyond the model -- autoregressive
    runs settled at x1.02-1.05 of the median, 2-layer-draft plans at x0.92-0.95 -- so the
    overheads came from contrasts within runs alone, and the speed-ups they priced were off
    by 5.8-7.6 % median (3.5-4.5 % per block; studies/fidelity/fit_drift.py, README).
    Each forward is weighted by 1 / its price (its noise is proportional to its time).
    Forwards with relative residuals beyond 3.5 MADs are dropped and the fit redone.
    Standard errors: bootstrap over blocks (resampled with replacement, seeded).
    Noise floor: the largest relative spread ((max - min) / median) over rounds of one
    plan's aggregate tokens/s: what identical runs differ by on this machine.
    """
    plans = calibration_plans(model.num_layers)
    runs = []  # (rows, y, plan, block) per decode run
    walls = np.zeros((rounds, len(plans)))
    toks = np.zeros((rounds, len(plans)))
    for r, i, k, res in calibration_runs(model, plans, prompts, max_new_tokens, rounds):
        walls[r, k] += res.wall_s
        toks[r, k] += len(res.tokens)
        runs.append((*overhead_rows(res.forwards, res.wall_s * 1e3, res.prompt_len, table, model.num_layers), k,
                     r * len(prompts) + i))
    X = np.concatenate([r[0] for r in runs])
    y = np.concatenate([r[1] for r in runs])

    group = np.concatenate([np.full(len(r[1]), r[3]) for r in runs])
    f = drifting_nnls(X, y, group, scale_col=3, bootstrap=bootstrap, seed=seed, lower=overhead_lower_bounds(table))
    coef, inlier, speed = f["coef"], f["keep"], f["speed"]
    verify, verify_se = verify_cost(f)
    fixed = [coef[0], coef[1], verify, coef[6]]
    boot_se = [*f["se"][:2], verify_se, f["se"][6]]
    tps = toks / walls
    noise = float(np.max((tps.max(0) - tps.min(0)) / np.median(tps, axis=0))) if rounds > 1 else float("nan")
    resid = (y / speed[group] - X @ coef)[inlier]
    # self-consistency: each calibration plan's decoding time as the fitted model puts it
    # together from its forwards at each run's speed, against the measured time (in-sample: a
    # systematic misfit, e.g. an overhead pinned at 0 by the non-negativity, shows here)
    fitted = {}
    for k, plan in enumerate(plans):
        mine = [i for i, r in enumerate(runs) if r[2] == k]
        fitted[plan.describe()] = float(sum(speed[runs[i][3]] * (runs[i][0] @ coef).sum() for i in mine)
                                        / sum(runs[i][1].sum() for i in mine) - 1)
    return {**{k: float(v) for k, v in zip(OVERHEADS, fixed)}, **{k + "_se": float(v) for k, v in zip(OVERHEADS, boot_se)},
            "after_check_ms": float(coef[4]), "working_set_scale": float(coef[5]),
            "working_set_scale_se": float(f["se"][5]),
            "forwards": int(inlier.sum()), "forwards_rejected": int((~inlier).sum()), "runs": len(runs),
            "rounds": rounds, "residual_ms_median_abs": float(np.median(np.abs(resid))), "noise_floor": noise,
            "tokens_per_second_by_round": tps.round(3).tolist(), "plans": [p.describe() for p in plans],
            "autoregressive_tokens_per_second": float(np.median(tps[:, 0])),
            # each plan's speed-up over autoregressive (the same round's runs), median over rounds: what
            # validate's machine_drift measures again to see whether the machine's state moved them
            "speedup_by_plan": {p.describe(): float(np.median(tps[:, k] / tps[:, 0])) for k, p in enumerate(plans)},
            "fit_error_by_plan": fitted, "block_speed_range": [float(speed.min()), float(speed.max())],
            "blocks": rounds * len(prompts)}


def measurement_unrest(calibration_spread: float, autoregressive_error: float) -> float:
    """How far a measurement is from a quiet machine's, in units of the bars: calibration rounds
    of identical runs 5 % apart, or the finished table 3 % off its own autoregressive
    calibration runs (the profiles beyond either validated worse on the developers' VMs:
    README, "Closing the loop"); above 1, the machine's speed moved during the measurement.
    A spread of NaN (one round) is not judged."""
    spread = calibration_spread / 0.05 if calibration_spread == calibration_spread else 0.0
    return max(spread, abs(autoregressive_error) / 0.03)


def measurement_warning(calibration_spread: float, autoregressive_error: float) -> str | None:
    """A line when the machine's speed moved during the measurement (measurement_unrest > 1)."""
    if measurement_unrest(calibration_spread, autoregressive_error) <= 1:
        return None
    return (f"warning: the machine's speed moved during this measurement (calibration rounds {100 * calibration_spread:.1f} "
            f"% apart, self-check {100 * autoregressive_error:+.1f} %): predictions from this profile may be off by as "
            f"much; re-measure when the machine is quiet")


def self_check(table: LatencyTable, num_layers: int, calib: dict, context: int,
               forward_fixed_ms: tuple[float, float] = (float("nan"), float("nan"))) -> dict:
    """The simulator's autoregressive time per token (its cost model on the finished table, at
    the calibration runs' mean context) against the autoregressive time per token measured
    in the calibration runs of the same measurement, and the fitted model's error on each
    calibration plan's decoding time (in-sample); and the per-forward fixed cost seen by the
    micro-benchmark (a one-layer forward minus one layer, at 1 token: embedding, mask, call
    overhead) next to the fitted one (which also holds the decode loop's own time per forward)."""
    from hispec_sim.latency import CostModel

    predicted = CostModel(table, 1, context=context, max_tokens=8).autoregressive_ms(num_layers)
    measured = 1e3 / calib["autoregressive_tokens_per_second"]
    err = predicted / measured - 1
    fits = ", ".join(f"{p} {100 * e:+.1f} %" for p, e in calib["fit_error_by_plan"].items())
    fixed, fixed_se = forward_fixed_ms
    line = (f"self-check: autoregressive {predicted:.3f} ms/token predicted by the cost model, {measured:.3f} measured "
            f"in the calibration runs ({100 * err:+.1f} %); fitted decoding time per calibration plan: {fits}; "
            f"per-forward fixed cost: {fixed:.3f} {_pm(fixed_se)} ms in the micro-benchmark, "
            f"{calib['overhead_ms']:.3f} {_pm(calib['overhead_ms_se'])} ms fitted on decoding")
    warning = measurement_warning(calib["noise_floor"], err)
    return {"warning": warning, "autoregressive_ms_per_token_predicted": round(predicted, 6),
            "autoregressive_ms_per_token_measured": round(measured, 6), "autoregressive_error": round(err, 6),
            "fit_error_by_plan": {p: round(e, 6) for p, e in calib["fit_error_by_plan"].items()},
            "forward_fixed_ms_microbenchmark": round(fixed, 6) if fixed == fixed else None,
            "forward_fixed_ms_microbenchmark_se": round(fixed_se, 6) if fixed_se == fixed_se else None,
            "line": line + (f"\n{warning}" if warning else "")}


# --------------------------------------------------------------------------- acceptance


def agreement_of(traces: np.ndarray) -> np.ndarray:
    """agreement[a][b] = fraction of positions where exits a and b predict the same token."""
    return (traces[:, :, None] == traces[:, None, :]).mean(0)


@torch.no_grad()
def measure_acceptance(model: Transformer, prompts: list[list[int]], max_new_tokens: int):
    """Traces of every exit along the full model's greedy trajectory of each prompt: the
    stacked traces, where each prompt's rows start, the pooled agreement matrix, and one
    agreement matrix per prompt (the per-request distribution), and every exit's top-1
    probability per trace row."""
    from .confidence import exit_confidence  # exit_traces' walk, keeping the top-1 probabilities (adaptive plans)

    walks = [exit_confidence(model, p, max_new_tokens) for p in prompts]
    blocks = [a.numpy() for a, _ in walks]
    starts = list(np.cumsum([0] + [b.shape[0] for b in blocks[:-1]]).astype(int))
    traces = np.concatenate(blocks)
    top1 = np.concatenate([t.numpy() for _, t in walks])
    return traces, [int(s) for s in starts], agreement_of(traces), [agreement_of(b) for b in blocks], top1


def acceptance_workload(model: Transformer, prompts: list[list[int]], max_new_tokens: int, detail: str,
                        env: str) -> Acceptance:
    """A measured workload: traces, pooled agreement and the empirical per-prompt spread."""
    traces, starts, agreement, per_prompt, top1 = measure_acceptance(model, prompts, max_new_tokens)
    lens = [len(p) for p in prompts]
    context = int(round(float(np.mean(lens)) + max_new_tokens / 2))
    src = Source(kind="measured", detail=f"greedy argmax of every exit along the full model's greedy trajectory: "
                 f"{detail} x {max_new_tokens} tokens; {env}")
    spread = AcceptanceSpread(family="empirical", per_request=[np.round(a, 6).tolist() for a in per_prompt],
                              weights=[float(max_new_tokens)] * len(prompts),
                              source=Source(kind="measured", detail=f"agreement of every exit pair per prompt "
                                            f"({len(prompts)} prompts, {max_new_tokens} positions each); {env}"))
    from .confidence import measured_confidence

    return Acceptance(exits=list(range(1, model.num_layers + 1)), agreement=np.round(agreement, 6).tolist(),
                      context=context, traces=traces.tolist(), trace_starts=starts, joint="traces", source=src,
                      spread=spread, confidence=measured_confidence(traces, top1, detail, env))


# --------------------------------------------------------------------------- profile


def _environment(device: str) -> tuple[dict, str, str]:
    from hispec_sim.machine import describe, fingerprint

    fp = fingerprint(device)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    env = f"{describe(fp)}; device {device}; {when}"
    return fp, when, env


def _pm(se) -> str:
    """'+- 0.012', or why there is no standard error (one repeat: none to compare)."""
    return f"+- {se:.3f}" if se is not None and math.isfinite(se) else "(no standard error from one repeat)"


def model_shape(model: Transformer, model_name: str, source: Source, text: str | None = None,
                tokenizer: str | None = None) -> ModelShape:
    a = model.args
    return ModelShape(name=model_name, num_layers=model.num_layers, hidden=a.dim, heads=a.n_heads, kv_heads=a.n_kv_heads,
                      ffn=a.ffn_dim, vocab=a.vocab_size, max_context=a.max_seq_len, weights=weights_digest(model),
                      text=text, tokenizer=tokenizer, source=source)


def time_model(model: Transformer, contexts: list[int], repeats: int, tokens: list[int], seed: int,
               max_new_tokens: int, calibration_rounds: int, measured: Source, log) -> tuple[LatencyTable, dict, dict, dict]:
    """One timing of the model: the layer table, the fixed overheads fitted on calibration
    runs right after it, and the self-check of the two against each other."""
    t0 = time.perf_counter()
    cap = model.args.max_seq_len
    log(f"timing layers over {len(tokens)} token counts x {len(contexts)} contexts ({repeats} interleaved rounds)")
    lat = measure_latency(model, contexts, repeats, tokens, seed=seed)
    notes = {"layer_ms_raw": json.dumps(np.round(lat["raw_layer_ms"], 6).tolist()),
             "layer_ms_se": json.dumps(np.round(lat["layer_ms_se"], 6).tolist()),
             "repeats": str(repeats),
             "method": (f"interleaved rounds ({repeats} for <= 64 tokens, {rounds_for(65, repeats)} beyond) in random "
                        f"order; per cell the mean after rejecting samples beyond {OUTLIER_MADS} MADs "
                        f"({lat['samples_kept']} of {lat['samples']} kept); table fitted non-decreasing in tokens and "
                        f"context (weighted isotonic regression: median change {100 * lat['monotone_median_change']:.2f} %, "
                        f"max {100 * lat['monotone_max_change']:.1f} %); {lat['seconds']:.0f} s"),
             "extrapolated": (f"cells beyond the cache capacity {cap} (context + tokens), extrapolated: "
                              f"{lat['extrapolated']}") if lat["extrapolated"] else "none"}
    ws = measure_working_set(model, repeats, seed=seed)
    notes["working_set"] = (
        f"forwards over layers 1..k at one token, repeated back to back ({repeats} interleaved rounds of 2 untimed + 4 "
        f"timed per k; {ws['seconds']:.0f} s): per-layer time (forward(k) - forward(1)) / (k - 1) "
        f"{json.dumps(np.round(ws['per_layer_ms'], 6).tolist())} ms at k = {ws['layers']}; working_set_ms is its "
        f"excess over k = {ws['layers'][-1]}, fitted non-decreasing in k: {json.dumps(np.round(ws['ms'], 6).tolist())}")
    log(f"working set: a layer runs {-ws['ms'][0]:.4f} ms faster in a forward over layer 1 alone, "
        f"{-ws['ms'][len(ws['ms']) // 2]:.4f} over layers 1..{ws['layers'][len(ws['ms']) // 2]}, than over all")
    table = LatencyTable(tp=1, stack="hispec_exec", tokens=lat["tokens"], contexts=lat["contexts"],
                         layer_ms=lat["layer_ms"], head_ms=lat["head_ms"], source=measured, notes=notes,
                         working_set_layers=ws["layers"], working_set_ms=_scaled_working_set(ws["ms"], 1.0, lat))
    log(f"layer table done in {lat['seconds']:.0f} s; fitting fixed overheads")
    calib_prompts = calibration_prompts(model, 4, min(64, max(8, cap // 8)))
    calib_len = len(calib_prompts[0])
    calib_new = max(1, min(64, max_new_tokens, cap - calib_len - 16))
    calib = fit_overheads(model, table, calib_prompts, calib_new, rounds=calibration_rounds, seed=seed)
    calib.update(prompts=len(calib_prompts), prompt_len=calib_len, max_new_tokens=calib_new)
    table = table.model_copy(update={**{k: calib[k] for k in OVERHEADS},
                                     "working_set_ms": _scaled_working_set(ws["ms"], calib["working_set_scale"], lat,
                                                                           calib["layer_overhead_ms"])})
    table.notes["working_set"] += (f"; scaled by {calib['working_set_scale']:.3f} {_pm(calib['working_set_scale_se'])}, "
                                   f"fitted on the calibration's decode runs")
    table.notes["table_scale"] = ("1 (held: the micro-benchmarks' layer and head times as measured; each calibration "
                                  "block's own speed carries the drift, see calibration; a table timed slower than the "
                                  "calibration runs gets a per-layer credit, layer_overhead_ms < 0)")
    table.notes["calibration"] = (
        f"fixed costs fitted by non-negative least squares on {calib['forwards']} forwards "
        f"({calib['forwards_rejected']} outliers rejected) of the plans {calib['plans']} over "
        f"{len(calib_prompts)} calibration prompts (seed {CALIBRATION_SEED}) x {calibration_rounds} "
        f"interleaved rounds, one speed factor per block of back-to-back runs (every plan on one prompt in one "
        f"round; they ranged {calib['block_speed_range'][0]:.3f}-{calib['block_speed_range'][1]:.3f}; the fit prices "
        f"the median block); median |residual| {calib['residual_ms_median_abs']:.4f} ms; standard errors by "
        f"bootstrap over {calib['blocks']} blocks ({calib['runs']} decode runs); "
        f"verify_overhead_ms includes {calib['after_check_ms']:.4f} ms that the forward after a check takes extra; "
        f"row_overhead_ms: what each new token beyond a forward's first costs per layer beyond the table's increment")
    table.notes["overheads_se_ms"] = json.dumps({k: round(calib[k + "_se"], 6) for k in OVERHEADS})
    table.notes["noise_floor"] = (f"{calib['noise_floor']:.6f} (relative spread of identical calibration runs' tokens/s "
                                  f"over {calibration_rounds} rounds: {calib['tokens_per_second_by_round']})")
    check = self_check(table, model.num_layers, calib, calib_len + calib_new // 2, lat["forward_fixed_ms"])
    log(check["line"])
    table.notes["self_check"] = check["line"]
    calib["attempt_seconds"] = time.perf_counter() - t0
    return table, lat, calib, check


def measure_profile(model: Transformer, model_name: str, device: str, workload: str, n_prompts: int = 16,
                    prompt_len: int = 64, max_new_tokens: int = 128, seed: int = 0, repeats: int = 12,
                    command: str = "", prompts: list[list[int]] | None = None, prompts_detail: str | None = None,
                    tokens: list[int] | None = None, calibration_rounds: int = 3, attempts: int = 3,
                    log=None, text: str | None = None, tokenizer: str | None = None) -> Profile:
    """Time the model on this machine and measure one workload's acceptance: on `prompts`
    (token ids, e.g. the user's prompts file) or on `n_prompts` held-out prompts.

    The timing (layer table and calibration) is repeated, up to `attempts` times, while the
    machine's speed moved during it (measurement_unrest > 1), and the calmest attempt is kept:
    on a shared VM that changes from one attempt to the next (a minute apart: calibration rounds
    15.3, 5.2 and 11.5 % apart), and a table and fixed costs fitted while it moved mis-price the
    plans measured after them (README, "Closing the loop"). text: how the model reads text
    (ModelShape.text: "bytes" or "tokenizer"), for the serving simulator's text prompts;
    tokenizer: that tokenizer.json's digest (ModelShape.tokenizer)."""
    log = log or (lambda s: None)
    fp, when, env = _environment(device)
    measured = Source(kind="measured", detail=f"hispec_exec on {env}; command: {command}")
    if prompts_detail is None:  # the held-out prompts: `prompts` their token ids (a checkpoint's codec), else bytes
        prompts = prompts if prompts is not None else heldout_prompts(n_prompts, prompt_len, seed)
        prompts_detail = f"{n_prompts} held-out prompts (seed {seed})"
        prov_prompts = heldout_spec(n_prompts, seed, prompt_len, max_new_tokens)
    else:
        prov_prompts = {"n": len(prompts), "source": prompts_detail, "max_new_tokens": max_new_tokens}
    prompt_len = int(round(float(np.mean([len(p) for p in prompts]))))  # in tokens: the contexts timed
    if "source" in prov_prompts:
        prov_prompts["prompt_len_mean"] = prompt_len
    cap = model.args.max_seq_len
    context = prompt_len + max_new_tokens // 2
    # + a long one, for serving (prompts of hundreds of tokens; a batch runs every sequence
    # against its longest context): the table's attention increments beyond its last context
    # are extrapolated from its last two, which over-priced a 450-token context 2.5x
    longest = min(cap - 64, 4 * (prompt_len + max_new_tokens))
    contexts = sorted({0, min(prompt_len, cap - 1), min(context, cap - 1), min(prompt_len + max_new_tokens, cap - 1),
                       max(longest, 0)})

    tries = []
    for attempt in range(attempts):  # a fresh timing order per attempt
        table, lat, calib, check = time_model(model, contexts, repeats, tokens or TOKENS, seed + attempt,
                                              max_new_tokens, calibration_rounds, measured, log)
        unrest = measurement_unrest(calib["noise_floor"], check["autoregressive_error"])
        tries.append({"unrest": unrest, "table": table, "lat": lat, "calib": calib, "check": check})
        if unrest <= 1:
            break
        if attempt + 1 < attempts:
            log(f"attempt {attempt + 1} of {attempts}: the machine's speed moved; timing again")
    kept = min(range(len(tries)), key=lambda i: tries[i]["unrest"])
    table, lat, calib, check = (tries[kept][k] for k in ("table", "lat", "calib", "check"))
    table.notes["attempts"] = (f"attempt {kept + 1} of {len(tries)} kept (timing repeated while calibration rounds "
                               f"were > 5 % apart or the self-check > 3 % off, up to {attempts}; the calmest kept): "
                               + "; ".join(f"{i + 1}: rounds {100 * t['calib']['noise_floor']:.1f} % apart, self-check "
                                           f"{100 * t['check']['autoregressive_error']:+.1f} %"
                                           for i, t in enumerate(tries)))
    from .measure_serving import design_for, measure_serving  # batched serving steps (hispec-sim serve reads them)

    table = table.model_copy(update={"serving": measure_serving(model, table, env, seed=seed, log=log,
                                                                **design_for(repeats))})
    log("measuring acceptance (exit traces)")
    acc = acceptance_workload(model, prompts, max_new_tokens, prompts_detail, env)
    measurement = {"noise_floor": calib["noise_floor"], "latency_seconds": round(lat["seconds"], 1),
                   "calibration": {"prompts": calib["prompts"], "prompt_len": calib["prompt_len"],
                                   "seed": CALIBRATION_SEED, "max_new_tokens": calib["max_new_tokens"],
                                   "autoregressive_tokens_per_second": round(calib["autoregressive_tokens_per_second"], 4),
                                   "speedups": {k: round(v, 6) for k, v in calib["speedup_by_plan"].items()}},
                   "self_check": {k: v for k, v in check.items() if k != "line"},
                   **{k: round(calib[k], 6) for k in (*OVERHEADS, *(o + "_se" for o in OVERHEADS),
                                                       "working_set_scale", "working_set_scale_se")},
                   "block_speed_range": [round(v, 6) for v in calib["block_speed_range"]],
                   "attempts": [{"calibration_spread": round(t["calib"]["noise_floor"], 6),
                                 "autoregressive_error": round(t["check"]["autoregressive_error"], 6),
                                 "overhead_ms": round(t["calib"]["overhead_ms"], 6),
                                 "verify_overhead_ms": round(t["calib"]["verify_overhead_ms"], 6),
                                 "layer_overhead_ms": round(t["calib"]["layer_overhead_ms"], 6),
                                 "row_overhead_ms": round(t["calib"]["row_overhead_ms"], 6),
                                 "working_set_scale": round(t["calib"]["working_set_scale"], 6),
                                 "seconds": round(t["calib"]["attempt_seconds"], 1)} for t in tries],
                   "attempt_kept": kept + 1}
    dev_name = fp.get("gpu_name") or fp["cpu_model"]
    return Profile(
        name=f"{device}_{model_name}",
        description=f"measured by hispec-sim profile measure on {dev_name} ({fp['hostname']})",
        hardware=Hardware(name=f"{device}: {dev_name}", source=measured),
        model=model_shape(model, model_name, measured, text, tokenizer),
        latency=[table], default_tp=1, default_stack="hispec_exec",
        workloads={workload: acc}, default_workload=workload,
        provenance={"command": command, "measured": when, "torch": fp["torch"], "machine": fp,
                    "measurement": measurement, "prompts": prov_prompts},
    )


def heldout_spec(n: int, seed: int, prompt_len: int, max_new_tokens: int) -> dict:
    """How held-out prompts are recorded (provenance.prompts, workloads_added.<w>), so that
    validate and the confidence tool run the same prompts again."""
    return {"n": n, "seed": seed, "prompt_len": prompt_len, "max_new_tokens": max_new_tokens}


def prompts_of(profile: Profile, workload: str) -> tuple[dict, str]:
    """The prompts `workload` was measured on, and the field that records them: its
    provenance.workloads_added entry where it was added to the profile, else
    provenance.prompts (the profile's first workload)."""
    added = (profile.provenance.get("workloads_added") or {}).get(workload)
    if isinstance(added, dict):
        return added, f"provenance.workloads_added.{workload}"
    spec = profile.provenance.get("prompts")
    return (spec if isinstance(spec, dict) else {}), "provenance.prompts"


def add_workload(profile: Profile, model: Transformer, model_name: str, workload: str, prompts: list[list[int]],
                 prompts_detail: str, max_new_tokens: int, device: str, command: str = "",
                 heldout: dict | None = None) -> Profile:
    """The profile with one more (or a replaced) measured workload; no timing (acceptance
    does not depend on the machine). heldout: heldout_spec of held-out prompts."""
    from hispec_sim.validate import check_model_matches

    check_model_matches(profile, model, model_name)
    _, when, env = _environment(device)
    acc = acceptance_workload(model, prompts, max_new_tokens, prompts_detail, env)
    return with_workload(profile, workload, acc, {"command": command, "measured": when, "prompts": prompts_detail,
                                                  "n": len(prompts), "max_new_tokens": max_new_tokens, **(heldout or {})})


def with_workload(profile: Profile, workload: str, acc, added: dict) -> Profile:
    """The profile with `acc` as its workload `workload`, recorded in provenance.workloads_added."""
    prov = dict(profile.provenance)
    prov["workloads_added"] = {**(prov.get("workloads_added") or {}), workload: added}
    return profile.model_copy(update={"workloads": {**profile.workloads, workload: acc}, "provenance": prov})
