"""What-if profiles: a layer costs C ms whatever its token count or context, every exit
pair agrees with probability A."""
from __future__ import annotations

import math

from .acceptance_fit import constant_acceptance
from .schema import MAX_MS, MIN_LAYER_MS, Hardware, LatencyTable, ModelShape, Profile, Source, exact_g


def _check(name: str, v, lo: float = 0.0, hi: float = MAX_MS):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"{name}: must be a finite number, got {v!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{name}: must be in [{lo:g}, {hi:g}], got {v}")


def synthetic_profile(layers: int, layer_ms: float, agreement: float, head_ms: float = 0.0,
                      overhead_ms: float = 0.0, name: str | None = None, context: int = 512) -> Profile:
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1 or layers > 1024:
        raise ValueError(f"layers: must be an integer in [1, 1024], got {layers!r}")
    _check("layer_ms", layer_ms, MIN_LAYER_MS)
    _check("agreement", agreement, 0.0, 1.0)
    _check("head_ms", head_ms)
    _check("overhead_ms", overhead_ms)
    name = name or (f"synthetic_L{layers}_C{exact_g(layer_ms)}_A{exact_g(agreement)}"  # every value that sets it apart
                    + (f"_H{exact_g(head_ms)}" if head_ms else "") + (f"_O{exact_g(overhead_ms)}" if overhead_ms else "")
                    + (f"_X{context}" if context != 512 else ""))
    given = Source(kind="assumed", detail="what-if value given on the command line (synthetic profile)")
    table = LatencyTable(
        tp=1,
        stack="compiled",
        tokens=[1, 4096],
        contexts=[0, 2**21],
        layer_ms=[[float(layer_ms)] * 2, [float(layer_ms)] * 2],
        head_ms=[float(head_ms)] * 2,
        overhead_ms=float(overhead_ms),
        source=Source(kind="assumed", detail=f"synthetic: every layer costs {layer_ms:g} ms whatever its token count and context; "
                      f"exit head {head_ms:g} ms; per-forward overhead {overhead_ms:g} ms"),
    )
    acc = constant_acceptance(layers, float(agreement), context=context, source=Source(
        kind="assumed", detail=f"synthetic: every exit pair agrees with probability {agreement:g}; consecutive levels independent"))
    return Profile(
        name=name,
        description=f"synthetic what-if: {layers} layers x {layer_ms:g} ms, agreement {agreement:g}",
        hardware=Hardware(name="synthetic", gpus=1, source=given),
        model=ModelShape(name="synthetic", num_layers=layers, hidden=1, heads=1, kv_heads=1, ffn=1, vocab=2,
                         source=Source(kind="assumed", detail="synthetic profile: only num_layers is meaningful")),
        latency=[table],
        default_tp=1,
        default_stack="compiled",
        workloads={"synthetic": acc},
        default_workload="synthetic",
        provenance={"kind": "synthetic", "parameters": {"layers": layers, "layer_ms": layer_ms, "agreement": agreement,
                                                        "head_ms": head_ms, "overhead_ms": overhead_ms}},
    )
