"""Text formatting shared by the report's HTML, Markdown and figures: escaping, numbers, sentences.

Everything user-supplied that reaches HTML goes through html.escape; JSON embedded in
<script> has every '<' written as \\u003c, so no string can close the tag.
"""
from __future__ import annotations

import html
import json
import re

from .schema import BIDI_CONTROLS

_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029" + "".join(sorted(BIDI_CONTROLS)) + "]")


def _controls_shown(text: str) -> str:
    """Control characters (terminal escapes, carriage returns, line separators) and
    bidirectional controls (which would reorder the text around them) shown as their
    escapes: a description, a source's detail or a provenance value may carry them."""
    return _HIDDEN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def esc(x) -> str:
    return html.escape(_controls_shown("" if x is None else str(x)), quote=True)


def script_json(obj) -> str:
    """JSON safe inside <script>: no '<' at all (so no '</script>' and no '<!--')."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _fmt(x, nd=1, unit=""):
    """x to nd decimals; 3 significant digits where that would print 0 (a slow profile's tokens/s)."""
    if x is None:
        return "–"
    if x != 0 and abs(x) < 0.5 * 10.0 ** -nd:
        return f"{x:.3g}{unit}"
    return f"{x:,.{nd}f}{unit}"


def _pct(x):
    return "–" if x is None else f"{x * 100:+.1f} %"


_MD_ACTIVE = re.compile(r"([\\`*_\[\]()!#~|@])")  # what makes links (@: e-mail autolinks), images, emphasis, code, headings, tables


_AUTOLINK = re.compile(r"://|\bwww\.", re.I)
_BLOCK_START = re.compile(r"^(\d{0,9})([-+=.])")  # '- x', '+ x', '---', '===', '1. x' (its dot) at a line's start
_DOMAIN_DOT = re.compile(r"(?<!\\)\.(?=[^\W\d_])")  # 'evil.com/x', 'हिन्दी.io': linkify-style renderers link bare domains


def _md(x) -> str:
    """Text as Markdown shows it literally: raw HTML escaped (<, > and &; quotes stay
    readable) and every character that starts markup backslash-escaped -- a name must not
    become a link or a remote image."""
    text = "" if x is None else " ".join(str(x).split("\n"))  # one line: a table row, a heading stay whole
    text = _MD_ACTIVE.sub(r"\\\1", html.escape(_controls_shown(text), quote=False))
    text = _AUTOLINK.sub(lambda m: m.group().replace("/", "\\/").replace(".", "\\."), text)  # GFM links bare URLs
    text = _DOMAIN_DOT.sub(r"\\.", text)
    # at the start of a line: indentation (a code block) as entities, list and rule markers escaped
    lead = len(text) - len(text.lstrip(" \t"))
    return "".join(f"&#{ord(c)};" for c in text[:lead]) + _BLOCK_START.sub(r"\1\\\2", text[lead:], count=1)


def _headline(data: dict) -> dict:
    fam = data["best"]["families"]
    best = fam[data["best"]["best_family"]]
    ar = fam["autoregressive"]["tokens_per_second"]
    sl = fam.get("single_level", {}).get("tokens_per_second")
    return {"best": best, "family": data["best"]["best_family"], "vs_ar": best["tokens_per_second"] / ar,
            "vs_single": best["tokens_per_second"] / sl if sl else None}


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
    pays = c["hierarchy_pays_at_batches"]
    swept = [r["batch"] for r in sweep if "hierarchical" in r["families"]]
    missing = [b for b in swept if b not in pays]
    where = f"it pays at batch{'es' if len(pays) > 1 else ''} {', '.join(map(str, pays))}" + (
        f", not at {', '.join(map(str, [b for b in missing if b < pays[-1]]))}"
        if pays and any(b < pays[-1] for b in missing) else "")
    if g is not None and not pays:
        parts.append(f"Hierarchy pays at no batch swept ({swept[0]}-{swept[-1]}): the best 3-level plan is never "
                     "faster than the best single-level plan.")
    elif g is not None and c["hierarchy_stops_paying_at_batch"] is None:
        parts.append(f"Hierarchy pays at every batch swept (up to {sweep[-1]['batch']})." if not missing else
                     f"Hierarchy pays up to the largest batch swept ({where}).")
    elif g is not None:
        parts.append(f"Hierarchy stops paying at batch {c['hierarchy_stops_paying_at_batch']}: from there the best "
                     f"3-level plan is no faster than the best single-level plan ({where}).")
    if c["speculation_stops_paying_at_batch"] is not None:
        parts.append(f"Speculation stops paying at batch {c['speculation_stops_paying_at_batch']}: autoregressive "
                     "decoding is as fast (verification of B x (tokens per round) tokens becomes compute-bound).")
    return " ".join(parts)


def serving_sentence(sv: dict) -> str:
    """Where speculation and hierarchy stop paying along the load sweep (computed), and the
    highest swept load meeting both SLOs per family; loads to the table's two decimals."""
    from .report_data import FAMILY_LABEL

    lo, hi = sv["loads"][0], sv["loads"][-1]
    parts = []
    for key, what, vs in (("speculation", "Speculation", "autoregressive decoding"),
                          ("hierarchy", "Hierarchy", "the single-level plan")):
        c = sv["crossover"].get(key)
        if c is None:
            continue
        if c["never"]:
            parts.append(f"{what} does not pay at any load swept ({_fmt(lo, 2)}-{_fmt(hi, 2)} req/s): {vs} has the lower mean "
                         "end-to-end latency.")
        elif c["stops_at_qps"] is None:
            parts.append(f"{what} pays at every load swept up to {_fmt(hi, 2)} req/s (lower mean end-to-end latency than "
                         f"{vs}).")
        else:
            parts.append(f"{what} stops paying at about {c['stops_at_qps']:.2f} req/s (between {_fmt(c['bracket'][0], 2)} "
                         f"and {_fmt(c['bracket'][1], 2)} req/s swept): from there {vs} has the lower mean end-to-end latency.")
    ok = []
    for fam, e in sv["families"].items():
        h = e.get("highest_load_meeting_slo")
        ok.append(f"{FAMILY_LABEL.get(fam, fam)} {_fmt(h, 2)} req/s" if h is not None else f"{FAMILY_LABEL.get(fam, fam)} none")
    parts.append(f"Highest swept load meeting p99 TTFT <= {sv['slo_ttft_ms']:g} ms and p99 TBT <= {sv['slo_tbt_ms']:g} "
                 f"ms: {', '.join(ok)}.")
    return " ".join(parts)


def fidelity_lines(v: dict) -> list[str]:
    """The sentences of the fidelity section (plain text: the caller escapes): validate's own
    metric and verdicts first (the speed-up over autoregressive, measured side by side), then
    the absolute tokens/s, which moves with the machine's speed between calibration and run."""
    n, src = len(v["plans"]), v["source_file"]
    lines = []
    if v.get("median_abs_speedup_error") is not None:
        lines.append(f"Speed-up over autoregressive (validate's metric): median |error| "
                     f"{_pct_abs(v['median_abs_speedup_error'])}, worst {_pct_abs(v['max_abs_speedup_error'])} over {n} "
                     f"plans (from {src}).")
        lines += [f"{who}: {v[key]}" for who, key in (("Analytic", "verdict_line"), ("Trace replay", "verdict_line_replay"))
                  if v.get(key)]
    lines.append(f"Absolute tokens/s: median |relative error| {_pct_abs(v['median_abs_relative_error'])}, worst "
                 f"{_pct_abs(v['max_abs_relative_error'])}" + ("." if lines else f" over {n} plans (from {src})."))
    return lines


def fidelity_table(v: dict, escape) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the fidelity table; speed-up columns where the file has them."""
    speedups = any(r.get("speedup_error") is not None for r in v["plans"])
    head = ["plan"] + (["predicted speed-up", "measured speed-up", "speed-up error"] if speedups else []) + \
        ["predicted tokens/s", "measured tokens/s", "relative error"]
    rows = [[escape(r["plan"])]
            + ([_fmt(r.get("predicted_speedup"), 3), _fmt(r.get("measured_speedup"), 3), _pct(r.get("speedup_error"))]
               if speedups else [])
            + [_fmt(r["predicted_tokens_per_second"], 1), _fmt(r["measured_tokens_per_second"], 1), _pct(r["relative_error"])]
            for r in v["plans"]]
    return head, rows


def replay_sentence(data: dict) -> str | None:
    """What `optimize` answers on a traced workload (trace replay re-ranks the analytic best),
    next to the analytic best the report is built on; None without traces."""
    r = data["best"].get("replay")
    if r is None:
        return None
    same = r["describe"] == _headline(data)["best"]["describe"]
    return (f"Trace replay of the workload's {r['requests']} measured requests (how hispec-sim optimize ranks here: the "
            f"analytic best {r['candidates']} re-scored) puts {'the same plan' if same else r['describe']} first: "
            f"{_fmt(r['tokens_per_second'], 1)} tokens/s, {r['vs_autoregressive']:.3f}x autoregressive by replay. "
            "The rest of this report is analytic.")
