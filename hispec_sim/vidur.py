"""Import a Vidur-format profiling folder into latency tables.

Layout read (the shipped measurements of github.com/microsoft/vidur, data/profiling/):
  compute/<gpu>/<hf-org>/<model>/mlp.csv   one row per (num_tokens, num_tensor_parallel_workers),
                                           time_stats.<op>.median in ms for ONE decoder layer
  network/<cluster>/all_reduce.csv         one row per (num_workers, size bytes)

One LatencyTable per tensor-parallel degree:
  layer(T, C) = sum of the measured per-layer op medians at T tokens (emb excluded: it runs
                once per forward, not per layer)
              + attention kernel, roofline: max(KV bytes / HBM bandwidth, FLOPs / peak)
              + 2 all-reduces of T x hidden x 2 bytes (0 at TP 1)
  head(T)     = final RMSNorm (the measured input_layernorm op) + LM head, roofline
                max(vocab x hidden/tp x 2 bytes / bandwidth, 2 T hidden vocab/tp / peak)
                divided by the bandwidth efficiency the measured linear ops achieve.
The attention kernel, LM head and overheads are NOT in Vidur's mlp.csv; they are modelled
and every table's Source says so.
"""
from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import schema
from .schema import Hardware, LatencyTable, ModelShape, Source, ValidationError, validation_message

VIDUR_REF = "github.com/microsoft/vidur commit 7d47513363ec447a741ac5e47241580b47724fbf, data/profiling/ (MIT)"
VIDUR_CREDIT = "per-operator latencies measured by the Vidur project, MIT"

LAYER_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
LINEAR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")

DATASHEET = "vendor datasheets (NVIDIA A100 / H100 SXM5), as listed in profiles/sources/published_inputs.md"
HARDWARE = {
    "a100": dict(name="A100-80GB-SXM", hbm_gb=80, hbm_gbps=2039, bf16_tflops=312),
    "a100_40gb": dict(name="A100-40GB", hbm_gb=40, hbm_gbps=1555, bf16_tflops=312),
    "h100": dict(name="H100-SXM5-80GB", hbm_gb=80, hbm_gbps=3350, bf16_tflops=989),
}


def hardware_for(gpu: str, gpus: int = 1) -> Hardware:
    key = gpu.lower()
    if key not in HARDWARE:
        raise ValueError(f"gpu: unknown {gpu!r}; known: {', '.join(sorted(HARDWARE))}")
    return Hardware(gpus=gpus, source=Source(kind="published", detail=DATASHEET, reference="NVIDIA A100/H100 datasheets"), **HARDWARE[key])


def default_contexts() -> list[int]:
    """0 then powers of 2 from 16 to 2^21 cached tokens of one sequence. The modelled
    attention term is proportional to the context, so linear interpolation is exact."""
    return [0] + [2**k for k in range(4, 22)]


# --------------------------------------------------------------------------- reading


@dataclass
class MlpData:
    path: Path
    shape: dict  # n_head, n_kv_head, n_embd, n_expanded_embd, vocab_size
    tokens: dict  # tp -> np.ndarray of num_tokens
    ops: dict  # tp -> {op: np.ndarray of medians (ms)}


def _f(x: str, field: str, hi: float = math.inf) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: not a number: {x!r}") from None
    if not math.isfinite(v) or not 0 <= v <= hi:
        raise ValueError(f"{field}: must be finite and in [0, {hi:g}], got {x!r}" if hi < math.inf
                         else f"{field}: must be finite and >= 0, got {x!r}")
    return v


MAX_OP_MS = 1e4  # a layer's ops and its all-reduces must sum inside the latency table's range (schema: <= 1e6 ms)
MIN_LAYER_MS = 1e-6  # the latency table's floor: ops summing below it are not a measurement


MAX_CSV_BYTES = 256 << 20  # Vidur's largest per-operator CSV is a few MB


def _i(x: str, field: str, lo: int = 0, hi: int = 1 << 40) -> int:
    """An integer cell (Vidur writes some as 8.0): finite, whole, in [lo, hi]."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: not a number: {x!r} (expected an integer in [{lo}, {hi}])") from None
    if not math.isfinite(v) or v != int(v) or not lo <= v <= hi:
        raise ValueError(f"{field}: expected an integer in [{lo}, {hi}], got {x!r}")
    return int(v)


def _rows(path: Path) -> list[dict]:
    """The rows of a bounded UTF-8 CSV file, each with as many cells as the header;
    ValueError naming the file (and the line) otherwise."""
    import io

    from .schema import read_text_bounded

    text = read_text_bounded(path, "vidur", MAX_CSV_BYTES)
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise ValueError(f"vidur: {path} is not a readable CSV ({e})") from None
    for no, r in enumerate(rows, 2):  # line 1: the header; DictReader keeps extra cells under None, missing as None
        if None in r or None in r.values():
            header = len(r) - (None in r)
            cells = header - sum(v is None for v in r.values()) + len(r.get(None) or [])
            raise ValueError(f"vidur: {path} line {no}: {cells} cells where the header names {header}")
    return rows


# Proportional extrapolation beyond the data needs its top in the regime where that holds: a
# layer's ops x1.8 from half the tokens (then proportional over-prices by at most 12.5 %;
# Vidur's files reach x1.86-2.08 at 4,096 tokens, x1.0 at 64), an all-reduce x2 from a quarter
# of the size (at most 50 %; Vidur's x2.5-3.2 at 64 MiB, x1.0 at 18 KiB).
MIN_GROWTH_TO_EXTRAPOLATE = 1.8
MIN_ALL_REDUCE_GROWTH = 2.0
DUPLICATE_SPREAD = 2.0  # repeated rows of Vidur's own data differ by at most 1.19x


def read_mlp_csv(path: str | Path, tps: list[int] | None = None) -> MlpData:
    """Per TP degree: sorted num_tokens and the median of each op (duplicate rows averaged).
    Every row's cells are checked; the rows of a TP degree as a table (a one-token row,
    duplicates that agree) only where it is in `tps` (default: all), the ones imported."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise ValueError(f"vidur: {path} has no rows")
    shape_cols = ("n_head", "n_embd", "n_expanded_embd", "vocab_size")  # n_kv_head optional: n_head
    need = [f"time_stats.{op}.median" for op in LAYER_OPS] + ["num_tokens", "num_tensor_parallel_workers", *shape_cols]
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise ValueError(f"vidur: {path} lacks columns {missing}")
    r0 = rows[0]
    shape = {k: _i(r0[k], f"vidur {path.name} {k}", 1, schema.MAX_DIM) for k in (*shape_cols, "n_kv_head") if k in r0}
    acc: dict = defaultdict(lambda: defaultdict(list))
    for no, r in enumerate(rows, 2):
        other = [k for k in shape if _i(r.get(k), f"vidur {path.name} line {no} {k}", 1, schema.MAX_DIM) != shape[k]]
        if other:
            raise ValueError(f"vidur: {path} line {no}: {other[0]} {r.get(other[0])!r} differs from the first row's "
                             f"{r0[other[0]]!r}; one file holds one model shape")
        tp = _i(r["num_tensor_parallel_workers"], f"vidur {path.name} line {no} num_tensor_parallel_workers", 1,
                schema.MAX_TP)
        t = _i(r["num_tokens"], f"vidur {path.name} line {no} num_tokens", 1, schema.MAX_CONTEXT)
        times = [_f(r[f"time_stats.{op}.median"], f"vidur {path.name} line {no} {op}", MAX_OP_MS) for op in LAYER_OPS]
        if sum(times) < MIN_LAYER_MS:
            raise ValueError(f"vidur {path.name} line {no}: the layer's ops sum to {sum(times):g} ms; allowed: >= "
                             f"{MIN_LAYER_MS:g} ms (Vidur's medians are in ms)")
        acc[tp][t].append(times)
    tokens, ops = {}, {}
    for tp, by_t in acc.items():
        ts = sorted(by_t)
        imported = tps is None or tp in tps
        if imported and ts[0] > 1:  # below its first row a table holds that row: a decode step would cost ts[0] tokens
            raise ValueError(f"vidur: {path}: the rows of tp {tp} start at num_tokens {ts[0]}; a decode step runs one "
                             f"token per sequence, which this file does not measure (it would be priced as {ts[0]} "
                             "tokens): it needs a num_tokens 1 row")
        for t in ts if imported else []:  # repeated measurements are averaged; ones that disagree this much are not
            x = np.asarray(by_t[t])  # measurements of one thing
            lo, hi = x.min(0), x.max(0)
            bad = np.flatnonzero(hi > DUPLICATE_SPREAD * np.maximum(lo, 1e-12))
            if len(bad):
                op = LAYER_OPS[bad[0]]
                raise ValueError(f"vidur: {path}: the rows of tp {tp}, num_tokens {t} disagree on {op}: {lo[bad[0]]:g} "
                                 f"vs {hi[bad[0]]:g} ms (more than {DUPLICATE_SPREAD:g}x); remove the wrong one")
        vals = np.array([np.mean(by_t[t], axis=0) for t in ts])  # (T, ops)
        tokens[tp] = np.array(ts, dtype=int)
        ops[tp] = {op: vals[:, i] for i, op in enumerate(LAYER_OPS)}
    return MlpData(path=path, shape=shape, tokens=tokens, ops=ops)


def read_all_reduce(path: str | Path, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """(sizes in bytes, median ms) for `workers` GPUs, preferring rows measured inside one node
    (devices_per_node == num_workers); duplicate sizes are reduced to their median."""
    path = Path(path)
    rows = _rows(path)
    missing = [c for c in ("num_workers", "size", "time_stats.all_reduce.median") if rows and c not in rows[0]]
    if missing:
        raise ValueError(f"vidur: {path} lacks columns {missing}")
    rows = [r for r in rows if _i(r["num_workers"], f"vidur {path.name} num_workers", 1, schema.MAX_TP) == workers]
    intra = [r for r in rows if r.get("devices_per_node") is not None
             and _i(r["devices_per_node"], f"vidur {path.name} devices_per_node", 1, schema.MAX_TP) == workers]
    rows = intra or rows
    if not rows:
        raise ValueError(f"vidur: {path} has no all-reduce rows for {workers} workers")
    by: dict = defaultdict(list)
    for r in rows:  # an all-reduce moves at least a byte (sizes are read in log scale)
        by[_i(r["size"], f"vidur {path.name} size", 1, 1 << 50)].append(_f(r["time_stats.all_reduce.median"], f"vidur {path.name} all_reduce",
                                                                             MAX_OP_MS))
    sizes = np.array(sorted(by), dtype=float)
    return sizes, np.array([np.median(by[int(s)]) for s in sizes])


def all_reduce_ms(sizes: np.ndarray, times: np.ndarray, query) -> np.ndarray:
    """Smoothed all-reduce time: the median of the measured medians whose size lies within a
    factor sqrt(2) of the query (at least the 5 nearest in log-size), made non-decreasing in
    size. Small all-reduces in the data are noisy (tens of us of jitter); a raw point-wise
    interpolation would make neighbouring token counts differ by 2x."""
    q = np.atleast_1d(np.asarray(query, dtype=float))
    ls = np.log(sizes)
    out = np.empty(q.shape)
    for i, x in enumerate(q):
        lx = math.log(max(x, 1.0))
        d = np.abs(ls - lx)
        sel = d <= 0.5 * math.log(2.0)
        if sel.sum() < 5:
            sel = np.zeros_like(sel)
            sel[np.argsort(d)[:5]] = True
        v = float(np.median(times[sel]))
        if x > sizes[-1]:  # beyond the data: scale with bytes from the largest measurements
            v = v * x / sizes[-1]
        out[i] = v
    # enforce monotone in size, in the order of the queries' sizes
    order = np.argsort(q)
    out[order] = np.maximum.accumulate(out[order])
    return out


def find_model_folder(folder: str | Path, model: str | None = None, gpu: str | None = None) -> tuple[Path, str, str]:
    """Return (mlp.csv path, gpu name, model folder name). `folder` is a Vidur profiling
    root (with compute/), a compute/<gpu> folder, or a folder holding mlp.csv."""
    folder = Path(folder)
    gpu = gpu.lower() if gpu else None  # Vidur's folders and HARDWARE's keys: a100, h100
    if not folder.exists():
        raise ValueError(f"folder: no such folder {str(folder)!r}")
    if (folder / "mlp.csv").exists():  # one model's folder: --model names it (else the folder's name does)
        named = _gpu_in_path(folder)
        if gpu and named and gpu.split("_")[0] != named:  # its kernels were timed on the GPU its path names (a100_40gb: an A100)
            raise ValueError(f"gpu: --gpu {gpu} but the folder is {named}'s ({folder}); allowed: {named}, or "
                             "the folder of that GPU's data")
        return folder / "mlp.csv", gpu or _guess_gpu(folder), model or folder.name
    root = folder / "compute" if (folder / "compute").is_dir() else folder
    if folder.resolve().parent.name == "compute" and root == folder:  # compute/<gpu>: that GPU's models
        if gpu and gpu != folder.name.lower():
            raise ValueError(f"gpu: --gpu {gpu} but the folder is compute/{folder.name}")
        gpu, root = folder.name.lower(), folder.resolve().parent
    found = sorted(root.rglob("mlp.csv"))
    if not found:
        raise ValueError(f"folder: no mlp.csv under {str(folder)!r}")
    cands = []
    for p in found:
        rel = p.relative_to(root).parts  # <gpu>/<org>/<model>/mlp.csv or shorter
        g = rel[0] if len(rel) >= 3 else (gpu or _guess_gpu(p))
        cands.append((p, g, p.parent.name))
    if gpu:
        cands = [c for c in cands if c[1].lower() == gpu]
        if not cands:
            have = sorted({c[1] for c in _all(found, root, gpu)})
            raise ValueError(f"gpu: no data for {gpu!r}; present: {', '.join(have)}")
    if model:
        exact = [c for c in cands if c[2].lower() == model.lower()]
        sub = [c for c in cands if model.lower() in c[2].lower()]
        if not exact + sub:  # present: for the GPU asked for, where one is
            raise ValueError(f"model: no data for {model!r}" + (f" on {gpu}" if gpu else "")
                             + f"; present: {', '.join(sorted({c[2] for c in cands}))}")
        cands = exact or sub
    if len(cands) > 1:
        opts = ", ".join(f"{g}/{m}" for _, g, m in cands)
        raise ValueError(f"model: several models match, choose one with --model/--gpu: {opts}")
    return cands[0]


def _all(found, root, gpu):
    for p in found:
        rel = p.relative_to(root).parts
        yield (p, rel[0] if len(rel) >= 3 else "?", p.parent.name)


def _gpu_in_path(p: Path) -> str | None:
    return next((part.lower() for part in reversed(p.resolve().parts) if part.lower() in HARDWARE), None)


def _guess_gpu(p: Path) -> str:
    g = _gpu_in_path(p)
    if g is None:
        raise ValueError("gpu: cannot tell the GPU from the folder; pass --gpu")
    return g


def find_network(folder: str | Path, gpu: str, cluster: str | None = None) -> Path | None:
    folder = Path(folder)
    roots = [folder / "network", folder.parent / "network"]
    for up in Path(folder).resolve().parents:
        roots.append(up / "network")
    for root in roots:
        if not root.is_dir():
            continue
        names = [cluster] if cluster else [f"{gpu}_dgx", f"{gpu}_pairwise_nvlink"]
        for n in names:
            if (root / n / "all_reduce.csv").exists():
                return root / n / "all_reduce.csv"
        if cluster:
            raise ValueError(f"cluster: no network/{cluster}/all_reduce.csv under {root}")
    return None


# --------------------------------------------------------------------------- modelling


def model_shape_from(data: MlpData, name: str, num_layers: int | None, max_context: int | None = None) -> ModelShape:
    s = data.shape
    if num_layers is None:
        raise ValueError("layers: the number of decoder layers is not in mlp.csv; pass it (--layers)")
    columns = {"hidden": "n_embd", "heads": "n_head", "kv_heads": "n_kv_head", "ffn": "n_expanded_embd",
               "vocab": "vocab_size"}
    shape = {f: s[c] for f, c in columns.items() if c in s}
    shape.setdefault("kv_heads", s["n_head"])  # n_kv_head optional: no grouped-query attention
    try:
        return ModelShape(
            name=name, num_layers=num_layers, max_context=max_context, **shape,
            source=Source(kind="measured", detail=f"model shape columns of {VIDUR_CREDIT} ({name}/mlp.csv); layer "
                          "count" + (" and context" if max_context else "") + " from the HF config",
                          reference=VIDUR_REF))
    except ValidationError as e:  # the shape is mlp.csv's: name its columns, not the profile's fields
        msg = validation_message(e)
        for f, c in columns.items():  # whole words: kv_heads is not heads
            msg = re.sub(rf"\b{f}\b", c, msg)
        raise ValueError(f"vidur {name}/mlp.csv: {msg}") from None


def layer_weight_bytes(shape: ModelShape, tp: int) -> float:
    """Bytes of one decoder layer's linear weights per GPU (bf16)."""
    h, f = shape.hidden, shape.ffn
    hd = h // shape.heads
    qkv = h * (shape.heads + 2 * shape.kv_heads) * hd
    o = shape.heads * hd * h
    mlp = 3 * h * f
    return 2.0 * (qkv + o + mlp) / tp


def attention_ms(shape: ModelShape, hw: Hardware, tp: int, tokens: np.ndarray, contexts: np.ndarray, efficiency: float = 1.0) -> np.ndarray:
    """Attention kernel of one layer, roofline, (T, C) grid. KV bytes = C x 2 (K,V) x
    kv_heads/tp x head_dim x 2 bytes; FLOPs = 4 x T x C x heads/tp x head_dim, as if all T
    tokens belonged to one sequence reading all C cached tokens (exact at batch 1, an upper
    bound at batch > 1); time = max(bytes / bandwidth, FLOPs / peak) / efficiency."""
    hd = shape.hidden // shape.heads
    kvh = max(shape.kv_heads / tp, 1.0)
    qh = shape.heads / tp
    T = np.asarray(tokens, float)[:, None]
    C = np.asarray(contexts, float)[None, :]
    byt = C * 2 * kvh * hd * 2
    flops = 4.0 * T * C * qh * hd
    return np.maximum(byt / (hw.hbm_gbps * 1e9), flops / (hw.bf16_tflops * 1e12)) * 1e3 / efficiency


def head_roofline_ms(shape: ModelShape, hw: Hardware, tp: int, tokens: np.ndarray, efficiency: float = 1.0) -> np.ndarray:
    T = np.asarray(tokens, float)
    byt = shape.vocab * shape.hidden / tp * 2.0
    flops = 2.0 * T * shape.hidden * shape.vocab / tp
    return np.maximum(byt / (hw.hbm_gbps * 1e9), flops / (hw.bf16_tflops * 1e12)) * 1e3 / efficiency


def linear_efficiency(data: MlpData, shape: ModelShape, hw: Hardware, tp: int) -> float:
    """Fraction of the datasheet bandwidth the measured linear ops reach at 1 token."""
    ops = data.ops[tp]
    i = int(np.argmin(data.tokens[tp]))
    measured_ms = sum(float(ops[o][i]) for o in LINEAR_OPS)
    ideal_ms = layer_weight_bytes(shape, tp) / (hw.hbm_gbps * 1e9) * 1e3
    return float(min(1.0, ideal_ms / measured_ms)) if measured_ms > 0 else 1.0


def table_from_mlp(
    data: MlpData,
    shape: ModelShape,
    hw: Hardware,
    tp: int,
    network: Path | None,
    contexts: list[int] | None = None,
    stack: str = "compiled",
    overhead_ms: float = 0.0,
    label: str = "",
    fuse_elementwise: bool = False,
    layer_overhead_ms: float = 0.0,
    source_kind: str = "derived",
    extra_detail: str = "",
) -> LatencyTable:
    if tp not in data.tokens:
        raise ValueError(f"tp: no measurements for tp={tp}; present: {sorted(data.tokens)}")
    contexts = contexts or default_contexts()
    tokens = data.tokens[tp]
    ops = data.ops[tp]
    used_ops = LINEAR_OPS if fuse_elementwise else LAYER_OPS
    kernel = sum(ops[o] for o in used_ops)  # (T,)
    # Beyond its last row a table prices a prefill in proportion (latency.linear_layer_ms: compute-
    # bound GEMMs); rows that stop while the time still barely grows with the tokens would price
    # long prompts many times over (rows up to 64 tokens: a 2,048-token prefill x3).
    growth = float(kernel[-1] / np.interp(tokens[-1] / 2, tokens, kernel))
    if len(tokens) == 1:
        raise ValueError(f"vidur: {data.path}: the rows of tp {tp} hold num_tokens {tokens[0]} only; every prompt "
                         f"would be priced in proportion to it: the file needs rows up to where the time grows "
                         f"x{MIN_GROWTH_TO_EXTRAPOLATE:g} or more from half the tokens (Vidur's go to 4,096)")
    if growth < MIN_GROWTH_TO_EXTRAPOLATE:
        raise ValueError(f"vidur: {data.path}: the rows of tp {tp} stop at num_tokens {tokens[-1]}, where the layer's "
                         f"ops take x{growth:.2f} the time of half as many tokens (not yet compute-bound); longer "
                         f"prompts are priced in proportion to the last row: the file needs rows up to where the time "
                         f"grows x{MIN_GROWTH_TO_EXTRAPOLATE:g} or more from half the tokens (Vidur's go to 4,096)")
    attn = attention_ms(shape, hw, tp, tokens, np.asarray(contexts))
    ar = np.zeros(len(tokens))
    net_note = "no all-reduce (TP 1)"
    if tp > 1:
        if network is None:
            raise ValueError(f"network: tp={tp} needs network/<cluster>/all_reduce.csv beside compute/")
        sizes, times = read_all_reduce(network, tp)
        smallest = tokens[0] * shape.hidden * 2.0  # a decode step's all-reduce, which the data must reach
        if sizes[0] > 2.0 * smallest:
            raise ValueError(f"vidur: {network}: the all-reduces of {tp} GPUs start at {sizes[0]:,.0f} bytes; a "
                             f"{tokens[0]}-token step all-reduces {smallest:,.0f} bytes ({tokens[0]} x {shape.hidden} x 2), "
                             "which would be priced as the smallest measured: the file needs sizes down to there")
        largest = tokens[-1] * shape.hidden * 2.0
        if largest > sizes[-1]:  # priced in proportion beyond the data: it must reach the bandwidth-bound sizes
            growth = float(np.divide(*all_reduce_ms(sizes, times, [sizes[-1], sizes[-1] / 4])))
            if growth < MIN_ALL_REDUCE_GROWTH:
                raise ValueError(f"vidur: {network}: the all-reduces of {tp} GPUs stop at {sizes[-1]:,.0f} bytes, "
                                 f"x{growth:.2f} the time of a quarter of that (latency-bound); a {tokens[-1]}-token step "
                                 f"all-reduces {largest:,.0f} bytes, which would be priced in proportion to the largest "
                                 f"measured: the file needs sizes up to there or to where the time grows "
                                 f"x{MIN_ALL_REDUCE_GROWTH:g} or more from a quarter of the size")
        ar = 2.0 * all_reduce_ms(sizes, times, tokens * shape.hidden * 2.0)
        net_note = f"2 all-reduces of tokens x {shape.hidden} x 2 bytes from {network.parent.name}/all_reduce.csv ({tp} GPUs in one node), smoothed"
    layer = kernel[:, None] + attn + ar[:, None]
    if not layer.max() <= schema.MAX_MS:  # say which file's figures made it, not just the table's field
        files = f"{data.path.name} + {network.name}" if tp > 1 else data.path.name
        raise ValueError(f"vidur: tp={tp}: a decoder layer priced at {layer.max():,.0f} ms from {files} (its "
                         f"all-reduces up to {ar.max():,.0f} ms of it); allowed: <= {schema.MAX_MS:g} ms")
    eff = linear_efficiency(data, shape, hw, tp)
    head = ops["input_layernorm"] + head_roofline_ms(shape, hw, tp, tokens, efficiency=eff)
    detail = (
        f"{label or shape.name} on {hw.name}, TP {tp}: decoder layer = sum of the median per-layer ops "
        f"({', '.join(used_ops)}; {VIDUR_CREDIT})"
        + (" (norm/rope/act/add left out: a compiled stack fuses these elementwise ops; their cost is in the calibrated overhead)" if fuse_elementwise else "")
        + f" + attention kernel modelled by roofline "
        f"max(KV bytes / {hw.hbm_gbps:g} GB/s, 4*T*C*heads/tp*head_dim FLOPs / {hw.bf16_tflops:g} TFLOP/s; KV bytes = "
        f"C x 2 x kv_heads/tp x head_dim x 2; one sequence's attention; the cost model scales it by the batch) + {net_note}. "
        f"Exit head = final RMSNorm (measured input_layernorm op) + LM head roofline "
        f"(vocab x hidden/tp x 2 bytes vs 2*T*hidden*vocab/tp FLOPs) at the bandwidth efficiency "
        f"{eff:.3f} the measured linear ops reach at 1 token. emb is excluded (once per forward, negligible)."
    ) + (" " + extra_detail if extra_detail else "")
    return LatencyTable(
        tp=tp,
        stack=stack,
        tokens=[int(t) for t in tokens],
        contexts=[int(c) for c in contexts],
        layer_ms=[[round(float(v), 6) for v in row] for row in layer],
        head_ms=[round(float(v), 6) for v in head],
        overhead_ms=overhead_ms,
        layer_overhead_ms=layer_overhead_ms,
        source=Source(kind=source_kind, detail=detail, reference=VIDUR_REF),
        notes={
            "kernel_ms_1tok": f"{float(kernel[0]):.4f}",
        "elementwise_ops": "fused (left out)" if fuse_elementwise else "measured (summed)",
            "all_reduce_ms_1tok": f"{float(ar[0]):.4f}",
            "linear_bandwidth_efficiency": f"{eff:.4f}",
            "mlp_csv": str(data.path.relative_to(data.path.parents[3])) if len(data.path.parents) > 3 else data.path.name,
        },
    )


KNOWN_MODELS = {  # decoder layers and context (max_position_embeddings) from their Hugging Face configs
    "llama-2-7b": (32, 4096), "llama-2-13b": (40, 4096), "llama-2-70b": (80, 4096), "meta-llama-3-8b": (32, 8192),
    "meta-llama-3-70b": (80, 8192), "codellama-34b": (48, 16384), "codellama-7b": (32, 16384),
    "codellama-13b": (40, 16384),
}


def known_model(model_folder: str) -> tuple[int, int] | None:
    """(layers, context) of a model Vidur's folders name: the name, or it with -hf,
    -chat-hf, -instruct-hf, -python-hf (not a fine-tune of another context, -32k-instruct)."""
    m = re.sub(r"(-(chat|instruct|python))?(-hf)?$", "", model_folder.lower())
    return KNOWN_MODELS.get(m)


def import_vidur(
    folder: str | Path,
    model: str | None = None,
    gpu: str | None = None,
    hardware: Hardware | None = None,
    tps: list[int] | None = None,
    num_layers: int | None = None,
    cluster: str | None = None,
    contexts: list[int] | None = None,
    overhead_ms: float = 0.0,
    stack: str = "compiled",
    fuse_elementwise: bool = False,
) -> list[LatencyTable]:
    """One LatencyTable per TP degree (all present in mlp.csv unless `tps`)."""
    tables, *_ = import_vidur_full(folder, model, gpu, hardware, tps, num_layers, cluster, contexts, overhead_ms,
                                   stack, fuse_elementwise)
    return tables


def import_vidur_full(folder, model=None, gpu=None, hardware=None, tps=None, num_layers=None, cluster=None,
                      contexts=None, overhead_ms=0.0, stack="compiled", fuse_elementwise=False):
    """As import_vidur, also returning the ModelShape, the Hardware and the files read."""
    mlp, g, mname = find_model_folder(folder, model, gpu)
    data = read_mlp_csv(mlp, tps)
    hw = hardware or hardware_for(g)
    layers, context = known_model(mname) or (None, None)
    if num_layers is not None and layers is not None and num_layers != layers:
        raise ValueError(f"layers: {mname} has {layers} decoder layers (its Hugging Face config), got {num_layers}; "
                         "allowed: leave --layers out, or the model's own")
    shape = model_shape_from(data, mname, num_layers or layers, context)
    tps = sorted(data.tokens) if not tps else tps
    for tp in tps:
        if tp not in data.tokens:
            raise ValueError(f"tp: no measurements for tp={tp}; present: {sorted(data.tokens)}")
    if cluster is not None and not any(t > 1 for t in tps):
        raise ValueError(f"cluster: applies to tp > 1 (its all-reduces); the tps imported are {tps}")
    net = find_network(Path(folder), g, cluster) if any(t > 1 for t in tps) else None
    tables = [table_from_mlp(data, shape, hw, tp, net, contexts, stack, overhead_ms, fuse_elementwise=fuse_elementwise)
              for tp in tps]
    return tables, shape, hw, [p for p in (mlp, net) if p is not None]
