"""Test helpers shared by every test folder: small random profiles built in memory.
(A module of its own: several folders have a conftest.py, so `conftest` is ambiguous.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hispec_sim.schema import (
    Acceptance,
    Hardware,
    LatencyTable,
    ModelShape,
    Profile,
    Source,
)

REPO = Path(__file__).resolve().parent.parent
TEST_SOURCE = Source(kind="assumed", detail="test fixture")


def depth_markov_matrix(curve: np.ndarray) -> list[list[float]]:
    """agreement(a, b) = F(a) / F(b) for a < b: the depth-Markov model."""
    lo = np.minimum.outer(np.arange(len(curve)), np.arange(len(curve)))
    hi = np.maximum.outer(np.arange(len(curve)), np.arange(len(curve)))
    return (curve[lo] / curve[hi]).tolist()


def make_profile(layers: int = 16, layer_ms: float = 1.0, slope: float = 0.01, head_ms: float = 0.5,
                 overhead_ms: float = 0.3, verify_ms: float = 0.1, curve=None, traces=None,
                 constant: float | None = None, name: str = "test", trace_starts=None, working_set=None) -> Profile:
    """A profile whose layer time grows linearly with tokens and context (less by
    working_set = (layers, ms) in forwards over the first layers) and whose agreement follows
    `curve` (agreement with the last layer per exit, depth-Markov), `traces` (requests
    beginning at `trace_starts`), or is `constant` for every pair."""
    tokens = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    contexts = [0, 1024, 8192]
    table = LatencyTable(tokens=tokens, contexts=contexts,
                         layer_ms=[[layer_ms + slope * t + 1e-4 * c for c in contexts] for t in tokens],
                         head_ms=[head_ms * (1 + 0.01 * t) for t in tokens], overhead_ms=overhead_ms,
                         verify_overhead_ms=verify_ms, source=TEST_SOURCE,
                         working_set_layers=working_set and working_set[0], working_set_ms=working_set and working_set[1])
    exits = list(range(1, layers + 1))
    if traces is not None:
        traces = np.asarray(traces)
        matrix = [[float((traces[:, a] == traces[:, b]).mean()) for b in range(layers)] for a in range(layers)]
        acc = Acceptance(exits=exits, agreement=matrix, context=256, traces=traces.tolist(), joint="traces",
                         trace_starts=trace_starts, source=TEST_SOURCE)
    elif constant is not None:
        matrix = np.full((layers, layers), constant)
        np.fill_diagonal(matrix, 1.0)
        acc = Acceptance(exits=exits, agreement=matrix.tolist(), context=256, source=TEST_SOURCE)
    else:
        curve = np.linspace(0.2, 1.0, layers) if curve is None else np.asarray(curve, float)
        acc = Acceptance(exits=exits, agreement=depth_markov_matrix(curve), context=256, source=TEST_SOURCE)
    return Profile(name=name, hardware=Hardware(name="test", source=TEST_SOURCE),
                   model=ModelShape(name="test", num_layers=layers, hidden=64, heads=4, kv_heads=2, ffn=128, vocab=256,
                                    source=TEST_SOURCE),
                   latency=[table], workloads={"w": acc}, default_workload="w")


def resolve_depth_traces(layers: int, positions: int, seed: int) -> np.ndarray:
    """Token traces with correlation across exits: each position's argmax settles at a
    random depth; before that the exits guess among a few tokens."""
    rng = np.random.default_rng(seed)
    settle = rng.integers(1, layers + 1, positions)
    guess = rng.integers(0, 3, (positions, layers))
    return np.where(np.arange(1, layers + 1)[None, :] >= settle[:, None], 7, guess)


def agreeing_where_confident(rng, top1: np.ndarray) -> np.ndarray:
    """Traces whose exit a agrees with the last exit with probability 0.3 + 0.7 x its
    top-1 probability (the last exit is certain: top1[:, -1] is set to 1)."""
    positions, layers = top1.shape
    truth = rng.integers(0, 50, positions)
    traces = np.where(rng.uniform(size=(positions, layers)) < 0.3 + 0.7 * top1, truth[:, None],
                      rng.integers(50, 100, (positions, layers)))
    traces[:, -1] = truth
    top1[:, -1] = 1.0
    return traces


def confident_profile(seed=0, layers=8, positions=600):
    """Random traces where a token's agreement depends on its exit's confidence (two
    requests of positions / 2 rows each), with their confidence statistics."""
    from hispec_exec.confidence import (
        confidence_stats,  # imports torch: only for the tests that need it
    )

    rng = np.random.default_rng(seed)
    top1 = rng.uniform(0.05, 1.0, (positions, layers))
    traces = agreeing_where_confident(rng, top1)
    prof = make_profile(layers=layers, traces=traces)
    acc = prof.workload().model_copy(update={"confidence": confidence_stats(traces, top1),
                                             "trace_starts": [0, positions // 2]})
    return Profile.model_validate({**prof.model_dump(), "workloads": {"w": acc.model_dump()}, "default_workload": "w"})


def two_request_profile(seed=0, layers=8, positions=800, spread=True):
    """Two measured requests of positions / 2 rows each that differ in confidence (request
    0: top-1 probabilities u^0.5, request 1: u^2, u uniform) and, as in confident_profile,
    agree more where confident; with spread=True the workload carries the empirical spread
    of the two blocks (per-request agreement matrices), as `profile measure` writes it."""
    from hispec_exec.confidence import confidence_stats
    from hispec_sim.schema import AcceptanceSpread

    rng = np.random.default_rng(seed)
    half = positions // 2
    u = rng.uniform(0.0025, 1.0, (positions, layers))
    top1 = np.concatenate([u[:half] ** 0.5, u[half:] ** 2])
    traces = agreeing_where_confident(rng, top1)
    prof = make_profile(layers=layers, traces=traces)
    agree = lambda b: np.round((b[:, :, None] == b[:, None, :]).mean(0), 6).tolist()
    upd = {"confidence": confidence_stats(traces, top1), "trace_starts": [0, half]}
    if spread:
        upd["spread"] = AcceptanceSpread(family="empirical", per_request=[agree(traces[:half]), agree(traces[half:])],
                                         weights=[float(half), float(positions - half)], source=TEST_SOURCE)
    acc = prof.workload().model_copy(update=upd)
    return Profile.model_validate({**prof.model_dump(), "workloads": {"w": acc.model_dump()}, "default_workload": "w"})
