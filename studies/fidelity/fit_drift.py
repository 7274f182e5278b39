"""Does the machine's drift between decode runs leak into a profile's fitted overheads, and
do the calibration plans pin the overheads down?

`profile measure` fits per-forward, per-layer and per-check overheads on the forwards of
its calibration plans. This study takes the same kind of calibration forwards, plus the
12 validation plans of studies/fidelity run on held-out prompts with autoregressive runs
interleaved, and compares two fits of the calibration forwards:

* pooled (`measure.scaled_nnls`, before 2026-11-29): one regression over all runs;
* per run (`measure.drifting_nnls`): one speed factor per decode run; with the extra
  time of the forward after a check (charged to the check); and with every forward
  weighted by 1 / its price (its noise is proportional to its time), as `profile measure`
  fitted from 2026-11-29 09:35;
* per block: the same with one speed factor per block of back-to-back runs (every
  calibration plan on one prompt in one round), as `profile measure` fits since
  2026-11-29 15:10 (a run's own factor absorbs what its plan costs beyond the model);
* per block with a check's extra rows (layers x new tokens beyond the first) and a
  per-layer term allowed down to minus half the smallest layer time, as `profile measure`
  fits since 2026-11-30 16:30 (the table, timed in another minute than the runs, can run
  slower than they do; on the Intel Xeon VM it did by 10-30 %).

For each fit it prices the forwards the validation plans actually ran and reports the
error of the speed-ups over autoregressive that those prices give (acceptance plays no
part: the forwards are the measured ones), within a data set and across data sets (a fit
from one time, checked on runs taken at another), and with every calibration run's times
multiplied by a seeded U(0.8, 1.25) factor (drift injected).

Plan sets: the data hold `--calibrations N` independent calibrations (each as `profile
measure` runs it: 4 prompts x 64 tokens, 3 rounds, every calibration plan interleaved).
Each is fitted twice as `profile measure` fits now -- on the three core plans' runs alone
(`calibration_plans(L, spread=False)`, before 2026-11-29 07:20) and on all of them -- with
bootstrap standard errors, and priced against the validation runs: how far repeated fits on
one machine move, with each plan set.

    python studies/fidelity/fit_drift.py --collect /tmp/a.json   # ~6 min, 1 thread
    python studies/fidelity/fit_drift.py /tmp/a.json /tmp/b.json  # the comparison (.json.gz read too)
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

import numpy as np


def collect(out: Path, prompts: int, calibrations: int) -> None:
    import torch

    from hispec_exec import decode, heldout_prompts, load_model
    from hispec_exec.measure import calibration_plans, calibration_prompts
    from hispec_sim.evaluate import Setting
    from hispec_sim.schema import autoregressive_plan, load_profile
    from hispec_sim.validate import block_order, draw_plans

    torch.set_num_threads(1)
    model = load_model()
    cplans = calibration_plans(model.num_layers)
    vplans = draw_plans(Setting(load_profile("cpu_hispec_tiny")), 12, 0)
    ar = autoregressive_plan(model.num_layers)

    def record(kind, k, plan, res):
        return {"kind": kind, "plan": k, "prompt_len": res.prompt_len, "wall_ms": res.wall_s * 1e3,
                "forwards": [[f.level, f.segments, f.head_tokens, f.ms] for f in res.forwards]}

    runs, load = [], [Path("/proc/loadavg").read_text().split()[:3]]
    cp = calibration_prompts(model, 4, 64)  # as profile measure: 4 prompts x 64 tokens, plans interleaved
    decode(model, cplans[-1], cp[0], 8)
    for c in range(calibrations):
        for r in range(3):
            for i, ids in enumerate(cp):
                for k in np.roll(np.arange(len(cplans)), -(r + i)):
                    runs.append({**record("calib", int(k), cplans[k], decode(model, cplans[k], ids, 64)), "set": c})
    rng = random.Random(0)
    for p, ids in enumerate(heldout_prompts(prompts, 64, 0)):
        for k in block_order(len(vplans), 4, rng):
            plan = ar if k < 0 else vplans[k]
            runs.append({**record("val", int(k), plan, decode(model, plan, ids, 128)), "prompt": p})
    load.append(Path("/proc/loadavg").read_text().split()[:3])
    out.write_text(json.dumps({"val_plans": [p.describe() for p in vplans], "calib_plans": [p.describe() for p in cplans],
                               "core": len(calibration_plans(model.num_layers, spread=False)), "load": load, "runs": runs}))
    print(f"{len(runs)} runs -> {out} (load average before / after: {load})")


def features(run: dict, table) -> tuple[np.ndarray, np.ndarray]:
    """fit_overheads' regressors and times for one recorded run (measure.overhead_rows)."""
    from hispec_exec.generate import Forward
    from hispec_exec.measure import overhead_rows

    forwards = [Forward(level, [tuple(s) for s in segs], segs[-1][1], ht, ms) for level, segs, ht, ms in run["forwards"]]
    return overhead_rows(forwards, run["wall_ms"], run["prompt_len"], table, max(f.head_layer for f in forwards))


def speedup_errors(coef: np.ndarray, val: list) -> np.ndarray:
    """Per validation plan: the speed-up over the interleaved autoregressive runs that the
    fit's prices of the forwards that ran give, over the measured one, minus 1. The
    after-a-check term is charged to the check, as the simulator does."""
    coef = np.r_[coef, np.zeros(7 - len(coef))]  # fits on fewer columns: the rest 0
    coef = np.r_[coef[:2], coef[2] + coef[4], coef[3], 0.0, coef[5:]]
    meas, pred = {}, {}
    for run, X, _ in val:
        k = run["plan"]
        meas[k] = meas.get(k, 0.0) + run["wall_ms"]
        pred[k] = pred.get(k, 0.0) + float((X @ coef).sum())
    ref = pred[-1] / meas[-1]
    return np.array([ref / (pred[k] / meas[k]) - 1 for k in sorted(meas) if k >= 0])


def plan_sets(name: str, data: dict, parts: dict, credit: np.ndarray) -> None:
    """Each independent calibration fitted on the core plans' runs and on all of them (on all
    of them also unweighted, as before 2026-11-29 09:35; per block without the per-layer
    credit and the extra rows, as before 2026-11-30 16:30)."""
    from hispec_exec.measure import drifting_nnls, verify_cost

    print(f"\n{name}: calibration plans {data['calib_plans']} (the first {data['core']}: the core set)")
    every = len(data["calib_plans"])
    for label, plans, relative, by_block, cols, lower in (
            ("core plans", data["core"], True, False, 6, None), ("all plans, unweighted", every, False, False, 6, None),
            ("all plans", every, True, False, 6, None), ("all plans, one speed per block", every, True, True, 6, None),
            ("all plans, one speed per block, extra rows, per-layer credit (now)", every, True, True, 7, credit)):
        for c in sorted({r["set"] for r, _, _ in parts["calib"]}):
            # a block: every plan's run on one prompt in one round, back to back (collect's order)
            this_set = [x for x in parts["calib"] if x[0]["set"] == c]
            cal = [(n // every, x) for n, x in enumerate(this_set) if x[0]["plan"] < plans]
            X, y = np.concatenate([x[1] for _, x in cal]), np.concatenate([x[2] for _, x in cal])
            group = np.concatenate([np.full(len(x[2]), b if by_block else i) for i, (b, x) in enumerate(cal)])
            f = drifting_nnls(X[:, :cols], y, group, scale_col=3, bootstrap=100, relative=relative, lower=lower)
            coef, se = f["coef"], f["se"]
            verify, verify_se = verify_cost(f)
            e = speedup_errors(coef, parts["val"])
            print(f"  {label}, calibration {c}: per forward {coef[0]:.3f} +- {se[0]:.3f}, per layer {coef[1]:.3f} "
                  f"+- {se[1]:.3f}, per check {verify:.3f} +- {verify_se:.3f} ms -> validation "
                  f"median |error| {100 * np.median(np.abs(e)):.1f} %, worst {100 * np.abs(e).max():.1f} %")
    # the model's own floor: the validation runs fitted on themselves, one speed per prompt (collect runs
    # every validation plan on one prompt back to back)
    val = parts["val"]
    per_prompt = len(val) // 8  # data sets before "prompt" was recorded: the default --prompts 8
    X, y = np.concatenate([x[1] for x in val]), np.concatenate([x[2] for x in val])
    group = np.concatenate([np.full(len(y_), r.get("prompt", i // per_prompt)) for i, (r, _, y_) in enumerate(val)])
    e = speedup_errors(drifting_nnls(X, y, group, scale_col=3, bootstrap=0)["coef"], val)
    print(f"  the validation runs fitted on themselves (one speed per prompt): median |error| "
          f"{100 * np.median(np.abs(e)):.1f} %, worst {100 * np.abs(e).max():.1f} %")


def noise_by_price(name: str, parts: dict) -> None:
    """The first calibration's residual spread (1.4826 MAD, after the per-run speeds of an
    unweighted fit) by the forward's price: is the noise additive or proportional?"""
    from hispec_exec.measure import drifting_nnls

    cal = [x for x in parts["calib"] if x[0]["set"] == 0]
    X, y = np.concatenate([x[1] for x in cal]), np.concatenate([x[2] for x in cal])
    group = np.concatenate([np.full(len(x[2]), i) for i, x in enumerate(cal)])
    f = drifting_nnls(X, y, group, scale_col=3, bootstrap=0, relative=False)
    price = X @ f["coef"]
    resid = y / f["speed"][group] - price
    print(f"\n{name}, calibration 0: residual spread by price (unweighted fit)")
    for lo, hi in ((0, 1.2), (1.2, 1.8), (1.8, 2.5), (2.5, 3.5), (3.5, 5), (5, 9), (9, 20)):
        m = (price >= lo) & (price < hi)
        if m.sum() >= 20:
            sd = 1.4826 * np.median(np.abs(resid[m] - np.median(resid[m])))
            print(f"  {lo}-{hi} ms: {m.sum()} forwards, spread {sd:.3f} ms = "
                  f"{100 * sd / np.median(price[m]):.1f} % of the price")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="*", type=Path, help="data sets written by --collect")
    ap.add_argument("--collect", type=Path, help="run the plans and write a data set here")
    ap.add_argument("--prompts", type=int, default=8, help="held-out prompts for the validation plans")
    ap.add_argument("--calibrations", type=int, default=3, help="independent calibrations to collect")
    ap.add_argument("--profile", default="cpu_hispec_tiny", help="the latency table to price with")
    args = ap.parse_args()
    if args.collect:
        collect(args.collect, args.prompts, args.calibrations)
        return
    from hispec_exec.measure import drifting_nnls, overhead_lower_bounds, scaled_nnls
    from hispec_sim.schema import load_profile

    table = load_profile(args.profile).table()
    credit = overhead_lower_bounds(table)
    data = {p: json.loads(gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_text()) for p in args.sets}
    parts = {p: {kind: [(r, *features(r, table)) for r in d["runs"] if r["kind"] == kind] for kind in ("calib", "val")}
             for p, d in data.items()}
    print(f"validation plans: {next(iter(data.values()))['val_plans']}")
    for a in args.sets:
        noise_by_price(a.name, parts[a])
        plan_sets(a.name, data[a], parts[a], credit)
        cal = [c for c in parts[a]["calib"] if c[0]["plan"] < data[a]["core"] and c[0]["set"] == 0]
        X = np.concatenate([c[1] for c in cal])
        group = np.concatenate([np.full(len(c[2]), i) for i, c in enumerate(cal)])
        drift = np.random.default_rng(1).uniform(0.8, 1.25, len(cal))
        for label, y in (("", np.concatenate([c[2] for c in cal])),
                         (" drift injected", np.concatenate([c[2] * f for c, f in zip(cal, drift)]))):
            for name, fit, cols, kw in (
                    ("pooled (before)", scaled_nnls, 4, {}), ("per run", drifting_nnls, 4, {"relative": False}),
                    ("per run + after a check", drifting_nnls, 5, {"relative": False}),
                    ("per run + after a check, weighted by 1 / price", drifting_nnls, 5, {}),
                    ("per run + after a check + working set + a check's extra rows + a per-layer credit, weighted",
                     drifting_nnls, 7, {"lower": credit})):
                coef = fit(X[:, :cols], y, group, scale_col=3, bootstrap=0, **kw)["coef"]
                print(f"\ncalibration {a.name} (load {data[a]['load'][0]}){label}, {name}: per forward "
                      f"{coef[0]:.3f} ms, per layer {coef[1]:.3f} ms, per check {coef[2]:.3f} ms, table x{coef[3]:.3f}"
                      + (f", after a check {coef[4]:.3f} ms" if cols > 4 else "")
                      + (f", working set x{coef[5]:.3f}, per extra row and layer {coef[6]:.4f} ms" if cols > 6 else ""))
                for b in args.sets:
                    e = speedup_errors(coef, parts[b]["val"])
                    print(f"  validation runs {b.name} (load {data[b]['load'][0]}): median |error| "
                          f"{100 * np.median(np.abs(e)):.1f} %, worst {100 * np.abs(e).max():.1f} %  "
                          + " ".join(f"{100 * x:+.1f}" for x in e))


if __name__ == "__main__":
    main()
