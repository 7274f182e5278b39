"""The machine's state: what a profile predicts after the machine's state changed, as stored
and after `profile measure --recalibrate`.

On a shared machine the forwards of different kinds do not speed up or slow down together:
deep one-token forwards, which stream every layer's weights, move most (an H200 host's
Xeon, studies/fidelity/machines/intel-xeon-h200-host/). This study makes such a state on
purpose: a memory-bandwidth load on the other core (a numpy copy of 256 MB, in a loop)
while this process decodes on its own core. Under the load it re-fits the profile's fixed
overheads (`hispec_exec.measure.recalibrate`, what `--recalibrate` runs), then validates
12 plans (`hispec_sim.validate.validate`, as run_fidelity.py), and compares the measured
speed-ups with the predictions of the stored profile and of the recalibrated one: the same
measured runs, two predictions. Needs 2 cores. Writes RESULTS.md and results.json.

    python studies/fidelity/run_state.py [--profile profiles/cpu_hispec_tiny.json] [--plans 12]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hispec_sim.evaluate import Setting, score
from hispec_sim.montecarlo import simulate
from hispec_sim.schema import autoregressive_plan, check_writable, load_profile, write_atomic
from hispec_sim.validate import check_model_matches, draw_plans, machine_check, validate

HERE = Path(__file__).resolve().parent
LOAD = ("import os, sys, time, numpy as np\n"
        "os.sched_setaffinity(0, {int(sys.argv[2])})\n"
        "a = np.ones(32_000_000); b = np.empty_like(a); end = time.time() + float(sys.argv[1])\n"
        "while time.time() < end: np.copyto(b, a)\n")


def speedups(setting: Setting, plans) -> tuple[list[float], list[float | None]]:
    """Predicted speed-ups over autoregressive: analytic, and by trace replay."""
    ar = score(setting, [autoregressive_plan(setting.num_layers)])[0].tokens_per_second
    cost = setting.cost_for(plans)
    replay = [simulate(cost, setting.agreement, p, seed=0, replay=True).tokens_per_second / ar
              if setting.agreement.traces is not None else None for p in plans]
    return [s.tokens_per_second / ar for s in score(setting, plans)], replay


def summary(errors) -> dict:
    e = np.abs([x for x in errors if x is not None])
    return {"median": float(np.median(e)), "worst": float(e.max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE.parent.parent / "profiles" / "cpu_hispec_tiny.json"))
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--prompts", type=int, help="held-out prompts (default: those the profile was measured on)")
    ap.add_argument("--ar-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=str(HERE / "state"))
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        ap.exit(2, "run_state.py: needs 2 cores (the load runs on the other one)\n")
    try:
        check_writable(Path(args.out_dir) / "results.json")
    except ValueError as e:
        ap.exit(2, f"run_state.py: --out-dir: {str(e).removeprefix('out: ')}\n")

    import torch

    from hispec_exec import heldout_prompts, load_model
    from hispec_exec.measure import recalibrate

    mine, other = sorted(os.sched_getaffinity(0))[:2]
    os.sched_setaffinity(0, {mine})
    torch.set_num_threads(1)
    stored = load_profile(args.profile)
    model = load_model()
    check_model_matches(stored, model, "hispec-tiny")
    machine_check(stored, "cpu", False)
    setting = Setting(stored)
    plans = draw_plans(setting, args.plans, args.seed)
    on = stored.provenance["prompts"]
    prompts = heldout_prompts(args.prompts or on["n"], on["prompt_len"], on["seed"])

    t0 = time.time()
    load = subprocess.Popen([sys.executable, "-c", LOAD, "3600", str(other)])
    try:
        time.sleep(2)
        recal = recalibrate(stored, model, "hispec-tiny", "run_state.py (under the load)", seed=args.seed)
        t1 = time.time()
        out = validate(setting, plans, model, prompts, on["max_new_tokens"], seed=args.seed, ar_every=args.ar_every)
    finally:
        load.kill()
    seconds = time.time() - t0

    rows = []
    (stored_a, stored_r), (recal_a, recal_r) = speedups(setting, plans), speedups(Setting(recal), plans)
    for k, row in enumerate(out["plans"]):
        m = row["measured_speedup"]
        rows.append({"plan": row["describe"], "measured_speedup": m,
                     "stored": {"analytic": stored_a[k] / m - 1, "replay": stored_r[k] / m - 1 if stored_r[k] else None},
                     "recalibrated": {"analytic": recal_a[k] / m - 1,
                                      "replay": recal_r[k] / m - 1 if recal_r[k] else None}})
    r = recal.provenance["recalibrations"][str(len(recal.provenance["recalibrations"]))]
    name = os.path.relpath(args.profile, HERE.parent.parent)
    result = {"profile": name, "plans": rows, "prompts": len(prompts), "seconds": round(seconds, 1),
              "recalibration_seconds": round(t1 - t0, 1), "recalibration": r,
              "machine_drift": out.get("machine_drift"), "noise_floor": out["noise_floor"],
              "summary": {f"{w}_{how}": summary([x[w][how] for x in rows])
                          for w in ("stored", "recalibrated") for how in ("analytic", "replay")},
              "command": "python studies/fidelity/run_state.py " + " ".join(sys.argv[1:]),
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0))}
    lines = [
        "# The machine's state: the stored profile and the recalibrated one, under a changed state", "",
        f"`{result['command']}` at {result['when']} ({seconds:.0f} s; recalibration {t1 - t0:.0f} s). Profile "
        f"`{name}` (measured {stored.provenance.get('measured')}); under a memory-bandwidth load on the other "
        f"core, its fixed overheads re-fitted (per forward {r['before']['overhead_ms']:.3f} -> "
        f"{r['after']['overhead_ms']:.3f} ms, per check {r['before']['verify_overhead_ms']:.3f} -> "
        f"{r['after']['verify_overhead_ms']:.3f} ms; the calibration plans' autoregressive "
        f"{r['before']['autoregressive_tokens_per_second']:.1f} -> {r['after']['autoregressive_tokens_per_second']:.1f} "
        f"tokens/s), then {len(plans)} plans x {len(prompts)} held-out prompts run under the same load, each plan "
        f"next to autoregressive runs (noise floor {100 * out['noise_floor']:.1f} %).", "",
        "| plan | speed-up measured | stored: analytic | stored: replay | recalibrated: analytic | recalibrated: replay |",
        "|---|---:|---:|---:|---:|---:|"]
    pct = lambda v: "" if v is None else f"{100 * v:+.1f} %"
    for x in rows:
        lines.append(f"| `{x['plan']}` | {x['measured_speedup']:.3f} | {pct(x['stored']['analytic'])} | "
                     f"{pct(x['stored']['replay'])} | {pct(x['recalibrated']['analytic'])} | "
                     f"{pct(x['recalibrated']['replay'])} |")
    s = result["summary"]
    lines += ["", "Speed-up errors, median / worst |error|: " + "; ".join(
        f"{k.replace('_', ', ')} {100 * v['median']:.1f} / {100 * v['worst']:.1f} %" for k, v in s.items()), ""]
    text = "\n".join(lines)
    write_atomic(Path(args.out_dir) / "results.json", json.dumps(result, indent=1))
    write_atomic(Path(args.out_dir) / "RESULTS.md", text)
    print(text)


if __name__ == "__main__":
    main()
