"""Fidelity study: how right is the simulator about the executor?

Predicts >= 12 plans of every family from a profile the executor measured
(`hispec-sim profile measure`), runs each plan in the executor on the same held-out
prompts interleaved with autoregressive runs, compares predicted and measured speed-ups
over autoregressive (drift cancels; absolute tokens/s are listed too), and writes
RESULTS.md (machine, load, commands, table, verdict), results.json and plot.svg
(predicted vs measured speed-up) next to this script. It is `hispec-sim validate` with
12 plans (the same function) plus the write-up.

    python studies/fidelity/run_fidelity.py [--profile profiles/cpu_hispec_tiny.json] [--plans 12]
"""
from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import numpy as np

from hispec_sim.cli_measure import plan_noise_text, state_line
from hispec_sim.evaluate import Setting, optimized
from hispec_sim.schema import check_writable, load_profile, write_atomic
from hispec_sim.validate import check_model_matches, draw_plans, machine_check, run_interleaved, validate

HERE = Path(__file__).resolve().parent


def svg_scatter(rows: list[dict], size: int = 420) -> str:
    """Predicted vs measured speed-up over autoregressive, one dot per plan, with the y = x
    line and a +-10 % band."""
    pred = np.array([r["predicted_speedup"] for r in rows])
    meas = np.array([r["measured_speedup"] for r in rows])
    lo, hi = 0.85 * min(pred.min(), meas.min()), 1.1 * max(pred.max(), meas.max())
    pad = 50
    scale = lambda v: pad + (v - lo) / (hi - lo) * (size - 2 * pad)
    colours = {"autoregressive": "#444", "single_level": "#1f77b4", "3_level": "#d62728", "4_level": "#2ca02c"}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" font-family="sans-serif" font-size="11">',
             f'<rect width="{size}" height="{size}" fill="white"/>']
    band = " ".join(f"{scale(x):.1f},{size - scale(x * f):.1f}" for f, xs in ((1.1, (lo, hi / 1.1)), (0.9, (hi, lo / 0.9))) for x in xs)
    parts.append(f'<polygon points="{band}" fill="#eee"/>')
    parts.append(f'<line x1="{scale(lo)}" y1="{size - scale(lo)}" x2="{scale(hi)}" y2="{size - scale(hi)}" stroke="#999"/>')
    parts.append(f'<line x1="{pad}" y1="{size - pad}" x2="{size - pad}" y2="{size - pad}" stroke="black"/>')
    parts.append(f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{size - pad}" stroke="black"/>')
    for v in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{scale(v):.1f}" y="{size - pad + 14}" text-anchor="middle">{v:.2f}</text>')
        parts.append(f'<text x="{pad - 4}" y="{size - scale(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
    parts.append(f'<text x="{size / 2}" y="{size - 12}" text-anchor="middle">measured speed-up over autoregressive (executor)</text>')
    parts.append(f'<text x="14" y="{size / 2}" text-anchor="middle" transform="rotate(-90 14 {size / 2})">predicted speed-up (analytic)</text>')
    for r, p, m in zip(rows, pred, meas):
        parts.append(f'<circle cx="{scale(m):.1f}" cy="{size - scale(p):.1f}" r="4" fill="{colours.get(r["family"], "#000")}">'
                     f'<title>{html.escape(r["describe"])}</title></circle>')
    for i, (fam, col) in enumerate(colours.items()):
        parts.append(f'<circle cx="{pad + 10}" cy="{pad + 10 + 14 * i}" r="4" fill="{col}"/>'
                     f'<text x="{pad + 18}" y="{pad + 14 + 14 * i}">{fam}</text>')
    parts.append(f'<text x="{size - pad}" y="{pad - 10}" text-anchor="end">grey band: +-10 %</text></svg>')
    return "\n".join(parts)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f} %"


def _pct_abs(x) -> str:
    return "not recorded" if x is None else f"{100 * x:.2f} %"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def markdown(out: dict, seconds: float, command: str, baselines: dict, context: dict) -> str:
    rows = out["plans"]
    prof = context["profile_provenance"]
    meas = prof.get("measurement") or {}
    check = meas.get("self_check") or {}
    lines = ["# Fidelity study: simulator prediction vs executor measurement", "",
             f"Machine: {context['machine']}. Load average (1, 5, 15 min) before the study: {context['load_before']}, "
             f"after: {context['load_after']}.", "",
             f"Profile `{out['profile']}` measured on this machine by `{prof.get('command', '?')}` at "
             f"{prof.get('measured', '?')} (layer table {meas.get('latency_seconds', '?')} s"
             + (f"; load average before it: {context['load_measure']}" if context.get("load_measure") else "") + "). "
             + (f"**{out['machine_warning']}** " if out.get("machine_warning") else "") +
             f"Workload `{out['workload']}`, {out['prompts']} held-out prompts x {out['max_new_tokens']} new tokens, "
             f"batch 1. Study: `{command}` in {seconds:.0f} s ({out['rounds']} round(s), an autoregressive reference "
             f"run after every {out['autoregressive_every']} plan run(s) on the same prompt).", "",
             f"**Verdict: {out['verdict_line']}.**" + (
                 f" With trace replay (the prediction `optimize` ranks by where the workload has traces): {out['verdict_line_replay']}."
                 if out.get("verdict_line_replay") else ""), "",
             "The compared quantity is the speed-up over autoregressive decoding: predicted (tokens/s of the plan over "
             "that of autoregressive, both from the profile) against measured side by side (each plan run's time "
             "divided by the autoregressive time per token interpolated from the autoregressive runs around it on the "
             "same prompt), so the machine's drift cancels. Absolute tokens/s are listed too; they inherit the drift "
             "since the profile was measured.", "",
             "| plan | family | speed-up predicted | speed-up measured | error | replay error | tokens/s predicted | "
             "tokens/s measured | error | acceptance predicted / measured |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = "; ".join(f"{p:.3f} / {m:.3f}" if m is not None else f"{p:.3f} / -"
                        for p, m in zip(r["predicted_acceptance_per_level"], r["measured_acceptance_per_level"]))
        lines.append(f"| `{r['describe']}` | {r['family']} | {r['predicted_speedup']:.3f} | {r['measured_speedup']:.3f} | "
                     f"{_pct(r['speedup_error'])} | {_pct(r['speedup_error_replay'])} | "
                     f"{r['predicted_tokens_per_second']:.1f} | {r['measured_tokens_per_second']:.1f} | "
                     f"{_pct(r['relative_error'])} | {acc} |")
    lines += ["", "Where the error comes from (`validate.time_split`): tokens per full-model check predicted by the analytic "
              "model and by trace replay (each measured request walked: exact for greedy plans in-sample) against the "
              "executor's; and, per plan level, the measured / predicted time of the forwards that ran divided by the "
              "same ratio for the autoregressive runs interleaved with them (1.000: the cost model prices that kind of "
              "forward right relative to an autoregressive step; L1 = drafts), with the wall time spent outside forwards.",
              "", "| plan | tokens per full check: analytic / replay / measured | time vs cost model, per level "
              "| outside forwards (autoregressive) |", "|---|---|---|---|"]
    for r in rows:
        t = r.get("time_split")
        if not t:
            continue
        rep = r.get("replay_tokens_per_full_check")
        lv = ", ".join(f"L{k} x{v['vs_cost_model']:.3f} ({100 * v['share_of_wall']:.0f} % of wall)"
                       for k, v in t["levels"].items())
        lines.append(f"| `{r['describe']}` | {r['predicted_tokens_per_full_check']:.3f} / "
                     f"{'-' if rep is None else f'{rep:.3f}'} / {t['tokens_per_full_check']:.3f} | {lv} | "
                     f"{100 * t['outside_forwards']:.1f} % ({100 * t['outside_forwards_autoregressive']:.1f} %) |")
    d = out.get("machine_drift")
    lines += ["", f"- speed-up, analytic: median |error| **{100 * out['median_abs_speedup_error']:.1f} %**, worst "
                  f"**{100 * out['max_abs_speedup_error']:.1f} %** over {len(rows)} plans; with trace replay: median "
                  f"{100 * out.get('median_abs_speedup_error_replay', float('nan')):.1f} %, worst "
                  f"{100 * out.get('max_abs_speedup_error_replay', float('nan')):.1f} %.",
              f"- noise floor {100 * out['noise_floor']:.2f} % ({out['noise_floor_method']}: identical autoregressive "
              f"runs measured exactly as the plans)" + plan_noise_text(out) + ".",
              f"- absolute tokens/s: median |error| {100 * out['median_abs_relative_error']:.1f} %, worst "
              f"{100 * out['max_abs_relative_error']:.1f} %; autoregressive predicted "
              f"{out['predicted_autoregressive_tokens_per_second']:.1f}, measured "
              f"{out['measured_autoregressive_tokens_per_second']:.1f} tokens/s"
              + (f"; the profile's calibration runs moved {100 * d['drift']:.1f} % since it was measured "
                 f"({d['then_tokens_per_second']:.1f} -> {d['now_tokens_per_second']:.1f} tokens/s)" if d else "")
              + f"; spread of the profile's calibration rounds {_pct_abs(out['noise_floor_profile'])}.",
              ] + [f"- {line}." for line in (state_line(out),) if line]
    if check:
        lines.append(f"- self-check of the profile (its cost model against its own calibration runs): autoregressive "
                     f"{check['autoregressive_ms_per_token_predicted']:.3f} ms/token predicted, "
                     f"{check['autoregressive_ms_per_token_measured']:.3f} measured "
                     f"({100 * check['autoregressive_error']:+.1f} %)"
                     + ("; timed {} times while the machine moved, attempt {} kept (calibration rounds {} % apart)".format(
                         len(meas["attempts"]), meas["attempt_kept"],
                         ", ".join(f"{100 * a['calibration_spread']:.1f}" for a in meas["attempts"]))
                        if len(meas.get("attempts") or []) > 1 else "") + ".")
    if "other_prompts" in out:
        o = out["other_prompts"]
        lines.append(f"- the same predictions against runs on {out['prompts']} OTHER held-out prompts (seed {o['seed']}, "
                     f"never measured into the profile), speed-ups: median |error| "
                     f"{100 * o['median_abs_speedup_error']:.1f} %, worst {100 * o['max_abs_speedup_error']:.1f} % "
                     f"(acceptance shifts between prompt sets; see GENERALISATION.md).")
    lines += ["", "## Executor comparison (measured, same prompts, same run)", "",
              "| | plan | measured tokens/s | measured vs autoregressive | predicted vs autoregressive |",
              "|---|---|---:|---:|---:|"]
    by_plan = {r["describe"]: r for r in rows}
    for label, plan in baselines.items():
        r = by_plan[plan]
        lines.append(f"| {label} | `{plan}` | {r['measured_tokens_per_second']:.1f} | {r['measured_speedup']:.3f}x | "
                     f"{r['predicted_speedup']:.3f}x |")
    lines += ["", "Re-run: `studies/fidelity/remeasure.sh` (quiet machine; `--quick` for a smoke test).", "",
              "![predicted vs measured](plot.svg)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE.parent.parent / "profiles" / "cpu_hispec_tiny.json"))
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the prompts (median of per-round speed-ups)")
    ap.add_argument("--ar-every", type=int, default=4, help="an autoregressive reference run after every N plan runs")
    ap.add_argument("--prompts", type=int, help="held-out prompts (default: those the profile was measured on)")
    ap.add_argument("--other-prompt-seed", type=int,
                    help="also run every plan on prompts the profile never saw (see run_generalisation.py for the study)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--allow-other-machine", action="store_true", help="profile measured elsewhere: warn instead of refusing")
    ap.add_argument("--load-measure", help="load average before the profile was measured (remeasure.sh passes it)")
    ap.add_argument("--out-dir", default=str(HERE))
    args = ap.parse_args()
    try:  # before the runs, not after them
        check_writable(Path(args.out_dir) / "results.json")
    except ValueError as e:
        ap.exit(2, f"{Path(__file__).name}: --out-dir: {str(e).removeprefix('out: ')}\n")

    import torch

    from hispec_exec import heldout_prompts, load_model
    from hispec_sim.cli_measure import validate_text
    from hispec_sim.machine import describe, fingerprint

    torch.set_num_threads(args.threads)
    load_before = loadavg()
    t0 = time.time()
    setting = Setting(load_profile(args.profile))
    model = load_model()
    check_model_matches(setting.profile, model, "hispec-tiny")
    warning = machine_check(setting.profile, "cpu", args.allow_other_machine)
    plans = draw_plans(setting, args.plans, args.seed)
    measured_on = setting.profile.provenance["prompts"]  # validate on the prompts the profile measured
    n_new = measured_on["max_new_tokens"]
    n = args.prompts or measured_on["n"]
    prompts = heldout_prompts(n, measured_on["prompt_len"], measured_on["seed"])
    out = validate(setting, plans, model, prompts, n_new, seed=args.seed, machine_warning=warning,
                   rounds=args.rounds, ar_every=args.ar_every)
    if args.other_prompt_seed is not None:
        other = heldout_prompts(n, measured_on["prompt_len"], args.other_prompt_seed)
        runs, stats = run_interleaved(model, plans, other, n_new, rounds=args.rounds, ar_every=args.ar_every,
                                      seed=args.seed)
        o = {"seed": args.other_prompt_seed, "plans": [], "noise_floor": stats["noise_floor"]}
        for row, (tps, acceptance), su in zip(out["plans"], runs, stats["speedup"]):
            o["plans"].append({"describe": row["describe"], "measured_tokens_per_second": tps, "measured_speedup": su,
                               "speedup_error": row["predicted_speedup"] / su - 1,
                               "measured_acceptance_per_level": acceptance})
        errs = np.abs([r["speedup_error"] for r in o["plans"]])
        o["median_abs_speedup_error"], o["max_abs_speedup_error"] = float(np.median(errs)), float(errs.max())
        out["other_prompts"] = o
    found = optimized(setting)
    baselines = {"optimizer's best": found.best.plan, "paper default": found.paper_default.plan,
                 "best single-level": found.best_single_level.plan, "autoregressive": found.autoregressive.plan}
    baselines = {k: p.describe() for k, p in baselines.items() if p in plans}
    seconds = time.time() - t0
    command = "python studies/fidelity/run_fidelity.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if k not in ("out_dir", "profile", "load_measure") and v not in (None, False))
    context = {"machine": describe(fingerprint("cpu")), "load_before": load_before, "load_after": loadavg(),
               "load_measure": args.load_measure, "profile_provenance": setting.profile.provenance}
    out["study"] = {"command": command, "seconds": seconds, **{k: v for k, v in context.items()
                                                               if k != "profile_provenance"}}
    d = Path(args.out_dir)
    write_atomic(d / "results.json", json.dumps(out, indent=1) + "\n")
    write_atomic(d / "RESULTS.md", markdown(out, seconds, command, baselines, context))
    write_atomic(d / "plot.svg", svg_scatter(out["plans"]))
    print(validate_text(out))
    print(f"wrote {d / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
