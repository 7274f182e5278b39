"""Capacity-planning report: one self-contained HTML file (plotly.js inline) or Markdown.

`compute()` produces every number as a plain JSON-able dict; `render_html()` and
`render_markdown()` only format it, so both formats carry the same numbers.

Batching semantics (those of latency.CostModel, the analytic model and the Monte-Carlo
simulator): the B sequences of a batch run the plan's schedule in lockstep; a forward
carries B x the stream's new tokens through the linear layers and B sequences' attention,
each over its own KV cache (latency.batched_layer_ms).
Aggregate tokens/s = B x (tokens per sequence per second); per-token latency is the time
one sequence waits per committed token, so at a fixed batch the fastest plan is also the
lowest-latency one.

Everything user-supplied that reaches HTML (profile/workload names, descriptions,
provenance, validation plans) goes through html.escape; JSON embedded in <script> has
every '<' written as \\u003c, so no string can close the tag.
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

import numpy as np

from . import schema
from .evaluate import Setting, exhaustive_arrays, ranked_plans, score
from .schema import Acceptance, Plan, Profile, Source

FAMILIES = ("autoregressive", "single_level", "hierarchical")
FAMILY_LABEL = {"autoregressive": "autoregressive", "single_level": "best single-level",
                "hierarchical": "best hierarchical (3-level)", "best": "best plan"}
COLORS = {"autoregressive": "#7f7f7f", "single_level": "#1f77b4", "hierarchical": "#d62728"}
DEFAULTS = {"target_tps": 10000.0, "slo_ms": 50.0, "gpu_hour_usd": 2.0}
SENSITIVITY = (1.0, 0.9, 0.8)
MEMORY_HEADROOM = 0.9  # fraction of HBM usable for weights + KV cache


# --------------------------------------------------------------------------- checks


def _positive(value, field: str) -> float:
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{field}: must be a finite number > 0, got {value}")
    return float(value)


def check_output_path(out: str | Path) -> Path:
    """Fail before any work when the report cannot be written there."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"out: {out} is a folder, not a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"out: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"out: cannot write to folder {parent} (permission denied)")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"out: {out} is not writable")
    return path


def load_validation(path: str | Path) -> dict:
    """The JSON `hispec-sim validate --json` prints; ValueError naming the field otherwise."""
    data = schema._load_json(Path(path), "validation")  # bounded: size, nesting, finite numbers
    if not isinstance(data, dict) or not isinstance(data.get("plans"), list):
        raise ValueError("validation.plans: expected an object with a 'plans' list")
    rows = []
    for i, r in enumerate(data["plans"]):
        if not isinstance(r, dict):
            raise ValueError(f"validation.plans.{i}: expected an object")
        for key in ("predicted_tokens_per_second", "measured_tokens_per_second"):
            v = r.get(key)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"validation.plans.{i}.{key}: expected a number > 0, got {v!r}")
        plan = r.get("plan")
        if isinstance(plan, dict):
            try:
                label = Plan.model_validate(plan).describe()
            except Exception:
                label = json.dumps(plan, sort_keys=True)
        else:
            label = str(plan)
        rel = r.get("relative_error")
        if not (isinstance(rel, (int, float)) and math.isfinite(rel)):
            rel = r["predicted_tokens_per_second"] / r["measured_tokens_per_second"] - 1.0
        rows.append({"plan": label, "family": str(r.get("family", "")),
                     "predicted_tokens_per_second": float(r["predicted_tokens_per_second"]),
                     "measured_tokens_per_second": float(r["measured_tokens_per_second"]),
                     "relative_error": float(rel)})
    errs = np.abs([r["relative_error"] for r in rows]) if rows else np.zeros(0)

    def _stat(key, fallback):
        v = data.get(key)
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else fallback

    return {"plans": rows,
            "median_abs_relative_error": _stat("median_abs_relative_error", float(np.median(errs)) if rows else None),
            "max_abs_relative_error": _stat("max_abs_relative_error", float(errs.max()) if rows else None),
            "source_file": str(path),
            "profile": str(data.get("profile", "")) if data.get("profile") is not None else None}


# --------------------------------------------------------------------------- numbers


def _r(x, nd=3):
    if x is None:
        return None
    x = float(x)
    return round(x, nd) if math.isfinite(x) else None


def _grid(a: np.ndarray, nd=2) -> list:
    return [[_r(v, nd) for v in row] for row in np.asarray(a, float)]


def _best_of(setting: Setting, max_propose: int, max_window: int) -> dict:
    """Best autoregressive, single-level and 3-level plan at the setting's batch, scored
    through the generic path (one source of truth)."""
    arrays = exhaustive_arrays(setting, max_propose, max_window)
    plans = {"autoregressive": Plan(levels=[setting.num_layers], batch=setting.batch)}
    plans.update({family: ranked[0] for family, ranked in ranked_plans(setting, arrays, 1).items() if ranked})
    names = list(plans)
    scored = score(setting, [plans[n] for n in names])
    out = {}
    for n, s in zip(names, scored):
        out[n] = {"plan": s.plan.model_dump(), "describe": s.plan.describe(), "tokens_per_second": _r(s.tokens_per_second, 4),
                  "latency_ms_per_token": _r(s.latency_ms, 4), "tokens_per_full_forward": _r(s.tokens_per_full_forward, 4),
                  "acceptance_per_level": [_r(a, 4) for a in s.acceptance]}
    best = max(out, key=lambda n: out[n]["tokens_per_second"])
    return {"families": out, "best_family": best, "arrays": arrays}


def _memory(profile: Profile, tp: int, context: int, max_new: int) -> dict:
    """Largest batch whose weights + KV cache fit in tp x HBM (bf16), when the profile says HBM."""
    m = profile.model
    head_dim = m.hidden / m.heads
    kv_per_token = 2 * m.num_layers * m.kv_heads * head_dim * 2  # K and V, bf16
    params = m.num_layers * (2 * m.hidden * m.hidden + 2 * m.hidden * m.kv_heads * head_dim + 3 * m.hidden * m.ffn) \
        + 2 * m.vocab * m.hidden
    weights = 2 * params
    out = {"weights_gb": _r(weights / 1e9, 2), "kv_mb_per_token": _r(kv_per_token / 1e6, 4), "hbm_gb": None,
           "max_batch": None, "fits": None}
    if profile.hardware.hbm_gb:
        hbm = tp * profile.hardware.hbm_gb * 1e9
        out["hbm_gb"] = _r(hbm / 1e9, 1)
        free = MEMORY_HEADROOM * hbm - weights
        out["fits"] = bool(free > 0)
        if free > 0:
            out["max_batch"] = int(free // (kv_per_token * (context + max_new)))
    return out


def _scaled_profile(profile: Profile, workload: str, factor: float) -> Profile:
    """Every off-diagonal agreement rate times `factor` (the diagonal stays 1). Trace-based
    joints are replaced by the independent model on the scaled rates."""
    acc = profile.workload(workload)
    if factor == 1.0:
        return profile
    m = np.asarray(acc.agreement, float) * factor
    np.fill_diagonal(m, 1.0)
    scaled = Acceptance(exits=acc.exits, agreement=m.tolist(), context=acc.context, joint="independent",
                        source=Source(kind="derived", detail=f"{acc.source.detail} -- every agreement rate x {factor}"))
    return profile.model_copy(update={"workloads": {**profile.workloads, workload: scaled}})


def compute(profile: Profile, workload: str | None = None, tp: int | None = None, stack: str | None = None,
            batch: int = 1, context: int | None = None, target_tps: float | None = None, slo_ms: float | None = None,
            gpu_hour_usd: float | None = None, validation: dict | None = None, max_batch: int = 256,
            max_propose: int = 8, max_window: int = 16, profile_ref: str | None = None) -> dict:
    """Every number of the report, as a JSON-able dict."""
    given = {"target_tps": target_tps is not None, "slo_ms": slo_ms is not None, "gpu_hour_usd": gpu_hour_usd is not None}
    target_tps = _positive(target_tps, "target_tps") or DEFAULTS["target_tps"]
    slo_ms = _positive(slo_ms, "slo_ms") or DEFAULTS["slo_ms"]
    gpu_hour_usd = _positive(gpu_hour_usd, "gpu_hour_usd") or DEFAULTS["gpu_hour_usd"]
    if not (isinstance(batch, int) and 1 <= batch <= 4096):
        raise ValueError("batch: must be in [1, 4096]")
    if not (isinstance(max_batch, int) and 1 <= max_batch <= 4096):
        raise ValueError("max_batch: must be in [1, 4096]")
    if not (1 <= max_propose <= 64 and 1 <= max_window <= 256):
        raise ValueError("max_propose must be in [1, 64] and max_window in [1, 256]")

    setting = Setting(profile, workload, tp, stack, batch, context)
    L = setting.num_layers
    data: dict = {
        "profile": {"name": profile.name, "ref": profile_ref or profile.name, "description": profile.description,
                    "hardware": profile.hardware.name, "gpus_per_node": profile.hardware.gpus,
                    "model": profile.model.name, "layers": L},
        "setting": setting.describe(),
        "search": {"max_propose": max_propose, "max_window": max_window},
        "batching": "B sequences decode in lockstep: every forward carries B x the stream's new tokens through "
                    "the linear layers and B sequences' attention, each over its own cache; "
                    "aggregate tokens/s = B x per-sequence tokens/s; per-token latency = time per committed token "
                    "of one sequence.",
    }

    # (a), (b): heatmaps at the chosen batch
    best = _best_of(setting, max_propose, max_window)
    exits, single, pairs, three = best.pop("arrays")
    data["best"] = best
    heat = {"draft_exits": [int(e) for e in exits], "available": bool(three.size)}
    if three.size:
        n = len(exits)
        flat = three.reshape(len(pairs), -1)
        arg = flat.argmax(1)
        bestv = flat.max(1)
        z = np.full((n, n), np.nan)
        gz = np.full((n, n), np.nan)
        wz = np.full((n, n), np.nan)
        d, i = np.triu_indices(n, 1)
        z[i, d], gz[i, d], wz[i, d] = bestv, arg // max_window + 1, arg % max_window + 1
        p = int(bestv.argmax())
        heat.update({"z": _grid(z), "propose": _grid(gz, 0), "window": _grid(wz, 0),
                     "best_pair": [int(pairs[p][0]), int(pairs[p][1])],
                     "gw": _grid(three[p]), "gw_propose": list(range(1, max_propose + 1)),
                     "gw_window": list(range(1, max_window + 1))})
        order = np.argsort(bestv)[::-1][:10]
        heat["top_pairs"] = [{"draft": int(pairs[k][0]), "intermediate": int(pairs[k][1]),
                              "propose": int(arg[k] // max_window + 1), "window": int(arg[k] % max_window + 1),
                              "tokens_per_second": _r(bestv[k], 2)} for k in order]
    heat["single_best_per_exit"] = [_r(v, 2) for v in (single.max(1) if single.size else [])]
    data["heatmap"] = heat

    # (c): batch sweep, every family re-optimised per batch
    max_new = max_propose + max_window + 8
    mem = _memory(profile, setting.tp, setting.context, max_new)
    limit = max_batch
    if mem["max_batch"] is not None:
        limit = max(1, min(limit, mem["max_batch"]))
    batches = [b for b in (2 ** k for k in range(13)) if b <= limit]
    if limit not in batches and limit > 1 and limit == max_batch:
        batches.append(limit)
    sweep = []
    for b in batches:
        s = Setting(profile, setting.workload, setting.tp, setting.stack, b, setting.context)
        r = _best_of(s, max_propose, max_window)
        r.pop("arrays")
        sweep.append({"batch": b, **r})
    data["memory"] = mem
    data["sweep"] = sweep
    data["sweep_note"] = _sweep_note(mem, setting, max_batch, limit, profile)
    data["crossover"] = _crossover(sweep)

    # (d): sensitivity of the best plan to lower acceptance
    best_plan = Plan.model_validate(best["families"][best["best_family"]]["plan"])
    sens = []
    for f in SENSITIVITY:
        sp = _scaled_profile(profile, setting.workload, f)
        s = Setting(sp, setting.workload, setting.tp, setting.stack, batch, setting.context)
        fixed = score(s, [best_plan])[0]
        r = _best_of(s, max_propose, max_window)
        r.pop("arrays")
        fam = r["families"]
        sens.append({"factor": f, "label": "as profiled" if f == 1.0 else f"{round((1 - f) * 100)} % lower",
                     "best_plan_tokens_per_second": _r(fixed.tokens_per_second, 4),
                     "reoptimised": {"describe": fam[r["best_family"]]["describe"],
                                     "tokens_per_second": fam[r["best_family"]]["tokens_per_second"]},
                     "single_level_tokens_per_second": fam.get("single_level", {}).get("tokens_per_second"),
                     "autoregressive_tokens_per_second": fam["autoregressive"]["tokens_per_second"]})
    data["sensitivity"] = {"plan": best_plan.describe(), "rows": sens,
                           "method": "every off-diagonal agreement rate of the workload multiplied by 0.9 / 0.8 "
                                     "(the diagonal stays 1); a workload with trace-based joint rates is evaluated "
                                     "with the independent model on the scaled rates"}

    # (e): capacity
    cache = {r["batch"]: r["families"] for r in sweep}

    def evaluate(b: int) -> dict:
        if b not in cache:
            r = _best_of(Setting(profile, setting.workload, setting.tp, setting.stack, b, setting.context),
                         max_propose, max_window)
            cache[b] = r["families"]
        return cache[b]

    data["capacity"] = _capacity(sweep, setting.tp, target_tps, slo_ms, gpu_hour_usd, evaluate)
    data["capacity"]["batches_evaluated"] = sorted(cache)
    data["capacity"]["given"] = given

    # (f): provenance and validation
    data["provenance"] = _provenance(profile)
    data["validation"] = validation
    return data


def _sweep_note(mem: dict, setting: Setting, max_batch: int, limit: int, profile: Profile) -> str:
    parts = [f"weights ~{mem['weights_gb']} GB (bf16), KV cache {mem['kv_mb_per_token']} MB per token"]
    if mem["hbm_gb"] is None:
        parts.append("the profile gives no HBM size, so batch is not capped by memory")
    elif not mem["fits"]:
        parts.append(f"the weights do NOT fit in tp={setting.tp} x {profile.hardware.hbm_gb} GB HBM: "
                     "these figures are hypothetical; use a larger --tp")
    else:
        parts.append(f"{mem['hbm_gb']} GB HBM (tp={setting.tp}) at {int(MEMORY_HEADROOM * 100)} % use holds "
                     f"batch <= {mem['max_batch']} at context {setting.context}")
    parts.append(f"sweep up to batch {limit}" + (" (--max-batch)" if limit == max_batch else " (memory)"))
    grid = setting.table.tokens[-1]
    parts.append(f"the latency table is measured up to {grid} tokens per forward; beyond that it is extrapolated linearly")
    return "; ".join(parts)


def _crossover(sweep: list[dict]) -> dict:
    """Where hierarchy stops paying (best 3-level no faster than best single-level) and where
    speculation stops paying (no speculative plan faster than autoregressive)."""
    hier_stops = spec_stops = None
    pays = []
    for row in sweep:
        f = row["families"]
        ar = f["autoregressive"]["tokens_per_second"]
        sl = f.get("single_level", {}).get("tokens_per_second", 0.0)
        hi = f.get("hierarchical", {}).get("tokens_per_second", 0.0)
        if hi > sl:
            pays.append(row["batch"])
        elif hier_stops is None and "hierarchical" in f:
            hier_stops = row["batch"]
        if max(sl, hi) <= ar and spec_stops is None and len(f) > 1:
            spec_stops = row["batch"]
    first = sweep[0]["families"]
    gain = None
    if "hierarchical" in first and "single_level" in first:
        gain = _r(first["hierarchical"]["tokens_per_second"] / first["single_level"]["tokens_per_second"] - 1, 4)
    return {"hierarchy_stops_paying_at_batch": hier_stops, "speculation_stops_paying_at_batch": spec_stops,
            "hierarchy_pays_at_batches": pays, "hierarchy_gain_at_smallest_batch": gain}


def _capacity(sweep: list[dict], tp: int, target: float, slo: float, price: float, evaluate=None) -> dict:
    """Per family: the batch meeting the SLO with the highest tokens/s per replica. The sweep
    (powers of two) is refined by bisection between the last batch that meets the SLO and
    the next one that does not, when `evaluate(batch) -> families` is given."""
    rows = []
    for fam in FAMILIES:
        entries = [(r["batch"], r["families"][fam]) for r in sweep if fam in r["families"]]
        if not entries:
            continue
        ok = [(b, e) for b, e in entries if e["latency_ms_per_token"] <= slo]
        if ok and evaluate is not None:
            lo = max(b for b, _ in ok)
            above = [b for b, e in entries if b > lo and e["latency_ms_per_token"] > slo]
            hi = min(above) if above else None
            while hi is not None and hi - lo > 1:
                mid = (lo + hi) // 2
                e = evaluate(mid).get(fam)
                if e is None:
                    break
                if e["latency_ms_per_token"] <= slo:
                    ok.append((mid, e))
                    lo = mid
                else:
                    hi = mid
        if ok:
            b, e = max(ok, key=lambda x: x[1]["tokens_per_second"])
            tps = e["tokens_per_second"]
            replicas = math.ceil(target / tps)
            gpus = replicas * tp
            rows.append({"family": fam, "meets_slo": True, "batch": b, "plan": e["describe"],
                         "tokens_per_second_per_replica": tps, "latency_ms_per_token": e["latency_ms_per_token"],
                         "replicas": replicas, "gpus": gpus,
                         "usd_per_million_tokens": _r(gpus * price / (target * 3600) * 1e6, 4),
                         "usd_per_million_tokens_full_load": _r(tp * price / (tps * 3600) * 1e6, 4)})
        else:
            b, e = min(entries, key=lambda x: x[1]["latency_ms_per_token"])
            rows.append({"family": fam, "meets_slo": False, "batch": b, "plan": e["describe"],
                         "tokens_per_second_per_replica": e["tokens_per_second"],
                         "latency_ms_per_token": e["latency_ms_per_token"], "replicas": None, "gpus": None,
                         "usd_per_million_tokens": None, "usd_per_million_tokens_full_load": None})
    met = [r for r in rows if r["meets_slo"]]
    recommended = min(met, key=lambda r: (r["gpus"], r["usd_per_million_tokens"]))["family"] if met else None
    closest = None
    if not met:
        c = min(rows, key=lambda r: r["latency_ms_per_token"])
        closest = {k: c[k] for k in ("family", "plan", "batch", "latency_ms_per_token", "tokens_per_second_per_replica")}
    return {"target_tps": target, "slo_ms": slo, "gpu_hour_usd": price, "gpus_per_replica": tp, "rows": rows,
            "recommended": recommended, "closest": closest, "warnings": capacity_warnings(rows, slo, closest)}


def capacity_warnings(rows: list[dict], slo: float, closest: dict | None) -> list[str]:
    out = []
    if closest is not None:
        out.append(f"no plan meets the per-token latency SLO of {slo:g} ms at any batch; closest: "
                   f"{FAMILY_LABEL[closest['family']]} {closest['plan']} at batch {closest['batch']}, "
                   f"{closest['latency_ms_per_token']:.2f} ms/token")
    else:
        for r in rows:
            if not r["meets_slo"]:
                out.append(f"{FAMILY_LABEL[r['family']]}: no batch meets the SLO of {slo:g} ms/token; closest: "
                           f"{r['plan']} at batch {r['batch']}, {r['latency_ms_per_token']:.2f} ms/token")
    return out


def _provenance(profile: Profile) -> dict:
    sources = [("hardware", profile.hardware.name, profile.hardware.source),
               ("model", profile.model.name, profile.model.source)]
    sources += [(f"latency {t.key}", "", t.source) for t in profile.latency]
    sources += [(f"workload {n}", "", a.source) for n, a in profile.workloads.items()]
    if profile.paper_default is not None:
        sources.append(("paper default", profile.paper_default.describe(), None))
    rows = [{"what": w, "name": n, "kind": s.kind if s else "", "detail": s.detail if s else "",
             "reference": (s.reference or "") if s else ""} for w, n, s in sources]
    notes = [{"table": t.key, "notes": dict(t.notes)} for t in profile.latency if t.notes]
    fits = {}
    for n, a in profile.workloads.items():
        if a.fit:
            fits[n] = {k: a.fit[k] for k in ("family", "points", "max_abs_residual") if k in a.fit}
    return {"sources": rows, "profile": profile.provenance, "table_notes": notes, "fits": fits}


# --------------------------------------------------------------------------- rendering helpers


def esc(x) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def script_json(obj) -> str:
    """JSON safe inside <script>: no '<' at all (so no '</script>' and no '<!--')."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _fmt(x, nd=1, unit=""):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}{unit}"


def _pct(x):
    return "–" if x is None else f"{x * 100:+.1f} %"


def _md(x) -> str:
    """Markdown may carry raw HTML: escape <, > and & (quotes stay readable) and table pipes."""
    return html.escape("" if x is None else str(x), quote=False).replace("|", "\\|").replace("\n", " ")


def _headline(data: dict) -> dict:
    fam = data["best"]["families"]
    best = fam[data["best"]["best_family"]]
    ar = fam["autoregressive"]["tokens_per_second"]
    sl = fam.get("single_level", {}).get("tokens_per_second")
    return {"best": best, "family": data["best"]["best_family"], "vs_ar": best["tokens_per_second"] / ar,
            "vs_single": best["tokens_per_second"] / sl if sl else None}


# --------------------------------------------------------------------------- figures (plain plotly dicts)

_LAYOUT = {"template": None, "paper_bgcolor": "white", "plot_bgcolor": "white",
           "font": {"family": "Helvetica, Arial, sans-serif", "size": 13}, "margin": {"l": 70, "r": 30, "t": 60, "b": 60}}


def _axis(title, **kw):
    return {"title": {"text": title}, "gridcolor": "#e5e5e5", "zeroline": False, "showline": True, "linecolor": "#999", **kw}


def figures(data: dict) -> list[tuple[str, str, dict]]:
    """(div id, caption, {data, layout}) for every figure."""
    figs = []
    h = data["heatmap"]
    if h["available"]:
        ex = h["draft_exits"]
        custom = [[[g, w] for g, w in zip(rg, rw)] for rg, rw in zip(h["propose"], h["window"])]
        bp = h["best_pair"]
        figs.append(("fig-exits", "Tokens/s over (draft exit, intermediate exit), each cell at its best propose length "
                     "and window.", {
            "data": [{"type": "heatmap", "x": ex, "y": ex, "z": h["z"], "customdata": custom, "colorscale": "Viridis",
                      "colorbar": {"title": {"text": "tokens/s"}}, "hoverongaps": False,
                      "hovertemplate": "draft exit %{x}<br>intermediate exit %{y}<br>%{z:.1f} tokens/s"
                                       "<br>propose %{customdata[0]}, window %{customdata[1]}<extra></extra>"},
                     {"type": "scatter", "mode": "markers", "x": [bp[0]], "y": [bp[1]], "name": "best",
                      "marker": {"symbol": "star", "size": 16, "color": "white", "line": {"color": "black", "width": 1.5}},
                      "hovertemplate": "best: [%{x}, %{y}]<extra></extra>", "showlegend": False}],
            "layout": {**_LAYOUT, "title": {"text": "Throughput by exits (best propose/window per cell)"},
                       "xaxis": _axis("draft exit (layer)"), "yaxis": _axis("intermediate exit (layer)"),
                       "height": 560}}))
        figs.append(("fig-windows", f"Tokens/s over (propose, window) at the best exits [{bp[0]}, {bp[1]}, "
                     f"{data['profile']['layers']}].", {
            "data": [{"type": "heatmap", "x": h["gw_window"], "y": h["gw_propose"], "z": h["gw"], "colorscale": "Viridis",
                      "colorbar": {"title": {"text": "tokens/s"}},
                      "hovertemplate": "propose %{y}, window %{x}<br>%{z:.1f} tokens/s<extra></extra>"}],
            "layout": {**_LAYOUT, "title": {"text": f"Throughput by propose length and window at exits {bp[0]} / {bp[1]}"},
                       "xaxis": _axis("window of the intermediate level (tokens)", dtick=1),
                       "yaxis": _axis("draft tokens proposed per round", dtick=1), "height": 420}}))
    sweep = data["sweep"]
    xs = [r["batch"] for r in sweep]
    traces_t, traces_l, traces_s = [], [], []
    ar = [r["families"]["autoregressive"]["tokens_per_second"] for r in sweep]
    for fam in FAMILIES:
        if not all(fam in r["families"] for r in sweep):
            continue
        ys = [r["families"][fam]["tokens_per_second"] for r in sweep]
        ls = [r["families"][fam]["latency_ms_per_token"] for r in sweep]
        text = [r["families"][fam]["describe"] for r in sweep]
        common = {"type": "scatter", "mode": "lines+markers", "x": xs, "name": FAMILY_LABEL[fam], "text": text,
                  "line": {"color": COLORS[fam]}, "legendgroup": fam}
        traces_t.append({**common, "y": ys, "hovertemplate": "batch %{x}<br>%{y:.1f} tokens/s<br>%{text}<extra></extra>"})
        traces_l.append({**common, "y": ls, "xaxis": "x2", "yaxis": "y2", "showlegend": False,
                         "hovertemplate": "batch %{x}<br>%{y:.2f} ms/token<br>%{text}<extra></extra>"})
        traces_s.append({**common, "y": [_r(y / a, 4) for y, a in zip(ys, ar)], "xaxis": "x3", "yaxis": "y3",
                         "showlegend": False,
                         "hovertemplate": "batch %{x}<br>%{y:.3f}x autoregressive<br>%{text}<extra></extra>"})
    slo = data["capacity"]["slo_ms"]
    shapes = [{"type": "line", "xref": "x2 domain", "x0": 0, "x1": 1, "yref": "y2", "y0": slo, "y1": slo,
               "line": {"color": "#2ca02c", "dash": "dot"}}]
    annotations = [{"xref": "x2 domain", "x": 0.01, "yref": "y2", "y": slo, "text": f"SLO {slo:g} ms", "showarrow": False,
                    "yanchor": "bottom", "xanchor": "left", "font": {"color": "#2ca02c"}}]
    cross = data["crossover"]
    for key, label, color, y in (("hierarchy_stops_paying_at_batch", "hierarchy stops paying", "#d62728", 1.0),
                                 ("speculation_stops_paying_at_batch", "speculation stops paying", "#555", 0.92)):
        b = cross[key]
        if b is not None:
            for k in ("", "2", "3"):
                shapes.append({"type": "line", "xref": f"x{k}", "x0": b, "x1": b, "yref": f"y{k} domain",
                               "y0": 0, "y1": 1, "line": {"color": color, "dash": "dash", "width": 1.5}})
            annotations.append({"xref": "x3", "x": math.log10(b), "yref": "y3 domain", "y": y,
                                "text": f"{label}<br>(batch {b})", "showarrow": False, "xanchor": "right",
                                "yanchor": "top", "align": "right", "font": {"color": color, "size": 11}})
    log2 = {"type": "log", "dtick": math.log10(2)}
    figs.append(("fig-batch", "Throughput (aggregate over the batch), per-token latency and speedup over autoregressive "
                 "vs batch size; every family is re-optimised at every batch. Dashed lines: where hierarchy / "
                 "speculation stops paying.", {
        "data": traces_t + traces_l + traces_s,
        "layout": {**_LAYOUT, "title": {"text": "Throughput, per-token latency and speedup vs batch size"}, "height": 500,
                   "xaxis": _axis("batch size", domain=[0, 0.28], **log2), "yaxis": _axis("tokens/s (all sequences)"),
                   "xaxis2": _axis("batch size", domain=[0.36, 0.64], anchor="y2", **log2),
                   "yaxis2": _axis("ms per token (one sequence)", anchor="x2"),
                   "xaxis3": _axis("batch size", domain=[0.72, 1], anchor="y3", **log2),
                   "yaxis3": _axis("speedup over autoregressive", anchor="x3"),
                   "legend": {"orientation": "h", "y": -0.2}, "shapes": shapes, "annotations": annotations}}))
    sens = data["sensitivity"]
    labels = [r["label"] for r in sens["rows"]]
    bars = [("best plan " + sens["plan"], [r["best_plan_tokens_per_second"] for r in sens["rows"]], "#d62728"),
            ("re-optimised best", [r["reoptimised"]["tokens_per_second"] for r in sens["rows"]], "#ff9896"),
            ("best single-level", [r["single_level_tokens_per_second"] for r in sens["rows"]], "#1f77b4"),
            ("autoregressive", [r["autoregressive_tokens_per_second"] for r in sens["rows"]], "#7f7f7f")]
    figs.append(("fig-sensitivity", "The best plan's tokens/s when every agreement rate is 10 % and 20 % lower than "
                 "profiled (diagonal kept at 1), next to the plans re-optimised for the lower acceptance.", {
        "data": [{"type": "bar", "x": labels, "y": ys, "name": n, "marker": {"color": c},
                  "text": [_fmt(v, 1) for v in ys], "textposition": "outside",
                  "hovertemplate": "%{x}<br>%{y:.1f} tokens/s<extra>" + esc(n) + "</extra>"} for n, ys, c in bars],
        "layout": {**_LAYOUT, "title": {"text": f"Sensitivity to lower acceptance (batch {data['setting']['batch']})"},
                   "barmode": "group", "xaxis": _axis("acceptance"), "yaxis": _axis("tokens/s"), "height": 440,
                   "legend": {"orientation": "h", "y": -0.2}}}))
    v = data.get("validation")
    if v and v["plans"]:
        pr = [r["predicted_tokens_per_second"] for r in v["plans"]]
        me = [r["measured_tokens_per_second"] for r in v["plans"]]
        lo, hi = min(pr + me) * 0.9, max(pr + me) * 1.1
        figs.append(("fig-validation", "Predicted vs measured tokens/s of the executor's runs (the line is y = x).", {
            "data": [{"type": "scatter", "mode": "markers", "x": me, "y": pr, "text": [esc(r["plan"]) for r in v["plans"]],
                      "marker": {"size": 10, "color": "#d62728"}, "name": "plans",
                      "hovertemplate": "%{text}<br>measured %{x:.1f}<br>predicted %{y:.1f}<extra></extra>"},
                     {"type": "scatter", "mode": "lines", "x": [lo, hi], "y": [lo, hi], "name": "y = x",
                      "line": {"color": "#999", "dash": "dash"}, "hoverinfo": "skip"}],
            "layout": {**_LAYOUT, "title": {"text": "Fidelity: predicted vs measured"}, "height": 440,
                       "xaxis": _axis("measured tokens/s"), "yaxis": _axis("predicted tokens/s"), "showlegend": False}}))
    return figs


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:0 auto;max-width:1320px;padding:16px 28px;color:#222;line-height:1.45}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:20px;margin:28px 0 6px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0 12px;font-size:14px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#666;font-size:13px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:12px 0}.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:200px}
.card b{font-size:22px;display:block}.warn{background:#fff3cd;border:1px solid #e0c36a;padding:8px 12px;border-radius:4px;margin:8px 0}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#b42318;font-weight:bold}.fig{width:100%;min-height:300px}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px}tr.rec td{background:#eef7ee}
"""


def _table(headers: list[str], rows: list[list], num_cols=()) -> str:
    out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>"]
    for row in rows:
        cls = ""
        if isinstance(row, tuple):
            row, cls = row
        cells = "".join(f"<td class=\"num\">{c}</td>" if i in num_cols else f"<td>{c}</td>" for i, c in enumerate(row))
        attr = f' class="{cls}"' if cls else ""
        out.append(f"<tr{attr}>{cells}</tr>")
    return "\n".join(out) + "</table>"


def _prov_value(v) -> str:
    if isinstance(v, dict):
        return "<ul>" + "".join(f"<li><b>{esc(k)}</b>: {_prov_value(x)}</li>" for k, x in v.items()) + "</ul>"
    if isinstance(v, list):
        return "<ul>" + "".join(f"<li>{_prov_value(x)}</li>" for x in v) + "</ul>"
    return esc(v)


def render_html(data: dict) -> str:
    from plotly.offline import get_plotlyjs

    p, st, hd = data["profile"], data["setting"], _headline(data)
    figs = {fid: (cap, fig) for fid, cap, fig in figures(data)}
    fam = data["best"]["families"]

    def fig_block(fid):
        if fid not in figs:
            return ""
        cap, _ = figs[fid]
        return f'<div id="{fid}" class="fig"></div>\n<p class="muted">{esc(cap)}</p>'

    parts = [f"<h1>HiSpec capacity-planning report: {esc(p['name'])}</h1>",
             f"<p>{esc(p['description'])}</p>",
             f"<p class=\"muted\">{esc(p['model'])} ({p['layers']} layers) on {esc(p['hardware'])}; workload "
             f"<b>{esc(st['workload'])}</b>; tp {st['tp']} ({esc(st['stack'])} stack); batch {st['batch']}; mean context "
             f"{st['context']} tokens; search: propose 1..{data['search']['max_propose']}, window "
             f"1..{data['search']['max_window']}.</p>",
             "<div class=\"cards\">"
             f"<div class=\"card\">best plan<b>{esc(hd['best']['describe'])}</b>{esc(FAMILY_LABEL.get(hd['family'], hd['family']))}</div>"
             f"<div class=\"card\">tokens/s<b>{_fmt(hd['best']['tokens_per_second'], 1)}</b>"
             f"{_fmt(hd['best']['latency_ms_per_token'], 2)} ms/token</div>"
             f"<div class=\"card\">vs autoregressive<b>{hd['vs_ar']:.3f}x</b>{_fmt(fam['autoregressive']['tokens_per_second'], 1)} tokens/s</div>"
             + (f"<div class=\"card\">vs best single-level<b>{hd['vs_single']:.3f}x</b>"
                f"{esc(fam['single_level']['describe'])}</div>" if hd["vs_single"] else "")
             + "</div>",
             f"<p class=\"muted\"><b>Batching semantics.</b> {esc(data['batching'])}</p>"]
    rows = [[esc(FAMILY_LABEL[f]), esc(e["describe"]), _fmt(e["tokens_per_second"], 1), _fmt(e["latency_ms_per_token"], 2),
             _fmt(e["tokens_per_full_forward"], 3), esc(", ".join(f"{a:.3f}" for a in e["acceptance_per_level"]))]
            for f, e in fam.items()]
    parts.append(_table(["family", "plan", "tokens/s", "ms/token", "tokens per full forward", "acceptance per level"],
                        rows, (2, 3, 4)))

    parts.append("<h2>(a) Which exits win</h2>")
    if data["heatmap"]["available"]:
        parts.append(fig_block("fig-exits"))
        parts.append("<h2>(b) Which propose length and window win</h2>")
        parts.append(fig_block("fig-windows"))
    else:
        parts.append("<p class=\"warn\">This profile has fewer than two measured exits below the full model: no "
                     "3-level chain can be formed.</p>")

    parts.append("<h2>(c) Batch size: throughput, latency and where hierarchy stops paying</h2>")
    parts.append(fig_block("fig-batch"))
    parts.append(f"<p>{esc(_crossover_sentence(data))}</p><p class=\"muted\">{esc(data['sweep_note'])}.</p>")
    srows = []
    for r in data["sweep"]:
        f = r["families"]
        cells = [str(r["batch"])]
        for k in FAMILIES:
            e = f.get(k)
            cells += [_fmt(e["tokens_per_second"], 1) if e else "–", _fmt(e["latency_ms_per_token"], 2) if e else "–"]
        cells += [esc(f[r["best_family"]]["describe"])]
        srows.append(cells)
    parts.append(_table(["batch", "AR tokens/s", "AR ms/token", "single tokens/s", "single ms/token", "3-level tokens/s",
                         "3-level ms/token", "best plan"], srows, (0, 1, 2, 3, 4, 5, 6)))

    s = data["sensitivity"]
    parts.append("<h2>(d) Sensitivity to lower acceptance</h2>")
    parts.append(fig_block("fig-sensitivity"))
    base = s["rows"][0]["best_plan_tokens_per_second"]
    parts.append(_table(["acceptance", f"best plan {s['plan']}", "change", "re-optimised best", "its tokens/s",
                         "best single-level", "autoregressive"],
                        [[esc(r["label"]), _fmt(r["best_plan_tokens_per_second"], 1),
                          _pct(r["best_plan_tokens_per_second"] / base - 1), esc(r["reoptimised"]["describe"]),
                          _fmt(r["reoptimised"]["tokens_per_second"], 1), _fmt(r["single_level_tokens_per_second"], 1),
                          _fmt(r["autoregressive_tokens_per_second"], 1)] for r in s["rows"]], (1, 2, 4, 5, 6)))
    parts.append(f"<p class=\"muted\">Method: {esc(s['method'])}.</p>")

    cap = data["capacity"]
    parts.append("<h2>(e) Capacity</h2>")
    dflt = [k for k, g in cap["given"].items() if not g]
    parts.append(f"<p>Target <b>{cap['target_tps']:,.0f} tokens/s</b> aggregate, per-token latency SLO "
                 f"<b>{cap['slo_ms']:g} ms</b>, <b>${cap['gpu_hour_usd']:g}</b> per GPU-hour, {cap['gpus_per_replica']} "
                 f"GPU(s) per replica (tp)." + (f" <span class=\"muted\">(defaults used for: {esc(', '.join(dflt))})</span>"
                                               if dflt else "") + "</p>")
    for w in cap["warnings"]:
        parts.append(f"<div class=\"warn\">{esc(w)}</div>")
    crow = []
    for r in cap["rows"]:
        rec = r["family"] == cap["recommended"]
        crow.append(([esc(FAMILY_LABEL[r["family"]]) + (" ★" if rec else ""),
                      "<span class=\"ok\">yes</span>" if r["meets_slo"] else "<span class=\"bad\">no</span> (closest)",
                      str(r["batch"]), esc(r["plan"]), _fmt(r["tokens_per_second_per_replica"], 1),
                      _fmt(r["latency_ms_per_token"], 2), _fmt(r["replicas"], 0), _fmt(r["gpus"], 0),
                      _fmt(r["usd_per_million_tokens"], 3), _fmt(r["usd_per_million_tokens_full_load"], 3)],
                     "rec" if rec else ""))
    parts.append(_table(["family", "meets SLO", "batch", "plan", "tokens/s per replica", "ms/token", "replicas", "GPUs",
                         "$ / M tokens at target", "$ / M tokens fully loaded"], crow, (2, 4, 5, 6, 7, 8, 9)))
    parts.append("<p class=\"muted\">Per family: the batch with the highest tokens/s per replica whose "
                 "per-token latency meets the SLO (the sweep, refined by bisection up to the first batch that misses it); replicas = ceil(target / tokens/s per replica); GPUs = replicas x tp; "
                 "$ / M tokens at target = GPUs x price / target tokens per hour (you pay for whole replicas); fully "
                 "loaded = tp x price / replica tokens per hour. ★ = fewest GPUs.</p>")

    pv = data["provenance"]
    parts.append("<h2>(f) Provenance and fidelity</h2>")
    parts.append(_table(["figure", "name", "kind", "detail", "reference"],
                        [[esc(r["what"]), esc(r["name"]), esc(r["kind"]), esc(r["detail"]), esc(r["reference"])]
                         for r in pv["sources"]]))
    if pv["profile"]:
        parts.append("<h3>Profile notes</h3>" + _prov_value(pv["profile"]))
    if pv["fits"]:
        parts.append("<h3>Acceptance fits</h3>" + _prov_value(pv["fits"]))
    if pv["table_notes"]:
        parts.append("<h3>Latency table notes</h3>" + _prov_value({n["table"]: n["notes"] for n in pv["table_notes"]}))
    v = data.get("validation")
    if v:
        parts.append("<h3>Fidelity: predicted vs measured</h3>")
        parts.append(f"<p>Median |relative error| <b>{_pct_abs(v['median_abs_relative_error'])}</b>, worst "
                     f"<b>{_pct_abs(v['max_abs_relative_error'])}</b> over {len(v['plans'])} plans "
                     f"(from {esc(v['source_file'])}; goal: median &le; 5 %, worst &le; 10 %).</p>")
        parts.append(fig_block("fig-validation"))
        parts.append(_table(["plan", "predicted tokens/s", "measured tokens/s", "relative error"],
                            [[esc(r["plan"]), _fmt(r["predicted_tokens_per_second"], 1),
                              _fmt(r["measured_tokens_per_second"], 1), _pct(r["relative_error"])] for r in v["plans"]],
                            (1, 2, 3)))
    else:
        parts.append("<p class=\"muted\">No validation result given (<code>--validation FILE</code>, the JSON of "
                     "<code>hispec-sim validate --json</code>).</p>")
    parts.append(f"<p class=\"muted\">Generated by <code>hispec-sim report --profile {esc(p['ref'])}</code> "
                 "(analytic model, exhaustive search). Self-contained: plotly.js is embedded; no network access.</p>")

    fig_json = script_json({fid: fig for fid, (_, fig) in figs.items()})
    boot = ("(function(){var F=JSON.parse(document.getElementById('hispec-figures').textContent);"
            "var cfg={displaylogo:false,responsive:true};"
            "Object.keys(F).forEach(function(id){Plotly.newPlot(id,F[id].data,F[id].layout,cfg);});})();")
    title = f"HiSpec report: {p['name']}"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline' "
            "'unsafe-eval'; style-src 'unsafe-inline'; img-src data: blob:; font-src data:\">"
            f"<title>{esc(title)}</title><style>{_CSS}</style>\n"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n</head><body>\n"
            + "\n".join(parts)
            + f"\n<script type=\"application/json\" id=\"hispec-figures\">{fig_json}</script>\n"
            + f"<script type=\"application/json\" id=\"hispec-data\">{script_json(_jsonable({k: v for k, v in data.items() if k != 'provenance'}))}</script>\n"
            + f"<script type=\"text/javascript\">{boot}</script>\n</body></html>\n")


def _pct_abs(x):
    return "–" if x is None else f"{abs(x) * 100:.1f} %"


def _crossover_sentence(data: dict) -> str:
    c = data["crossover"]
    sweep = data["sweep"]
    parts = []
    if not any("hierarchical" in r["families"] for r in sweep):
        parts.append("No 3-level chain can be formed from this workload's measured exits"
                     + ("; no speculative plan either." if not any("single_level" in r["families"] for r in sweep) else "."))
    g = c["hierarchy_gain_at_smallest_batch"]
    if g is not None:
        parts.append(f"At batch {sweep[0]['batch']} the best hierarchical plan is {g * 100:+.1f} % vs the best "
                     "single-level plan.")
    if c["hierarchy_stops_paying_at_batch"] is None:
        if g is not None:
            parts.append(f"Hierarchy pays at every batch swept (up to {sweep[-1]['batch']}).")
    else:
        parts.append(f"Hierarchy stops paying at batch {c['hierarchy_stops_paying_at_batch']}: from there the best "
                     "3-level plan is no faster than the best single-level plan"
                     + (f" (it pays at batches {', '.join(map(str, c['hierarchy_pays_at_batches']))})."
                        if c["hierarchy_pays_at_batches"] else "."))
    if c["speculation_stops_paying_at_batch"] is not None:
        parts.append(f"Speculation stops paying at batch {c['speculation_stops_paying_at_batch']}: autoregressive "
                     "decoding is as fast (verification of B x (tokens per round) tokens becomes compute-bound).")
    return " ".join(parts)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return _jsonable(float(x))
    return x


# --------------------------------------------------------------------------- Markdown


def _md_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(data: dict) -> str:
    p, st, hd = data["profile"], data["setting"], _headline(data)
    fam = data["best"]["families"]
    L = [f"# HiSpec capacity-planning report: {_md(p['name'])}", "", _md(p["description"]), "",
         f"{_md(p['model'])} ({p['layers']} layers) on {_md(p['hardware'])}; workload **{_md(st['workload'])}**; tp {st['tp']} "
         f"({_md(st['stack'])}); batch {st['batch']}; mean context {st['context']}; propose 1..{data['search']['max_propose']}, "
         f"window 1..{data['search']['max_window']}.", "",
         f"**Best plan** `{hd['best']['describe']}`: {_fmt(hd['best']['tokens_per_second'], 1)} tokens/s, "
         f"{_fmt(hd['best']['latency_ms_per_token'], 2)} ms/token, {hd['vs_ar']:.3f}x autoregressive"
         + (f", {hd['vs_single']:.3f}x the best single-level plan." if hd["vs_single"] else "."), "",
         f"Batching semantics: {_md(data['batching'])}", "",
         _md_table(["family", "plan", "tokens/s", "ms/token", "tokens/full forward"],
                   [[FAMILY_LABEL[f], f"`{e['describe']}`", _fmt(e["tokens_per_second"], 1),
                     _fmt(e["latency_ms_per_token"], 2), _fmt(e["tokens_per_full_forward"], 3)] for f, e in fam.items()]),
         ""]
    h = data["heatmap"]
    L += ["## (a) Which exits win", ""]
    if h["available"]:
        L += ["Top exit pairs (each at its best propose/window):", "",
              _md_table(["draft exit", "intermediate exit", "propose", "window", "tokens/s"],
                        [[t["draft"], t["intermediate"], t["propose"], t["window"], _fmt(t["tokens_per_second"], 1)]
                         for t in h["top_pairs"]]), "",
              f"## (b) Propose x window at exits {h['best_pair'][0]} / {h['best_pair'][1]}", "",
              _md_table(["propose \\ window"] + [str(w) for w in h["gw_window"]],
                        [[g] + [_fmt(v, 1) for v in row] for g, row in zip(h["gw_propose"], h["gw"])]), ""]
    else:
        L += ["Fewer than two exits below the full model: no 3-level chain.", ""]
    L += ["## (c) Batch size", "", _crossover_sentence(data), "", _md(data["sweep_note"]) + ".", "",
          _md_table(["batch", "AR tokens/s", "AR ms/token", "single tokens/s", "single ms/token", "3-level tokens/s",
                     "3-level ms/token", "best plan"],
                    [[r["batch"]] + sum(([_fmt(r["families"][k]["tokens_per_second"], 1),
                                          _fmt(r["families"][k]["latency_ms_per_token"], 2)] if k in r["families"]
                                         else ["–", "–"] for k in FAMILIES), [])
                     + [f"`{r['families'][r['best_family']]['describe']}`"] for r in data["sweep"]]), ""]
    s = data["sensitivity"]
    base = s["rows"][0]["best_plan_tokens_per_second"]
    L += ["## (d) Sensitivity to lower acceptance", "", f"Method: {s['method']}.", "",
          _md_table(["acceptance", f"best plan `{s['plan']}`", "change", "re-optimised best", "its tokens/s",
                     "best single-level", "autoregressive"],
                    [[r["label"], _fmt(r["best_plan_tokens_per_second"], 1), _pct(r["best_plan_tokens_per_second"] / base - 1),
                      f"`{r['reoptimised']['describe']}`", _fmt(r["reoptimised"]["tokens_per_second"], 1),
                      _fmt(r["single_level_tokens_per_second"], 1), _fmt(r["autoregressive_tokens_per_second"], 1)]
                     for r in s["rows"]]), ""]
    cap = data["capacity"]
    dflt = [k for k, g in cap["given"].items() if not g]
    L += ["## (e) Capacity", "",
          f"Target {cap['target_tps']:,.0f} tokens/s, SLO {cap['slo_ms']:g} ms/token, ${cap['gpu_hour_usd']:g}/GPU-hour, "
          f"{cap['gpus_per_replica']} GPU(s) per replica" + (f" (defaults used for: {', '.join(dflt)})" if dflt else "") + ".", ""]
    L += [f"> **Warning:** {_md(w)}" for w in cap["warnings"]] + ([""] if cap["warnings"] else [])
    L += [_md_table(["family", "meets SLO", "batch", "plan", "tokens/s per replica", "ms/token", "replicas", "GPUs",
                     "$/M tokens at target", "$/M tokens fully loaded"],
                    [[FAMILY_LABEL[r["family"]] + (" ★" if r["family"] == cap["recommended"] else ""),
                      "yes" if r["meets_slo"] else "no (closest)", r["batch"], f"`{r['plan']}`",
                      _fmt(r["tokens_per_second_per_replica"], 1), _fmt(r["latency_ms_per_token"], 2),
                      _fmt(r["replicas"], 0), _fmt(r["gpus"], 0), _fmt(r["usd_per_million_tokens"], 3),
                      _fmt(r["usd_per_million_tokens_full_load"], 3)] for r in cap["rows"]]), ""]
    pv = data["provenance"]
    L += ["## (f) Provenance", "", _md_table(["figure", "name", "kind", "detail", "reference"],
                                            [[_md(r["what"]), _md(r["name"]), _md(r["kind"]), _md(r["detail"]),
                                              _md(r["reference"])] for r in pv["sources"]]), ""]
    for k, v in pv["profile"].items():
        L.append(f"- **{_md(k)}**: {_md(json.dumps(v) if isinstance(v, (dict, list)) else v)}")
    L.append("")
    v = data.get("validation")
    if v:
        L += ["### Fidelity", "", f"Median |relative error| {_pct_abs(v['median_abs_relative_error'])}, worst "
              f"{_pct_abs(v['max_abs_relative_error'])} over {len(v['plans'])} plans ({_md(v['source_file'])}).", "",
              _md_table(["plan", "predicted tokens/s", "measured tokens/s", "relative error"],
                        [[_md(r["plan"]), _fmt(r["predicted_tokens_per_second"], 1), _fmt(r["measured_tokens_per_second"], 1),
                          _pct(r["relative_error"])] for r in v["plans"]]), ""]
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- entry point


def build_report(profile: str, out: str | None = None, fmt: str = "html", **kw) -> tuple[dict, str, Path]:
    """Check everything, compute, render and write atomically. Returns (data, text, path)."""
    if fmt not in ("html", "md"):
        raise ValueError(f"format: must be html or md, got {fmt!r}")
    for f in ("target_tps", "slo_ms", "gpu_hour_usd"):
        _positive(kw.get(f), f)
    path = check_output_path(out or ("report.html" if fmt == "html" else "report.md"))
    validation = kw.pop("validation", None)
    if isinstance(validation, (str, Path)):
        validation = load_validation(validation)
    prof = schema.load_profile(profile)
    data = compute(prof, validation=validation, profile_ref=profile, **kw)
    text = render_html(data) if fmt == "html" else render_markdown(data)
    try:
        schema.write_atomic(path, text)
    except OSError as e:
        raise ValueError(f"out: cannot write {path} ({e.strerror})") from None
    return data, text, path
