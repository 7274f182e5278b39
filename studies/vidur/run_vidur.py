"""Vidur and `hispec-sim serve` side by side: Llama-2-70B, A100, TP 4, autoregressive.

One command (a benchmark, never a test; Vidur lives in its own virtual environment):

    PYTHONPATH=$PWD python studies/vidur/run_vidur.py --venv /path/to/vidur-venv

For each load (requests/s on one TP-4 replica) ONE seeded request set is drawn with
hispec_sim.traffic.generate (Poisson arrivals, lognormal prompt/output lengths) and written
twice: a JSONL trace for `hispec-sim serve --trace` and the CSV Vidur's trace_replay
generator reads (Date, Time, PromptTokenCount, CompletionTokenCount). Both simulators get
the same arrivals and lengths, max batch 64 and a KV capacity that never binds.

Runs (each metric is computed from per-token emission times the same way, by
hispec_sim.traffic.summarize):
* vidur          Vidur 0.0.26 as shipped: vLLM scheduler, random-forest predictors trained
                 on the per-operator files (mlp.csv, the converted attention.csv,
                 all_reduce.csv), its NCCL launch overhead and GQA decode overhead;
* vidur_fused    Vidur with the elementwise ops (act, rope, norms, add) zeroed in its mlp.csv
                 and its two overhead knobs at 0: what our compiled-stack table leaves out;
* vidur_fused_exact  vidur_fused reading its linear-op and all-reduce predictions at the
                 batch's token count instead of Vidur's round-up to a multiple of 8;
* hispec         `hispec-sim serve --profile a100_llama70b --levels 80` as shipped;
* hispec_attn    the same with the measured attention kernel (the same converted FlashAttention
                 file Vidur reads; studies/profiles/attention_kernel.kernel_for at TP 4);
* hispec_attn_nocpu  hispec_attn with the per-forward overhead and the LM head set to 0
                 (Vidur models neither).
The differences between neighbouring rows isolate one cause each (RESULTS.md).

Attention input: Vidur needs attention.csv at TP 4 in its column layout; the Vidur repository's
current attention files are not retrievable here, so the vendored LEGACY file (FlashAttention,
TP 2 only) is converted: rows relabelled num_tensor_parallel_workers=4 and every median t
mapped to floor + (t - floor) x 2/4 (floor = the smallest batch-1 decode median), the same
stated assumption studies/profiles/attention_kernel.py makes for the shipped profiles.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hispec_sim.schema import LengthDist, RequestMetrics, ServeLimits, Traffic
from hispec_sim.traffic import generate, summarize

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "profiles" / "sources" / "vidur"
MLP = SOURCES / "compute/a100/meta-llama/Llama-2-70b-hf/mlp.csv"
ALL_REDUCE = SOURCES / "network/a100_dgx/all_reduce.csv"
LEGACY_ATTN = SOURCES / "legacy/a100/Llama-2-70b-hf/attention.csv"
PROFILE = ROOT / "profiles" / "a100_llama70b.json"
TP, MAX_BATCH, MEASURED_TP = 4, 64, 2
PROMPT = "lognormal:256:0.8:max=1024"
OUTPUT = "lognormal:128:0.8:max=512"
MAX_TOKENS = 2048  # Vidur's per-request token cap (prompt + output <= 1536 here)
KV_BLOCKS = 1 << 16  # 1M tokens of 16-token blocks: never binds (nor does ours: unbounded)
ELEMENTWISE = ["mlp_act", "attn_rope", "input_layernorm", "post_attention_layernorm", "add"]


def lengths(spec: str) -> LengthDist:
    fam, med, sig, mx = spec.replace("max=", "").split(":")
    return LengthDist(family=fam, median=float(med), sigma=float(sig), max=int(mx))


# --------------------------------------------------------------------------- Vidur's inputs

def convert_attention(src: Path, dst: Path) -> float:
    """The legacy TP-2 FlashAttention file as Vidur 0.0.26 reads it at TP 4 (see the module
    docstring); returns the floor used."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    floor = min(float(r["time_stats.attn_decode.median"]) for r in rows
                if r["is_prefill"] == "False" and int(r["batch_size"]) == 1)
    scale = MEASURED_TP / TP
    out = []
    for r in rows:
        r = dict(r)
        r["num_tensor_parallel_workers"] = str(TP)
        for col in r:
            if col.startswith("time_stats.attn_decode.") or col.startswith("time_stats.attn_prefill."):
                if r[col] != "" and not col.endswith(".std"):
                    t = float(r[col])
                    r[col] = repr(floor + max(t - floor, 0.0) * scale)
        out.append(r)
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(out)
    return floor


def zero_elementwise(src: Path, dst: Path) -> None:
    """mlp.csv with the elementwise ops' times at 0 (what a compiled stack fuses away)."""
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for op in ELEMENTWISE:
            for stat in ("min", "max", "mean", "median", "std"):
                r[f"time_stats.{op}.{stat}"] = "0.0"
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_traces(work: Path, loads: list[float], n: int, seed: int) -> dict[float, tuple[Path, Path]]:
    out = {}
    for qps in loads:
        reqs = generate(Traffic(qps=qps, requests=n, prompt_len=lengths(PROMPT), output_len=lengths(OUTPUT), seed=seed))
        jl, cs = work / f"trace_{qps:g}.jsonl", work / f"trace_{qps:g}.csv"
        jl.write_text("".join(json.dumps(r.model_dump(exclude_none=True)) + "\n" for r in reqs))
        with open(cs, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["Date", "Time", "PromptTokenCount", "CompletionTokenCount"])
            for r in reqs:
                w.writerow(["trace", repr(r.arrival_s), r.prompt_tokens, r.max_new_tokens])
        out[qps] = (jl, cs)
    return out


def run_vidur(venv: Path, work: Path, name: str, traces, fused: bool, args) -> dict[float, dict]:
    prof = work / f"profiling_{name}"
    prof.mkdir(exist_ok=True)
    convert_attention(LEGACY_ATTN, prof / "attention.csv")
    shutil.copyfile(ALL_REDUCE, prof / "all_reduce.csv")
    if fused:
        zero_elementwise(MLP, prof / "mlp.csv")
    else:
        shutil.copyfile(MLP, prof / "mlp.csv")
    runs = [{"trace_csv": str(cs), "result_json": str(work / f"{name}{suffix}_{qps:g}.json"),
             "out_dir": str(work / f"vidur_out_{name}"), "exact_tokens": exact}
            for exact, suffix in ([(False, ""), (True, "_exact")] if fused else [(False, "")])
            for qps, (_, cs) in traces.items()]
    cfg = {"profiling_dir": str(prof), "cache_dir": str(work / "vidur_cache"), "seed": args.seed, "tp": TP,
           "max_batch": MAX_BATCH, "max_tokens_in_batch": args.max_tokens_in_batch, "max_tokens_per_request": MAX_TOKENS,
           "kv_blocks": KV_BLOCKS, "kv_granularity": 16, "scheduler": "vllm", "chunk_size": 512,
           "predictor": "random_forest", "rf_estimators": args.rf_estimators, "rf_max_depth": args.rf_max_depth,
           "threads": args.threads, "k_fold": args.k_fold,
           "attention_decode_batching_overhead_fraction": 0.0 if fused else 0.1,
           "nccl_cpu_launch_overhead_ms": 0.0 if fused else 0.02, "runs": runs}
    cfg_path = work / f"{name}_config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    proc = subprocess.run([str(venv / "bin" / "python"), str(Path(__file__).with_name("vidur_driver.py")), str(cfg_path)],
                          env=env, cwd=work, stdout=subprocess.PIPE, stderr=open(work / f"{name}.log", "w"), text=True)
    if proc.returncode != 0:
        sys.exit(f"vidur ({name}) failed; see {work / (name + '.log')}")
    out = {}
    for run in runs:
        qps = float(Path(run["trace_csv"]).stem.split("_")[1])
        res = json.loads(Path(run["result_json"]).read_text())
        metrics = []
        for i, r in enumerate(res["requests"]):
            t = np.asarray(r["token_times_s"]) * 1e3
            a = r["arrival_s"] * 1e3
            metrics.append(RequestMetrics(id=i, arrival_s=r["arrival_s"], prompt_tokens=1, output_tokens=len(t), ttft_ms=t[0] - a,
                                          e2e_ms=t[-1] - a, queue_ms=0.0, tbt_ms=np.diff(t).tolist()))
        s = summarize(metrics, ServeLimits(max_batch=MAX_BATCH))
        s.update(restarts=res["restarts"], train_s=res["train_s"], simulate_s=res["simulate_s"])
        out[(qps, run["exact_tokens"])] = s
    return out


# --------------------------------------------------------------------------- ours

def profile_variant(work: Path, name: str, attention: bool, no_cpu: bool) -> Path:
    prof = json.loads(PROFILE.read_text())
    spec = importlib.util.spec_from_file_location("attention_kernel", ROOT / "studies/profiles/attention_kernel.py")
    ak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ak)
    for t in prof["latency"]:
        if t["tp"] != TP:
            continue
        if attention:
            t["attention"] = ak.kernel_for(LEGACY_ATTN, TP).model_dump(mode="json")
        if no_cpu:
            t["overhead_ms"] = 0.0
            t["head_ms"] = [0.0] * len(t["head_ms"])
    prof["name"] = f"a100_llama70b_{name}"
    path = work / f"profile_{name}.json"
    path.write_text(json.dumps(prof))
    return path


def run_hispec(profile: str, traces) -> dict[float, dict]:
    out = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for qps, (jl, _) in traces.items():
        cmd = [sys.executable, "-c", "import sys; from hispec_sim.cli import main; sys.exit(main())", "serve", "--profile", profile, "--tp", str(TP), "--levels", "80",
               "--trace", str(jl), "--max-batch", str(MAX_BATCH), "--seeds", "1", "--json"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"hispec-sim serve failed: {proc.stderr[-2000:]}")
        out[qps] = json.loads(proc.stdout)
    return out


def pick(s: dict) -> dict:
    """TTFT/TBT p50/p99 (ms) and throughput (tokens/s) from a summarize() dict or serve --json."""
    if "per_seed" in s:  # serve --json: one seed, its summary
        s = s["per_seed"][0]
    return {"ttft_p50": s["ttft_ms"]["p50"], "ttft_p99": s["ttft_ms"]["p99"], "tbt_p50": s["tbt_ms"]["p50"],
            "tbt_p99": s["tbt_ms"]["p99"], "tok_s": s["throughput_tokens_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", default=os.environ.get("HISPEC_VIDUR_VENV", "/work/wt/vidur-venv"),
                    help="virtual environment holding vidur==0.0.26")
    ap.add_argument("--loads", default="1,4,8", help="requests/s, comma-separated")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-tokens-in-batch", type=int, default=8192)
    ap.add_argument("--rf-estimators", type=int, default=16)
    ap.add_argument("--rf-max-depth", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k-fold", type=int, default=2, help="Vidur's cross-validation splits (its default 10 is slow)")
    ap.add_argument("--work", default=str(ROOT / "out" / "vidur"))
    ap.add_argument("--json", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    venv = Path(args.venv)
    if not (venv / "bin" / "python").exists():
        ap.error(f"--venv: no Python at {venv}/bin/python; allowed: a virtual environment holding vidur==0.0.26 "
                 "(recipe in studies/vidur/README.md)")
    try:
        loads = [float(x) for x in args.loads.split(",")]
    except ValueError:
        ap.error(f"--loads: {args.loads!r} is not a comma-separated list of numbers; allowed: each in (0, 100]")
    if not all(0 < q <= 100 for q in loads) or len(set(loads)) != len(loads):
        ap.error("--loads: allowed: distinct request rates in (0, 100]")
    if not 1 <= args.requests <= 100_000:
        ap.error("--requests: allowed: 1..100000")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    traces = write_traces(work, loads, args.requests, args.seed)
    vidur = run_vidur(venv, work, "vidur", traces, False, args)
    fused = run_vidur(venv, work, "vidur_fused", traces, True, args)
    rows = {
        "vidur": {q: vidur[(q, False)] for q in loads},
        "vidur_fused": {q: fused[(q, False)] for q in loads},
        "vidur_fused_exact": {q: fused[(q, True)] for q in loads},
        "hispec": run_hispec("a100_llama70b", traces),
        "hispec_attn": run_hispec(str(profile_variant(work, "attn", True, False)), traces),
        "hispec_attn_nocpu": run_hispec(str(profile_variant(work, "attn_nocpu", True, True)), traces),
    }
    import hashlib
    vidur_version = subprocess.run([str(venv / "bin" / "python"), "-c", "import vidur, importlib.metadata as m; print(m.version('vidur'))"],
                                   capture_output=True, text=True).stdout.strip()
    table = {name: {f"{q:g}": pick(r[q]) for q in loads} for name, r in rows.items()}
    extra = {f"{q:g}": {"vidur_restarts": rows["vidur"][q]["restarts"], "vidur_train_s": rows["vidur"][q]["train_s"],
                        "vidur_simulate_s": rows["vidur"][q]["simulate_s"]} for q in loads}
    result = {"setup": {"model": "Llama-2-70B", "gpu": "A100-80GB", "tp": TP, "max_batch": MAX_BATCH, "prompt_len": PROMPT,
                        "output_len": OUTPUT, "requests": args.requests, "seed": args.seed, "loads_qps": loads,
                        "vidur_version": vidur_version, "vidur_scheduler": "vllm",
                        "vidur_max_tokens_in_batch": args.max_tokens_in_batch,
                        "vidur_predictor": f"random_forest n_estimators={args.rf_estimators} max_depth={args.rf_max_depth} k_fold={args.k_fold}",
                        "profile_sha256": hashlib.sha256(PROFILE.read_bytes()).hexdigest()},
              "table": table, "vidur_runs": extra, "wall_s": time.perf_counter() - t0}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'run':<18} {'qps':>4} {'TTFT p50':>9} {'TTFT p99':>9} {'TBT p50':>8} {'TBT p99':>8} {'tok/s':>7}")
    for name, per in table.items():
        for q, m in per.items():
            print(f"{name:<18} {q:>4} {m['ttft_p50']:9.1f} {m['ttft_p99']:9.1f} {m['tbt_p50']:8.2f} {m['tbt_p99']:8.2f} {m['tok_s']:7.0f}")
    print(f"wall {result['wall_s']:.0f} s; written {args.json}")


if __name__ == "__main__":
    main()
