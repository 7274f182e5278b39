"""The report as Markdown (same numbers as the HTML; raw HTML in strings is escaped)."""
from __future__ import annotations

import json

from .report_data import FAMILIES, FAMILY_LABEL
from .report_format import _crossover_sentence, _fmt, _headline, fidelity_lines, fidelity_table, _md, _pct, replay_sentence, serving_sentence
from .report_html import QUICK_VIEW


def _md_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _ex(row: dict, family: str | None) -> str:
    """' \\*' where the latency table is extrapolated (any family when family is None)."""
    ex = row.get("extrapolated", {})
    return " \\*" if (any(ex.values()) if family is None else ex.get(family)) else ""


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
         *([_md(replayed), ""] if (replayed := replay_sentence(data)) else []),
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
          f"Quick view: {QUICK_VIEW}", "",
          _md_table(["batch", "AR tokens/s", "AR ms/token", "single tokens/s", "single ms/token", "3-level tokens/s",
                     "3-level ms/token", "best plan"],
                    [[f"{r['batch']}{_ex(r, None)}"]
                     + sum(([_fmt(r["families"][k]["tokens_per_second"], 1) + _ex(r, k),
                             _fmt(r["families"][k]["latency_ms_per_token"], 2) + _ex(r, k)] if k in r["families"]
                            else ["–", "–"] for k in FAMILIES), [])
                     + [f"`{r['families'][r['best_family']]['describe']}`"] for r in data["sweep"]]), ""]
    if any(_ex(r, None) for r in data["sweep"]):
        L += [f"\\* extrapolated: at this batch a forward of the plan carries more than the {data['table_max_tokens']} "
              "tokens the latency table measured (batch x (propose + windows + 1) per sequence).", ""]
    s = data["sensitivity"]
    L += ["## (d) Sensitivity to lower acceptance", "", f"Method: {s['method']}.", "",
          _md_table(["acceptance", f"best plan `{s['plan']}`", "change", "re-optimised best", "its tokens/s",
                     "best single-level", "autoregressive"],
                    [[r["label"], _fmt(r["best_plan_tokens_per_second"], 1), _pct(r["change"]),
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
                      _fmt(r["usd_per_million_tokens_full_load"], 3)] for r in cap["rows"]]),
          "", "★ = fewest GPUs; between families with as many GPUs, the lower $/M tokens fully loaded.", ""]
    sv = data.get("serving")
    L += ["## (f) Serving under traffic: latency and throughput vs load", ""]
    if sv:
        L += [_md(serving_sentence(sv)), "", f"SLO lines: p99 TTFT {sv['slo_ttft_ms']:g} ms, p99 TBT {sv['slo_tbt_ms']:g} ms.",
              "", _md_table(["family", "plan", "requests/s", "p50 TTFT ms", "p99 TTFT ms", "p50 TBT ms", "p99 TBT ms",
                             "mean e2e ms", "tokens/s", "meets SLOs"],
                            [[FAMILY_LABEL[f], f"`{e['plan']}`", _fmt(pt["qps"], 2), _fmt(pt["ttft_ms_p50"], 0),
                              _fmt(pt["ttft_ms_p99"], 0), _fmt(pt["tbt_ms_p50"], 1), _fmt(pt["tbt_ms_p99"], 1),
                              _fmt(pt["e2e_ms_mean"], 0), _fmt(pt["throughput_tokens_per_s"], 1),
                              "yes" if pt["meets_slo"] else "no"]
                             for f in FAMILIES if (e := sv["families"].get(f)) for pt in e["points"]]),
              "", f"Method: {_md(sv['method'])}. Computed in {sv['seconds']:g} s.", ""]
    else:
        L += [f"Skipped ({_md(data['serving_skipped'])}).", ""]
    pv = data["provenance"]
    L += ["## (g) Provenance", "", _md_table(["figure", "name", "kind", "detail", "reference"],
                                            [[_md(r["what"]), _md(r["name"]), _md(r["kind"]), _md(r["detail"]),
                                              _md(r["reference"])] for r in pv["sources"]]), ""]
    for k, v in pv["profile"].items():
        L.append(f"- **{_md(k)}**: {_md(json.dumps(v) if isinstance(v, (dict, list)) else v)}")
    L.append("")
    v = data.get("validation")
    if v:
        L += ["### Fidelity", ""]
        if v.get("machine_warning"):
            L += [f"**{_md(v['machine_warning'])}**", ""]
        L += [f"- {_md(line)}" for line in fidelity_lines(v)] + ["", _md_table(*fidelity_table(v, _md)), ""]
    return "\n".join(L) + "\n"
