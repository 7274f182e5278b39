"""Measure what a serving step costs beyond the batch-1 latency table, through the path
`hispec-exec serve` takes (`Transformer.run_jobs` over a `CachePool`, `Batch.step`, the
serve loop), whatever that path does inside.

The latency table (measure.py) times ONE sequence of n tokens through `Transformer.run`.
A serving step runs b sequences at once through `run_jobs`: per layer, every sequence
adds its own bookkeeping and its own attention against its own cache, which one sequence
of b x n tokens never pays. Two measurements capture it:

1. the batch grid: one layer of `run_jobs` with b sequences of n new tokens each (in situ:
   (forward over all L layers - forward over one layer) / (L - 1), as the table), over
   b x n, in interleaved rounds with outlier rejection, fitted non-decreasing in b and n;
2. the serve loop's own step costs, fitted by non-negative least squares on iterations
   of real `serve()` runs (closed batches of every size, an autoregressive and two
   speculative calibration plans): the grid's layers x a forward scale, plus host time
   beyond forward and exit head (the forward's own fixed cost, building jobs, applying
   every sequence's logits, emission bookkeeping) as a fixed part + a part per running
   sequence + a part per check; standard errors by bootstrap over runs. Fitting the scale
   and the fixed part together matters: the grid is timed in situ, minutes apart from the
   loop, on a machine whose speed drifts, and its per-layer time alone cannot tell a
   2-layer draft step's fixed cost (about a third of it on the shipped model) from its
   layers.

The result is a `hispec_sim.schema.ServingCalibration`, stored in the profile's latency
table; `hispec_sim.serving` costs every step with it (the batch-1 models do not read it).
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from hispec_sim import step_noise
from hispec_sim.schema import (
    LatencyTable,
    Plan,
    ServeLimits,
    ServingCalibration,
    Source,
    StepNoise,
)

from .measure import (
    OUTLIER_MADS,
    SCALE_RANGE,
    calibration_plans,
    calibration_prompts,
    isotonic_2d,
    robust_mean,
    scaled_nnls,
)
from .model import Transformer

BATCHES = [1, 2, 3, 4, 6, 8, 12, 16]
ROWS = [1, 2, 3, 4, 6, 8, 16, 32, 64]  # decode steps and checks (and longer buffers)
# prompt tokens per sequence of the prefill grid: up to the longest prompt a model of 512
# positions holds (a prompt's attention among its own tokens grows as its square: read
# from the grid, not extrapolated from a 64-token cell)
PREFILL_ROWS = [4, 8, 16, 32, 64, 128, 256, 512]
MAX_CELL_ROWS = 256  # decode cells of more rows in all are left to the table's linear part
PREFILL_CELL_ROWS = 1024  # prefill cells of more rows in all: the largest timed batch's cell x b / its batch


def _timed_ms(f, clock, cuda: bool) -> float:
    """ms of f() by `clock`, the device synchronised around it."""
    if cuda:
        torch.cuda.synchronize()
    t = clock()
    f()
    if cuda:
        torch.cuda.synchronize()
    return (clock() - t) * 1e3


@torch.no_grad()
def batch_layer_grid(model: Transformer, batches: list[int] = BATCHES, rows: list[int] = ROWS, context: int = 0,
                     repeats: int = 8, seed: int = 0, clock=time.perf_counter, table: LatencyTable | None = None,
                     prefill: bool = False) -> dict:
    """ms of ONE layer of `run_jobs` for b sequences (consecutive pool slots) with n new
    tokens each after `context` cached ones, over batches x rows; and the per-forward part
    (the 1-layer forward minus one layer). prefill: prefill forwards (`run_jobs(...,
    prefill=True)`: the prompt tiles `generate.run_prefill` runs)."""
    L = model.num_layers
    dev = model.tok_embeddings.weight.device
    cuda = dev.type == "cuda"
    B = max(batches)
    pool = model.new_pool(B)
    caches = [pool.cache(s) for s in range(B)]
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    toks = {n: [torch.randint(0, model.args.vocab_size, (n,), generator=gen).to(dev) for _ in range(B)] for n in rows}
    cap = PREFILL_CELL_ROWS if prefill else MAX_CELL_ROWS
    cells = [(b, n) for b in batches for n in rows if context + n <= pool.capacity and (b * n <= cap or n == 1)]

    def fwd(layers, b, n):
        def f():
            for c in caches[:b]:
                c.lens[1:layers + 1] = [context] * layers
            model.run_jobs([(caches[s], layers, toks[n][s]) for s in range(b)], prefill=prefill)
        return f

    per_layer: dict = {c: [] for c in cells}
    per_forward: dict = {c: [] for c in cells}
    t0 = time.perf_counter()
    for r in range(-1, repeats):  # round -1 warms up, discarded
        for b, n in [cells[i] for i in rng.permutation(len(cells))]:
            fwd(1, b, n)()
            full = _timed_ms(fwd(L, b, n), clock, cuda)
            one = _timed_ms(fwd(1, b, n), clock, cuda) if L > 1 else 0.0
            if r >= 0:
                layer = (full - one) / max(L - 1, 1)
                per_layer[(b, n)].append(layer)
                per_forward[(b, n)].append(one - layer)
    raw = np.full((len(batches), len(rows)), np.nan)
    se = np.full_like(raw, np.nan)
    fwd_part = np.full_like(raw, np.nan)
    for (b, n), s in per_layer.items():
        i, j = batches.index(b), rows.index(n)
        raw[i, j], se[i, j], _ = robust_mean(s)
        fwd_part[i, j] = robust_mean(per_forward[(b, n)])[0]
    # cells not timed (too many rows in all, or beyond the capacity): prefill, the largest
    # timed batch of the same prompt length x b / its batch (prompts that long are compute-
    # bound: each costs what it costs alone); decode, or no timed batch, the cell of fewer
    # rows per sequence plus the table's linear part for the extra rows (as the simulator
    # extrapolates)
    filled = []
    for j in range(len(rows)):
        for i, b in enumerate(batches):
            if not np.isfinite(raw[i, j]):
                timed = [k for k in range(i) if np.isfinite(raw[k, j]) and (batches[k], rows[j]) not in filled]
                filled.append((b, rows[j]))
                if prefill and timed:
                    raw[i, j] = raw[timed[-1], j] * b / batches[timed[-1]]
                    continue
                extra = 0.0
                if table is not None and j:
                    from hispec_sim.latency import linear_layer_ms

                    extra = float(linear_layer_ms(table, b * rows[j]) - linear_layer_ms(table, b * rows[j - 1]))
                raw[i, j] = (raw[i, j - 1] if j else 0.0) + max(extra, 0.0)
    finite = se[np.isfinite(se) & (se > 0)]
    floor = float(np.median(finite)) if finite.size else 1e-3
    w = 1.0 / np.maximum(np.nan_to_num(se, nan=10 * floor), floor) ** 2
    for b, n in filled:
        w[batches.index(b), rows.index(n)] = 1e-6 / floor ** 2
    grid = np.maximum(isotonic_2d(raw, w), 1e-6)
    return {"batches": list(batches), "rows": list(rows), "context": context, "layer_ms": grid,
            "raw_layer_ms": raw, "layer_ms_se": np.nan_to_num(se), "forward_ms": fwd_part, "filled": filled,
            "seconds": time.perf_counter() - t0, "repeats": repeats}


ATTENTION_ROWS = [1, 2, 4, 8]  # a decode step, and checks of up to 7 drafts
ATTENTION_POOL = 8  # slots: 2 sequences are gathered, 4 fill half of it (every slot read in place)
MIN_CONTEXT = max(64, max(ATTENTION_ROWS)) + 1  # the attention grid times at least one context above 0


@torch.no_grad()
def attention_grid(model: Transformer, rows: list[int] = ATTENTION_ROWS, repeats: int = 8, seed: int = 0,
                   clock=time.perf_counter, slots: int = ATTENTION_POOL) -> dict:
    """ms ONE layer's attention adds per sequence the executor computes (latency.padded_sequences)
    in a step of `run_jobs` over a pool of `slots`: sequences of n new tokens at c cached
    tokens against the same step at context 0 (the linear part and the fixed costs cancel),
    divided by the layers and by the sequences computed; the blocks of one sequence alone
    ("single") or of slots // 4 sequences gathered, or ceil(slots / 2) sequences read in
    place (all `slots` computed). Contexts 0, 64, 128, ... up to the capacity - 64: what the
    executor serves. Interleaved rounds, outliers rejected, fitted non-decreasing in rows
    and context."""
    L = model.num_layers
    dev = model.tok_embeddings.weight.device
    pool = model.new_pool(slots)
    caches = [pool.cache(s) for s in range(slots)]
    top = pool.capacity - max(64, max(rows))
    contexts = [0] + [c for c in (64 << k for k in range(16)) if c < top] + [top]
    modes = [(max(1, slots // 4), max(1, slots // 4)), (-(-slots // 2), slots), (1, 1)]  # (sequences, computed)
    gen = torch.Generator().manual_seed(seed)
    toks = {n: torch.randint(0, model.args.vocab_size, (n,), generator=gen).to(dev) for n in rows}
    cells = [(m, n, c) for m in range(len(modes)) for n in rows for c in contexts]
    times: dict = {cell: [] for cell in cells}
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for r in range(-1, repeats):  # round -1 warms up every layout, discarded
        for m, n, c in [cells[i] for i in rng.permutation(len(cells))]:
            nseq = modes[m][0]
            for cache in caches[:nseq]:
                cache.lens[1:] = [c] * L
            ms = _timed_ms(lambda: model.run_jobs([(cache, L, toks[n]) for cache in caches[:nseq]]), clock,
                           dev.type == "cuda")
            if r >= 0:
                times[(m, n, c)].append(ms)
    out = {}
    for m, name in enumerate(("gathered", "in_place", "single")):
        raw = np.zeros((len(rows), len(contexts)))
        se = np.zeros_like(raw)
        for i, n in enumerate(rows):
            base, base_se, _ = robust_mean(times[(m, n, 0)])
            for j, c in enumerate(contexts[1:], 1):
                mean, sd, _ = robust_mean(times[(m, n, c)])
                raw[i, j] = (mean - base) / L / modes[m][1]
                se[i, j] = np.hypot(sd, base_se) / L / modes[m][1]
        se = np.nan_to_num(se, nan=0.0)  # one repeat: no spread
        floor = float(np.median(se[:, 1:])) or 1e-6
        w = 1.0 / np.maximum(se, floor) ** 2
        w[:, 0] = 1e6 / floor ** 2  # context 0: no increment, by definition
        out[name] = np.maximum(isotonic_2d(raw, w), 0.0)
        out[name + "_raw"] = raw
    return {"rows": list(rows), "contexts": contexts, "slots": slots, "sequences": [n for n, _ in modes],
            "seconds": time.perf_counter() - t0, "repeats": repeats, **out}


def _ops_of(batch) -> list[tuple[int, int, int]]:
    """(operation, buffered tokens it checks, cached tokens) of every running sequence's next step."""
    out = []
    for d in batch.running:
        op = d.next_op() if batch.batching == "ragged" else batch.phase
        out.append((op, len(d.bufs[op]) if op > 0 else 0, d.cache.lens[1]))
    return out


def step_features(levels: list[int], ops: list[tuple[int, int, int]], table: LatencyTable,
                  slots: int | None = None) -> tuple[float, float, int, int]:
    """(layers ms -- grid + attention, unscaled --, exit-head ms, sequences, checks) that
    `table` (with its serving grid) gives one step whose sequences run `ops` in a pool of
    `slots` (None: as many as the sequences); attention as the simulator prices it
    (latency.padded_attention_ms: every sequence against the longest)."""
    from hispec_sim.latency import head_ms, padded_attention_ms, serving_layer_ms

    lv = [0] + list(levels)
    k = len(levels)
    rows = np.zeros((len(ops), k), np.int64)
    for i, (op, nbuf, _) in enumerate(ops):
        rows[i, :op] = 1
        rows[i, op] = nbuf + 1 if op > 0 else 1
    ctx = np.array([c for _, _, c in ops], float)
    head_rows = int(sum(rows[i, op] for i, (op, _, _) in enumerate(ops)))
    t = 0.0
    for r in range(k):
        on = rows[:, r] > 0
        if on.any():
            rmax = int(rows[on, r].max())
            end = float((ctx[on] + rows[on, r]).max())
            att = float(padded_attention_ms(table, on.sum(), slots or len(ops), rmax, end - rmax))
            t += (lv[r + 1] - lv[r]) * (float(serving_layer_ms(table, on.sum(), rows[on, r].sum())) + att)
    return t, float(head_ms(table, head_rows)), len(ops), int(sum(op > 0 for op, _, _ in ops))


def serve_iterations(model: Transformer, plan: Plan, prompts: list[list[int]], max_new: int, max_batch: int,
                     seed: int = 0, clock=None, gap_s: float = 0.0) -> list[dict]:
    """Per iteration of a real `serve()` run (serve's step_log): its wall time without the
    prefill, the prefill's, the operations of its step, whether the loop idled before it.
    gap_s 0: a closed batch (every request arrives at 0); else request i arrives at i x gap_s."""
    from .serve import serve

    log: list[dict] = []
    serve(model, plan, [i * gap_s for i in range(len(prompts))], prompts, [max_new] * len(prompts),
          ServeLimits(max_batch=max_batch), mode="greedy", seed=seed, step_log=log, ops_of=_ops_of,
          clock=clock or time.perf_counter)
    return log


IDLE_REQUESTS, IDLE_NEW = 6, 2  # per plan: requests arriving one by one into an idle loop, tokens each


def _median_se(values: list[float]) -> tuple[float, float]:
    """Median and its standard error (1.2533 x 1.4826 x MAD / sqrt(n): robust to the odd interrupted run)."""
    v = np.asarray(values, float)
    if not v.size:
        return float("nan"), float("nan")
    med = float(np.median(v))
    return med, float(1.2533 * 1.4826 * np.median(np.abs(v - med)) / np.sqrt(v.size))


def fit_step_overheads(model: Transformer, table: LatencyTable, batches: list[int], rounds: int = 2,
                       max_new: int = 24, bootstrap: int = 200, seed: int = 0, clock=None,
                       probe=None, reference: float | None = None) -> dict:
    """The serve loop's own step costs: NNLS of (iteration ms - the table's exit head) on
    [the grid's layers, 1, running sequences, checks, admitting] -> (forward scale, step,
    per-sequence, per-check, admit ms). Draft steps of a few layers and full-depth steps in
    one fit tell a per-step cost from a per-layer one; the scale carries the grid (timed
    minutes apart, through run_jobs alone) to the loop. As fit_overheads does for the
    batch-1 table, the scale is fixed to 1 when it falls outside [0.5, 2] or its bootstrap
    standard error exceeds 0.05. Outliers beyond 3.5 MADs are dropped and the fit redone;
    standard errors by bootstrap over runs.

    Admissions: every run's prefill forward against the prefill grid's price at scale 1 ->
    prefill_scale (the median ratio, beyond the fixed per-forward part; prefills are
    compute-bound tiles, decode steps are not, so they need not share the decode scale);
    then IDLE_REQUESTS requests per plan arriving one by one into an idle loop (spaced
    wider than a whole closed-batch run of one request) -> wake_ms, the median of what an
    admission after an idle spell (prefill + its step) costs beyond that price and the
    fitted step with admit_ms (the first forward after idling runs slower: presumably cold
    caches).

    Drift: with `probe` (a callable timing a fixed forward, e.g. reference_ms) and
    `reference` (its ms when the grid was timed), every run's iterations are put back
    into the grid's window: x reference / the probe timed right before the run. This
    VM's speed drifts by up to ~25 % over minutes, and a scale fitted on iterations from a
    faster or slower window than the grid's carries that drift into every simulated step."""
    from hispec_sim.serving import StepCost

    L = model.num_layers
    plans = calibration_plans(L, spread=False)  # x batches x rounds: the first three shapes suffice here
    X, y, group, heads, drift = [], [], [], [], []
    prefill_ratio, one_request_ms = [], []
    g = 0
    prompts = calibration_prompts(model, max(*batches, IDLE_REQUESTS), 24)
    lens = np.array([len(p) for p in prompts])
    # the prefill grid's price at scale 1 (the table passed in carries the calibration being fitted)
    unit = table.model_copy(update={"serving": table.serving.model_copy(update={"forward_scale": 1.0,
                                                                                "prefill_scale": None})})
    prefill = StepCost(unit, plans[0], L, max(batches), 256, lens)
    fixed = prefill.fixed

    def timed(plan, b, gap_s=0.0, requests=None, new=max_new):
        d = 1.0 if probe is None else reference / probe()
        drift.append(d)
        log = serve_iterations(model, plan, prompts[:requests or b], new, b, seed, clock, gap_s=gap_s)
        for it in log:
            it["features"] = step_features(plan.levels, it["ops"], table, min(b, len(prompts[:requests or b])))
            it["d"] = d
            if it["prefill_ms"] > 0:  # ONE prefill forward of the prompts admitted in this iteration
                it["priced"] = prefill.prefill(lens[:len(it["ops"])]) - fixed  # every prompt: 24 tokens
        return log

    for _ in range(rounds):
        for plan in plans:
            for b in batches:
                log = timed(plan, b)
                if b == 1:
                    one_request_ms.append(sum(it["step_ms"] + it["prefill_ms"] for it in log) * log[0]["d"])
                for it in log:
                    fwd, head, nseq, nchk = it["features"]
                    X.append([fwd, 1.0, nseq, nchk, float(it["prefill_ms"] > 0)])
                    y.append(it["step_ms"] * it["d"] - head)
                    heads.append(head)
                    group.append(g)
                    if it["prefill_ms"] > 0:
                        prefill_ratio.append((it["prefill_ms"] * it["d"] - fixed) / it["priced"])
                g += 1
    X, y, group, heads = np.asarray(X), np.asarray(y), np.asarray(group), np.asarray(heads)
    f = scaled_nnls(X, y, group, scale_col=0, bootstrap=bootstrap, seed=seed)
    coef, se, keep, scaled = f["coef"], f["se"], f["keep"], f["scaled"]
    names = ("forward_scale", "step_ms", "sequence_ms", "check_ms", "admit_ms")
    prefill_scale, prefill_scale_se = _median_se(prefill_ratio)
    if not SCALE_RANGE[0] <= prefill_scale <= SCALE_RANGE[1]:  # not believed: the decode steps' scale
        prefill_scale, prefill_scale_se = float("nan"), float("nan")
    # admissions after an idle spell: spaced wider than a closed run of one request (max_new tokens)
    gap_s = 0.03 + 1e-3 * max(one_request_ms, default=0.0)
    wake = []
    for plan in plans:
        for it in timed(plan, 1, gap_s=gap_s, requests=IDLE_REQUESTS, new=IDLE_NEW):
            if it["woke"] and it["prefill_ms"] > 0:
                fwd, head, nseq, nchk = it["features"]
                price = (prefill_scale if np.isfinite(prefill_scale) else coef[0]) * it["priced"] + fixed
                wake.append((it["step_ms"] + it["prefill_ms"]) * it["d"] - price - head
                            - float(np.dot([fwd, 1.0, nseq, nchk, 1.0], coef)))
    wake_ms, wake_ms_se = _median_se(wake)
    # the step noise: every iteration's measured / fitted step ms (exit head included, as the
    # simulator costs a step), in run order; outliers too (slow steps make the tail)
    fitted = X @ coef + heads
    ratio = (y + heads) / np.maximum(fitted, 1e-9)
    return {**{k: float(v) for k, v in zip(names, coef)}, **{k + "_se": float(v) for k, v in zip(names, se)},
            "prefill_scale": prefill_scale, "prefill_scale_se": prefill_scale_se, "prefills": len(prefill_ratio),
            "wake_ms": max(wake_ms, 0.0) if np.isfinite(wake_ms) else 0.0, "wake_ms_se": wake_ms_se,
            "wakes": len(wake), "idle_gap_s": gap_s,
            "scale_fitted": bool(scaled), "iterations": int(keep.sum()), "rejected": int((~keep).sum()),
            "residual_ms_median_abs": float(np.median(np.abs((y - X @ coef)[keep]))),
            "plans": [p.describe() for p in plans], "ratio": ratio, "drift": (min(drift), max(drift)), "fitted_ms": fitted, "group": group,
            "checks": X[:, 3], "step_noise": step_noise.describe(ratio, group, fitted),
            "ratio_drafts_median": float(np.median(ratio[X[:, 3] == 0])) if (X[:, 3] == 0).any() else float("nan"),
            "ratio_checks_median": float(np.median(ratio[X[:, 3] > 0])) if (X[:, 3] > 0).any() else float("nan")}


def design_for(repeats: int) -> dict:
    """measure_serving's arguments for `profile measure --repeats R`: the full design from
    4 rounds on, a small one below (quick checks)."""
    if repeats >= 4:
        return {"repeats": min(repeats, 8), "rounds": 2}
    return {"repeats": repeats, "rounds": 1, "batches": [1, 2, 4], "rows": [1, 2, 8], "max_new": 8, "prefill_rows": [4, 16]}


def measure_serving(model: Transformer, table: LatencyTable, env: str = "", repeats: int = 8, rounds: int = 2,
                    batches: list[int] = BATCHES, rows: list[int] = ROWS, seed: int = 0, log=None,
                    clock=None, max_new: int = 24, prefill_rows: list[int] = PREFILL_ROWS) -> ServingCalibration:
    """The serving calibration of `table` (measured on this model and machine). clock:
    None = wall time; a hispec_exec.serve.CpuClock = this process's CPU time (to compare
    with `hispec-exec serve --clock cpu` on a loaded machine)."""
    log = log or (lambda s: None)
    log(f"serving: timing run_jobs over {len(batches)} batch sizes x {len(rows)} rows per sequence")
    clk = clock or time.perf_counter
    probe = lambda: reference_ms(model, repeats=7, clock=clk)  # noqa: E731 -- the machine's speed now
    before = probe()
    grid = batch_layer_grid(model, batches, rows, 0, repeats, seed, clk, table)  # attention beyond: the table's increments
    pre = batch_layer_grid(model, batches, prefill_rows, 0, repeats, seed + 1, clk, table, prefill=True)
    att = attention_grid(model, repeats=4 * repeats, seed=seed + 2, clock=clk)  # small differences of whole forwards
    ref = (before + probe()) / 2
    cal = ServingCalibration(batches=grid["batches"], rows=grid["rows"], context=grid["context"],
                             layer_ms=np.round(grid["layer_ms"], 6).tolist(),
                             layer_ms_se=np.round(grid["layer_ms_se"], 6).tolist(),
                             prefill_rows=pre["rows"], prefill_layer_ms=np.round(pre["layer_ms"], 6).tolist(),
                             attention_rows=att["rows"], attention_contexts=att["contexts"],
                             attention_gathered_ms=np.round(att["gathered"], 6).tolist(),
                             attention_in_place_ms=np.round(att["in_place"], 6).tolist(),
                             attention_single_ms=np.round(att["single"], 6).tolist(),
                             source=Source(kind="measured", detail="pending"))
    log(f"serving: batch grids done in {grid['seconds'] + pre['seconds'] + att['seconds']:.0f} s; fitting step overheads on serve() iterations")
    fit = fit_step_overheads(model, table.model_copy(update={"serving": cal}), [b for b in batches if b <= 8] or batches[:1], rounds, max_new,
                             seed=seed, clock=clock, probe=probe, reference=ref)
    how = "wall time" if clock is None else "process CPU time (CpuClock)"
    noise = fit["step_noise"]
    detail = (f"{how}; Transformer.run_jobs over a CachePool, b x n = {batches} x {rows}, context {grid['context']} (cells of more than {MAX_CELL_ROWS} rows in all: the table's linear part beyond "
              f"the last timed rows): one layer "
              f"in situ ((L-layer - 1-layer forward) / (L - 1)), {repeats} interleaved rounds, samples beyond "
              f"{OUTLIER_MADS} MADs rejected, fitted non-decreasing in b and n ({grid['seconds']:.0f} s); prefill forwards "
              f"(run_jobs(..., prefill=True): the prompt tiles) the same way over b x n = {batches} x {prefill_rows} "
              f"(cells of more than {PREFILL_CELL_ROWS} rows in all: the largest timed batch's cell x b / its batch) "
              f"({pre['seconds']:.0f} s); attention per computed sequence: decode steps of n = {att['rows']} new tokens "
              f"at contexts {att['contexts']} against context 0, {att['sequences'][0]} sequences of a pool of "
              f"{att['slots']} (gathered), {att['sequences'][1]} (every slot read in place) and one alone (gathered), {att['repeats']} "
              f"interleaved rounds, fitted non-decreasing ({att['seconds']:.0f} s); forward "
              f"scale {fit['forward_scale']:.3f} ({'fitted' if fit['scale_fitted'] else 'fixed: ill-determined'}) and step "
              f"overheads by NNLS on {fit['iterations']} serve() iterations ({fit['rejected']} outliers rejected) of "
              f"{fit['plans']} over closed batches, median |residual| {fit['residual_ms_median_abs']:.3f} ms, standard "
              f"errors by bootstrap over runs; every run's iterations x (the probe forward timed around the grid, "
              f"{ref:.2f} ms / the probe timed right before the run: {fit['drift'][0]:.3f}-{fit['drift'][1]:.3f}), "
              f"so that the machine's drift between the grid and the runs cancels; admissions: admit_ms "
              f"{fit['admit_ms']:.3f} ms in the same fit, prefill scale "
              + (f"{fit['prefill_scale']:.3f} (median over {fit['prefills']} prefill forwards against the prefill grid)"
                 if np.isfinite(fit['prefill_scale']) else "not believed (outside [0.5, 2]): the forward scale")
              + f", wake_ms {fit['wake_ms']:.3f} ms (median over {fit['wakes']} admissions after an idle spell, "
              f"{IDLE_REQUESTS} requests per plan {fit['idle_gap_s'] * 1e3:.0f} ms apart); step noise: quantiles of measured / fitted ms over all "
              f"{noise['iterations']} iterations, lag-1 autocorrelation of its normal scores {noise['lag1_measured']:.3f} "
              f"({'AR(1)' if noise['lag1_autocorrelation'] else 'i.i.d.: not significant'}), "
              f"{'two step-size classes split at ' + format(noise['split_ms'], '.2f') + ' ms' if noise.get('split_ms') else 'pooled over step sizes'} "
              f"(median ratio of draft-only steps {fit['ratio_drafts_median']:.3f}, of steps with a check "
              f"{fit['ratio_checks_median']:.3f}); {env}")
    return cal.model_copy(update={
        "step_ms": round(fit["step_ms"], 6), "sequence_ms": round(fit["sequence_ms"], 6),
        "check_ms": round(fit["check_ms"], 6),
        "step_ms_se": round(fit["step_ms_se"], 6), "sequence_ms_se": round(fit["sequence_ms_se"], 6),
        "check_ms_se": round(fit["check_ms_se"], 6), "forward_scale": round(fit["forward_scale"], 6),
        "admit_ms": round(fit["admit_ms"], 6), "admit_ms_se": round(fit["admit_ms_se"], 6),
        **({"prefill_scale": round(fit["prefill_scale"], 6), "prefill_scale_se": round(fit["prefill_scale_se"], 6)}
           if np.isfinite(fit["prefill_scale"]) else {}),
        "wake_ms": round(fit["wake_ms"], 6),
        "wake_ms_se": round(fit["wake_ms_se"], 6) if np.isfinite(fit["wake_ms_se"]) else None,
        "forward_scale_se": round(fit["forward_scale_se"], 6) if fit["scale_fitted"] else None,
        "step_noise": StepNoise(**noise),
        "source": Source(kind="measured", detail=detail)})


@torch.no_grad()
def reference_ms(model: Transformer, batch: int = 4, repeats: int = 15, clock=time.perf_counter) -> float:
    """Median ms of one fixed forward (`batch` sequences, 1 token each, all layers, through
    run_jobs): a probe of the machine's speed, to compare the moments of a study (drift
    between the calibration and the executor runs)."""
    pool = model.new_pool(batch)
    caches = [pool.cache(s) for s in range(batch)]
    tok = torch.tensor([65], device=model.tok_embeddings.weight.device)
    L = model.num_layers
    out = []
    for r in range(repeats + 2):
        for c in caches:
            c.lens[1:] = [16] * L
        t = clock()
        model.run_jobs([(c, L, tok) for c in caches])
        if r >= 2:
            out.append((clock() - t) * 1e3)
    return float(np.median(out))


def add_to_profile(profile_path: str, out_path: str, repeats: int = 8, rounds: int = 2, seed: int = 0,
                   device: str = "cpu", log=None, clock=None) -> None:
    """Re-measure the serving calibration of the shipped model into a copy of a profile
    (its latency table is kept as it is)."""
    from hispec_sim.schema import Profile, load_profile, save_profile
    from hispec_sim.validate import check_model_matches

    from .checkpoint import load_model
    from .measure import _environment

    profile = load_profile(profile_path)
    model = load_model(device=device)
    check_model_matches(profile, model, "hispec-tiny")  # the shipped model's name, shape and weights
    _, when, env = _environment(device)
    tables = []
    for t in profile.latency:
        if t.stack == "hispec_exec":
            t = t.model_copy(update={"serving": measure_serving(model, t, env, repeats, rounds, seed=seed, log=log, clock=clock)})
        tables.append(t)
    prov = dict(profile.provenance)
    prov["serving_calibration"] = {"measured": when, "repeats": repeats, "rounds": rounds, "seed": seed,
                                   "clock": "wall" if clock is None else "cpu"}
    save_profile(Profile.model_validate({**profile.model_dump(), "latency": [t.model_dump() for t in tables],
                                         "provenance": prov}), out_path)


def main(argv=None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="measure the serving calibration of the shipped model into a profile")
    ap.add_argument("profile", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("--reference", action="store_true", help="only print the reference forward's ms (JSON)")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="as hispec-exec serve --clock")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from .serve import CpuClock

    if a.reference:
        from .checkpoint import load_model

        clk = CpuClock() if a.clock == "cpu" else time.perf_counter
        print(json.dumps({"reference_ms": reference_ms(load_model(), clock=clk), "clock": a.clock}))
        return 0
    if a.profile is None or a.out is None:
        print("error: profile and out: both required (or --reference)", file=sys.stderr)
        return 2
    try:
        add_to_profile(a.profile, a.out, a.repeats, a.rounds, a.seed,
                       log=lambda s: print(f"[measure_serving] {s}", file=sys.stderr, flush=True),
                       clock=CpuClock() if a.clock == "cpu" else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
