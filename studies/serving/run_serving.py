"""Serving validation: `hispec-sim serve` against `hispec-exec serve` on the same requests.

For every scenario (autoregressive, the best single-level and a 3-level plan; two loads
each; Poisson arrivals; max batch up to 16) the seeded request set is written ONCE as a
JSONL trace (arrival_s, prompt_tokens as a length, max_new_tokens) and replayed by both:
the executor draws held-out prompts of those lengths and serves them for real (one CPU
thread, as the profile was measured); the simulator serves the same trace from the
profile (acceptance drawn per request, --sim-seeds runs, mean). The error of every
metric is (simulated - measured) / measured; targets (issue 12): throughput and TBT p50
median |error| <= 10 %, TBT p99 and TTFT p50/p99 <= 20 %.

The profile must be measured on the machine that runs the executor (`hispec-sim profile
measure`); its latency grid covers 1..64 new tokens, so prefills of longer prompts are
extrapolated (latency.py) — keep prompts short or re-measure with a wider grid.

    python studies/serving/run_serving.py [--profile profiles/cpu_hispec_tiny.json] [--requests 48]
        [--loads 2,6] [--max-batch 8] [--batching ragged] [--threads 1] [--quick]

Writes RESULTS.md, results.json and plot.svg next to this script (whole files or none).
"""
from __future__ import annotations

import argparse
import html
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hispec_sim.schema import LengthDist, Traffic, load_profile, write_atomic
from hispec_sim.traffic import generate

HERE = Path(__file__).resolve().parent
METRICS = (("throughput_tokens_per_s", None, 0.10), ("tbt_ms", "p50", 0.10), ("tbt_ms", "p99", 0.20),
           ("ttft_ms", "p50", 0.20), ("ttft_ms", "p99", 0.20))
PLANS = {"autoregressive": ["--levels", "16"],
         "single_level": ["--levels", "2,16", "--propose", "4"],
         "3_level": ["--levels", "2,4,16", "--propose", "2", "--window", "4"]}


def _run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
    return json.loads(out.stdout)


def _get(summary: dict, key: str, sub: str | None) -> float:
    return float(summary[key] if sub is None else summary[key][sub])


def scenario(profile: str, family: str, qps: float, args, workdir: Path) -> dict:
    tr = Traffic(qps=qps, requests=args.requests, prompt_len=LengthDist.parse(args.prompt_len, "prompt-len"),
                 output_len=LengthDist.parse(args.output_len, "output-len"), seed=args.seed)
    trace = workdir / f"{family}_{qps:g}.jsonl"
    trace.write_text("".join(r.model_dump_json(exclude_none=True) + "\n" for r in generate(tr)))
    common = ["--trace", str(trace), "--max-batch", str(args.max_batch), "--batching", args.batching, "--json"]
    t0 = time.perf_counter()
    exe = _run([sys.executable, "-m", "hispec_exec.cli", "serve", *PLANS[family], *common, "--seed", str(args.seed),
                "--threads", str(args.threads)])
    exec_s = time.perf_counter() - t0
    sim = _run([sys.executable, "-m", "hispec_sim.cli", "serve", "--profile", profile, *PLANS[family], *common,
                "--seeds", str(args.sim_seeds), "--seed", str(args.seed)])
    row = {"family": family, "plan": sim["describe"], "qps": qps, "requests": args.requests,
           "max_batch": args.max_batch, "batching": args.batching, "exec_seconds": exec_s,
           "exec_mean_batch": exe.get("mean_batch"), "exec_acceptance": exe.get("acceptance_per_level")}
    agg = sim["mean_over_seeds"]
    for key, sub, _ in METRICS:
        name = key if sub is None else f"{key}_{sub}"
        measured = _get(exe["summary"], key, sub)
        predicted = agg[key]["mean"] if sub is None else agg[key][sub]["mean"]
        row[name] = {"measured": measured, "simulated": predicted,
                     "error": (predicted - measured) / measured if measured else None}
    return row


def svg_errors(rows: list[dict], width: int = 560, height: int = 300) -> str:
    """Relative error of each metric per scenario, with the +-10 % / +-20 % targets."""
    names = [k if s is None else f"{k}_{s}" for k, s, _ in METRICS]
    pad, span = 50, 0.6
    y = lambda e: height / 2 - max(-span, min(span, e)) / span * (height / 2 - pad)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="11"><rect width="{width}" height="{height}" fill="white"/>')
    parts = [head]
    for lim, col in ((0.2, "#f3f3f3"), (0.1, "#e4e4e4")):
        parts.append(f'<rect x="{pad}" y="{y(lim):.1f}" width="{width - 2 * pad}" height="{y(-lim) - y(lim):.1f}" fill="{col}"/>')
    parts.append(f'<line x1="{pad}" y1="{y(0):.1f}" x2="{width - pad}" y2="{y(0):.1f}" stroke="#999"/>')
    colours = {"autoregressive": "#444", "single_level": "#1f77b4", "3_level": "#d62728"}
    step = (width - 2 * pad) / len(names)
    for i, n in enumerate(names):
        x0 = pad + step * (i + 0.5)
        parts.append(f'<text x="{x0:.1f}" y="{height - 12}" text-anchor="middle">{html.escape(n)}</text>')
        for j, r in enumerate(rows):
            e = r[n]["error"]
            if e is None:
                continue
            cx = x0 + (j - len(rows) / 2) * 4
            parts.append(f'<circle cx="{cx:.1f}" cy="{y(e):.1f}" r="3.5" fill="{colours.get(r["family"], "#000")}">'
                         f'<title>{html.escape(r["plan"])} at {r["qps"]:g} req/s: {100 * e:+.1f} %</title></circle>')
    for v in (-0.4, -0.2, 0.0, 0.2, 0.4):
        parts.append(f'<text x="{pad - 4}" y="{y(v) + 4:.1f}" text-anchor="end">{100 * v:+.0f}%</text>')
    parts.append(f'<text x="{width / 2}" y="16" text-anchor="middle">simulated vs measured (bands: 10 % and 20 %)</text></svg>')
    return "\n".join(parts)


def results_md(out: dict) -> str:
    rows = out["scenarios"]
    intro = (f"Profile `{out['profile']}`; {out['requests']} requests per scenario, Poisson, prompts {out['prompt_len']}, "
             f"outputs {out['output_len']}, max batch {out['max_batch']}, batching {out['batching']}, executor threads "
             f"{out['threads']}, simulator {out['sim_seeds']} acceptance seeds (mean). Machine load at start "
             f"{out['load_at_start']:.2f}. Command: `{out['command']}`.")
    lines = ["# Serving validation: hispec-sim serve vs hispec-exec serve", "", intro, "",
             "| plan | req/s | " + " | ".join(k if s is None else f"{k} {s}" for k, s, _ in METRICS) + " |",
             "|---|---:|" + "---:|" * len(METRICS)]
    for r in rows:
        cells = []
        for k, s, _ in METRICS:
            c = r[k if s is None else f"{k}_{s}"]
            cells.append(f"{c['measured']:.1f} / {c['simulated']:.1f} ({100 * c['error']:+.1f} %)" if c["error"] is not None
                         else "-")
        lines.append(f"| {r['plan']} | {r['qps']:g} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: measured / simulated (error). Median |error| per metric (target):", ""]
    for k, s, target in METRICS:
        n = k if s is None else f"{k}_{s}"
        m = out["median_abs_error"][n]
        lines.append(f"- {n}: {100 * m:.1f} % (target <= {100 * target:.0f} %){'' if m <= target else '  MISSED'}")
    lines += ["", "![errors](plot.svg)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE.parent.parent / "profiles" / "cpu_hispec_tiny.json"))
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--loads", default="2,6", help="two (or more) arrival rates, requests/s")
    ap.add_argument("--prompt-len", default="uniform:16:64")
    ap.add_argument("--output-len", default="uniform:16:64")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batching", default="ragged", choices=["ragged", "synchronous"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sim-seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="one plan, one load, 8 requests (a plumbing check)")
    args = ap.parse_args(argv)
    load_profile(args.profile)  # fail early on a bad profile
    loads = [float(x) for x in args.loads.split(",")]
    fams = list(PLANS)
    if args.quick:
        fams, loads, args.requests = ["single_level"], loads[:1], 8
    import os

    out = {"profile": args.profile, "requests": args.requests, "prompt_len": args.prompt_len,
           "output_len": args.output_len, "max_batch": args.max_batch, "batching": args.batching,
           "threads": args.threads, "sim_seeds": args.sim_seeds, "load_at_start": os.getloadavg()[0],
           "command": "python studies/serving/run_serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "scenarios": []}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in fams:
            for q in loads:
                row = scenario(args.profile, fam, q, args, Path(tmp))
                out["scenarios"].append(row)
                print(f"{row['plan']:32s} {q:5g} req/s  " + "  ".join(
                    f"{n}: {100 * row[n]['error']:+.1f}%" for n in (k if s is None else f"{k}_{s}" for k, s, _ in METRICS)
                    if row[n]["error"] is not None), flush=True)
    out["median_abs_error"] = {}
    for k, s, _ in METRICS:
        n = k if s is None else f"{k}_{s}"
        errs = [abs(r[n]["error"]) for r in out["scenarios"] if r[n]["error"] is not None]
        out["median_abs_error"][n] = float(np.median(errs)) if errs else float("nan")
    if args.quick:
        print(json.dumps(out["median_abs_error"], indent=1))
        return 0
    write_atomic(HERE / "results.json", json.dumps(out, indent=1) + "\n")
    write_atomic(HERE / "plot.svg", svg_errors(out["scenarios"]))
    write_atomic(HERE / "RESULTS.md", results_md(out))
    print(results_md(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
