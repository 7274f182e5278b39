"""The report as one self-contained HTML file (plotly.js inline, figures and data as JSON)."""
from __future__ import annotations

from .report_data import FAMILIES, FAMILY_LABEL, _jsonable
from .report_figures import figures
from .report_format import _crossover_sentence, _fmt, _headline, fidelity_lines, fidelity_table, _pct, esc, replay_sentence, script_json, serving_sentence

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


QUICK_VIEW = ("The batch sweep assumes a lockstep batch: B sequences always running, no arrivals, no queueing, "
              "no prefill, and the sequences of a batch never diverge. It is the quick view; section (f) simulates "
              "requests arriving, prefilling and leaving.")


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
             *([f"<p>{esc(replayed)}</p>"] if (replayed := replay_sentence(data)) else []),
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
    parts.append(f"<p class=\"muted\"><b>Quick view.</b> {esc(QUICK_VIEW)}</p>")
    srows = []
    for r in data["sweep"]:
        f, ex = r["families"], r.get("extrapolated", {})
        cells = [str(r["batch"]) + (" *" if any(ex.values()) else "")]
        for k in FAMILIES:
            e, star = f.get(k), " *" if ex.get(k) else ""
            cells += [_fmt(e["tokens_per_second"], 1) + star if e else "–",
                      _fmt(e["latency_ms_per_token"], 2) + star if e else "–"]
        cells += [esc(f[r["best_family"]]["describe"])]
        srows.append(cells)
    parts.append(_table(["batch", "AR tokens/s", "AR ms/token", "single tokens/s", "single ms/token", "3-level tokens/s",
                         "3-level ms/token", "best plan"], srows, (0, 1, 2, 3, 4, 5, 6)))
    if any(any(r.get("extrapolated", {}).values()) for r in data["sweep"]):
        parts.append(f"<p class=\"muted\">* extrapolated: at this batch a forward of the plan carries more than the "
                     f"{data['table_max_tokens']} tokens the latency table measured (batch x its largest forward: "
                     "propose + windows + 1 tokens per sequence); its cost is extrapolated linearly.</p>")

    s = data["sensitivity"]
    parts.append("<h2>(d) Sensitivity to lower acceptance</h2>")
    parts.append(fig_block("fig-sensitivity"))
    parts.append(_table(["acceptance", f"best plan {s['plan']}", "change", "re-optimised best", "its tokens/s",
                         "best single-level", "autoregressive"],
                        [[esc(r["label"]), _fmt(r["best_plan_tokens_per_second"], 1),
                          _pct(r["change"]), esc(r["reoptimised"]["describe"]),
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
                 "loaded = tp x price / replica tokens per hour. ★ = fewest GPUs; between families with as many GPUs, the "
                 "lower $ / M tokens fully loaded.</p>")

    sv = data.get("serving")
    parts.append("<h2>(f) Serving under traffic: latency and throughput vs load</h2>")
    if sv:
        parts.append(fig_block("fig-serving"))
        parts.append(f"<p>{esc(serving_sentence(sv))}</p>")
        hdr = ["family", "plan", "requests/s", "p50 TTFT ms", "p99 TTFT ms", "p50 TBT ms", "p99 TBT ms",
               "mean e2e ms", "tokens/s", "meets SLOs"]
        srows = []
        for f in FAMILIES:
            e = sv["families"].get(f)
            for pt in (e["points"] if e else []):
                srows.append([esc(FAMILY_LABEL[f]), esc(e["plan"]), _fmt(pt["qps"], 2), _fmt(pt["ttft_ms_p50"], 0),
                              _fmt(pt["ttft_ms_p99"], 0), _fmt(pt["tbt_ms_p50"], 1), _fmt(pt["tbt_ms_p99"], 1),
                              _fmt(pt["e2e_ms_mean"], 0), _fmt(pt["throughput_tokens_per_s"], 1),
                              "<span class=\"ok\">yes</span>" if pt["meets_slo"] else "<span class=\"bad\">no</span>"])
        parts.append(_table(hdr, srows, (2, 3, 4, 5, 6, 7, 8)))
        parts.append(f"<p class=\"muted\">Method: {esc(sv['method'])}. Computed in {sv['seconds']:g} s.</p>")
    else:
        parts.append(f"<p class=\"muted\">Skipped ({esc(data['serving_skipped'])}).</p>")

    pv = data["provenance"]
    parts.append("<h2>(g) Provenance and fidelity</h2>")
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
        if v.get("machine_warning"):
            parts.append(f"<p class=\"warn\">{esc(v['machine_warning'])}</p>")
        parts += [f"<p>{esc(line)}</p>" for line in fidelity_lines(v)]
        parts.append(fig_block("fig-validation"))
        head, rows = fidelity_table(v, esc)
        parts.append(_table(head, rows, tuple(range(1, len(head)))))
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
