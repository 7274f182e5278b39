"""Capacity on traffic: how many replicas (and GPUs, and dollars) a target load needs
under p99 TTFT and p99 TBT SLOs, per plan family, with the plan re-optimised per load.

Method. Candidates per family: autoregressive, and the analytic optimizer's best
single-level and best hierarchical plan at several lockstep batch sizes (1, 8, 32 and the
max batch): the lockstep optimum at the batch the replica actually runs. Each candidate
is simulated by serving.simulate on a seeded Poisson (or gamma) request set; a load is
*sustained* when the mean over seeds of p99 TTFT and of p99 TBT meet the SLOs. The
highest sustained QPS of one replica is found by doubling the load from 2 % of the
saturation throughput (a full lockstep batch's, analytic: no replica sustains more) until
the SLOs break, then geometric bisection, separately per seed (a seed that meets them at
the saturation load itself is capped there, and said: its run is too short to show the
queue growing):
its uncertainty is the spread over seeds (95 % Student t interval) plus the bisection's
final bracket. Replicas = ceil(target / per-replica QPS), GPUs = replicas x tp, and
$ per million generated tokens = GPUs x $/GPU-hour / generated tokens per hour.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from . import serving, traffic
from .evaluate import Setting, check_exhaustive_size, exhaustive, exhaustive_arrays
from .montecarlo import t95
from .schema import Plan, ServeLimits, Traffic

BATCHES = (1,)  # plus the max batch


@dataclass
class Spec:
    """Everything besides plan and load that fixes a capacity simulation."""

    setting: Setting
    traffic: Traffic  # qps is overwritten per load
    limits: ServeLimits
    batching: str
    seeds: int


def candidates(setting: Setting, max_batch: int, batching: str, slo_tbt_ms: float, max_propose: int = 8,
               max_window: int = 16, max_in_flight: int | None = None) -> dict[str, list[Plan]]:
    """Per family, at batch 1 and at max_batch: the lockstep optimum, and the best plan
    (under each batching policy when batching is 'auto') whose cycle (time between two full-model commits) stays under 0.8 x the TBT SLO,
    since a speculative plan emits in bursts and its TBT p99 is about one cycle. Only plans
    with at most `max_in_flight` tokens in flight (`Plan.max_overshoot`), where given."""
    ar_policy = "ragged" if batching == "auto" else batching  # autoregressive: both policies alike
    out: dict[str, list[Plan]] = {"autoregressive": [Plan(levels=[setting.num_layers], batching=ar_policy)],
                                  "single_level": [], "hierarchical": []}
    if max_in_flight is not None and max_in_flight < 4:  # the least a speculative plan holds: propose 1 + 3
        return out
    for b in sorted({min(x, max_batch) for x in BATCHES + (max_batch,)}):
        s = Setting(setting.profile, setting.workload, setting.tp, setting.stack, b, setting.context)
        check_exhaustive_size(s, max_propose, max_window)  # before the arrays: a grid too large is refused at once
        arrays = exhaustive_arrays(s, max_propose, max_window)
        if max_in_flight is not None:  # rank the plans that do not fit last: in flight propose + 3 single-level,
            _, single, _, three = arrays  # propose + window + 4 for 3 levels
            g, w = np.arange(1, max_propose + 1), np.arange(1, max_window + 1)
            single[:, g + 3 > max_in_flight] = 0.0
            three[:, g[:, None] + w[None, :] + 4 > max_in_flight] = 0.0
        res = exhaustive(s, top=400, max_propose=max_propose, max_window=max_window, arrays=arrays)
        for fam, depth in (("single_level", 2), ("hierarchical", 3)):
            ranked = [x for x in res.top if x.plan.depth == depth]
            if depth == 2 and res.best_single_level.plan.depth == 2:
                ranked = [res.best_single_level] + ranked
            ranked = [x for x in ranked if max_in_flight is None or x.plan.max_overshoot <= max_in_flight]
            short = [x for x in ranked if x.latency_ms * x.tokens_per_full_forward <= 0.8 * slo_tbt_ms]
            for x in ranked[:1] + short[:1]:
                for policy in (("ragged", "synchronous") if batching == "auto" else (batching,)):
                    p = x.plan.model_copy(update={"batch": 1, "batching": policy})
                    if p not in out[fam]:
                        out[fam].append(p)
    return out


def describe(p: Plan) -> str:
    """The plan and, for speculative plans, its batching policy."""
    return p.describe() + (f" {p.batching}" if p.depth > 1 else "")


def run_load(spec: Spec, plan: Plan, qps: float, seed: int, requests: int | None = None) -> dict:
    """quick_summary of one seeded run at `qps`."""
    return serving.quick_summary(_seeded_run(spec, plan, qps, seed, requests), spec.limits)


def _seeded_run(spec: Spec, plan: Plan, qps: float, seed: int, requests: int | None = None) -> serving.ServeRun:
    tr = spec.traffic.model_copy(update={"qps": qps, "seed": spec.traffic.seed + seed,
                                         "requests": requests or spec.traffic.requests})
    rng = np.random.default_rng(tr.seed)
    arr = traffic.arrival_times(tr, rng)
    p = traffic.draw_lengths(tr.prompt_len, tr.requests, rng)
    o = traffic.draw_lengths(tr.output_len, tr.requests, rng)
    return serving.simulate_arrays(spec.setting.table, spec.setting.num_layers, spec.setting.acceptance, plan, arr, p, o,
                                   spec.limits, seed=tr.seed)


def _requests_overlap(run: serving.ServeRun) -> bool:
    """Whether a request arrived before every earlier one had finished."""
    order = np.argsort(run.arrival_s, kind="stable")
    busy_until = np.maximum.accumulate(run.last_ms[order])
    return bool((run.arrival_s[order][1:] * 1e3 < busy_until[:-1]).any())


def meets(s: dict, limits: ServeLimits) -> bool:
    return violation(s, limits) <= 1.0


def violation(s: dict, limits: ServeLimits) -> float:
    """max(p99 TTFT / SLO, p99 TBT / SLO): <= 1 meets both."""
    return slo_ratio(s["ttft_ms"]["p99"], s["tbt_ms"]["p99"], limits)


def slo_ratio(ttft_p99_ms: float, tbt_p99_ms: float | None, limits: ServeLimits) -> float:
    """max(TTFT / its SLO, TBT / its SLO). Without a gap between tokens (every request
    generates one token: TBT None) the TBT SLO holds trivially."""
    return max(ttft_p99_ms / limits.slo_ttft_ms, 0.0 if tbt_p99_ms is None else tbt_p99_ms / limits.slo_tbt_ms)


IDLE_REQUESTS = 24
IDLE_FRACTION = 1e-3  # of the saturation load: Poisson requests seldom overlap there (idle_run)


def idle_run(spec: Spec, plan: Plan, seed: int) -> dict:
    """quick_summary at a nearly idle load. Where every batch holds one sequence, the
    synchronous policy runs the sequence's batch-1 schedule exactly as ragged does, so a
    3+-level synchronous plan is simulated by the ragged engine (schedules drawn up front;
    the step-by-step synchronous engine costs ~50x more per request at batch 1) -- unless
    two requests overlap, as bursty arrivals make them at any mean rate: then by its own."""
    q = IDLE_FRACTION * _saturation_qps(spec, plan)
    n = min(IDLE_REQUESTS, spec.traffic.requests)
    if plan.batching == "synchronous" and plan.depth >= 3:
        run = _seeded_run(spec, plan.model_copy(update={"batching": "ragged"}), q, seed, n)
        if not _requests_overlap(run):
            return serving.quick_summary(run, spec.limits)
    return run_load(spec, plan, q, seed, n)


def max_qps(spec: Spec, plan: Plan, seed: int, sat: float, iterations: int = 5) -> tuple[float, float, dict]:
    """Highest sustained QPS of one replica for one seed: (low, high) of the final bracket
    (0, 0 when even a nearly idle replica misses the SLOs) and the summary at `low` (at the
    idle load when none is sustained). The load doubles from 2 % of the saturation load
    until the SLOs break, then a geometric bisection: runs stay at loads near the answer
    (a run far above it queues every request and costs the most). sat: _saturation_qps."""
    idle = idle_run(spec, plan, seed)
    if not meets(idle, spec.limits):
        return 0.0, 0.0, idle
    lo, hi, best = IDLE_FRACTION * sat, None, idle
    q = 0.02 * sat
    while hi is None:
        q = min(q, sat)  # no replica sustains more than a full batch's throughput: a run of finitely many
        s = run_load(spec, plan, q, seed)  # requests above it can meet the SLOs before its queue shows
        if not meets(s, spec.limits):
            hi = q
        elif q >= sat:
            return sat, sat, s  # capped: family_capacity reports it as such
        else:
            lo, best = q, s
            q *= 2
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        s = run_load(spec, plan, mid, seed)
        if meets(s, spec.limits):
            lo, best = mid, s
        else:
            hi = mid
    return lo, hi, best


def _saturation_qps(spec: Spec, plan: Plan) -> float:
    """Requests/s of a full lockstep batch (analytic, max batch, no prefill), and at most one
    autoregressive step's worth per full-model check: a check costs at least that step (every
    layer once) and commits at most max_overshoot tokens, none past a request's end (a
    1-token request gains nothing from speculation). Priced at the traffic's mean context (mean
    prompt + half the mean output), not the workload's: a replica serving short requests runs
    faster than one at the profile's context. Above any load one replica sustains."""
    from .evaluate import score

    b = spec.limits.max_batch
    lens = spec.traffic.output_len
    context = max(1, round(traffic.mean_length(spec.traffic.prompt_len) + traffic.mean_length(lens) / 2))
    s = Setting(spec.setting.profile, spec.setting.workload, spec.setting.tp, spec.setting.stack, b, context)
    tps, ar_tps = (x.tokens_per_second for x in score(s, [plan.model_copy(update={"batch": b}),
                                                          Plan(levels=[s.num_layers], batch=b)]))
    checks = traffic.mean_length(lens, per=plan.max_overshoot)
    return max(min(tps / traffic.mean_length(lens), ar_tps / checks), 1e-6)


def family_capacity(spec: Spec, plans: list[Plan], probe_qps: float | None) -> dict:
    """The family's candidate with the smallest SLO violation at `probe_qps` (one seed),
    then its highest sustained QPS per seed; mean and 95 % interval over seeds (t, clipped to
    [0, saturation])."""
    screened = []
    if len(plans) > 1 and probe_qps:
        for p in plans:
            s = run_load(spec, p, probe_qps, 0)
            screened.append((violation(s, spec.limits), p))
        plan = min(screened, key=lambda x: x[0])[1]
    else:
        plan = plans[0]
    sat = _saturation_qps(spec, plan)
    per_seed = [max_qps(spec, plan, seed, sat) for seed in range(spec.seeds)]
    los = np.array([x[0] for x in per_seed])
    his = np.array([x[1] for x in per_seed])
    capped = los >= sat
    # a capped seed's answer is only an upper bound: where other seeds found their limit, the
    # capacity is theirs (averaging the cap in once sized 1 replica that one seed's traffic failed)
    use = ~capped if not capped.all() else np.ones_like(capped)
    lo, hi = los[use], his[use]
    m = float(lo.mean())
    # no interval from one seed, nor from seeds that all stopped at the cap (an upper bound, not a spread)
    half = float(t95(len(lo) - 1) * lo.std(ddof=1) / math.sqrt(len(lo))) if len(lo) > 1 and not capped.all() else None
    # the p99 figures at the capacity: the worst seed's at its maximum, of the seeds that sustained a load (a seed
    # failing even at the idle load counts as 0 in the mean; its idle figures broke the SLOs, and are shown only
    # when no seed sustained one)
    held = np.flatnonzero(los > 0)
    worst = int(held[np.argmin(los[held])]) if held.size else int(np.argmin(los))
    # clipped to what a replica can hold: [0, the saturation cap no search goes above]
    return {"plan": plan, "max_qps": m, "ci95": [max(m - half, 0.0), min(m + half, sat)] if half is not None else None,
            "bracket": [m, float(hi.mean())], "per_seed": [[float(a), float(b)] for a, b in zip(los, his)],
            "at_max": per_seed[worst][2], "saturation_qps": sat, "seeds_failing_idle": int((los == 0).sum()),
            "capped_at_saturation": bool(capped.any()), "seeds_capped": int(capped.sum()), "seeds_used": int(use.sum()),
            "screened": [{"plan": describe(p), "violation_at_probe": v} for v, p in screened]}


def by_load(spec: Spec, fams: dict[str, list[Plan]], loads: list[float]) -> list[dict]:
    """At each load, per family the candidate with the smallest SLO violation on seed 0's
    requests (a capacity run's first seed; a short run's attainment need not fall with the
    load, so a seed that passes where the others fail can mark loads above the capacity). A
    load above a plan's saturation cap (_saturation_qps) does not meet the SLOs, whatever a
    run of finitely many requests shows, as in the capacities."""
    caps = {describe(p): _saturation_qps(spec, p) for plans in fams.values() for p in plans}
    rows = []
    for q in loads:
        row = {"qps": q, "families": {}}  # unrounded, as the capacities: printed alike, both round once
        for fam, plans in fams.items():
            scored = []
            for p in plans:
                s = run_load(spec, p, q, 0)
                v, above = violation(s, spec.limits), q > caps[describe(p)] * (1 + 1e-9)
                scored.append((above or v > 1.0, v, p, s, above))
            _, v, p, s, above = min(scored, key=lambda x: x[:2])
            row["families"][fam] = {"plan": describe(p), "meets_slo": v <= 1.0 and not above,
                                    "above_saturation": above, "ttft_p99_ms": s["ttft_ms"]["p99"],
                                    "tbt_p99_ms": s["tbt_ms"]["p99"], "violation": v}
        rows.append(row)
    return rows


def plan_capacity(spec: Spec, target_qps: float, gpu_hour_usd: float, max_propose: int = 8, max_window: int = 16) -> dict:
    t0 = time.perf_counter()
    setting = spec.setting
    # with --kv-tokens, only plans whose longest request (and its speculation) can be admitted
    in_flight = (None if spec.limits.kv_tokens is None else
                 spec.limits.kv_tokens - spec.traffic.prompt_len.upper - spec.traffic.output_len.upper)
    fams = candidates(setting, spec.limits.max_batch, spec.batching, spec.limits.slo_tbt_ms, max_propose, max_window,
                      in_flight)
    tp = setting.tp
    mean_out = traffic.mean_length(spec.traffic.output_len)
    result = {"target_qps": target_qps, "candidates": {f: [describe(p) for p in ps] for f, ps in fams.items()},
              "families": {}, "max_in_flight": in_flight}
    probe = None
    idle_fail: dict[str, list] = {}
    for fam, plans in list(fams.items()):
        if not plans:  # e.g. no 3-level chain in a model of two exits
            del fams[fam]
            continue
        # a candidate that misses the SLOs on a nearly idle replica is out (kept if all are)
        viol = [(violation(idle_run(spec, p, 0), spec.limits), p) for p in plans] if len(plans) > 1 else [(0.0, plans[0])]
        ok = [p for v, p in viol if v <= 1.0]
        idle_fail[fam] = [{"plan": describe(p), "violation_idle": v} for v, p in viol if v > 1.0]
        fams[fam] = ok or [min(viol, key=lambda x: x[0])[1]]
    result["failing_even_idle"] = idle_fail
    for fam, plans in fams.items():
        if not plans:
            continue
        c = family_capacity(spec, plans, probe)
        if fam == "autoregressive" and c["max_qps"] > 0:
            probe = c["max_qps"]  # the other families' candidates are screened at the load autoregressive sustains
        q = c["max_qps"]
        entry = {"plan": c["plan"].model_dump(), "describe": describe(c["plan"]),
                 "max_qps_per_replica": q, "max_qps_ci95": c["ci95"], "bisection_bracket": c["bracket"],
                 "per_seed_bracket": c["per_seed"], "candidates_screened": c["screened"],
                 "saturation_qps": c["saturation_qps"], "capped_at_saturation": c["capped_at_saturation"],
                 "seeds_capped": c["seeds_capped"], "seeds_used": c["seeds_used"],
                 "seeds_failing_idle": c["seeds_failing_idle"]}
        if q > 0:
            replicas = math.ceil(target_qps / q)
            gpus = replicas * tp
            tokens_per_hour = target_qps * mean_out * 3600.0
            entry.update({"replicas": replicas, "gpus": gpus,
                          "usd_per_million_tokens": gpus * gpu_hour_usd / tokens_per_hour * 1e6,
                          "replicas_ci95": None if c["ci95"] is None else
                          [math.ceil(target_qps / c["ci95"][1]) if c["ci95"][1] > 0 else None,
                           math.ceil(target_qps / c["ci95"][0]) if c["ci95"][0] > 0 else None]})
        s = c["at_max"]
        entry["at_max_qps"] = {"ttft_p99_ms": s["ttft_ms"]["p99"], "tbt_p99_ms": s["tbt_ms"]["p99"],
                               "tpot_p99_ms": s["tpot_ms"]["p99"], "throughput_tokens_per_s": s["throughput_tokens_per_s"]}
        result["families"][fam] = entry
    served = {f: e for f, e in result["families"].items() if e["max_qps_per_replica"] > 0}
    if served:
        best_fam = max(served, key=lambda f: served[f]["max_qps_per_replica"])
        result["best_family"] = best_fam
        top_q = served[best_fam]["max_qps_per_replica"]
        # families that no load serves are left out (their idle figures are in the table)
        result["by_load"] = by_load(spec, {f: fams[f] for f in served}, [top_q * f for f in (0.5, 1.0)])
    else:
        closest = min(((f, e) for f, e in result["families"].items()),
                      key=lambda x: slo_ratio(x[1]["at_max_qps"]["ttft_p99_ms"], x[1]["at_max_qps"]["tbt_p99_ms"],
                                              spec.limits))
        result["closest"] = {"family": closest[0], "plan": closest[1]["describe"], **closest[1]["at_max_qps"]}
    result["mean_output_tokens"] = mean_out
    result["seconds"] = time.perf_counter() - t0
    return result


def latency_curves(spec: Spec, plans: dict[str, Plan], loads: list[float], window_s: float = 0.0,
                   most: int | None = None) -> dict:
    """Throughput-latency curves for the report: per family (its plan) and per load, the
    throughput, p50/p99 TTFT and TBT, mean TPOT and mean end-to-end latency (mean over
    seeds), whether both p99 SLOs are met, with the SLO lines. Each load simulates
    max(spec.traffic.requests, load x window_s) requests (at most `most`): arrivals must keep coming for
    several request lifetimes, or a short burst of requests is admitted at once, prefilled
    once and decoded without interference, which flatters high loads."""
    out = {"loads": loads, "slo_ttft_ms": spec.limits.slo_ttft_ms, "slo_tbt_ms": spec.limits.slo_tbt_ms, "families": {},
           "requests_per_load": [min(max(spec.traffic.requests, math.ceil(q * window_s)), most or 10**9) for q in loads]}
    for fam, plan in plans.items():
        rows = []
        for q, n in zip(loads, out["requests_per_load"]):
            runs = [run_load(spec, plan, q, s, n) for s in range(spec.seeds)]
            agg = serving.over_seeds(runs)
            row = {"qps": q, "throughput_tokens_per_s": agg["throughput_tokens_per_s"]["mean"],
                   **{f"{m}_{p}": agg[m][p]["mean"] for m in ("ttft_ms", "tbt_ms") for p in ("p50", "p99")},
                   "tpot_ms_mean": agg["tpot_ms"]["mean"]["mean"], "e2e_ms_mean": agg["e2e_ms"]["mean"]["mean"]}
            row["meets_slo"] = (row["ttft_ms_p99"] <= spec.limits.slo_ttft_ms and row["tbt_ms_p99"] <= spec.limits.slo_tbt_ms)
            rows.append(row)
        out["families"][fam] = {"plan": describe(plan), "points": rows}
    return out


def stops_paying(loads: list[float], better: list[float], base: list[float]) -> dict:
    """Where a family stops paying against a baseline along a load sweep, on a latency
    (lower is better): it pays at a load when its latency is below the baseline's. The
    crossover is the load after the last sign change from paying to not paying, past which
    it pays at no swept load, interpolated linearly in log(load) on log(latency ratio)
    between the two swept loads around it. Returns stops_at_qps (None: pays at the highest
    load swept, or never pays), pays_at (the loads where it pays) and never (True when it
    pays at no load)."""
    ratio = [math.log(b / a) for b, a in zip(better, base)]  # < 0: pays
    pays = [r < 0 for r in ratio]
    out = {"pays_at": [q for q, p in zip(loads, pays) if p], "never": not any(pays), "stops_at_qps": None,
           "bracket": None}
    if not any(pays) or pays[-1]:
        return out
    i = max(j for j, p in enumerate(pays) if p) + 1  # first load of the final non-paying run
    r0, r1 = ratio[i - 1], ratio[i]
    x0, x1 = math.log(loads[i - 1]), math.log(loads[i])
    x = x0 + (x1 - x0) * (-r0) / (r1 - r0) if r1 != r0 else x1
    out["stops_at_qps"] = math.exp(x)
    out["bracket"] = [loads[i - 1], loads[i]]
    return out


def crossovers(curves: dict, metric: str = "e2e_ms_mean") -> dict:
    """Where speculation (the better of the speculative families at each load) stops paying
    against autoregressive, and hierarchy against the single-level family, on `metric`."""
    fam = curves["families"]
    loads = curves["loads"]
    col = {f: [p[metric] for p in e["points"]] for f, e in fam.items()}
    out = {"metric": metric, "speculation": None, "hierarchy": None}
    spec_fams = [f for f in ("single_level", "hierarchical") if f in col]
    if "autoregressive" in col and spec_fams:
        best = [min(col[f][i] for f in spec_fams) for i in range(len(loads))]
        out["speculation"] = stops_paying(loads, best, col["autoregressive"])
    if "hierarchical" in col and "single_level" in col:
        out["hierarchy"] = stops_paying(loads, col["hierarchical"], col["single_level"])
    return out
