"""Profiles for the HiSpec paper's setups (issue 7), from published inputs only, and the
study note of their predicted optima.

    python studies/paper_inputs/build_paper_profiles.py [DATA_DIR] [--out profiles] [--no-optimize]

DATA_DIR defaults to profiles/sources/ (the vendored third-party files).

Writes profiles/h100_<model>.json for llama3_8b, llama2_7b, llama2_13b, codellama_7b,
codellama_34b, llama2_70b (workloads sharegpt, cnn_dm, humaneval, gsm8k, xsum: the central
per_draft reading of the published acceptance figures, each with _low / _high band variants,
and <w>_per_position, the alternative reading; stacks hf_eager (default) and compiled), then runs
`hispec-sim optimize --json` on every model x workload and writes
studies/paper_inputs/optima.json and the tables of studies/paper_inputs/NOTES.md
(between the AUTO markers). The paper's reported speed-ups are NOT used anywhere here.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies" / "profiles"))

import build_profiles as bp  # noqa: E402

from hispec_sim import vidur  # noqa: E402
from hispec_sim.acceptance_fit import Point, fit_curves  # noqa: E402
from hispec_sim.latency import CostModel  # noqa: E402
from hispec_sim.schema import Profile  # noqa: E402

WORKLOADS = ["sharegpt", "cnn_dm", "humaneval", "gsm8k", "xsum"]
BANDS = ["central", "low", "high"]
HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- models

# key: (shape name, layout GPUs, H100 Vidur folder or None, reference for roofline scaling, note)
MODELS = {
    "llama3_8b": ("Llama-3-8B", 1, None, "Llama-2-7b-hf", "1 H100"),
    "llama2_7b": ("Llama-2-7B", 1, "Llama-2-7b-hf", None, "1 H100"),
    "llama2_13b": ("Llama-2-13B", 1, None, "Llama-2-7b-hf", "1 H100 (26 GB of bf16 weights)"),
    "codellama_7b": ("CodeLlama-7B", 1, "Llama-2-7b-hf", None, "1 H100; layers measured as Llama-2-7B (same architecture)"),
    "codellama_34b": ("CodeLlama-34B", 2, "CodeLlama-34b-Instruct-hf", None,
                      "layers split over 2 H100 (device_map='auto', pipeline: one GPU active at a time at batch 1)"),
    "llama2_70b": ("Llama-2-70B", 4, "Llama-2-70b-hf", None,
                   "layers split over 4 H100 (device_map='auto', pipeline: one GPU active at a time at batch 1)"),
}


def points_for(key: str, band: str, reading: str = bp.CENTRAL_READING) -> tuple[list[Point], float | None, str]:
    """(points, fixed c or None, c note) for one model, band and reading of the published figures."""
    d = {"central": 0.0, "low": -1.0, "high": 1.0}[band]
    fig, rng = 0.03 * d, 0.075 * d
    fp = bp.fig_point
    if key == "llama2_70b":
        return bp.points_llama2_70b(band, reading), None, "c fitted on the Llama2-70B ShareGPT exits 10 and 20"
    if key == "codellama_34b":
        return bp.points_codellama34b(band, reading), None, "c fitted on the CodeLlama-34B two-level figure (exits 7 and 12)"
    c, c_note, _ = bp.shape_c_pooled(reading)
    if key == "llama3_8b":
        return [fp("cnn_dm", 0.69 + fig, 8, 32, reading, bp.FIG4), fp("xsum", 0.46 + fig, 8, 32, reading, bp.FIG4)] + \
               [fp(w, 0.475 + rng, 8, 32, reading, bp.RANGE) for w in ("sharegpt", "gsm8k", "humaneval")], c, c_note
    if key == "llama2_13b":
        return [fp("cnn_dm", 0.54 + fig, 10, 40, reading, bp.FIG4), fp("xsum", 0.41 + fig, 10, 40, reading, bp.FIG4)] + \
               [fp(w, 0.475 + rng, 10, 40, reading, bp.RANGE) for w in ("sharegpt", "gsm8k", "humaneval")], c, c_note
    if key == "llama2_7b":
        return bp.points_llama2_7b(band, reading), c, c_note
    if key == "codellama_7b":
        f34 = _fit34(reading)
        note = "CodeLlama-34B figure (L12/48) used for CodeLlama-7B at the same relative depth 1/4 (assumed)"
        return [fp("cnn_dm", 0.63 + fig, 8, 32, reading, bp.FIG4, note), fp("xsum", 0.47 + fig, 8, 32, reading, bp.FIG4, note)] + \
               [fp(w, 0.475 + rng, 8, 32, reading, bp.RANGE, note) for w in ("sharegpt", "gsm8k", "humaneval")], \
            f34.c, f"c fixed (assumed) to CodeLlama-34B's fitted steepness {f34.c:.4f} ({reading} reading; same code-tuned family)"
    raise KeyError(key)


_F34: dict = {}


def _fit34(reading: str):
    if reading not in _F34:
        _F34[reading] = fit_curves(bp.points_codellama34b("central", reading), 48, reading=reading)
    return _F34[reading]


# (reading, band, workload-name suffix): the central reading with its bands, and the alternative reading
VARIANTS = [(bp.CENTRAL_READING, "central", ""), (bp.CENTRAL_READING, "low", "_low"), (bp.CENTRAL_READING, "high", "_high"),
            (bp.OTHER_READING, "central", "_" + bp.OTHER_READING)]


def build_model(data: Path, key: str, cal_c: dict, cal_h: dict) -> Profile:
    sname, gpus, folder, ref, layout = MODELS[key]
    shape = bp.model_shape(sname)
    L = shape.num_layers
    s, f = cal_h["layer_host_ms"], cal_h["forward_host_ms"]
    host = (f"Host overhead {s:.4f} ms per layer and {f:.4f} ms per forward calibrated on ONE figure: {bp.HF_CAL['what']} "
            f"{bp.HF_CAL['figure_ms']} ms/token (see provenance.hf_eager_calibration). GPU layout: {layout}.")
    tables = []
    if folder is not None:
        tables.append(bp.eager_kernel_table(data, "h100", folder, shape, 1, layer_host=s, fwd_host=f, detail=host))
        tps = [1, 2, 4, 8] if key in ("llama2_70b", "codellama_34b") else [1]
        tables += bp.compiled_tables(data, "h100", folder, shape, tps, cal_c["overhead_ms"],
                                     f"the A100 gpt-fast calibration ({cal_c['overhead_ms']} ms) carried over (assumed)")
        lat_src = f"H100 Vidur measurements of {folder}"
    else:
        ref_shape = bp.model_shape("Llama-2-7B")
        ratio = vidur.layer_weight_bytes(shape, 1) / vidur.layer_weight_bytes(ref_shape, 1)
        sc = (f"No H100 measurement of {sname}: ops scaled from the H100 Llama-2-7B measurement (roofline scaling: linear "
              f"ops x weight-bytes ratio {ratio:.3f}, elementwise ops x hidden ratio {shape.hidden / ref_shape.hidden:.3f}).")
        tables.append(bp.eager_kernel_table(data, "h100", ref, shape, 1, scale_from=ref_shape, layer_host=s, fwd_host=f,
                                         detail=sc + " " + host))
        mlp, _, _ = vidur.find_model_folder(data / "vidur", ref, "h100")
        dd = bp.scale_mlp(vidur.read_mlp_csv(mlp), ref_shape, shape)
        tables.append(vidur.table_from_mlp(dd, shape, vidur.hardware_for("h100"), 1, None, stack="compiled",
                                           overhead_ms=cal_c["overhead_ms"], label=sname, fuse_elementwise=True,
                                           extra_detail=sc + f" Per-forward overhead {cal_c['overhead_ms']} ms from the A100 gpt-fast calibration (assumed)."))
        lat_src = f"H100 Vidur measurements of Llama-2-7B scaled to the {sname} shape (roofline)"
    workloads = {}
    cost = bp.fit_cost(tables[0], L)  # hf_eager, the default table: the per_draft fit runs analytic.predict on it
    for reading, band, suffix in VARIANTS:
        pts, c, c_note = points_for(key, band, reading)
        fit_w = WORKLOADS + sorted({p.workload for p in pts} - set(WORKLOADS))  # e.g. two_level_fig: sets c, not shipped
        fit = fit_curves(pts, L, fit_w, c=c, c_note=c_note, cost=cost, reading=reading)
        workloads.update(bp.workloads_from_fit(
            fit, f"{sname} (LayerSkip/AdaDecode early-exit checkpoint), band {band}", WORKLOADS, suffix=suffix,
            extra_src=("Band: published points moved by their reading error (plot values +-0.03, the 0.40-0.55 range to "
                       "its ends, text figures +-0.02)." if band != "central" else ""), band=band))
    pred = {t.key: round(CostModel(t, 1, 512).autoregressive_ms(L), 3) for t in tables}
    return Profile(
        name=f"h100_{key}",
        description=f"{sname} on H100-SXM5, HiSpec paper setup: Hugging Face eager stack at batch 1 (default; {layout}); "
                    f"compiled stack also; workloads {', '.join(WORKLOADS)} (per_draft reading of the published acceptance, "
                    f"central) with _low/_high bands, and <w>_per_position (alternative reading)",
        hardware=vidur.hardware_for("h100", gpus=gpus), model=shape, latency=tables, default_tp=1, default_stack="hf_eager",
        workloads=workloads, default_workload="sharegpt",
        provenance={
            "purpose": "predict the HiSpec paper's setups from published inputs only; the paper's reported speed-ups are "
                       "outcomes kept apart for an independent check and were NOT used",
            "latency": f"{lat_src}; {vidur.VIDUR_CREDIT} ({vidur.VIDUR_REF})",
            "gpu_layout": layout,
            "hf_eager": bp.HF_EAGER_NOTE,
            "hf_eager_calibration": cal_h,
            "compiled_calibration": bp.calibration_text(cal_c) + f"; source: {bp.GPTFAST}",
            "predicted_autoregressive_ms_per_token_context512": pred,
            "acceptance": "fitted per model to published points (see workloads.*.fit); band workloads <w>_low/<w>_high "
                          "(around the central reading). " + bp.READINGS_TEXT,
            "acceptance_c_spread": {r: {k: v for k, v in bp.shape_c_pooled(r)[2].items()} for r in (bp.CENTRAL_READING, bp.OTHER_READING)}
                                   | {"note": "the band does not vary c; the steepness of the two fitted models, per reading"},
            "contexts": {w: bp.CONTEXTS[w][1] for w in WORKLOADS},
            "sources": [bp.HISPEC, bp.LAYERSKIP, bp.GPTFAST, vidur.VIDUR_CREDIT + " " + vidur.VIDUR_REF, vidur.DATASHEET],
            "built_by": "studies/paper_inputs/build_paper_profiles.py",
        },
    )


# --------------------------------------------------------------------------- optimize + notes


def _cli(argv: list[str]) -> dict:
    """`hispec-sim ARGV` in this process (same code path as the command line, without the start-up)."""
    from hispec_sim.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    if rc != 0:
        raise SystemExit(f"hispec-sim {' '.join(argv)} failed: {err.getvalue().strip()}")
    return json.loads(out.getvalue())


def run_optimize(profile: str, workload: str, stack: str | None = None) -> dict:
    cmd = ["optimize", "--profile", profile, "--workload", workload, "--json"]
    if stack:
        cmd += ["--stack", stack]
    return _cli(cmd)


PAPER_EXITS = {"llama3_8b": "3,8,32", "llama2_70b": "10,20,80", "codellama_34b": "7,12,48"}  # HiSpec's concrete exits


def run_evaluate(profile: str, workload: str, levels: str) -> dict:
    return _cli(["evaluate", "--profile", profile, "--workload", workload, "--levels", levels, "--propose", "2",
                 "--window", "4", "--json"])


def _plan(d: dict) -> str:
    p = d["plan"]
    s = "[" + ",".join(map(str, p["levels"])) + "]"
    if len(p["levels"]) >= 2:
        s += f" g={p['propose']}"
    if p.get("windows"):
        s += " w=" + ",".join(map(str, p["windows"]))
    return s


def optima(keys) -> dict:
    res = {}
    for key in keys:
        for w in WORKLOADS:
            for reading, band, suffix in VARIANTS:
                wl = w + suffix
                for stack in ("hf_eager", "compiled"):
                    if suffix and stack == "compiled":
                        continue
                    res[f"h100_{key}/{wl}/{stack}"] = run_optimize(f"h100_{key}", wl, stack)
            if key in PAPER_EXITS:
                for suffix in ("", "_" + bp.OTHER_READING):
                    res[f"h100_{key}/{w}{suffix}/hf_eager/paper_exits"] = run_evaluate(f"h100_{key}", w + suffix, PAPER_EXITS[key])
    return res


def _alt(wl: str) -> bool:
    return wl.endswith(("_low", "_high", "_" + bp.OTHER_READING))


def _row(prof, wl, r, band=None):
    b, s1, pd = r["best"], r["baselines"]["best_single_level"], r["baselines"].get("paper_default")
    cells = [prof, wl, _plan(b), f"{b['tokens_per_second']:.1f}", f"{b['speedup_vs_autoregressive']:.2f}", _plan(s1),
             f"{s1['speedup_vs_autoregressive']:.2f}", f"{b['tokens_per_second'] / s1['tokens_per_second']:.3f}",
             _plan(pd) if pd else "-", f"{pd['speedup_vs_autoregressive']:.2f}" if pd else "-"]
    if band is not None:
        cells.append(band)
    return "| " + " | ".join(cells) + " |"


def comparison_lines(res: dict, workload: str = "sharegpt") -> list[str]:
    """One line per model: best plan and speed-ups under the two readings (hf_eager)."""
    lines = [f"| model | {bp.CENTRAL_READING}: best plan | x AR | x best single | paper default x AR | "
             f"{bp.OTHER_READING}: best plan | x AR | x best single | paper default x AR |", "|---|---|---|---|---|---|---|---|---|"]
    for k, r in res.items():
        prof, wl, stack = k.split("/")[:3]
        if wl != workload or stack != "hf_eager" or k.endswith("/paper_exits"):
            continue
        q = res[f"{prof}/{wl}_{bp.OTHER_READING}/hf_eager"]
        cells = [prof]
        for x in (r, q):
            b, s1, pd = x["best"], x["baselines"]["best_single_level"], x["baselines"]["paper_default"]
            cells += [_plan(b), f"{b['speedup_vs_autoregressive']:.2f}", f"{b['tokens_per_second'] / s1['tokens_per_second']:.3f}",
                      f"{pd['speedup_vs_autoregressive']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def notes_tables(res: dict, cal_c: dict, cal_h: dict) -> str:
    lines = ["### The two readings of the published acceptance figures, sharegpt, hf_eager, batch 1", "",
             f"Central: `{bp.CENTRAL_READING}` (workloads `<w>`); alternative: `{bp.OTHER_READING}` (workloads "
             f"`<w>_{bp.OTHER_READING}`). Command: `hispec-sim optimize --profile P --workload sharegpt` (and "
             f"`--workload sharegpt_{bp.OTHER_READING}`).", ""] + comparison_lines(res) + ["",
             "### Fitted per-position agreement at the figures' exits (sharegpt), both readings", "",
             "| model | reading | c | m | F at the figures' exits |", "|---|---|---|---|---|"]
    lines += _alpha_lines()
    lines += ["", f"### Predicted optima, hf_eager stack (the paper's), batch 1, central acceptance ({bp.CENTRAL_READING} reading)", "",
             "| model | workload | best plan | tok/s | x AR | best single-level | x AR | best / single | paper default plan | x AR | band x AR (low-high) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in res:
        prof, wl, stack = k.split("/")[:3]
        if k.endswith("/paper_exits") or stack != "hf_eager" or _alt(wl):
            continue
        lo = res[f"{prof}/{wl}_low/hf_eager"]["best"]["speedup_vs_autoregressive"]
        hi = res[f"{prof}/{wl}_high/hf_eager"]["best"]["speedup_vs_autoregressive"]
        lines.append(_row(prof, wl, res[k], f"{lo:.2f}-{hi:.2f}"))
    lines += ["", f"### Same, alternative {bp.OTHER_READING} reading (workloads <w>_{bp.OTHER_READING}; the previous central)", "",
              "| model | workload | best plan | tok/s | x AR | best single-level | x AR | best / single | paper default plan | x AR |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for k in res:
        prof, wl, stack = k.split("/")[:3]
        if k.endswith("/paper_exits") or stack != "hf_eager" or not wl.endswith("_" + bp.OTHER_READING):
            continue
        lines.append(_row(prof, wl, res[k]))
    lines += ["", "### Same, compiled stack (kernel time + 0.28 ms per forward), central acceptance", "",
              "| model | workload | best plan | tok/s | x AR | best single-level | x AR | best / single |", "|---|---|---|---|---|---|---|---|"]
    for k, r in res.items():
        prof, wl, stack = k.split("/")[:3]
        if stack != "compiled" or _alt(wl):
            continue
        b, s1 = r["best"], r["baselines"]["best_single_level"]
        lines.append(f"| {prof} | {wl} | {_plan(b)} | {b['tokens_per_second']:.1f} | {b['speedup_vs_autoregressive']:.2f} | "
                     f"{_plan(s1)} | {s1['speedup_vs_autoregressive']:.2f} | {b['tokens_per_second'] / s1['tokens_per_second']:.3f} |")
    lines += ["", "### The paper's concrete exits with N_d = 2, N_i = 4 (hf_eager; both readings)", "",
              "| model | workload | plan | tok/s | x AR |", "|---|---|---|---|---|"]
    for k, r in res.items():
        if k.endswith("/paper_exits"):
            prof, wl = k.split("/")[:2]
            lines.append(f"| {prof} | {wl} | {_plan(r)} | {r['tokens_per_second']:.1f} | {r['speedup_vs_autoregressive']:.2f} |")
    lines += ["", "### hf_eager calibration (ONE figure fitted; the others are checks)", "",
              f"Per-layer host overhead s = {cal_h['layer_host_ms']} ms, per-forward {cal_h['forward_host_ms']} ms "
              f"(= {bp.LAYER_HOST_RATIO:g} s, assumed); A100 Llama-2-7B eager kernel time {cal_h['kernel_ms']} ms/token.", "",
              "| figure | published ms/token | context (assumed) | predicted | error |", "|---|---|---|---|---|"]
    for r in cal_h["rows"]:
        er = "fitted" if r["used_for_fit"] else f"{r['error_pct']:+.1f} % (vs midpoint; {r['error_range_pct'][0]:+.1f}..{r['error_range_pct'][1]:+.1f} % over the range)"
        lines.append(f"| {r['check']} | {r['published_ms']} | {r['context']} | {r['predicted_ms']} | {er} |")
    lines += ["", "### compiled calibration (gpt-fast, A100-80GB; ONE figure fitted)", "",
              "| model | TP | published ms/token | predicted | error |", "|---|---|---|---|---|"]
    for r in cal_c["rows"]:
        er = "fitted" if r["used_for_fit"] else "%+.1f %%" % r["error_pct"]
        lines.append(f"| {r['model']} | {r['tp']} | {r['published_ms']} | {r['predicted_ms']} | {er} |")
    return "\n".join(lines) + "\n"


def _alpha_lines() -> list[str]:
    from hispec_sim.schema import load_profile

    out = []
    for key in MODELS:
        try:
            p = load_profile(str(REPO / "profiles" / f"h100_{key}.json"))
        except FileNotFoundError:
            continue
        L = p.model.num_layers
        for wl in ("sharegpt", "sharegpt_" + bp.OTHER_READING):
            f = p.workload(wl).fit
            F = np.array(p.workload(wl).agreement)[:, L - 1]
            exits = sorted({e for pt in f["points"] for e in (pt.get("config", {}).get("levels") or [pt.get("exit")])
                            if e and e != L})
            out.append(f"| h100_{key} | {f['reading']} | {f['params']['c']:.3f} | {f['params']['m']:.3f} | "
                       + ", ".join(f"F({e}) = {F[e - 1]:.3f}" for e in exits) + " |")
    return out


def write_notes(tables: str) -> None:
    path = HERE / "NOTES.md"
    text = path.read_text() if path.exists() else "<!-- AUTO:BEGIN -->\n<!-- AUTO:END -->\n"
    a, b = "<!-- AUTO:BEGIN -->", "<!-- AUTO:END -->"
    head, rest = text.split(a, 1)
    _, tail = rest.split(b, 1)
    path.write_text(head + a + "\n" + tables + b + tail)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=str(bp.SOURCES))
    ap.add_argument("--out", default=str(REPO / "profiles"))
    ap.add_argument("--only", nargs="*", choices=sorted(MODELS))
    ap.add_argument("--no-optimize", action="store_true")
    a = ap.parse_args(argv)
    data = Path(a.data)
    if not (data / "vidur").is_dir():
        raise SystemExit(f"data: no vidur/ folder under {data}")
    cal_c = bp.calibrate_gptfast(data)
    cal_h = bp.calibrate_hf_eager(data)
    print("hf_eager calibration:", json.dumps(cal_h, indent=1))
    keys = a.only or list(MODELS)
    for key in keys:
        prof = build_model(data, key, cal_c, cal_h)
        path = Path(a.out) / f"{prof.name}.json"
        bp.save_profile_compact(prof, path)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if not a.no_optimize:
        res = optima(keys)
        keep = ("best", "baselines", "plans_evaluated", "batch", "profile", "workload", "stack", "tp", "context", "plan",
                "tokens_per_second", "speedup_vs_autoregressive", "tokens_per_full_forward", "latency_ms_per_token")
        slim = {k: {f: v for f, v in r.items() if f in keep} for k, r in res.items()}
        (HERE / "optima.json").write_text(json.dumps(slim, indent=1) + "\n")
        write_notes(notes_tables(res, cal_c, cal_h))
        print("wrote optima.json and NOTES.md tables")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
