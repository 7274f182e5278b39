"""Every number of the capacity-planning report, as a plain JSON-able dict (no rendering).

The batching semantics and the escaping rules are stated once, in report.py's docstring.
"""
from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path

import numpy as np

from .evaluate import Setting, exhaustive_arrays, optimized, ranked_plans, score
from . import schema
from .schema import Acceptance, Plan, Profile, Source, rounded

FAMILIES = ("autoregressive", "single_level", "hierarchical")
FAMILY_LABEL = {"autoregressive": "autoregressive", "single_level": "best single-level",
                "hierarchical": "best hierarchical (3-level)", "best": "best plan"}
COLORS = {"autoregressive": "#7f7f7f", "single_level": "#1f77b4", "hierarchical": "#d62728"}
DEFAULTS = {"target_tps": 10000.0, "slo_ms": 50.0, "gpu_hour_usd": 2.0, "slo_ttft_ms": 2000.0}
# (g) serving curves: a small seeded request set per load (fast, so p99 is nearly the max of
# the TTFTs; `hispec-sim capacity` and `serve` use more); --serving-requests 0 skips it
SERVING = {"requests": 60, "lifetimes": 3.0, "seeds": 1, "max_batch": 64, "loads": 6, "low": 0.05, "high": 3.0}
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
    if not data["plans"]:
        raise ValueError("validation.plans: empty; a validation result holds at least one plan")
    rows, plans = [], []
    for i, r in enumerate(data["plans"]):
        if not isinstance(r, dict):
            raise ValueError(f"validation.plans.{i}: expected an object")
        for key in ("predicted_tokens_per_second", "measured_tokens_per_second"):
            v = r.get(key)
            if not (_number(v) and 1e-9 <= v <= 1e12):  # their ratio stays finite
                raise ValueError(f"validation.plans.{i}.{key}: expected a number in [1e-09, 1e+12], got {v!r}")
        if "plan" not in r:
            raise ValueError(f"validation.plans.{i}.plan: missing (the plan validate ran)")
        try:
            plan = Plan.model_validate(r["plan"])
        except Exception as e:
            raise ValueError(f"validation.plans.{i}.plan: expected the plan validate ran "
                             f"({schema.validation_message(e) if hasattr(e, 'errors') else e})") from None
        plans.append(plan)
        row = {"plan": plan.describe(), "family": str(r.get("family", "")),
               "predicted_tokens_per_second": float(r["predicted_tokens_per_second"]),
               "measured_tokens_per_second": float(r["measured_tokens_per_second"])}
        for key, lo in (("predicted_speedup", 1e-9), ("measured_speedup", 1e-9)):
            v = r.get(key)  # validate's metric (absent from older files)
            if v is not None and not (_number(v) and lo <= v <= 1e6):
                raise ValueError(f"validation.plans.{i}.{key}: expected a number in [{lo:g}, 1e+06], got {v!r}")
            row[key] = None if v is None else float(v)
        # the errors are derived from the figures beside them: a file whose stated error contradicts
        # them is refused rather than shown next to them (fuzz round 25, D3)
        for key, pred, meas in (("relative_error", "predicted_tokens_per_second", "measured_tokens_per_second"),
                                ("speedup_error", "predicted_speedup", "measured_speedup")):
            derived = None if row[pred] is None or row[meas] is None else row[pred] / row[meas] - 1.0
            row[key] = _stated(r.get(key), derived, f"validation.plans.{i}.{key}", -1.0,
                               f"{pred} / {meas} - 1 =", f"{pred} and {meas}")
        rows.append(row)
    errs = np.abs([r["relative_error"] for r in rows])
    su = None if any(r["speedup_error"] is None for r in rows) else np.abs([r["speedup_error"] for r in rows])

    def _stat(key, derived):
        return _stated(data.get(key), derived, f"validation.{key}", 0.0, "its plans give", "every plan's speed-ups")

    def _line(key):
        v = data.get(key)
        if v is not None and not (isinstance(v, str) and len(v) <= 2000):
            raise ValueError(f"validation.{key}: expected a line of text (at most 2000 characters)")
        return None if v is None else " ".join(v.split())

    return {"plans": rows,
            "median_abs_relative_error": _stat("median_abs_relative_error", float(np.median(errs))),
            "max_abs_relative_error": _stat("max_abs_relative_error", float(errs.max())),
            "median_abs_speedup_error": _stat("median_abs_speedup_error", None if su is None else float(np.median(su))),
            "max_abs_speedup_error": _stat("max_abs_speedup_error", None if su is None else float(su.max())),
            "verdict_line": _line("verdict_line"), "verdict_line_replay": _line("verdict_line_replay"),
            "machine_warning": _line("machine_warning"),
            "source_file": str(path),
            "profile": str(data.get("profile", "")) if data.get("profile") is not None else None,
            "setting": {k: data.get(k) for k in ("workload", "tp", "stack", "batch", "context")},
            "plan_models": plans}


def _number(v) -> bool:
    """A finite JSON number (true is none; an integer of 400 digits would overflow a float)."""
    return isinstance(v, float) and math.isfinite(v) or type(v) is int and abs(v) <= 1e300


def _stated(stated, derived: float | None, field: str, lo: float, how: str, needs: str) -> float | None:
    """A figure a validation file states beside the raw figures it derives from: it must be
    what they give, to the 0.1 % a hand-rounded file may carry (fuzz round 25, D3); absent,
    the derived one."""
    if stated is None:
        return derived
    if not (_number(stated) and lo <= stated <= 1e6):
        raise ValueError(f"{field}: expected a number in [{lo:g}, 1e6], got {stated!r}")
    if derived is None:
        raise ValueError(f"{field}: stated, but the file lacks {needs} it derives from")
    if abs(stated - derived) > 1e-3 * max(1.0, abs(derived)):
        raise ValueError(f"{field}: {stated!r}, but {how} {round(derived, 6)}; the file contradicts itself")
    return float(stated)


def check_validation(v: dict, profile: Profile, workload: str | None, tp: int | None, stack: str | None,
                     batch: int = 1) -> None:
    """A validation result the report can show as its profile's fidelity: of that profile,
    workload and latency table, its plans runnable on it (ValueError naming the field)."""
    where = v.get("source_file", "the result")
    if v.get("profile") not in (None, profile.name):
        raise ValueError(f"validation: {where} validates profile {v['profile']!r}; the report is for {profile.name!r}")
    want = {"workload": workload or profile.default_workload, "tp": tp or profile.default_tp,
            "stack": stack or profile.default_stack, "batch": batch}
    for key, value in want.items():
        got = v.get("setting", {}).get(key)
        if got is not None and type(got) is not type(value):  # "1" for 1 read as a contradiction (round 24, M4)
            raise ValueError(f"validation.{key}: {where} gives {got!r}; expected "
                             f"{'an integer' if isinstance(value, int) else 'a name'}")
        if got is not None and got != value:
            raise ValueError(f"validation.{key}: {where} validates {key} {got!r}; the report is of {key} {value!r}")
    ctx = v.get("setting", {}).get("context")
    if ctx is not None:
        if not (isinstance(ctx, int) and not isinstance(ctx, bool) and ctx >= 0):
            raise ValueError(f"validation.context: expected a token count >= 0, got {ctx!r}")
        profile.model.check_context(ctx, "validation.context")
    for i, plan in enumerate(v.pop("plan_models", [])):  # Plan objects: not for the report's JSON
        if plan.batch != batch:  # validate runs every plan at one batch size (fuzz round 25, D3)
            raise ValueError(f"validation.plans.{i}.plan.batch: {plan.batch}; the report is of batch {batch}")
        try:
            profile.check_plan(plan, want["workload"])
        except ValueError as e:
            raise ValueError(f"validation.plans.{i}.plan: {e}") from None


# --------------------------------------------------------------------------- numbers

_r = rounded


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


def weights_note(profile: Profile, tp: int) -> str | None:
    """Where the profile says its HBM and the bf16 weights do not fit in tp x HBM, the note
    every command that prices this setting prints (the report's memory model)."""
    mem = _memory(profile, tp, 1, 0)  # the weights alone decide `fits`
    if mem["fits"] is not False:
        return None
    return (f"the weights (~{mem['weights_gb']} GB, bf16) do NOT fit in tp={tp} x {profile.hardware.hbm_gb} GB HBM: "
            "these figures are hypothetical; use a larger --tp")


def _scaled_profile(profile: Profile, workload: str, factor: float) -> Profile:
    """Every off-diagonal agreement rate times `factor` (the diagonal stays 1), each
    request's too where the workload carries an empirical spread (a logit-normal spread
    keeps its sigma around the scaled rates). Trace-based joints are replaced by the
    independent model on the scaled rates, so factor 1 is that model at the profiled rates."""
    acc = profile.workload(workload)

    def scale(matrix) -> list[list[float]]:
        m = np.asarray(matrix, float) * factor
        np.fill_diagonal(m, 1.0)
        return m.tolist()
    spread = acc.spread
    if spread is not None and spread.per_request:
        spread = spread.model_copy(update={"per_request": [scale(r) for r in spread.per_request]})
    scaled = Acceptance(exits=acc.exits, agreement=scale(acc.agreement), context=acc.context, joint="independent",
                        spread=spread,
                        source=Source(kind="derived", detail=f"{acc.source.detail} -- every agreement rate x {factor}"))
    return profile.model_copy(update={"workloads": {**profile.workloads, workload: scaled}})


def compute(profile: Profile, workload: str | None = None, tp: int | None = None, stack: str | None = None,
            batch: int = 1, context: int | None = None, target_tps: float | None = None, slo_ms: float | None = None,
            gpu_hour_usd: float | None = None, validation: dict | None = None, max_batch: int = 256,
            max_propose: int = 8, max_window: int = 16, profile_ref: str | None = None,
            serving_requests: int = SERVING["requests"], slo_ttft_ms: float | None = None,
            slo_tbt_ms: float | None = None) -> dict:
    """Every number of the report, as a JSON-able dict."""
    given = {"target_tps": target_tps is not None, "slo_ms": slo_ms is not None, "gpu_hour_usd": gpu_hour_usd is not None}
    target_tps = _positive(target_tps, "target_tps") or DEFAULTS["target_tps"]
    slo_ms = _positive(slo_ms, "slo_ms") or DEFAULTS["slo_ms"]
    gpu_hour_usd = _positive(gpu_hour_usd, "gpu_hour_usd") or DEFAULTS["gpu_hour_usd"]
    slo_ttft_ms = _positive(slo_ttft_ms, "slo_ttft_ms") or DEFAULTS["slo_ttft_ms"]
    slo_tbt_ms = _positive(slo_tbt_ms, "slo_tbt_ms") or slo_ms
    if not (isinstance(serving_requests, int) and 0 <= serving_requests <= 100_000):
        raise ValueError("serving_requests: must be an integer in [0, 100000] (0 skips the serving curves)")
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
    if setting.agreement.traces is not None and pairs.size + single.size:  # optimize's answer on a traced workload
        r = optimized(setting, 1, max_propose, max_window, arrays=(exits, single, pairs, three))
        best["replay"] = {"describe": r.best.plan.describe(), "tokens_per_second": _r(r.best.tokens_per_second, 4),
                          "vs_autoregressive": _r(r.best.tokens_per_second / r.autoregressive.tokens_per_second, 4),
                          "requests": r.rescored["requests"], "candidates": r.rescored["candidates"]}
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
    if limit not in batches and limit > 1:  # the largest batch allowed (--max-batch or memory) is swept too
        batches.append(limit)
    sweep = []
    for b in batches:
        if b == setting.batch:  # the setting of (a): same numbers, computed once
            sweep.append({"batch": b, **copy.deepcopy(best)})
            continue
        s = Setting(profile, setting.workload, setting.tp, setting.stack, b, setting.context)
        r = _best_of(s, max_propose, max_window)
        r.pop("arrays")
        sweep.append({"batch": b, **r})
    grid = int(setting.table.tokens[-1])
    for row in sweep:  # where a forward carries more tokens than the latency table measured
        row["extrapolated"] = {f: row["batch"] * largest_forward_tokens(e["plan"]) > grid
                               for f, e in row["families"].items()}
    data["table_max_tokens"] = grid
    data["memory"] = mem
    data["sweep"] = sweep
    data["sweep_note"] = _sweep_note(mem, setting, max_batch, limit, profile)
    data["crossover"] = _crossover(sweep)

    # (d): sensitivity of the best plan to lower acceptance
    best_plan = Plan.model_validate(best["families"][best["best_family"]]["plan"])
    acc = profile.workload(setting.workload)
    sens, ref = [], None
    for f in SENSITIVITY:
        s = Setting(_scaled_profile(profile, setting.workload, f), setting.workload, setting.tp, setting.stack, batch,
                    setting.context)
        fixed = score(s, [best_plan])[0].tokens_per_second
        if f == 1.0:  # as profiled: the setting of (a); the changes are against the scaled model at factor 1
            ref = fixed
            r = copy.deepcopy(best)
            fixed = score(setting, [best_plan])[0].tokens_per_second
        else:
            r = _best_of(s, max_propose, max_window)
            r.pop("arrays")
        fam = r["families"]
        sens.append({"factor": f, "label": "as profiled" if f == 1.0 else f"{round((1 - f) * 100)} % lower",
                     "best_plan_tokens_per_second": _r(fixed, 4),
                     "change": _r(0.0 if f == 1.0 else fixed / ref - 1, 6),
                     "reoptimised": {"describe": fam[r["best_family"]]["describe"],
                                     "tokens_per_second": fam[r["best_family"]]["tokens_per_second"]},
                     "single_level_tokens_per_second": fam.get("single_level", {}).get("tokens_per_second"),
                     "autoregressive_tokens_per_second": fam["autoregressive"]["tokens_per_second"]})
    method = ("every off-diagonal agreement rate of the workload multiplied by 0.9 / 0.8 (the diagonal stays 1)"
              + ("" if acc.spread is None else ", every request's rates too (its measured per-request spread kept)"
                 if acc.spread.family == "empirical" else
                 f" (its logit-normal spread, sigma {acc.spread.sigma:g}, kept around the scaled rates)"))
    if acc.joint == "traces":
        method += "; the workload's trace-based joint rates give way to the independent model on the scaled rates"
        if f"{ref:,.1f}" != f"{sens[0]['best_plan_tokens_per_second']:,.1f}":
            method += (f", so each change is against that model at the profiled rates ({ref:,.1f} tokens/s for the best "
                       f"plan, {sens[0]['best_plan_tokens_per_second']:,.1f} with the traces)")
    data["sensitivity"] = {"plan": best_plan.describe(), "rows": sens, "method": method,
                           "reference_tokens_per_second": _r(ref, 4)}

    # (e): capacity
    cache = {r["batch"]: r["families"] for r in sweep}

    def evaluate(b: int) -> dict:
        if b not in cache:
            r = _best_of(Setting(profile, setting.workload, setting.tp, setting.stack, b, setting.context),
                         max_propose, max_window)
            cache[b] = r["families"]
        return cache[b]

    data["capacity"] = _capacity(sweep, setting.tp, target_tps, slo_ms, gpu_hour_usd, evaluate)
    if mem["fits"] is False:  # said where the deployment is sized, and on stderr with the other warnings
        data["capacity"]["warnings"].insert(0, weights_note(profile, setting.tp))
    data["capacity"]["batches_evaluated"] = sorted(cache)
    data["capacity"]["given"] = given

    # (g): serving curves (request-level simulation), after the lockstep quick view
    data["serving"], data["serving_skipped"] = (
        _serving(setting, sweep[0]["families"], mem, serving_requests, slo_ttft_ms, slo_tbt_ms) if serving_requests
        else (None, "--serving-requests 0"))

    # (f): provenance and validation
    data["provenance"] = _provenance(profile)
    data["validation"] = validation
    return data


def _serving(setting: Setting, families: dict, mem: dict, requests: int, slo_ttft_ms: float,
             slo_tbt_ms: float) -> tuple[dict | None, str | None]:
    """(curves, None), or (None, why) where the model cannot hold the requests.
    Throughput-latency curves of one replica under Poisson traffic (serving.py's
    request-level simulation), per family its batch-1 lockstep optimum; speculative plans
    under the synchronous policy (ragged batching desynchronises the drafts: a step with
    any check runs the deep layers for everyone). Loads: geometric from SERVING['low'] to
    SERVING['high'] x the autoregressive lockstep saturation (requests/s of a full batch).
    Where speculation / hierarchy stop paying: on the mean end-to-end latency per request
    (capacity.crossovers)."""
    import time

    from . import capacity, traffic
    from .schema import LengthDist, ServeLimits, Traffic

    t0 = time.perf_counter()
    max_batch = SERVING["max_batch"] if mem["max_batch"] is None else max(1, min(SERVING["max_batch"], mem["max_batch"]))
    plans = {}
    for fam in FAMILIES:
        if fam in families:
            p = Plan.model_validate(families[fam]["plan"])
            plans[fam] = p.model_copy(update={"batch": 1, "batching": "synchronous" if p.depth > 1 else "ragged"})
    overshoot, context = max(p.max_overshoot for p in plans.values()), setting.profile.model.max_context
    lengths = traffic.fit_default_lengths(traffic.DEFAULT_LENGTHS, context, overshoot)
    tr = Traffic(qps=1.0, requests=requests, seed=0, **{k: LengthDist.parse(v, k) for k, v in lengths.items()})
    if context is not None and tr.prompt_len.upper + tr.output_len.upper + overshoot > context:  # serve refuses them
        return None, (f"the model's context of {context} tokens leaves no room for requests of the default lengths, "
                      f"even scaled down, beside the plans' {overshoot} tokens of speculation")
    limits = ServeLimits(max_batch=max_batch, slo_ttft_ms=slo_ttft_ms, slo_tbt_ms=slo_tbt_ms)
    one = Setting(setting.profile, setting.workload, setting.tp, setting.stack, 1, setting.context)
    spec = capacity.Spec(one, tr, limits, "ragged", SERVING["seeds"])
    sat = capacity._saturation_qps(spec, plans["autoregressive"])
    n = SERVING["loads"]
    lo, hi = SERVING["low"] * sat, SERVING["high"] * sat
    loads = [_r(lo * (hi / lo) ** (i / (n - 1)), 4) for i in range(n)]
    # arrivals span >= `lifetimes` x a request's time in a full autoregressive batch (max_batch / sat)
    window_s = SERVING["lifetimes"] * max_batch / sat
    _check_sweep_size(setting, plans, tr, [min(max(requests, math.ceil(q * window_s)), 10 * requests) for q in loads],
                      requests)
    curves = capacity.latency_curves(spec, plans, loads, window_s, most=10 * requests)
    cross = capacity.crossovers(curves)
    for e in curves["families"].values():
        ok = [p["qps"] for p in e["points"] if p["meets_slo"]]
        e["highest_load_meeting_slo"] = max(ok) if ok else None
    return {**curves, "crossover": cross, "requests": requests, "seeds": SERVING["seeds"], "max_batch": max_batch,
            **lengths,
            "saturation_qps_autoregressive": _r(sat, 4), "seconds": _r(time.perf_counter() - t0, 2),
            "method": (f"max({requests}, load x {window_s:.3g} s) Poisson requests per load, at most {10 * requests} (seed 0, "
                       f"{SERVING['seeds']} seed(s); arrivals span at least {SERVING['lifetimes']:g} lifetimes of a "
                       "request in a full autoregressive batch, so that high loads are not a single burst), prompts "
                       f"{lengths['prompt_len']}, outputs {lengths['output_len']} tokens, max batch {max_batch}, KV "
                       "unbounded, prefill of each admitted group in one forward that stalls decoding; per family its "
                       "batch-1 lockstep optimum, speculative plans under the synchronous policy; loads from "
                       f"{SERVING['low']:g}x to {SERVING['high']:g}x the autoregressive saturation (a full lockstep "
                       "batch of max batch); a family 'pays' at a load when its mean end-to-end latency per request "
                       "is lower; crossovers interpolated in log(load). With this few requests p99 is close to the "
                       "maximum: `hispec-sim capacity` answers the sizing question with more requests and seeds")}, None


def _check_sweep_size(setting: Setting, plans: dict, tr, per_load: list[int], requests: int) -> None:
    """Refuse a serving sweep expected to walk more than MAX_SERVE_FORWARDS forwards in all
    (its time grows with them), as `serve` and `capacity` refuse a run (serving.check_size)."""
    from . import serving, traffic

    acc = setting.profile.workload(setting.workload)
    per_token = sum(serving.forwards_per_token(acc, p) for p in plans.values())
    forwards = per_token * traffic.mean_length(tr.output_len) * sum(per_load) * SERVING["seeds"]
    if forwards > schema.MAX_SERVE_FORWARDS:
        raise ValueError(f"serving_requests: {requests} requests per load ({sum(per_load):,} over the sweep's "
                         f"{len(per_load)} loads, {SERVING['seeds']} seed(s), {len(plans)} plans) need ~{forwards:.2e} "
                         f"forwards, at most {schema.MAX_SERVE_FORWARDS:.2e}; allowed: about "
                         f"{max(1, int(requests * schema.MAX_SERVE_FORWARDS / forwards)):,} or fewer")


def largest_forward_tokens(plan: dict | Plan) -> int:
    """New tokens per sequence in the largest forward a plan runs: 1 for autoregressive;
    otherwise propose + sum(windows) + 1 (a level's check sees its window, overrun by at most
    one block of the level below, plus the token the check itself adds)."""
    plan = plan if isinstance(plan, Plan) else Plan.model_validate(plan)
    return 1 if plan.depth == 1 else plan.propose + sum(plan.windows) + 1


def _sweep_note(mem: dict, setting: Setting, max_batch: int, limit: int, profile: Profile) -> str:
    parts = [f"weights ~{mem['weights_gb']} GB (bf16), KV cache {mem['kv_mb_per_token']} MB per token"]
    if mem["hbm_gb"] is None:
        parts.append("the profile gives no HBM size, so batch is not capped by memory")
    elif not mem["fits"]:
        parts.append(weights_note(profile, setting.tp))
    elif mem["max_batch"] == 0:
        parts.append(f"{mem['hbm_gb']} GB HBM (tp={setting.tp}) at {int(MEMORY_HEADROOM * 100)} % use holds the weights "
                     f"but not one sequence's KV cache at context {setting.context}: these figures are hypothetical")
    else:
        parts.append(f"{mem['hbm_gb']} GB HBM (tp={setting.tp}) at {int(MEMORY_HEADROOM * 100)} % use holds "
                     f"batch <= {mem['max_batch']} at context {setting.context}")
        if setting.batch > mem["max_batch"]:
            parts.append(f"the batch of the headline, {setting.batch}, does not fit: its figures are hypothetical")
    parts.append(f"sweep up to batch {limit}" + (" (--max-batch)" if limit == max_batch else " (memory)"))
    grid = setting.table.tokens[-1]
    parts.append(f"the latency table is measured up to {grid} tokens per forward; beyond that it is extrapolated linearly")
    return "; ".join(parts)


def _crossover(sweep: list[dict]) -> dict:
    """Where hierarchy pays (best 3-level faster than best single-level), where it stops
    paying (the first batch after the last one where it pays; None if it pays at the
    largest batch swept or nowhere) and where speculation stops paying (no speculative plan
    faster than autoregressive)."""
    spec_stops = None
    pays = []
    for row in sweep:
        f = row["families"]
        ar = f["autoregressive"]["tokens_per_second"]
        sl = f.get("single_level", {}).get("tokens_per_second", 0.0)
        hi = f.get("hierarchical", {}).get("tokens_per_second", 0.0)
        if hi > sl:
            pays.append(row["batch"])
        if max(sl, hi) <= ar and spec_stops is None and len(f) > 1:
            spec_stops = row["batch"]
    later = [r["batch"] for r in sweep if pays and r["batch"] > pays[-1] and "hierarchical" in r["families"]]
    hier_stops = later[0] if later else None
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
    # fewest GPUs; on a tie (same GPUs, so the same $ at target) the lower cost fully loaded
    recommended = min(met, key=lambda r: (r["gpus"], r["usd_per_million_tokens_full_load"]))["family"] if met else None
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
                   f"{schema.decimals(closest['latency_ms_per_token'], 2)} ms/token")
    else:
        for r in rows:
            if not r["meets_slo"]:
                out.append(f"{FAMILY_LABEL[r['family']]}: no batch meets the SLO of {slo:g} ms/token; closest: "
                           f"{r['plan']} at batch {r['batch']}, {schema.decimals(r['latency_ms_per_token'], 2)} ms/token")
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
