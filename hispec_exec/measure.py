"""Measure a profile with the executor: per-layer latency, exit head, fixed overheads and
the acceptance statistics (with per-position traces) of every exit pair.

The result is a normal `hispec_sim.schema.Profile`, so the simulator predicts any plan on
this model and machine, and `hispec-sim validate` can check the prediction.
"""
from __future__ import annotations

import datetime
import platform
import time

import numpy as np
import torch

from hispec_sim.schema import Acceptance, Hardware, LatencyTable, ModelShape, Plan, Profile, Source

from .data import heldout_prompts
from .generate import decode, heldout_exit_traces
from .model import Transformer

TOKENS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64]
CALIBRATION_SEED = 1000  # prompts for calibration runs: disjoint from measurement/validation seeds


def _timings(fn, repeats: int, dev) -> np.ndarray:
    """Wall times (ms) of repeated calls, after discarding three warm-up calls."""
    cuda = torch.device(dev).type == "cuda"
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return np.asarray(out)


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

    def forward():
        cache.lens[1:layers + 1] = [context] * layers
        model.run(cache, 0, layers, toks)
    return _timings(forward, repeats, dev)


@torch.no_grad()
def head_timings(model: Transformer, n_tokens: int, repeats: int) -> np.ndarray:
    x = torch.randn(n_tokens, model.args.dim, device=model.tok_embeddings.weight.device)
    return _timings(lambda: model.head(x), repeats, model.tok_embeddings.weight.device)


def measure_latency(model: Transformer, contexts: list[int], repeats: int = 30, tokens: list[int] = TOKENS):
    """Per-layer time over tokens x contexts, in situ: (forward over all L layers - forward
    over one layer) / (L - 1), so the per-forward part (embedding, mask, call overhead)
    cancels; head time over tokens. Medians after warm-up; spread = IQR of the L-layer
    forward / (L - 1)."""
    L = model.num_layers
    cap = model.args.max_seq_len
    contexts = [c for c in contexts if c + max(tokens) <= cap]
    layer, spread, head = [], [], []
    for n in tokens:
        row, row_spread = [], []
        for c in contexts:
            full = forward_timings(model, L, n, c, repeats)
            one = forward_timings(model, 1, n, c, repeats) if L > 1 else np.zeros(1)
            row.append(max(float(np.median(full) - np.median(one)) / max(L - 1, 1), 1e-6))
            row_spread.append(float(np.percentile(full, 75) - np.percentile(full, 25)) / max(L - 1, 1))
        layer.append(row)
        spread.append(row_spread)
        head.append(float(np.median(head_timings(model, n, repeats))))
    return tokens, contexts, layer, spread, head


def calibration_plans(L: int) -> list[Plan]:
    """Fixed plans whose forwards calibrate the per-forward costs: a mix of drafts and
    checks over many layer counts (not chosen from, nor fitted to, any validated plan)."""
    q = max(1, L // 4)
    e = max(1, L // 8)
    mid = max(e + 1, L // 2)
    plans = [Plan(levels=[L]), Plan(levels=[q, L], propose=3)]
    if mid < L:
        plans.append(Plan(levels=[e, mid, L], propose=2, windows=[3]))
    return plans


def fit_overheads(model: Transformer, table: LatencyTable, prompts, max_new_tokens: int) -> dict:
    """Least-squares fit of the fixed costs the micro-benchmarks cannot see: per forward,
    per layer run, and extra per verification forward. Each calibration forward's time
    (including the decode loop's own Python time between forwards, spread evenly over its
    forwards) minus its layers and head from the table is regressed on those three counts."""
    from hispec_sim.latency import head_ms, layer_ms

    rows, y = [], []
    for plan in calibration_plans(model.num_layers):
        for ids in prompts:
            r = decode(model, plan, ids, max_new_tokens)
            gap = (r.wall_s * 1e3 - sum(f.ms for f in r.forwards)) / len(r.forwards)
            for f in r.forwards:
                parts = sum((b - a + 1) * float(layer_ms(table, n, r.prompt_len)) for a, b, n in f.segments)
                parts += float(head_ms(table, f.head_tokens))
                layers = sum(b - a + 1 for a, b, _ in f.segments)
                rows.append([1.0, layers, 1.0 if f.level > 1 else 0.0])
                y.append(f.ms + gap - parts)
    X, y = np.asarray(rows), np.asarray(y)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    coef = np.maximum(coef, 0.0)
    resid = y - X @ coef
    return {"overhead_ms": float(coef[0]), "layer_overhead_ms": float(coef[1]), "verify_overhead_ms": float(coef[2]),
            "forwards": len(y), "residual_ms_median_abs": float(np.median(np.abs(resid)))}


def measure_acceptance(model: Transformer, n_prompts: int, prompt_len: int, max_new_tokens: int, seed: int):
    """Traces of every exit along the full model's greedy trajectory on held-out prompts,
    and the agreement matrix they give."""
    traces, starts = heldout_exit_traces(model, n_prompts, prompt_len, max_new_tokens, seed=seed)
    traces = traces.numpy()
    agreement = (traces[:, :, None] == traces[:, None, :]).mean(0)
    return list(range(1, model.num_layers + 1)), agreement, traces, list(starts)


def measure_profile(model: Transformer, model_name: str, device: str, workload: str, n_prompts: int = 16,
                    prompt_len: int = 64, max_new_tokens: int = 128, seed: int = 0, repeats: int = 30,
                    command: str = "") -> Profile:
    args = model.args
    L = model.num_layers
    context = prompt_len + max_new_tokens // 2
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip()
    if device == "cuda":
        machine += " " + torch.cuda.get_device_name(0)
    env = f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {when}"
    measured = Source(kind="measured", detail=f"hispec_exec on {machine}; {env}; command: {command}")

    contexts = sorted({0, prompt_len, context, prompt_len + max_new_tokens})
    tokens, contexts, layer, spread, head = measure_latency(model, contexts, repeats)
    table = LatencyTable(tp=1, stack="hispec_exec", tokens=tokens, contexts=contexts, layer_ms=layer, head_ms=head,
                         source=measured, notes={"layer_ms_iqr": str(spread), "repeats": str(repeats)})
    calib = fit_overheads(model, table, heldout_prompts(2, prompt_len, CALIBRATION_SEED), min(64, max_new_tokens))
    table = table.model_copy(update={k: calib[k] for k in ("overhead_ms", "layer_overhead_ms", "verify_overhead_ms")})
    table.notes["calibration"] = (f"fixed costs fitted by least squares on {calib['forwards']} forwards of the plans "
                                  f"{[p.describe() for p in calibration_plans(L)]} over 2 calibration prompts "
                                  f"(seed {CALIBRATION_SEED}); median |residual| {calib['residual_ms_median_abs']:.4f} ms")

    exits, agreement, traces, starts = measure_acceptance(model, n_prompts, prompt_len, max_new_tokens, seed)
    acc = Acceptance(exits=exits, agreement=np.round(agreement, 6).tolist(), context=context, traces=traces.tolist(),
                     trace_starts=starts, joint="traces",
                     source=Source(kind="measured", detail=f"greedy argmax of every exit along the full model's greedy "
                                   f"trajectory: {n_prompts} held-out prompts (seed {seed}) x {max_new_tokens} tokens; {env}"))
    dev_name = torch.cuda.get_device_name(0) if device == "cuda" else (platform.processor() or platform.machine())
    return Profile(
        name=f"{device}_{model_name}",
        description=f"measured by hispec-sim profile measure on {machine}",
        hardware=Hardware(name=f"{device}: {dev_name}", source=measured),
        model=ModelShape(name=model_name, num_layers=L, hidden=args.dim, heads=args.n_heads, kv_heads=args.n_kv_heads,
                         ffn=args.ffn_dim, vocab=args.vocab_size, source=measured),
        latency=[table], default_tp=1, default_stack="hispec_exec",
        workloads={workload: acc}, default_workload=workload,
        provenance={"command": command, "measured": when, "torch": torch.__version__, "machine": machine,
                    "prompts": {"n": n_prompts, "seed": seed, "prompt_len": prompt_len, "max_new_tokens": max_new_tokens}},
    )
