"""Measured attention kernels for the GPU profiles (schema.AttentionKernel).

Roofline attention gives about 0.3 us per layer for
Llama-2-70B on A100 at batch 1; FlashAttention kernels measure 13-17 us at batch 1 in
Vidur's legacy A100 Llama-2-70B file (legacy/a100/Llama-2-70b-hf/attention.csv, TP 2 ONLY:
32 query heads, 4 KV heads per GPU). This module turns that file into an AttentionKernel:

* decode_ms(batch, kv): the file's attn_decode medians (batch 1..128, KV 32..4032) on a
  sub-grid; prefill_ms(tokens, 0): attn_prefill medians of a prompt from scratch
  (64..4096 tokens, batch 1);
* other tensor-parallel degrees (ASSUMPTION, stated in the source): the part above the
  launch floor scales with the heads per GPU, t_tp = floor + (t_2 - floor) * 2 / tp;
  floor = the smallest batch-1 decode time of the file (launch-bound, does not scale);
* GPUs without a measurement (H100): `floor_only` keeps the roofline and floors every
  kernel at the A100 floor (assumed: launch latency of the same kernels).

Builder-side only (reads the raw CSV); the profiles carry the result, nothing at run or
test time reads the CSV. Used by studies/profiles/build_profiles.py (compiled_tables with
measured_attention=True): `kernel_for(csv, tp)` for a100_llama70b at every TP (and the
Llama-3-70B calibration check, same head layout). `floor_only` is not applied to any shipped
profile: the other GPU profiles keep the roofline with the overhead calibrated under it.
"""
from __future__ import annotations

import csv
from pathlib import Path

from hispec_sim.schema import AttentionKernel, Source

LEGACY = "vidur/legacy/a100/Llama-2-70b-hf/attention.csv"
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64, 96, 128]
DECODE_KV = [32, 64, 128, 256, 512, 1024, 2048, 3072, 4032]
PREFILL_TOKENS = [64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096]
MEASURED_TP = 2


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tables(path: Path):
    rows = _rows(path)
    dec, pre = {}, {}
    for r in rows:
        if r["is_prefill"] == "False":
            dec[(int(r["batch_size"]), int(r["kv_cache_size"]))] = float(r["time_stats.attn_decode.median"])
        elif int(r["kv_cache_size"]) == 0 and int(r["batch_size"]) == 1:
            pre[int(r["prefill_chunk_size"])] = float(r["time_stats.attn_prefill.median"])
    floor = min(v for (b, _), v in dec.items() if b == 1)
    return dec, pre, floor


def kernel_for(path: str | Path, tp: int) -> AttentionKernel:
    dec, pre, floor = _tables(Path(path))
    scale = MEASURED_TP / tp

    def at(v: float) -> float:
        return round(floor + max(v - floor, 0.0) * scale, 6)

    decode = [[at(dec[(b, c)]) for c in DECODE_KV] for b in DECODE_BATCHES]
    prefill = [[at(pre[n])] for n in PREFILL_TOKENS]
    how = "as measured" if tp == MEASURED_TP else (
        f"measured at TP 2, scaled to TP {tp} (assumed): floor + (t - floor) x 2/{tp}, floor {floor} ms")
    return AttentionKernel(decode_batch=DECODE_BATCHES, decode_context=DECODE_KV, decode_ms=decode,
                           prefill_tokens=PREFILL_TOKENS, prefill_context=[0], prefill_ms=prefill, floor_ms=floor,
                           source=Source(kind="measured" if tp == MEASURED_TP else "derived",
                                         detail=f"FlashAttention attn_decode / attn_prefill medians (Kineto) of Vidur's "
                                                f"legacy A100 Llama-2-70B file, {how}",
                                         reference="github.com/microsoft/vidur data/profiling/a100/attention.csv "
                                                   "(git blob ee3dec7, commit e2d00e9, MIT)"))


def floor_only(path: str | Path) -> AttentionKernel:
    _, _, floor = _tables(Path(path))
    return AttentionKernel(floor_ms=floor, source=Source(
        kind="assumed", detail=f"roofline attention floored at {floor} ms, the smallest batch-1 FlashAttention decode "
                               f"kernel measured on A100 (Vidur legacy Llama-2-70B file); no measurement for this GPU",
        reference="github.com/microsoft/vidur data/profiling/a100/attention.csv (git blob ee3dec7, MIT)"))


if __name__ == "__main__":  # print the A100 TP 4 kernel (a check, not a build step)
    import sys

    data = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "profiles" / "sources"
    k = kernel_for(data / LEGACY, 4)
    print(k.model_dump_json(indent=1))
