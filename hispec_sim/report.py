"""Capacity-planning report: one self-contained HTML file (plotly.js inline) or Markdown.

`compute()` (report_data) produces every number as a plain JSON-able dict; `render_html()`
(report_html, figures in report_figures) and `render_markdown()` (report_md) only format it,
so both formats carry the same numbers. This module is the entry point and re-exports them.

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

from pathlib import Path

from . import schema
from .report_data import (COLORS, DEFAULTS, FAMILIES, FAMILY_LABEL, MEMORY_HEADROOM, SENSITIVITY,  # noqa: F401
                          _best_of, _capacity, _crossover, _jsonable, _memory, _positive, _provenance,
                          _scaled_profile, _sweep_note, capacity_warnings, check_output_path, check_validation,
                          compute, largest_forward_tokens, load_validation)
from .report_figures import figures  # noqa: F401
from .report_format import _crossover_sentence, _fmt, _headline, _md, _pct, _pct_abs, esc, script_json  # noqa: F401
from .report_html import render_html
from .report_md import render_markdown


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
    if validation:
        check_validation(validation, prof, kw.get("workload"), kw.get("tp"), kw.get("stack"), kw.get("batch", 1))
    data = compute(prof, validation=validation, profile_ref=profile, **kw)
    text = render_html(data) if fmt == "html" else render_markdown(data)
    try:
        schema.write_atomic(path, text)
    except OSError as e:
        raise ValueError(f"out: cannot write {path} ({e.strerror})") from None
    return data, text, path
