"""Generalisation study: does a profile measured on prompt set A predict prompt set B?

Sets A and B are prompts drawn from two disjoint halves of the held-out source files
(`hispec_exec.data.prompt_set_of`: other files, not just other offsets). The latency table
is the profile's (measured on this machine); acceptance is measured on the first n prompts
of set A, n = 1, 2, 4, ..., and every plan is predicted from it. Two comparisons:

* acceptance only (not timing sensitive, runs on a loaded machine): prediction from A_n vs
  the prediction from B's own acceptance, same table: how far acceptance measured on A
  carries to B, with timing held fixed;
* timed (needs a quiet machine): prediction from A_n vs the executor's tokens/s on set B
  (plans run interleaved per prompt, with the noise floor of two identical autoregressive
  runs), giving the generalisation error and the prompts-needed curve.

    python studies/fidelity/run_generalisation.py --acceptance-only            # any time
    python studies/fidelity/run_generalisation.py                              # quiet machine

Writes generalisation.json and GENERALISATION.md (and curve.svg) next to this script.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hispec_sim.evaluate import Setting, score
from hispec_sim.montecarlo import simulate
from hispec_sim.schema import check_writable, load_profile, write_atomic
from hispec_sim.validate import (autoregressive_reference, check_model_matches, draw_plans, machine_check,
                                 run_interleaved, time_split)

HERE = Path(__file__).resolve().parent
COUNTS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def svg_curve(counts, series: dict[str, list[float]], size=(460, 300)) -> str:
    """Error against prompts measured (log2 x axis), one polyline per series."""
    W, H, pad = size[0], size[1], 50
    ymax = max(max(v) for v in series.values()) * 1.1 or 1.0
    xs = np.log2(counts)
    X = lambda x: pad + (x - xs[0]) / max(xs[-1] - xs[0], 1e-9) * (W - 2 * pad)
    Y = lambda y: H - pad - y / ymax * (H - 2 * pad)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<line x1="{pad}" y1="{H - pad}" x2="{W - pad}" y2="{H - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{H - pad}" stroke="black"/>']
    for c, x in zip(counts, xs):
        out.append(f'<text x="{X(x):.1f}" y="{H - pad + 14}" text-anchor="middle">{c}</text>')
    for y in np.linspace(0, ymax, 5):
        out.append(f'<text x="{pad - 4}" y="{Y(y) + 4:.1f}" text-anchor="end">{y:.1f}</text>')
    for y in (3.0, 8.0):
        if y < ymax:
            out.append(f'<line x1="{pad}" y1="{Y(y):.1f}" x2="{W - pad}" y2="{Y(y):.1f}" stroke="#bbb" stroke-dasharray="4"/>'
                       f'<text x="{W - pad}" y="{Y(y) - 3:.1f}" text-anchor="end" fill="#888">{y:.0f} %</text>')
    for k, (name, vals) in enumerate(series.items()):
        col = colours[k % len(colours)]
        pts = " ".join(f"{X(x):.1f},{Y(v):.1f}" for x, v in zip(xs, vals))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="2"/>')
        out.append(f'<text x="{pad + 8}" y="{pad + 12 + 14 * k}" fill="{col}">{name}</text>')
    out.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">prompts of set A measured</text>')
    out.append(f'<text x="14" y="{H / 2}" text-anchor="middle" transform="rotate(-90 14 {H / 2})">|error| on set B (%)</text>')
    out.append("</svg>")
    return "\n".join(out)


def _subset(acc, c: int, T: int):
    """The workload of the first c prompts: a prefix of the traces and per-prompt agreement."""
    return acc.model_copy(update={
        "traces": acc.traces[:c * T], "trace_starts": acc.trace_starts[:c],
        "agreement": np.round(np.mean(acc.spread.per_request[:c], axis=0), 6).tolist(),
        "spread": acc.spread.model_copy(update={"per_request": acc.spread.per_request[:c],
                                                "weights": acc.spread.weights[:c]})})


def replay_predictions(setting: Setting, plans) -> list[float]:
    """Tokens/s of each plan by trace replay: every measured request of the workload walked
    (exact in-sample for greedy plans; on other prompts it carries the measured requests'
    position-to-position and level-to-level dependence that the analytic model's i.i.d.
    positions leave out)."""
    cost = setting.cost_for(plans)
    return [simulate(cost, setting.agreement, p, replay=True).tokens_per_second for p in plans]


def prefix_rows(prompts, stride: int, t: int) -> np.ndarray:
    """Rows of the first t positions of each of these prompts in traces stored `stride` rows
    per prompt (greedy traces of a shorter run are the prefixes of a longer one's)."""
    return np.concatenate([np.arange(k * stride, k * stride + t) for k in prompts])


def measure_sets(model, sets: dict, T: int, cache: str | None, n: int, seed: int):
    """Acceptance workloads of sets A and B (exit traces), from the cache when it covers them
    (same prompt seed, at least n prompts of at least T tokens)."""
    from hispec_exec.measure import acceptance_workload

    if cache and Path(cache).exists():
        z = np.load(cache)
        cn, cT, cseed = (int(v) for v in z["key"])
        if cseed == seed and cn >= n and cT >= T:
            rows = prefix_rows(range(n), cT, T)
            return tuple(_from_traces(z[f"traces_{s}"][rows], n, T, s) for s in "AB")
    accs = tuple(acceptance_workload(model, sets[s], T, f"{n} prompts of set {s}", "study") for s in "AB")
    if cache and not Path(cache).exists():  # never overwrite a cache (the committed one) of other settings
        np.savez_compressed(cache, key=np.array([n, T, seed]), traces_A=np.array(accs[0].traces, dtype=np.int32),
                            traces_B=np.array(accs[1].traces, dtype=np.int32))
    return accs


def _from_traces(traces: np.ndarray, n: int, T: int, s: str):
    from hispec_exec.measure import agreement_of
    from hispec_sim.schema import Acceptance, AcceptanceSpread, Source

    src = Source(kind="measured", detail=f"{n} prompts of set {s} (cached traces)")
    per = [agreement_of(traces[k * T:(k + 1) * T]) for k in range(n)]
    return Acceptance(exits=list(range(1, traces.shape[1] + 1)), agreement=np.round(agreement_of(traces), 6).tolist(),
                      context=64 + T // 2, traces=traces.tolist(), trace_starts=[k * T for k in range(n)],
                      joint="traces", source=src,
                      spread=AcceptanceSpread(family="empirical", per_request=[np.round(a, 6).tolist() for a in per],
                                              weights=[float(T)] * n, source=src))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE.parent.parent / "profiles" / "cpu_hispec_tiny.json"))
    ap.add_argument("--plans", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0, help="plan draw")
    ap.add_argument("--prompts", type=int, default=512,
                    help="prompts of each set whose acceptance is measured (A: up to this many; B: the target)")
    ap.add_argument("--timed-prompts", type=int, default=128,
                    help="prompts of set B the executor runs (timed part; timed_sample_design.py says how many)")
    ap.add_argument("--cache", default=str(HERE / "generalisation_traces.npz"),
                    help="npz file keeping the exit traces of both sets (reused when it covers the settings, written when absent; "
                         "default: the committed one, 512 prompts per set x 128 tokens, seed 0)")
    ap.add_argument("--ar-every", type=int, default=4, help="timed part: an autoregressive run after every N plan runs")
    ap.add_argument("--rounds", type=int, default=1,
                    help="timed part: passes over the timed prompts (>= 2: the timing noise a perfect prediction meets)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompt-seed", type=int, default=0)
    ap.add_argument("--acceptance-only", action="store_true", help="skip the executor timing on set B")
    ap.add_argument("--allow-other-machine", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out-dir", default=str(HERE))
    args = ap.parse_args()
    try:  # before the runs, not after them
        check_writable(Path(args.out_dir) / "results.json")
    except ValueError as e:
        ap.exit(2, f"{Path(__file__).name}: --out-dir: {str(e).removeprefix('out: ')}\n")

    import torch

    from hispec_exec import heldout_prompts, load_model

    torch.set_num_threads(args.threads)
    t0 = time.time()
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    base = load_profile(args.profile)
    model = load_model()
    check_model_matches(base, model, "hispec-tiny")
    warning = None if args.acceptance_only else machine_check(base, "cpu", args.allow_other_machine)
    n = args.prompts
    counts = [c for c in COUNTS if c <= n] + ([n] if n not in COUNTS else [])
    sets = {s: heldout_prompts(n, 64, args.prompt_seed, prompt_set=s) for s in "AB"}
    workloads = {}
    acc_a, acc_b = measure_sets(model, sets, args.max_new_tokens, args.cache, n, args.prompt_seed)
    T = args.max_new_tokens
    for c in counts:  # A's first c prompts: a prefix of its traces and of its per-prompt agreement
        workloads[f"A{c}"] = _subset(acc_a, c, T)
    workloads["B"] = acc_b
    m = min(args.timed_prompts, n)
    workloads["B_timed"] = _subset(acc_b, m, T)  # in-sample reference: the timed prompts' own acceptance
    profile = base.model_copy(update={"workloads": {**workloads}, "default_workload": f"A{n}"})
    plans = draw_plans(Setting(profile, f"A{n}"), args.plans, args.seed)
    # one context for all predictions (the table's, set by prompt length + half the generation)
    pred = {w: [s.tokens_per_second for s in score(Setting(profile, w), plans)] for w in workloads}
    replayed = {w: replay_predictions(Setting(profile, w), plans) for w in workloads}
    out = {"profile": base.name, "plans": [p.describe() for p in plans], "prompts_per_set": n,
           "max_new_tokens": T, "counts": counts, "predicted_tokens_per_second": pred,
           "replayed_tokens_per_second": replayed, "acceptance_error_vs_B": {}, "analytic_vs_walk_B": {}, "replay_acceptance_error_vs_B": {}, "command": "python studies/fidelity/run_generalisation.py " + " ".join(
               f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
               if k not in ("out_dir", "profile") and v not in (False, None)
               and not (k == "cache" and v == ap.get_default("cache")))}  # no machine's absolute path
    for c in counts:
        e = np.abs(np.array(pred[f"A{c}"]) / np.array(pred["B"]) - 1)
        out["acceptance_error_vs_B"][c] = {"median": float(np.median(e)), "max": float(e.max())}
        for key, tps in (("analytic_vs_walk_B", pred[f"A{c}"]), ("replay_acceptance_error_vs_B", replayed[f"A{c}"])):
            e = np.abs(np.array(tps) / np.array(replayed["B"]) - 1)
            out[key][c] = {"median": float(np.median(e)), "max": float(e.max())}
    if not args.acceptance_only:
        from hispec_sim.schema import autoregressive_plan

        runs, stats = run_interleaved(model, plans, sets["B"][:m], T, rounds=args.rounds, ar_every=args.ar_every,
                                      seed=args.seed)
        out["timing_noise"] = stats["timing_noise"]
        out["measured_tokens_per_second_B"] = [r[0] for r in runs]
        out["measured_speedup_B"] = stats["speedup"]
        out["measured_acceptance_per_level_B"] = [r[1] for r in runs]
        out["noise_floor_now"] = stats["noise_floor"]
        out["noise_floor_method"] = stats["noise_floor_method"]
        out["machine_warning"] = warning
        out["error_vs_measured_B"] = {}
        out["replay_error_vs_measured_B"] = {}
        out["timed_prompts"], out["rounds"] = m, args.rounds
        # where the in-sample error comes from: each level's forwards against the cost model, as validate reports it
        cost = Setting(profile, "B_timed").cost_for(plans)
        ref = autoregressive_reference(cost, stats["autoregressive_results"])
        out["time_split_B"] = [time_split(cost, p, r, ref) for p, r in zip(plans, stats["decode_results"])]
        ar = autoregressive_plan(base.model.num_layers)
        for w in [f"A{c}" for c in counts] + ["B", "B_timed"]:  # speed-ups over autoregressive: drift cancels
            pred_ar = score(Setting(profile, w), [ar])[0].tokens_per_second
            for key, tps in (("error_vs_measured_B", pred[w]), ("replay_error_vs_measured_B", replayed[w])):
                e = np.array(tps) / pred_ar / np.array(stats["speedup"]) - 1
                out[key][w] = {"per_plan": e.tolist(), "median": float(np.median(np.abs(e))), "max": float(np.abs(e).max())}
    out["seconds"] = time.time() - t0
    out["load_before"] = load_before
    out["load_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    d = Path(args.out_dir)
    write_atomic(d / "generalisation.json", json.dumps(out, indent=1) + "\n")
    write_atomic(d / "GENERALISATION.md", markdown(out))
    series = {"median, acceptance only (A_n vs B)": [100 * out["acceptance_error_vs_B"][c]["median"] for c in counts],
              "worst, acceptance only": [100 * out["acceptance_error_vs_B"][c]["max"] for c in counts],
              "worst, acceptance only, replay": [100 * out["replay_acceptance_error_vs_B"][c]["max"] for c in counts]}
    if "error_vs_measured_B" in out:
        series = {"median vs executor on B": [100 * out["error_vs_measured_B"][f"A{c}"]["median"] for c in counts],
                  "worst vs executor on B": [100 * out["error_vs_measured_B"][f"A{c}"]["max"] for c in counts], **series}
    write_atomic(d / "curve.svg", svg_curve(counts, series))
    print((d / "GENERALISATION.md").read_text())


def markdown(out: dict) -> str:
    counts = out["counts"]
    n = out["prompts_per_set"]
    lines = ["# Generalisation: a profile measured on prompt set A predicts prompt set B", "",
             f"Profile `{out['profile']}` (its latency table), acceptance measured by the executor on the first n of "
             f"{n} prompts of set A; set B = {n} prompts from the other half of the held-out source files; "
             f"{out['max_new_tokens']} new tokens per prompt, batch 1, {len(out['plans'])} plans of every family. "
             f"Produced by `{out['command']}` in {out['seconds']:.0f} s.", ""]
    if "error_vs_measured_B" in out:
        ev = out["error_vs_measured_B"]
        meas = out["measured_speedup_B"]
        lines += [f"The executor ran every plan on the first {out['timed_prompts']} prompts of set B, interleaved with "
                  f"autoregressive runs on the same prompts; compared: the speed-up over autoregressive (predicted "
                  f"tokens/s over predicted autoregressive tokens/s, against the speed-up measured side by side, so the "
                  f"machine's drift cancels). Noise floor (identical autoregressive runs measured as plans, "
                  f"{out.get('noise_floor_method', '')}): {100 * out['noise_floor_now']:.2f} %. Load average before: "
                  f"{out.get('load_before', '?')}, after: {out.get('load_after', '?')}.", ""]
        if out.get("machine_warning"):
            lines += [f"**{out['machine_warning']}**", ""]
        rv = out.get("replay_error_vs_measured_B")
        ts = out.get("time_split_B")
        lines += ["| plan | speed-up measured on B | error of the prediction from A" + str(n) +
                  (f" (analytic; trace replay)" if rv else "") + " | error of the prediction from the timed B prompts" +
                  (" (analytic; trace replay)" if rv else "") + " |" +
                  (" time vs cost model, per level; outside forwards (autoregressive) |" if ts else ""),
                  "|---|---:|---:|---:|" + ("---|" if ts else "")]
        cell = lambda w, k: (f"{100 * ev[w]['per_plan'][k]:+.1f} %" +
                             (f"; {100 * rv[w]['per_plan'][k]:+.1f} %" if rv else ""))
        split = lambda t: (" ".join(f"L{j} x{v['vs_cost_model']:.3f}" for j, v in t["levels"].items()) +
                           f"; {100 * t['outside_forwards']:.1f} % ({100 * t['outside_forwards_autoregressive']:.1f} %) |")
        for k, p in enumerate(out["plans"]):
            lines.append(f"| `{p}` | {meas[k]:.3f} | {cell(f'A{n}', k)} | {cell('B_timed', k)} |" +
                         (f" {split(ts[k])}" if ts else ""))
        summary = lambda e: f"median {100 * e['median']:.1f} %, worst {100 * e['max']:.1f} %"
        # which prompts of B were timed, by itself: the timed prompts' walk against all of B's
        sub = np.abs(np.array(out["replayed_tokens_per_second"]["B_timed"]) / out["replayed_tokens_per_second"]["B"] - 1)
        tn = out.get("timing_noise")
        lines += ["", f"**Generalisation (A{n} -> B), analytic: {summary(ev[f'A{n}'])}**" +
                  (f"; **trace replay of A{n}'s requests: {summary(rv[f'A{n}'])}**" if rv else "") +
                  f" over {len(out['plans'])} plans (target: median <= 3 %, worst <= 8 %). In-sample reference (the "
                  f"timed prompts' own acceptance): analytic {summary(ev['B_timed'])}" +
                  (f"; trace replay {summary(rv['B_timed'])} (what the cost model's timing alone misses)" if rv else "") +
                  f". The timed prompts are themselves a sample of B: trace replay of the {out['timed_prompts']} "
                  f"against the replay of all {n} (no timing) differs by median {100 * np.median(sub):.1f} %, worst "
                  f"{100 * sub.max():.1f} %."
                  + (f" Timing noise ({out['rounds']} rounds, `validate.timing_noise`): a perfect prediction would be "
                     f"measured off by up to median {100 * tn['median']:.1f} %, worst {100 * tn['worst']:.1f} % (95 %)."
                     if tn else "")
                  + (" Time vs cost model (`validate.time_split`): per plan level (L1 = drafts, Lj = level-j "
                         "checks), the measured / predicted time of the forwards that ran on B, divided by the same "
                         "ratio for the interleaved autoregressive runs (1.000: priced right relative to an "
                         "autoregressive step)." if ts else ""), ""]
    lines += ["## Prompts needed: error on set B against the prompts of set A measured", "",
              "| prompts of A measured | " + (" median vs executor | worst vs executor |" if "error_vs_measured_B" in out else "")
              + " median, acceptance only | worst, acceptance only | median, analytic vs B's walk | worst, analytic vs B's walk"
              " | median, replay vs B's walk | worst, replay vs B's walk |",
              "|---:|" + ("---:|---:|" if "error_vs_measured_B" in out else "") + "---:|---:|---:|---:|---:|---:|"]
    timed = "error_vs_measured_B" in out
    for c in counts:
        row = f"| {c} |"
        if timed:
            e = out["error_vs_measured_B"][f"A{c}"]
            row += f" {100 * e['median']:.1f} % | {100 * e['max']:.1f} % |"
        for key in ("acceptance_error_vs_B", "analytic_vs_walk_B", "replay_acceptance_error_vs_B"):
            a = out[key].get(c, out[key].get(str(c)))
            row += f" {100 * a['median']:.1f} % | {100 * a['max']:.1f} % |"
        lines.append(row)
    lines += ["", "'acceptance only': the prediction from A_n against the prediction from B's own acceptance with the same "
              "latency table (timing held fixed: what acceptance measured on other prompts costs): analytic against "
              "analytic. 'B's walk': trace replay of B's own requests, which does the executor's work on B exactly (up to "
              "each request's last check), priced by the same table: against it, the analytic prediction from A_n (the "
              "acceptance carried over plus the analytic model's i.i.d.-positions error) and the trace replay of A_n's "
              "requests. 'vs executor': the analytic prediction against the "
              "executor's measured speed-up over autoregressive on B.", "", "![prompts needed](curve.svg)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
