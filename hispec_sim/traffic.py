"""Traffic for serving: seeded request sets, JSONL traces, and the serving metrics.

One implementation for both sides: `hispec-exec serve` runs the requests these functions
make and `hispec-sim serve` simulates the same ones, and both summarise with `summarize`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .schema import (MAX_REQUESTS, TINY_SIGMA, LengthDist, Request, RequestMetrics, ServeLimits, Traffic, shown,
                     validation_message)

MAX_TRACE_BYTES = 256 * 2**20
DEFAULT_LENGTHS = {"prompt_len": "lognormal:256:0.8:max=2048", "output_len": "lognormal:192:0.8:max=1024"}


def fit_default_lengths(lengths: dict[str, str], context: int | None, reserved: int) -> dict[str, str]:
    """`lengths` (prompt_len, output_len: CLI forms) with those still at DEFAULT_LENGTHS
    scaled down, median and max alike, so that the longest request and `reserved` tokens of
    speculation fit `context` (None: unknown, nothing scaled); given lengths are kept, and
    nothing is scaled when they leave no room."""
    scaled = [k for k, v in lengths.items() if v == DEFAULT_LENGTHS[k]]
    upper = {k: LengthDist.parse(v, k).upper for k, v in lengths.items()}
    room = (context or 0) - reserved - sum(u for k, u in upper.items() if k not in scaled)
    want = sum(upper[k] for k in scaled)
    if context is None or not scaled or want <= room or room < len(scaled):  # fits, or nothing would
        return dict(lengths)
    f = room / want
    out = dict(lengths)
    for k in scaled:
        d = LengthDist.parse(lengths[k], k)
        out[k] = f"lognormal:{max(1, round(d.median * f))}:{d.sigma:g}:max={max(1, int(d.max * f))}"
    return out


def draw_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> np.ndarray:
    """n integer lengths from `dist`, clipped to [dist.min, dist.max]."""
    if dist.family == "fixed":
        x = np.full(n, dist.value, dtype=float)
    elif dist.family == "uniform":
        x = rng.integers(dist.low, dist.high + 1, size=n).astype(float)
    elif dist.family == "lognormal":
        x = np.rint(dist.median * np.exp((dist.sigma if dist.sigma >= TINY_SIGMA else 0.0) * rng.standard_normal(n)))
    else:
        x = rng.choice(np.asarray(dist.values, dtype=float), size=n)
    return np.clip(x, dist.min, dist.max).astype(np.int64)


def exceeds(dist: LengthDist, m) -> np.ndarray:
    """P(L > m) at integers m >= 0, L a draw of `draw_lengths(dist, ...)`. Lognormal:
    P(rint X > m) = P(X >= m + 0.5); a sigma under TINY_SIGMA draws rint(median) alone."""
    from scipy.special import ndtr

    m = np.asarray(m, dtype=float)
    if dist.family == "lognormal" and dist.sigma >= TINY_SIGMA:
        p = ndtr((np.log(dist.median) - np.log(m + 0.5)) / dist.sigma)
        return np.where(m < dist.min, 1.0, np.where(m >= dist.max, 0.0, p))
    x = ([dist.value] if dist.family == "fixed" else [np.rint(dist.median)] if dist.family == "lognormal"
         else np.arange(dist.low, dist.high + 1) if dist.family == "uniform" else dist.values)
    x = np.sort(np.clip(np.asarray(x, dtype=float), dist.min, dist.max))
    return 1.0 - np.searchsorted(x, m, side="right") / x.size


def mean_length(dist: LengthDist, per: int = 1) -> float:
    """The exact mean of ceil(L / per), L a draw of `draw_lengths(dist, ...)` (per=1: the
    mean length): the sum over j >= 0 of P(L > j per)."""
    return float(exceeds(dist, np.arange(0, dist.upper, per)).sum())


def arrival_times(traffic: Traffic, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s) of `traffic.requests` requests, the first at 0. Poisson:
    exponential gaps; gamma: gaps with mean 1/qps and coefficient of variation cv."""
    n = traffic.requests
    mean = 1.0 / traffic.qps
    if traffic.arrival == "poisson":
        gaps = rng.exponential(mean, size=n)
    else:
        shape = 1.0 / traffic.cv**2
        gaps = rng.gamma(shape, mean / shape, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def generate(traffic: Traffic) -> list[Request]:
    """The seeded request set: arrivals, prompt lengths (`prompt_tokens` as a count; the
    executor draws prompts of that length from its held-out set) and output lengths."""
    rng = np.random.default_rng(traffic.seed)
    t = arrival_times(traffic, rng)
    p = draw_lengths(traffic.prompt_len, traffic.requests, rng)
    o = draw_lengths(traffic.output_len, traffic.requests, rng)
    return [Request(arrival_s=float(a), prompt_tokens=int(pl), max_new_tokens=int(ol)) for a, pl, ol in zip(t, p, o)]


def load_trace(path: str | Path) -> list[Request]:
    """Requests from a JSONL file (one object per line, blank lines skipped). Errors name
    the line and the field; arrival times must not decrease."""
    from pydantic import ValidationError

    from .schema import file_lines, parse_json_text, read_text_bounded

    text = read_text_bounded(Path(path), "trace", MAX_TRACE_BYTES)  # a regular file: not a pipe or /dev/zero
    out: list[Request] = []
    for no, line in enumerate(file_lines(text), 1):
        if not line.strip():
            continue
        obj = parse_json_text(line, "trace", f"line {no}")  # bounded; a key twice is refused, not the last kept
        if not isinstance(obj, dict):
            raise ValueError(f"trace: line {no}: expected a JSON object with arrival_s, prompt or prompt_tokens, max_new_tokens")
        try:
            r = Request.model_validate(obj, strict=True)  # "16" is not a token count
        except ValidationError as e:
            raise ValueError(f"trace: line {no}: {validation_message(e)}") from None
        if out and r.arrival_s < out[-1].arrival_s:
            raise ValueError(f"trace: line {no}: arrival_s {r.arrival_s} is earlier than the previous request's "
                             f"{out[-1].arrival_s}; arrival times must not decrease")
        out.append(r)
        if len(out) > MAX_REQUESTS:
            raise ValueError(f"trace: more than {MAX_REQUESTS} requests")
    if not out:
        raise ValueError(f"trace: {shown(path)} holds no request")
    return out


def trace_lines(path: str | Path) -> list[int]:
    """The line number of each request load_trace reads (blank lines hold none), for errors
    that name a request."""
    from .schema import file_lines, read_text_bounded

    text = read_text_bounded(Path(path), "trace", MAX_TRACE_BYTES)
    return [no for no, line in enumerate(file_lines(text), 1) if line.strip()]


def percentiles(x: np.ndarray) -> dict:
    if x.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"mean": float(x.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def tpot_ms(m: RequestMetrics) -> float:
    """Mean time per output token after the first (0 for a one-token request)."""
    return (m.e2e_ms - m.ttft_ms) / (m.output_tokens - 1) if m.output_tokens > 1 else 0.0


def good_requests(ttft: np.ndarray, tpot: np.ndarray, limits: ServeLimits) -> np.ndarray:
    """Requests whose own TTFT and TPOT meet the SLOs given (DistServe's goodput): TTFT <=
    slo_ttft_ms, TPOT <= slo_tpot_ms (else slo_tbt_ms); an SLO not given holds."""
    good = np.ones(len(ttft), dtype=bool)
    if limits.slo_ttft_ms is not None:
        good &= ttft <= limits.slo_ttft_ms
    if limits.tpot_slo is not None:
        good &= tpot <= limits.tpot_slo
    return good


def p99_slos_met(ttft_p99: float, tbt_p99: float | None, limits: ServeLimits) -> bool | None:
    """The run's p99 TTFT and p99 TBT (pooled over every token gap) within their SLOs, as
    `capacity` judges a load; an SLO not given holds, no TBT (one-token requests) meets it;
    None without either SLO."""
    if limits.slo_ttft_ms is None and limits.slo_tbt_ms is None:
        return None
    return bool((limits.slo_ttft_ms is None or ttft_p99 <= limits.slo_ttft_ms)
                and (limits.slo_tbt_ms is None or tbt_p99 is None or tbt_p99 <= limits.slo_tbt_ms))


def slo_lines(summaries: list[dict], attained: str) -> list[str]:
    """The text of what the SLOs say about served runs (one summary per seed): goodput's
    per-request rule after `attained` (the share of good requests), and the p99s against
    the SLOs as `capacity` judges a load."""
    s = summaries[0]
    rule = [f"{k} <= {s[f'slo_{k.lower()}_ms']:g} ms" for k in ("TTFT", "TPOT") if s[f"slo_{k.lower()}_ms"] is not None]
    lines = [f"(SLO attained {attained} % of requests: {', '.join(rule)} each)" if rule else
             "(no SLO given: every request counts)"]
    p99 = [f"{k} <= {s[f'slo_{k.lower()}_ms']:g} ms" for k in ("TTFT", "TBT") if s[f"slo_{k.lower()}_ms"] is not None]
    if p99:
        met = sum(bool(x["p99_slos_met"]) for x in summaries)
        said = ("met" if met else "missed") if len(summaries) == 1 else f"met in {met} of {len(summaries)} seeds"
        lines.append(f"p99 SLOs ({', '.join(p99)}, as capacity judges a load): {said}")
    return lines


def summarize(metrics: list[RequestMetrics], limits: ServeLimits) -> dict:
    """Totals and percentiles of a served request set.

    throughput = generated tokens / (last token's time - first arrival); TBT percentiles
    pool every gap of every request; goodput = good requests (good_requests) per second,
    slo_attained their share; p99_slos_met: the p99s against the SLOs (p99_slos_met).
    A one-token request has no TPOT: it is left out of the TPOT figures and meets that SLO.
    """
    if not metrics:
        raise ValueError("metrics: no request was served")
    start = min(m.arrival_s for m in metrics)
    end = max(m.arrival_s + m.e2e_ms / 1e3 for m in metrics)
    span = max(end - start, 1e-12)
    tokens = sum(m.output_tokens for m in metrics)
    ttft = np.array([m.ttft_ms for m in metrics])
    tpot = np.array([tpot_ms(m) for m in metrics])
    good = good_requests(ttft, tpot, limits)
    gaps = np.concatenate([np.asarray(m.tbt_ms, dtype=float) for m in metrics]) if metrics else np.zeros(0)
    out = {
        "requests": len(metrics),
        "duration_s": span,
        "output_tokens": tokens,
        "throughput_tokens_per_s": tokens / span,
        "requests_per_s": len(metrics) / span,
        "goodput_requests_per_s": float(good.sum()) / span,
        "slo_attained": float(good.mean()),
        "slo_ttft_ms": limits.slo_ttft_ms,
        "slo_tbt_ms": limits.slo_tbt_ms,
        "slo_tpot_ms": limits.tpot_slo,
        "ttft_ms": percentiles(ttft),
        "tbt_ms": percentiles(gaps),
        "tpot_ms": percentiles(tpot[[m.output_tokens > 1 for m in metrics]]),  # a one-token request has no TPOT
        "e2e_ms": percentiles(np.array([m.e2e_ms for m in metrics])),
        "queue_ms": percentiles(np.array([m.queue_ms for m in metrics])),
    }
    out["p99_slos_met"] = p99_slos_met(out["ttft_ms"]["p99"], out["tbt_ms"]["p99"], limits)
    return out
