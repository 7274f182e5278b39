"""The report's figures as plain plotly dicts (no plotly import: the HTML embeds plotly.js)."""
from __future__ import annotations

import math

from .report_data import COLORS, FAMILIES, FAMILY_LABEL, _r
from .report_format import _fmt, esc

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
                     "and window; the star marks the best pair.", {
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
    drawn, any_extrapolated = [], False
    for fam in FAMILIES:
        if not all(fam in r["families"] for r in sweep):
            continue
        drawn.append(fam)
        ys = [r["families"][fam]["tokens_per_second"] for r in sweep]
        ls = [r["families"][fam]["latency_ms_per_token"] for r in sweep]
        extra = [bool(r.get("extrapolated", {}).get(fam)) for r in sweep]
        any_extrapolated |= any(extra)
        text = [r["families"][fam]["describe"] + ("<br>latency table extrapolated" if x else "")
                for r, x in zip(sweep, extra)]
        common = {"type": "scatter", "mode": "lines+markers", "x": xs, "name": FAMILY_LABEL[fam], "text": text,
                  "line": {"color": COLORS[fam]}, "legendgroup": fam,
                  "marker": {"symbol": ["circle-open" if x else "circle" for x in extra], "size": 8}}
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
    stops = []
    for key, label, color, y in (("hierarchy_stops_paying_at_batch", "hierarchy stops paying", "#d62728", 1.0),
                                 ("speculation_stops_paying_at_batch", "speculation stops paying", "#555", 0.92)):
        b = cross[key]
        if b is not None:
            stops.append(f"{label} (batch {b})")
            for k in ("", "2", "3"):
                shapes.append({"type": "line", "xref": f"x{k}", "x0": b, "x1": b, "yref": f"y{k} domain",
                               "y0": 0, "y1": 1, "line": {"color": color, "dash": "dash", "width": 1.5}})
            annotations.append({"xref": "x3", "x": math.log10(b), "yref": "y3 domain", "y": y,
                                "text": f"{label}<br>(batch {b})", "showarrow": False, "xanchor": "right",
                                "yanchor": "top", "align": "right", "font": {"color": color, "size": 11}})
    log2 = {"type": "log", "dtick": math.log10(2)}
    caption = ("Throughput (aggregate over the batch), per-token latency and speedup over autoregressive vs batch "
               f"size for {', '.join(FAMILY_LABEL[f] for f in drawn)}; every family is re-optimised at every batch. "
               f"Dotted line: the latency SLO ({slo:g} ms).")
    if stops:
        caption += f" Dashed lines: {'; '.join(stops)}."
    if any_extrapolated:
        caption += (f" Open markers: a forward of that plan carries more than the {data.get('table_max_tokens')} tokens "
                    "the latency table measured, so its cost is extrapolated.")
    figs.append(("fig-batch", caption, {
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
    lower = [r["label"] for r in sens["rows"] if r["factor"] != 1.0]
    figs.append(("fig-sensitivity", f"Tokens/s of the best plan {sens['plan']} as profiled and with every agreement "
                 f"rate {' / '.join(lower)} (diagonal kept at 1), next to the best plan re-optimised for that "
                 "acceptance, the best single-level plan (re-optimised) and autoregressive decoding.", {
        "data": [{"type": "bar", "x": labels, "y": ys, "name": n, "marker": {"color": c},
                  "text": [_fmt(v, 1) for v in ys], "textposition": "outside",
                  "hovertemplate": "%{x}<br>%{y:.1f} tokens/s<extra>" + esc(n) + "</extra>"} for n, ys, c in bars],
        "layout": {**_LAYOUT, "title": {"text": f"Sensitivity to lower acceptance (batch {data['setting']['batch']})"},
                   "barmode": "group", "xaxis": _axis("acceptance"), "yaxis": _axis("tokens/s"), "height": 440,
                   "legend": {"orientation": "h", "y": -0.2}}}))
    sv = data.get("serving")
    if sv:
        figs.append(serving_figure(sv))
    v = data.get("validation")
    if v and v["plans"]:
        speedup = all(r.get("speedup_error") is not None for r in v["plans"])  # validate's metric, where the file has it
        what = "speed-up over autoregressive" if speedup else "tokens/s"
        pr = [r["predicted_speedup" if speedup else "predicted_tokens_per_second"] for r in v["plans"]]
        me = [r["measured_speedup" if speedup else "measured_tokens_per_second"] for r in v["plans"]]
        lo, hi = min(pr + me) * 0.9, max(pr + me) * 1.1
        figs.append(("fig-validation", f"Predicted vs measured {what} of the executor's runs (the line is y = x).", {
            "data": [{"type": "scatter", "mode": "markers", "x": me, "y": pr, "text": [esc(r["plan"]) for r in v["plans"]],
                      "marker": {"size": 10, "color": "#d62728"}, "name": "plans",
                      "hovertemplate": "%{text}<br>measured %{x:.3g}<br>predicted %{y:.3g}<extra></extra>"},
                     {"type": "scatter", "mode": "lines", "x": [lo, hi], "y": [lo, hi], "name": "y = x",
                      "line": {"color": "#999", "dash": "dash"}, "hoverinfo": "skip"}],
            "layout": {**_LAYOUT, "title": {"text": "Fidelity: predicted vs measured"}, "height": 440,
                       "xaxis": _axis(f"measured {what}"), "yaxis": _axis(f"predicted {what}"), "showlegend": False}}))
    return figs


def serving_figure(sv: dict) -> tuple[str, str, dict]:
    """Throughput-latency curves against QPS: p99 (solid) and p50 (dotted) TTFT and TBT with
    the SLO lines, and throughput; dashed verticals where speculation / hierarchy stop paying."""
    traces = []
    for fam in FAMILIES:
        e = sv["families"].get(fam)
        if e is None:
            continue
        xs = [p["qps"] for p in e["points"]]
        name = f"{FAMILY_LABEL[fam]} {e['plan']}"
        for key, ax, dash, show in (("ttft_ms_p99", "", "solid", True), ("ttft_ms_p50", "", "dot", False),
                                    ("tbt_ms_p99", "2", "solid", False), ("tbt_ms_p50", "2", "dot", False),
                                    ("throughput_tokens_per_s", "3", "solid", False)):
            traces.append({"type": "scatter", "mode": "lines+markers", "x": xs, "y": [p[key] for p in e["points"]],
                           "name": esc(name), "legendgroup": fam, "showlegend": show,
                           "xaxis": f"x{ax}", "yaxis": f"y{ax}", "line": {"color": COLORS[fam], "dash": dash},
                           "hovertemplate": "%{x:.2f} req/s<br>%{y:.1f}<extra>" + esc(name) + " " + key + "</extra>"})
    shapes, annotations = [], []
    for ax, slo, label in (("", sv["slo_ttft_ms"], "p99 TTFT SLO"), ("2", sv["slo_tbt_ms"], "p99 TBT SLO")):
        shapes.append({"type": "line", "xref": f"x{ax} domain", "x0": 0, "x1": 1, "yref": f"y{ax}", "y0": slo, "y1": slo,
                       "line": {"color": "#2ca02c", "dash": "dot"}})
        annotations.append({"xref": f"x{ax} domain", "x": 0.01, "yref": f"y{ax}", "y": math.log10(slo),
                            "text": f"{label} {slo:g} ms", "showarrow": False, "yanchor": "bottom", "xanchor": "left",
                            "font": {"color": "#2ca02c"}})
    for key, label, color in (("speculation", "speculation stops paying", "#555"),
                              ("hierarchy", "hierarchy stops paying", "#d62728")):
        c = sv["crossover"].get(key)
        if c and c["stops_at_qps"] is not None:
            q = c["stops_at_qps"]
            for ax in ("", "2", "3"):
                shapes.append({"type": "line", "xref": f"x{ax}", "x0": q, "x1": q, "yref": f"y{ax} domain", "y0": 0,
                               "y1": 1, "line": {"color": color, "dash": "dash", "width": 1.5}})
            annotations.append({"xref": "x3", "x": math.log10(q), "yref": "y3 domain", "y": 1.0,
                                "text": f"{label}<br>({q:.2f} req/s)", "showarrow": False, "xanchor": "right",
                                "yanchor": "top", "align": "right", "font": {"color": color, "size": 11}})
    caption = (f"One replica under Poisson traffic (request-level simulation, {sv['requests']} requests per load, max "
               f"batch {sv['max_batch']}): p99 (solid) and p50 (dotted) time to first token and time between tokens "
               "against the load, with the p99 SLO lines, and the throughput; dashed lines: where speculation and "
               "hierarchy stop paying (the paragraph below).")
    log = {"type": "log"}
    return ("fig-serving", caption, {
        "data": traces,
        "layout": {**_LAYOUT, "title": {"text": "Serving: latency and throughput vs load (QPS)"}, "height": 500,
                   "xaxis": _axis("requests/s", domain=[0, 0.28], **log), "yaxis": _axis("TTFT (ms)", type="log"),
                   "xaxis2": _axis("requests/s", domain=[0.36, 0.64], anchor="y2", **log),
                   "yaxis2": _axis("TBT (ms)", anchor="x2", type="log"),
                   "xaxis3": _axis("requests/s", domain=[0.72, 1], anchor="y3", **log),
                   "yaxis3": _axis("tokens/s (all requests)", anchor="x3"),
                   "legend": {"orientation": "h", "y": -0.2}, "shapes": shapes, "annotations": annotations}})

