"""Fidelity study: how right is the simulator about the executor?

Predicts >= 12 plans of every family from a profile the executor measured
(`hispec-sim profile measure`), runs each plan in the executor on the same held-out
prompts, and writes RESULTS.md (table), results.json and plot.svg
(predicted vs measured tokens/s) next to this script.

    python studies/fidelity/run_fidelity.py [--profile profiles/cpu_hispec_tiny.json] [--plans 12]
"""
from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import numpy as np

from hispec_sim.evaluate import Setting, exhaustive
from hispec_sim.schema import Plan, load_profile, write_atomic
from hispec_sim.validate import check_model_matches, draw_plans, machine_check, run_measured, validate

HERE = Path(__file__).resolve().parent


def svg_scatter(rows: list[dict], size: int = 420) -> str:
    """Predicted vs measured, one dot per plan, with the y = x line and a +-10 % band."""
    pred = np.array([r["predicted_tokens_per_second"] for r in rows])
    meas = np.array([r["measured_tokens_per_second"] for r in rows])
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
        parts.append(f'<text x="{scale(v):.1f}" y="{size - pad + 14}" text-anchor="middle">{v:.0f}</text>')
        parts.append(f'<text x="{pad - 4}" y="{size - scale(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
    parts.append(f'<text x="{size / 2}" y="{size - 12}" text-anchor="middle">measured tokens/s (executor)</text>')
    parts.append(f'<text x="14" y="{size / 2}" text-anchor="middle" transform="rotate(-90 14 {size / 2})">predicted tokens/s (analytic)</text>')
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


def markdown(out: dict, noise: float, seconds: float, command: str, baselines: dict) -> str:
    rows = out["plans"]
    lines = ["# Fidelity study: simulator prediction vs executor measurement", "",
             f"Profile `{out['profile']}` (measured by the executor on this machine), workload `{out['workload']}`, "
             + (f"**{out['machine_warning']}** " if out.get("machine_warning") else "") +
             f"{out['prompts']} held-out prompts x {out['max_new_tokens']} new tokens, batch 1. "
             f"Produced by `{command}` in {seconds:.0f} s.", "",
             "| plan | family | predicted (analytic) | predicted (MC i.i.d.) | predicted (MC trace replay) | measured | error analytic | error replay | acceptance predicted / measured |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = "; ".join(f"{p:.3f} / {m:.3f}" if m is not None else f"{p:.3f} / -"
                        for p, m in zip(r["predicted_acceptance_per_level"], r["measured_acceptance_per_level"]))
        rep = r["predicted_replay_tokens_per_second"]
        lines.append(f"| `{r['describe']}` | {r['family']} | {r['predicted_tokens_per_second']:.1f} | "
                     f"{r['predicted_mc_tokens_per_second']:.1f} | {'-' if rep is None else f'{rep:.1f}'} | "
                     f"{r['measured_tokens_per_second']:.1f} | {_pct(r['relative_error'])} | "
                     f"{_pct(r['relative_error_replay'])} | {acc} |")
    lines += ["", f"- median |error| (analytic, i.i.d. positions): **{100 * out['median_abs_relative_error']:.1f} %**, "
                  f"worst **{100 * out['max_abs_relative_error']:.1f} %** over {len(rows)} plans.",
              f"- with trace replay: median {100 * out.get('median_abs_relative_error_replay', float('nan')):.1f} %, "
              f"worst {100 * out.get('max_abs_relative_error_replay', float('nan')):.1f} %.",
              f"- noise floor (run-to-run spread of identical runs; the larger of the profile's, "
              f"{_pct_abs(out['noise_floor_profile'])}, and "
              f"this run's two interleaved autoregressive runs, {100 * out['noise_floor_now']:.2f} %): {100 * noise:.2f} %; "
              f"{out['plans_within_noise_floor']} of {len(rows)} plans within it.",
              f"- the same predictions against runs on {out['prompts']} OTHER held-out prompts (seed "
              f"{out['other_prompts']['seed']}, never measured into the profile): median |error| "
              f"{100 * out['other_prompts']['median_abs_relative_error']:.1f} %, worst "
              f"{100 * out['other_prompts']['max_abs_relative_error']:.1f} % — acceptance shifts between prompt sets.", ""]
    by_plan = {r["describe"]: r for r in rows}
    lines += ["## Executor comparison (measured, same prompts, same run)", "",
              "| | plan | measured tokens/s | vs autoregressive | predicted vs autoregressive |", "|---|---|---:|---:|---:|"]
    ar = by_plan[baselines["autoregressive"]]
    for label, plan in baselines.items():
        r = by_plan[plan]
        lines.append(f"| {label} | `{plan}` | {r['measured_tokens_per_second']:.1f} | "
                     f"{r['measured_tokens_per_second'] / ar['measured_tokens_per_second']:.3f}x | "
                     f"{r['predicted_tokens_per_second'] / ar['predicted_tokens_per_second']:.3f}x |")
    lines += ["", "![predicted vs measured](plot.svg)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE.parent.parent / "profiles" / "cpu_hispec_tiny.json"))
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--other-prompt-seed", type=int, default=1,
                    help="also run every plan on prompts the profile never saw (generalisation)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--allow-other-machine", action="store_true", help="profile measured elsewhere: warn instead of refusing")
    ap.add_argument("--out-dir", default=str(HERE))
    args = ap.parse_args()

    import torch

    from hispec_exec import heldout_prompts, load_model

    torch.set_num_threads(args.threads)
    t0 = time.time()
    setting = Setting(load_profile(args.profile))
    model = load_model()
    check_model_matches(setting.profile, model, "hispec-tiny")
    warning = machine_check(setting.profile, "cpu", args.allow_other_machine)
    plans = draw_plans(setting, args.plans, args.seed)
    measured_on = setting.profile.provenance["prompts"]  # validate on the prompts the profile measured
    n_new = measured_on["max_new_tokens"]
    prompts = heldout_prompts(measured_on["n"], measured_on["prompt_len"], measured_on["seed"])
    out = validate(setting, plans, model, prompts, n_new, seed=args.seed, machine_warning=warning)
    other = heldout_prompts(measured_on["n"], measured_on["prompt_len"], args.other_prompt_seed)
    out["other_prompts"] = {"seed": args.other_prompt_seed, "plans": []}
    for row in out["plans"]:
        plan = Plan.model_validate(row["plan"])
        measured, acceptance = run_measured(model, plan, other, n_new)
        out["other_prompts"]["plans"].append({"describe": row["describe"], "measured_tokens_per_second": measured,
                                              "relative_error": (row["predicted_tokens_per_second"] - measured) / measured,
                                              "measured_acceptance_per_level": acceptance})
    errs = np.abs([r["relative_error"] for r in out["other_prompts"]["plans"]])
    out["other_prompts"]["median_abs_relative_error"] = float(np.median(errs))
    out["other_prompts"]["max_abs_relative_error"] = float(errs.max())
    found = exhaustive(setting)
    baselines = {"optimizer's best": found.best.plan, "paper default": found.paper_default.plan,
                 "best single-level": found.best_single_level.plan, "autoregressive": found.autoregressive.plan}
    noise = out["noise_floor"]
    seconds = time.time() - t0
    command = "python studies/fidelity/run_fidelity.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out_dir", "profile"))
    d = Path(args.out_dir)
    write_atomic(d / "results.json", json.dumps(out, indent=1) + "\n")
    write_atomic(d / "RESULTS.md", markdown(out, noise, seconds, command, {k: p.describe() for k, p in baselines.items()}))
    write_atomic(d / "plot.svg", svg_scatter(out["plans"]))
    print((d / "RESULTS.md").read_text())


if __name__ == "__main__":
    main()
