"""Adaptive plans: confidence-gated drafting (Plan.draft_confidence) and early escalation
(Plan.escalate_confidence), modelled on a workload's measured top-1 probabilities
(Acceptance.confidence.top1, one row per trace row). The analytic_* models take one
request's rates (a workload at its mean rates, or a RequestView); over_requests evaluates
them per request of the workload's distribution -- every measured request at its own
agreement matrix AND its own confidence statistics (its trace rows: request_rows) -- and
aggregates E[tokens] / E[time] over requests, as analytic.predict does for fixed plans.

Semantics (the executor's, hispec_exec.generate): level 1 drafts until it holds `propose`
drafts or a draft's top-1 probability at exit l_1 is < tau_d (that draft is kept and
checked); after level j's check (1 < j < k), level j+1 checks at once when level j's
buffer reached its window or level j's own emitted token (correction or bonus) has top-1
probability < tau_j.

* `analytic_single_level`: exact expectation for [E, L] plans with draft_confidence,
  assuming positions i.i.d. (each position's (top-1 bucket, agreement) drawn independently
  from the measured rows). With tau = 0 it is analytic.predict's value for the fixed plan.
* `replay`: over the measured rows, any depth, both knobs. order="trace": every measured
  request walked from its first position to its length, consecutive positions being
  consecutive rows (the measured correlations kept; deterministic; for greedy plans each
  full-model check commits exactly the executor's tokens); order="iid": every position
  of a cycle is a fresh uniformly drawn row (the analytic model's assumption, for
  checking it). A tentative token at position p is compared with what each exit
  predicted at row p: past a rejection the context differs from the measured one and the
  row stands in for it (positions exchangeable).
* `analytic_three_level`: exact expectation for [l1, l2, L] plans with draft_confidence
  and escalate_confidence (i.i.d. positions).
* `analytic_four_level`: exact expectation for [l1, l2, l3, L] plans, both knobs, with the
  per-token model of `token_classes` (the serving simulator's); 5+ levels: replay only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acceptance import AgreementModel, RequestRates, Scenarios
from .analytic import _check_cost
from .latency import CostModel
from .montecarlo import SimulationTooLarge, t95, walk_spans
from .schema import MAX_REPLAY_FORWARDS, Acceptance, Plan, decimals, rounded


def _top1(acc: Acceptance, field: str = "draft_confidence") -> np.ndarray:
    if acc.confidence is None or acc.confidence.top1 is None:
        raise ValueError(f"{field}: this workload has no confidence statistics (top-1 probabilities per position)")
    return np.asarray(acc.confidence.top1, float)


@dataclass
class AdaptiveEstimate:
    tokens_per_second: float
    tokens_per_full_forward: float  # committed per cycle
    cycle_ms: float
    drafts_per_round: float | None = None
    ci95: tuple[float, float] | None = None  # Monte-Carlo only
    checks: int | None = None  # replay: full-model checks walked
    forwards: int | None = None  # replay: forwards of every level walked (a ragged sequence's steps)


# --------------------------------------------------------------------------- per-request evaluation


def _rows_top1(model, field: str = "draft_confidence") -> np.ndarray:
    """The top-1 probabilities of the rows a model (or a RequestView) stands for; the
    workload's array is converted once per model (the exhaustive search calls this often)."""
    base = getattr(model, "model", model)
    memo = _memo(base)
    top = memo.get("top1")
    if top is None:
        top = memo["top1"] = _top1(base.acc, field)
    rows = getattr(model, "rows", None)
    return top if rows is None else top[rows]


def _memo(obj) -> dict:
    """A cache kept on a model, view or cost object (they are immutable once built)."""
    m = obj.__dict__.get("_adaptive_memo")
    if m is None:
        m = obj.__dict__["_adaptive_memo"] = {}
    return m


class RequestView:
    """One request of a workload's distribution, as the adaptive models read a workload:
    its rates (acceptance.RequestRates at its scenario: the analytic fixed-plan model's
    per-request rates) and the trace rows its confidence statistics come from (`rows`: its
    own, when the workload pairs trace blocks with its spread, request_rows; None: all)."""

    def __init__(self, model: AgreementModel, rates: RequestRates, rows: slice | None):
        self.model, self.acc, self._rates, self.rows = model, model.acc, rates, rows
        self.traces = model.traces if rows is None or model.traces is None else model.traces[rows]
        self.exits = model.exits

    def idx(self, layers):
        return self.model.idx(layers)

    def pair(self, a, b):
        return self.rates(None, np.atleast_1d(a), np.atleast_1d(b)).marginal

    def rates(self, lower2, lower, upper):
        key = ("rates", None if lower2 is None else tuple(np.ravel(lower2).tolist()), tuple(np.ravel(lower).tolist()),
               tuple(np.ravel(upper).tolist()))
        memo = _memo(self)
        if key not in memo:
            memo[key] = self._rates.rates(lower2, lower, upper)
        return memo[key]


def request_views(model: AgreementModel) -> list[tuple[float, RequestView]] | None:
    """(weight, view) per request of the workload's distribution, the weights summing to 1:
    every measured request with its own agreement matrix and its own trace rows when the
    workload pairs them (request_rows), else the spread's scenarios (acceptance.spread_scenarios)
    with the pooled rows; None without a spread (mean rates). Cached on the model."""
    memo = _memo(model)
    if "views" in memo:
        return memo["views"]
    acc = model.acc
    rows = request_rows(acc)
    views = None
    if rows is not None:
        sp = acc.spread
        w = np.asarray(sp.weights if sp.weights else np.ones(len(rows)), float)
        scen = Scenarios(weights=w / w.sum(), matrices=np.asarray(sp.per_request, float))
        views = [(float(scen.weights[r]), RequestView(model, RequestRates(model, scen, np.array([r])), rows[r]))
                 for r in range(len(rows))]
    elif model.scenarios is not None:
        scen = model.scenarios
        views = [(float(scen.weights[i]), RequestView(model, RequestRates(model, scen, np.array([i])), None))
                 for i in range(len(scen.weights))]
    memo["views"] = views
    return views


def over_requests(fn, cost: CostModel, model: AgreementModel, plan: Plan) -> AdaptiveEstimate:
    """An exact adaptive model (analytic_single_level, _three_level, _four_level) over the
    workload's request distribution: each request at its own rates and confidence
    statistics (request_views), aggregated as analytic.expected_chain_terms aggregates the
    fixed plans: tokens/s = 1 / E_w[time per token], tokens per full-model forward =
    1 / E_w[1 / committed_r]. Without a spread: fn at the workload's rates."""
    views = request_views(model)
    if views is None:
        return fn(cost, model, plan)
    per_token = inv_committed = 0.0
    for w, v in views:
        e = fn(cost, v, plan)
        per_token += w * e.cycle_ms / e.tokens_per_full_forward
        inv_committed += w / e.tokens_per_full_forward
    committed = 1.0 / inv_committed
    cycle = per_token * committed
    return AdaptiveEstimate(1000.0 * cost.batch * committed / cycle, committed, cycle)


def analytic_single_level(cost: CostModel, model: AgreementModel, plan: Plan) -> AdaptiveEstimate:
    """Exact E[committed] / E[cycle time] of an [E, L] plan with draft_confidence (i.i.d.
    positions). A round drafts N = min(propose, first low-confidence draft) tokens:
    P(N >= n) = h^(n-1), h = P(top-1 >= tau); draft i is committed iff drafts 1..i-1 were
    confident and accepted and draft i is accepted: P = q^(i-1) a, q = P(confident and
    accepted), a = P(accepted)."""
    if plan.depth != 2:
        raise ValueError("levels: the analytic adaptive model covers single-level plans [E, L]")
    E, L = plan.levels
    g = plan.propose
    # a = the fixed model's rate, so tau = 0 reproduces the fixed plan exactly
    h, q, a, _, cycle = _round_terms(cost, model, E, L, g, plan.draft_confidence or 0.0)
    n = np.arange(1, g + 1)
    reach = h ** (n - 1)  # P(N >= n)
    committed = 1.0 + a * float((q ** (n - 1)).sum())
    return AdaptiveEstimate(1000.0 * cost.batch * committed / cycle, committed, cycle, float(reach.sum()))


def replay(cost: CostModel, acc: Acceptance, plan: Plan, cycles: int = 4000, streams: int = 16, seed: int = 0,
           order: str = "trace") -> AdaptiveEstimate:
    """Any chain plan, adaptive or fixed, over the workload's measured rows (module
    docstring). order="trace": every measured request walked from its first position until
    it has committed as many tokens as it has rows, tokens/s = sum(tokens) / sum(time) over
    the requests -- deterministic, and for greedy plans every full-model check commits
    exactly the executor's tokens (montecarlo's module docstring says why); cycles, streams
    and seed are unused, ci95 is over requests (delta method). order="iid": `streams`
    streams of `cycles` full-model checks, every position a fresh row drawn with `seed`."""
    if order not in ("trace", "iid"):
        raise ValueError("order: trace or iid")
    if not acc.traces:
        raise ValueError("profile: trace replay needs a workload with traces")
    traces = np.asarray(acc.traces)
    top = _top1(acc) if plan.adaptive else np.ones(traces.shape)
    index = {e: i for i, e in enumerate(acc.exits)}
    missing = [e for e in plan.levels if e not in index]
    if missing:
        raise ValueError(f"levels: exits {missing} were not measured")
    cols = [index[e] for e in plan.levels]
    k = plan.depth
    tau_d = plan.draft_confidence or 0.0
    tau_e = list(plan.escalate_confidence or [0.0] * max(k - 2, 0))
    draft_ms = float(cost.forward([(np.array([plan.levels[0]]), np.ones(1, int))], np.ones(1, int))[0]) if k > 1 else 0.0
    cap = plan.max_overshoot + 1
    check_ms = [_check_cost(cost, [plan.levels[j - 1]], [plan.levels[j]], cap)[0] for j in range(1, k)]
    ar_ms = cost.autoregressive_ms(plan.levels[0]) if k == 1 else 0.0

    forwards = 0

    def cycle(row, pos: int) -> tuple[int, float]:
        """One full-model check from committed position pos: (tokens committed, time)."""
        nonlocal forwards
        if k == 1:
            forwards += 1
            return 1, ar_ms
        ms = 0.0
        bufs: list[list[int]] = [[] for _ in range(k)]  # bufs[j]: token values level j holds
        cascade = None
        stop = False
        while True:
            if forwards > MAX_REPLAY_FORWARDS:  # deep, wide plans can need more drafts per full-model check than a run can walk
                raise SimulationTooLarge(
                    f"plan: {plan.describe()} needs more than {MAX_REPLAY_FORWARDS:,} forwards (drafts and checks) to replay "
                    f"the workload's rows: a shorter propose or window, or fewer levels")
            held = sum(len(b) for b in bufs)
            if cascade is None and len(bufs[1]) < plan.propose and not stop:
                r = row(pos + held)
                bufs[1].append(int(traces[r, cols[0]]))
                stop = top[r, cols[0]] < tau_d
                ms += draft_ms
                forwards += 1
                continue
            j = cascade if cascade is not None else 1  # level j+1 checks bufs[j]
            buf = bufs[j]
            first = pos + held - len(buf)  # position of buf[0]; lower buffers are empty
            x = cols[j]
            m = 0
            while m < len(buf) and traces[row(first + m), x] == buf[m]:
                m += 1
            r_own = row(first + m)
            own = int(traces[r_own, x])
            ms += check_ms[j - 1][len(buf)]
            forwards += 1
            kept = buf[:m] + [own]
            bufs[j] = []
            stop = False
            cascade = None
            if j + 1 < k:
                bufs[j + 1].extend(kept)
                if len(bufs[j + 1]) >= plan.windows[j - 1] or top[r_own, x] < tau_e[j - 1]:
                    cascade = j + 1
                continue
            return len(kept), ms

    if order == "trace":
        spans = walk_spans(acc.trace_starts, len(traces))
        tok, ms, n_cycles = np.zeros(len(spans)), np.zeros(len(spans)), 0
        for s, (p0, plen) in enumerate(spans):
            row = lambda p, p0=p0, plen=plen: p0 + p % plen  # past the request's end: its rows as stand-ins
            while tok[s] < plen:
                t, c = cycle(row, int(tok[s]))
                tok[s] += t
                ms[s] += c
                n_cycles += 1
    else:
        rng = np.random.default_rng(seed)
        tok, ms, n_cycles = np.zeros(streams), np.zeros(streams), streams * cycles
        for s in range(streams):
            for _ in range(cycles):
                drawn: dict[int, int] = {}
                t, c = cycle(lambda p: drawn.setdefault(p, int(rng.integers(len(traces)))), 0)
                tok[s] += t
                ms[s] += c
    n = len(tok)
    ratio = 1000.0 * cost.batch * tok.sum() / ms.sum()
    z = tok - (tok.sum() / ms.sum()) * ms
    half = t95(n - 1) * 1000.0 * cost.batch * float(np.std(z, ddof=1) / np.sqrt(n)) / float(ms.mean()) if n > 1 else 0.0
    ci = (max(float(ratio - half), 0.0), float(ratio + half)) if n > 1 else None  # one request: no interval
    return AdaptiveEstimate(float(ratio), float(tok.sum() / n_cycles), float(ms.sum() / n_cycles), None, ci, n_cycles,
                            forwards)


def with_thresholds(plan: Plan, tau_d: float | None, tau_e: list[float] | None = None) -> Plan:
    return Plan.model_validate({**plan.model_dump(), "draft_confidence": tau_d or None, "escalate_confidence": tau_e})


GRID = (0.0, 0.3, 0.5, 0.7, 0.9)
DEEP_NOTE = "trace replay (the measured requests walked: no exact analytic model beyond 4 levels)"
RATES_NOTE = ("over the workload's request distribution: every request at its own agreement and, where measured, "
              "its own confidence statistics (E[tokens] / E[time] over requests); fixed plans with the same spread")
MEAN_NOTE = "mean rates: the workload has no per-request spread"


def rates_note(setting) -> str:
    """How the adaptive and fixed plans of `setting` are scored (RATES_NOTE or MEAN_NOTE)."""
    return RATES_NOTE if request_views(setting.agreement) is not None else MEAN_NOTE


def mean_rates(setting):
    """The same setting with every workload's per-request spread removed (every plan at the
    workload's mean rates: for comparisons with the mean-rate model)."""
    from .evaluate import Setting

    prof = setting.profile
    if not any(w.spread is not None for w in prof.workloads.values()):
        return setting
    wl = {k: v.model_copy(update={"spread": None}) for k, v in prof.workloads.items()}
    return Setting(prof.model_copy(update={"workloads": wl}), setting.workload, setting.tp, setting.stack,
                   setting.batch, setting.context)


def adaptive_estimate(setting, plan: Plan) -> tuple[AdaptiveEstimate, str]:
    """An adaptive plan over the setting's request distribution (over_requests; a mean_rates
    setting: at mean rates): [E, L] -> analytic_single_level; [l1, l2, L] ->
    analytic_three_level; [l1, l2, l3, L] -> analytic_four_level (all exact, i.i.d.
    positions within a request); deeper chains -> trace replay of the plan itself
    (DEEP_NOTE; no fixed plan involved, so a window that the thresholds make irrelevant
    cannot move it). With the model's name."""
    setting.profile.check_plan(plan, setting.workload)
    cost = setting.cost_for([plan])
    if plan.depth in EXACT:
        fn, how = EXACT[plan.depth]
        return over_requests(fn, cost, setting.agreement, plan), how
    return replay(cost, setting.acceptance, plan), DEEP_NOTE


def adaptive_tokens_per_second(setting, plan: Plan) -> tuple[float, str]:
    """Predicted tokens/s of any plan: fixed plans -> analytic.predict, adaptive ones ->
    adaptive_estimate."""
    from .evaluate import score

    if not plan.adaptive:
        return score(setting, [plan])[0].tokens_per_second, "analytic"
    est, how = adaptive_estimate(setting, plan)
    return est.tokens_per_second, how


def adaptive_scored(setting, plan: Plan):
    """evaluate.Scored of a plan by adaptive_estimate (per-level acceptance not modelled for
    adaptive plans: empty)."""
    from .evaluate import Scored, score

    if not plan.adaptive:
        return score(setting, [plan])[0]
    est, _ = adaptive_estimate(setting, plan)
    tps = float(est.tokens_per_second)
    return Scored(plan, tps, 1000.0 * plan.batch / tps, float(est.tokens_per_full_forward), [])


def _gains(tps: float, fixed_tps: float | None) -> bool:
    """Whether thresholds gain over their fixed plan: by more than the last bits in which two
    models' sums of the same quantity differ (at window 1 escalation changes nothing)."""
    return fixed_tps is None or tps > fixed_tps * (1 + 1e-9)


def search_adaptive(setting, bases: list[Plan], grid=GRID, max_propose: int = 8) -> dict:
    """The exhaustive adaptive search (over the setting's request distribution, over_requests): every [E, L] x propose
    1..max_propose x tau_d in grid by the exact analytic model; the given hierarchical
    plans x tau_d x tau_e in grid by adaptive_tokens_per_second (3- and 4-level ones by the
    exact analytic models, deeper ones by trace replay, their fixed plans too)."""
    from .evaluate import score

    acc = setting.acceptance
    _top1(acc)
    L = setting.num_layers
    cost = setting.cost(max_propose + 64)
    single = []
    for E in acc.exits[:-1]:
        for g in range(1, max_propose + 1):
            fixed = None
            for tau in grid:
                p = Plan(levels=[E, L], propose=g, draft_confidence=tau or None, batch=setting.batch)
                tps = over_requests(analytic_single_level, cost, setting.agreement, p).tokens_per_second
                if not p.adaptive:
                    fixed = tps
                if not p.adaptive or _gains(tps, fixed):
                    single.append((tps, p))
    single.sort(key=lambda x: -x[0])
    best_fixed_single = max((x for x in single if not x[1].adaptive), key=lambda x: x[0])
    best_single = single[0]
    hier = []
    for base in bases:
        if base.depth < 3:
            continue
        try:  # a deep, wide base can be too large to replay: not a candidate then
            fixed_tps, fixed_how = fixed_tokens_per_second(setting, base)
        except SimulationTooLarge:
            continue
        for tau_d in grid:
            for tau_e in grid:
                p = with_thresholds(base, tau_d, [tau_e] * (base.depth - 2) if tau_e else None)
                try:
                    tps, how = adaptive_tokens_per_second(setting, p) if p.adaptive else (fixed_tps, fixed_how)
                except SimulationTooLarge:
                    continue
                if not p.adaptive or _gains(tps, fixed_tps):
                    hier.append({"plan": p, "tokens_per_second": tps, "fixed_tokens_per_second": fixed_tps, "model": how})
    hier.sort(key=lambda x: -x["tokens_per_second"])
    return {"single_level": {"best": best_single[1], "tokens_per_second": best_single[0],
                             "best_fixed": best_fixed_single[1], "fixed_tokens_per_second": best_fixed_single[0],
                             "model": "analytic (i.i.d. positions)"},
            "hierarchical": hier[0] if hier else None, "grid": list(grid),
            "replay": {"order": "trace"}}


def exhaustive_adaptive(setting, max_propose: int = 8, max_window: int = 16, hier_bases: int = 10,
                        extra_bases: list[Plan] = (), depths: tuple[int, int] | None = None) -> dict:
    """The exhaustive adaptive optimum over the setting's request distribution (fixed plans
    with the same spread): the fixed exhaustive search (depth 1-3) gives the best fixed plan
    and the `hier_bases` best 3-level plans;
    search_adaptive puts the threshold grid on them (and on `extra_bases`, e.g. deeper
    plans of an Optuna search). `depths` (lo, hi): only plans of that many levels count
    (an Optuna search's --depth). Returns search_adaptive's dict plus the setting, the fixed
    search result and the overall best adaptive (tokens/s, plan, model; None if no plan of
    the grid has a depth in range)."""
    from .evaluate import exhaustive

    lo, hi = depths or (1, len(setting.acceptance.exits))
    fixed = exhaustive(setting, top=max(hier_bases, 10) * 3, max_propose=max_propose, max_window=max_window)
    bases = [s.plan for s in fixed.top if 3 <= s.plan.depth <= hi][:hier_bases]
    seen = {b.model_dump_json() for b in bases}
    bases += [b for b in extra_bases if with_thresholds(b, None, None).model_dump_json() not in seen]
    found = search_adaptive(setting, [with_thresholds(b, None, None) for b in bases if lo <= b.depth <= hi],
                            max_propose=max_propose)
    sl, h = found["single_level"], found["hierarchical"]
    cands = [(sl["tokens_per_second"], sl["best"], sl["model"])] if lo <= 2 <= hi else []
    if h:
        cands.append((h["tokens_per_second"], h["plan"], h["model"]))
    found.update(setting=setting, fixed=fixed, best=max(cands, key=lambda c: c[0]) if cands else None)
    return found


def cli_adaptive(setting, result, max_propose: int = 8, max_window: int = 16, hier_bases: int = 10) -> dict:
    """`hispec-sim optimize --adaptive`: the threshold grid around the fixed exhaustive
    search's best plans, all over the request distribution (rates_note). With an adaptive Optuna search
    (`--search optuna --adaptive`, result.study["space"]["adaptive"]) its best plan is a
    candidate too, and the deeper plans of a fixed Optuna search are grid bases. The best
    fixed plan: the fixed exhaustive search's best, or a better fixed plan among the search
    result's (re-scored, thresholds removed)."""
    from .evaluate import score

    space = (getattr(result, "study", None) or {}).get("space", {})
    optuna_adaptive = bool(space.get("adaptive"))
    depths = tuple(space["depth"]) if "depth" in space else None  # an Optuna search's --depth bounds the answer
    deeper = [s.plan for s in result.top if s.plan.depth >= 4 and not s.plan.adaptive][:3]
    found = exhaustive_adaptive(setting, max_propose, max_window, hier_bases, deeper, depths)
    m = found["setting"]
    sl, h = found["single_level"], found["hierarchical"]
    lo, hi = depths or (1, len(m.acceptance.exits))
    weak = None
    if getattr(result, "rescored", None) and not result.best.plan.adaptive:  # the search ranked by trace replay: the
        fixed_plan = result.best.plan  # best fixed plan is the one it names (priced analytically here, as the adaptive)
        fixed_tps = score(m, [fixed_plan])[0].tokens_per_second
    else:
        fixed_cands = [(s.tokens_per_second, s.plan) for s in found["fixed"].top if lo <= s.plan.depth <= hi][:1]
        if not fixed_cands:  # e.g. --depth 5: no exhaustive plan in range, only the trials' plans without thresholds
            depth = lo if lo == hi else f"{lo}-{hi}"
            weak = (f"no fixed plan of depth {depth} was searched: the best fixed plan is the best of this search's "
                    "plans with their thresholds removed, a weak baseline; the same search without --adaptive finds "
                    "a better one")
        for s in result.top:
            f = with_thresholds(s.plan, None, None)
            fixed_cands.append((score(m, [f])[0].tokens_per_second, f))
        fixed_tps, fixed_plan = max(fixed_cands, key=lambda c: c[0])
    cands = [found["best"]] if found["best"] else []
    if optuna_adaptive:
        cands.append((result.best.tokens_per_second, result.best.plan,
                      f"optuna ({result.study['trials']} trials): {adaptive_tokens_per_second(m, result.best.plan)[1]}"))
    tps, plan, how = max(cands, key=lambda c: c[0])
    out = {"rates": rates_note(m),
           "best": {"plan": plan.model_dump(), "describe": plan.describe(), "tokens_per_second": rounded(tps, 4),
                    "model": how},
           "best_fixed": {"describe": fixed_plan.describe(), "plan": fixed_plan.model_dump(),
                          "tokens_per_second": rounded(fixed_tps, 4), "model": "analytic"},
           "predicted_gain_over_best_fixed": rounded(tps / fixed_tps, 6),
           "best_single_level": None if not lo <= 2 <= hi else {"plan": sl["best"].model_dump(), "describe": sl["best"].describe(),
                                 "tokens_per_second": rounded(sl["tokens_per_second"], 4),
                                 "fixed": sl["best_fixed"].describe(),
                                 "fixed_tokens_per_second": rounded(sl["fixed_tokens_per_second"], 4),
                                 "model": "analytic",
                                 "gain_over_fixed": rounded(sl["tokens_per_second"] / sl["fixed_tokens_per_second"], 6)},
           "best_hierarchical": None if not h else {
               "plan": h["plan"].model_dump(), "describe": h["plan"].describe(),
               "tokens_per_second": rounded(float(h["tokens_per_second"]), 4),
               "fixed": with_thresholds(h["plan"], None, None).describe(),
               "fixed_tokens_per_second": rounded(float(h["fixed_tokens_per_second"]), 4), "model": h["model"],
               "gain_over_fixed": rounded(h["tokens_per_second"] / h["fixed_tokens_per_second"], 6)},
           "grid": found["grid"], "search": "optuna + exhaustive grid" if optuna_adaptive else "exhaustive grid",
           "trace_replay": replayed_gain(m, plan, fixed_plan)}
    if weak:
        out["best_fixed"]["note"] = weak
    return out


def cli_adaptive_text(a: dict) -> str:
    s, h, b, r = a["best_single_level"], a["best_hierarchical"], a["best"], a.get("trace_replay")
    tps = lambda x: decimals(x, 2)  # noqa: E731
    lines = ["", f"adaptive ({a['search']}, thresholds {a['grid']}; {a['rates']}):"]
    if s:  # not when the search's --depth leaves out single-level plans
        lines.append(f"  single-level: {s['describe']}  {tps(s['tokens_per_second'])} tokens/s  vs fixed {s['fixed']} "
                     f"{tps(s['fixed_tokens_per_second'])}  (x{decimals(s['gain_over_fixed'], 3)}, analytic)")
    if h:
        lines.append(f"  hierarchical: {h['describe']}  {tps(h['tokens_per_second'])} tokens/s vs its fixed "
                     f"plan {tps(h['fixed_tokens_per_second'])}  (x{decimals(h['gain_over_fixed'], 3)}, {h['model']})")
    lines.append(f"best adaptive: {b['describe']}  {tps(b['tokens_per_second'])} tokens/s, "
                 f"x{decimals(a['predicted_gain_over_best_fixed'], 3)} the best fixed plan {a['best_fixed']['describe']} "
                 f"({tps(a['best_fixed']['tokens_per_second'])}); model: {b['model']}")
    if "note" in a["best_fixed"]:
        lines.append(f"  note: {a['best_fixed']['note']}")
    if r:
        lines.append(f"  by trace replay (measured requests walked): {tps(r['tokens_per_second'])} vs "
                     + (f"{tps(r['fixed_tokens_per_second'])} tokens/s, x{decimals(r['gain_over_fixed'], 3)}"
                        if r["gain_over_fixed"] is not None else "the fixed plan: too large to replay"))
        if r["gain_over_fixed"] is not None and r["gain_over_fixed"] < 1:
            lines.append(f"  note: by trace replay the adaptive plan is slower than {a['best_fixed']['describe']}; "
                         "--out writes the adaptive plan (--adaptive asks for it): drop --adaptive to keep the fixed one")
    return "\n".join(lines)


REPLAY_NOTE = "trace replay: the workload's measured requests walked, runs of agreement and confidence kept"


def walked(setting, plan: Plan) -> AdaptiveEstimate | None:
    """The plan replayed over the workload's measured requests (replay, order="trace": runs
    of agreement and confidence kept, every request walked to its length); None without traces."""
    if not setting.acceptance.traces:
        return None
    return replay(setting.cost_for([plan]), setting.acceptance, plan)


def replayed_gain(setting, plan: Plan, fixed: Plan) -> dict | None:
    """A plan and a fixed plan by trace replay (walked), as a check on the analytic models'
    i.i.d.-positions assumption; None without traces."""
    w = walked(setting, plan)
    if w is None:
        return None
    try:
        f = walked(setting, fixed).tokens_per_second
    except SimulationTooLarge:  # the thresholds cut short what the fixed plan would draft
        f = None
    return {"tokens_per_second": rounded(w.tokens_per_second, 4), "ci95_over_requests": None if w.ci95 is None else [rounded(x, 4) for x in w.ci95],
            "fixed_tokens_per_second": rounded(f, 4),
            "gain_over_fixed": None if f is None else rounded(w.tokens_per_second / f, 6), "model": REPLAY_NOTE}


def fixed_tokens_per_second(setting, plan: Plan) -> tuple[float, str]:
    """A fixed plan by the estimate its adaptive variants get (adaptive_tokens_per_second): the
    analytic model up to 4 levels, trace replay deeper -- so a gain compares like with like."""
    from .evaluate import score

    if plan.depth in EXACT:
        return score(setting, [plan])[0].tokens_per_second, "analytic"
    return walked(setting, plan).tokens_per_second, DEEP_NOTE


def check_batch_one(batch: int) -> None:
    if batch > 1:
        raise ValueError(f"batch: the adaptive models predict batch 1, got {batch} (the sequences of a batch stop "
                         "drafting at different steps: an adaptive plan has no lockstep batch); simulate batches of "
                         "an adaptive plan with `hispec-sim serve`")


def predict_adaptive(setting, plan: Plan) -> dict:
    """Predicted tokens/s of an adaptive plan, as optimize --adaptive predicts it (rates_note):
    the plan, its fixed plan and autoregressive all over the same request distribution. A
    fixed plan too large to replay (deep, wide windows the thresholds cut short) has no gain."""
    from .evaluate import score

    check_batch_one(plan.batch)
    setting.profile.check_plan(plan, setting.workload)
    fixed = with_thresholds(plan, None, None)
    ar = score(setting, [Plan(levels=[setting.num_layers])])[0].tokens_per_second
    tps, how = adaptive_tokens_per_second(setting, plan)
    try:
        f = fixed_tokens_per_second(setting, fixed)[0]
    except SimulationTooLarge:
        f = None
    out = {"plan": plan.model_dump(), "describe": plan.describe(), "tokens_per_second": rounded(tps, 4),
           "speedup_vs_autoregressive": rounded(tps / ar, 6), "fixed_tokens_per_second": rounded(f, 4),
           "gain_over_fixed": None if f is None else rounded(tps / f, 6), "model": how, "rates": rates_note(setting)}
    if plan.depth in EXACT:  # deeper plans' headline is the trace replay itself
        rep = replayed_gain(setting, plan, fixed)
        if rep is not None:
            out["trace_replay"] = {**rep, "speedup_vs_autoregressive": rounded(rep["tokens_per_second"] / ar, 6)}
    return out


def replay_text(r: dict | None) -> str:
    """The trace-replay line of `evaluate` / `optimize --adaptive` (empty without traces)."""
    if not r:
        return ""
    ci = r["ci95_over_requests"]
    between = "one request: no interval" if ci is None else f"{decimals(ci[0], 2)}, {decimals(ci[1], 2)} over requests"
    return f"\n  trace replay: {decimals(r['tokens_per_second'], 2)} tokens/s [{between}]  " + gain_text(r["gain_over_fixed"])


def gain_text(gain: float | None) -> str:
    return (f"x{decimals(gain, 3)} vs the same plan without thresholds" if gain is not None else
            "the same plan without thresholds is too large to replay")


def _round_terms(cost: CostModel, model: AgreementModel, lo: int, hi: int, g: int, tau: float):
    """One adaptive drafting round checked by exit `hi`: (h, q, a, p_low_agree, E[round ms])
    with h = P(confident draft), q = P(confident and accepted), a = P(accepted); q is
    scaled to the matrix's rate a, so tau = 0 gives exactly q = a. The round drafts
    N = min(g, first low-confidence draft): P(N >= n) = h^(n-1)."""
    a = float(np.asarray(model.pair(lo, hi)).reshape(-1)[0])
    if tau > 0:
        memo = _memo(model)
        key = ("round", lo, hi, tau)
        if key not in memo:  # the rows' statistics: the same for every propose and cost
            top = _rows_top1(model)
            t = model.traces
            ie, il = int(model.idx(lo)), int(model.idx(hi))
            low = top[:, ie] < tau
            agree = t[:, ie] == t[:, il]
            memo[key] = (1.0 - float(low.mean()), float((~low & agree).mean()) / float(agree.mean()) if agree.any() else 0.0)
        h, share = memo[key]
        q = a * share
    else:
        h, q = 1.0, a
    cm = _memo(cost)
    if ("round", lo, hi, g) not in cm:  # the same for every request of over_requests
        cm[("round", lo, hi, g)] = (float(cost.forward([(np.array([lo]), np.ones(1, int))], np.ones(1, int))[0]),
                                    _check_cost(cost, [lo], [hi], g)[0])
    draft_ms, check_ms = cm[("round", lo, hi, g)]
    n = np.arange(1, g + 1)
    reach = h ** (n - 1)
    stop = np.append(reach[:-1] * (1 - h), reach[-1])
    return h, q, a, a - q, draft_ms * reach.sum() + float((stop * check_ms[n]).sum())


def _split_by_confidence(model: AgreementModel, lo: int, mid: int, hi: int, tau: float):
    """How an intermediate level's own token (exit `mid`, drafted by `lo`, checked by `hi`)
    splits by its top-1 probability at `mid` (low: < tau), for the two kinds of own token:
    a correction sits at a row where `lo` disagreed with `mid`, a bonus at a fresh row.
    Returns {kind: [(P(class | kind), pass-rate factor of the class)]}; the factors scale
    the fixed model's rates (rho, mu), so tau = 0 gives exactly one class with factor 1."""
    if tau <= 0:
        return {"correction": [(1.0, 1.0, False)], "bonus": [(1.0, 1.0, False)]}
    t = model.traces
    i1, i2, i3 = (int(x) for x in model.idx([lo, mid, hi]))
    e1, e2 = t[:, i1] == t[:, i2], t[:, i2] == t[:, i3]
    low = _rows_top1(model, "escalate_confidence")[:, i2] < tau
    out = {}
    for kind, sel in (("correction", ~e1), ("bonus", np.ones(len(t), bool))):
        n = max(int(sel.sum()), 1)
        base = (sel & e2).sum() / n
        classes = []
        for flag, cls in ((True, low), (False, ~low)):
            share = (sel & cls).sum() / n
            rate = (sel & cls & e2).sum() / max(int((sel & cls).sum()), 1)
            classes.append((float(share), float(rate / base) if base > 0 else 1.0, flag))
        out[kind] = classes
    return out


def analytic_three_level(cost: CostModel, model: AgreementModel, plan: Plan) -> AdaptiveEstimate:
    """Exact E[committed] / E[cycle] of a [l1, l2, L] plan with draft_confidence and
    escalate_confidence, positions i.i.d. Each level-2 check emits a block; block types: a
    confident accepted drafts then a correction (q^a (1 - a)); n - 1 confident accepted
    drafts, an unsure accepted one, then a bonus (q^(n-1) P(unsure, accepted), n < g); g
    accepted drafts then a bonus (q^(g-1) a). Level 3 accepts a survivor with
    P(E2 | E1, its draft's confidence class), a correction with P(E2 | not E1, its own
    confidence class at l2), a bonus with P(E2 | its confidence class at l2). Blocks fill the
    level-2 buffer until it holds >= window tokens or a block's own token (correction or
    bonus) has top-1 probability < tau_e at l2 (escalation); a DP over the buffer length
    (blocks i.i.d.: a renewal process stopped by length or by an escalating block)."""
    if plan.depth != 3:
        raise ValueError("levels: the 3-level analytic adaptive model covers [l1, l2, L] plans")
    l1, l2, L = plan.levels
    g, w = plan.propose, plan.windows[0]
    tau = plan.draft_confidence or 0.0
    tau_e = (plan.escalate_confidence or [0.0])[0]
    h, q, a, p_la, round_ms = _round_terms(cost, model, l1, l2, g, tau)
    r = model.rates(np.array([l1]), np.array([l2]), np.array([L]))
    beta, rho, mu = float(r.after_accept[0]), float(r.after_reject[0]), float(r.marginal[0])
    beta_h = beta_l = beta
    if tau > 0:
        t = model.traces
        i1, i2, i3 = (int(x) for x in model.idx([l1, l2, L]))
        e1, e2 = t[:, i1] == t[:, i2], t[:, i2] == t[:, i3]
        low = _rows_top1(model)[:, i1] < tau
        base = (e1 & e2).sum() / max(e1.sum(), 1)
        scale = lambda sel: ((sel & e1 & e2).sum() / max((sel & e1).sum(), 1)) / base if base > 0 else 1.0
        beta_h, beta_l = beta * scale(~low), beta * scale(low)
    memo = _memo(model)
    if ("split", l1, l2, L, tau_e) not in memo:
        memo[("split", l1, l2, L, tau_e)] = _split_by_confidence(model, l1, l2, L, tau_e)
    own = memo[("split", l1, l2, L, tau_e)]
    types = []  # (probability, pass probabilities of its tokens in order, escalates)
    for k in range(g):
        for share, f, esc in own["correction"]:
            types.append((q ** k * (1 - a) * share, [beta_h] * k + [rho * f], esc))
    for n in range(1, g):
        for share, f, esc in own["bonus"]:
            types.append((q ** (n - 1) * p_la * share, [beta_h] * (n - 1) + [beta_l, mu * f], esc))
    for share, f, esc in own["bonus"]:
        types.append((q ** (g - 1) * a * share, [beta_h] * (g - 1) + [beta, mu * f], esc))
    per_block = sum(p * float(np.cumprod(seq).sum()) for p, seq, _ in types)  # E[leading tokens level 3 accepts]
    cm = _memo(cost)
    if ("check", l2, L, w + g + 1) not in cm:
        cm[("check", l2, L, w + g + 1)] = _check_cost(cost, [l2], [L], w + g + 1)[0]
    check3 = cm[("check", l2, L, w + g + 1)]
    u = np.zeros(w)  # u[m]: P(the level-2 buffer holds m tokens after some block, not yet sent up)
    v = np.zeros(w)  # ... and level 3 accepts all m
    u[0] = v[0] = 1.0
    check = 0.0
    for m in range(w):
        for p, seq, esc in types:
            end = m + len(seq)
            if esc or end >= w:
                check += u[m] * p * check3[end]
            else:
                u[end] += u[m] * p
                v[end] += v[m] * p * float(np.prod(seq))
    committed = v.sum() * per_block + 1.0
    cycle = u.sum() * round_ms + check
    return AdaptiveEstimate(1000.0 * cost.batch * committed / cycle, committed, cycle)


# --------------------------------------------------------------------------- per-token classes (serving)


@dataclass
class TokenClasses:
    """The adaptive models' confidence statistics, per token of a k-level chain, for a
    simulator that draws one confidence class per position (hispec_sim.serving_adaptive).

    A tentative token carries a tag (origin level o, kind, class): o = the level whose exit
    produced it (1 = a draft), kind = bonus/draft or correction (a correction sits at a
    row where level o-1 disagreed with level o), class = 1 when its top-1 probability at
    exit l_o is below that level's threshold (tau_d for drafts, tau_e for intermediate
    levels). tag = ((o - 1) * 2 + kind) * 2 + class.
    * low[o - 1, kind]: P(class 1 | kind) (0 where the level has no threshold);
    * kind_at[tag, m]: the Markov-along-levels rate (ACC / COR / BON, acceptance.py) that
      applies when level m checks the token: its kind at m = o + 1, ACC above;
    * factor[tag, m]: P(agree at m | survived o+1..m-1, kind, class) / P(agree at m | survived
      o+1..m-1, kind), from the trace rows; 1 where the level has no threshold. The pass
      probability = the fixed rate x factor, so the class split preserves the fixed rate
      and tau = 0 is the fixed model exactly. For [E, L] and [l1, l2, L] these are the
      factors of analytic_single_level / analytic_three_level.
    """

    low: np.ndarray  # (k-1, 2)
    kind_at: np.ndarray  # (tags, k+1) int
    factor: np.ndarray  # (tags, k+1)

    @property
    def tags(self) -> int:
        return len(self.factor)


def request_rows(acc: Acceptance) -> list[slice] | None:
    """The trace rows of each measured request (acc.trace_starts), in the order of the
    workload's empirical spread, when the two describe the same requests: one per_request
    matrix per block of rows, each equal to its block's agreement (as `profile measure`
    writes them, 6 decimals). Otherwise None: confidence is then pooled over all rows."""
    sp = acc.spread
    if not acc.traces or acc.trace_starts is None or sp is None or sp.family != "empirical":
        return None
    if len(sp.per_request) != len(acc.trace_starts):
        return None
    ends = list(acc.trace_starts[1:]) + [len(acc.traces)]
    rows = [slice(a, b) for a, b in zip(acc.trace_starts, ends)]
    t = np.asarray(acc.traces)
    for r, m in zip(rows, sp.per_request):
        blk = t[r]
        if not np.allclose((blk[:, :, None] == blk[:, None, :]).mean(0), m, rtol=0.0, atol=2e-6):
            return None
    return rows


def confidence_by_request(acc: Acceptance) -> list[np.ndarray] | None:
    """Every measured request's top-1 probabilities (rows of acc.confidence.top1 grouped by
    trace_starts, request_rows), or None where the workload cannot pair them with its spread."""
    rows = request_rows(acc)
    if rows is None or acc.confidence is None or acc.confidence.top1 is None:
        return None
    top = np.asarray(acc.confidence.top1, float)
    return [top[r] for r in rows]


def request_token_classes(acc: Acceptance, plan: Plan) -> list[TokenClasses] | None:
    """token_classes of every measured request, from its own trace rows (request_rows), in
    the spread's order; None where confidence can only be pooled."""
    rows = request_rows(acc)
    if rows is None or not plan.adaptive:
        return None
    return [token_classes(acc, plan, r) for r in rows]


def token_classes(acc: Acceptance, plan: Plan, rows: slice | None = None) -> TokenClasses:
    """The per-token confidence statistics (TokenClasses) over the workload's trace rows, or
    over `rows` only (one measured request: request_token_classes)."""
    from .serving import ACC, BON, COR  # the fixed serving model's rate indices

    k = plan.depth
    taus = [plan.draft_confidence or 0.0] + list(plan.escalate_confidence or [0.0] * max(k - 2, 0))
    ntag = max(k - 1, 1) * 4
    low = np.zeros((max(k - 1, 1), 2))
    kind_at = np.full((ntag, k + 1), BON, np.int64)
    factor = np.ones((ntag, k + 1))
    if any(taus):
        top = _top1(acc, "draft_confidence" if plan.draft_confidence else "escalate_confidence")
        model = AgreementModel(acc)
        t = model.traces
        if rows is not None:
            top, t = top[rows], t[rows]
        cols = [int(i) for i in model.idx(plan.levels)]
        agree = [None] + [t[:, cols[j - 1]] == t[:, cols[j]] for j in range(1, k)]  # agree[j]: exits of levels j, j+1
    for o in range(1, k):
        for kind in (0, 1):
            if o == 1 and kind == 1:
                continue  # a draft is never a correction
            cond = np.ones(len(top), bool) if taus[o - 1] and kind == 0 else (~agree[o - 1] if taus[o - 1] else None)
            if taus[o - 1]:
                is_low = top[:, cols[o - 1]] < taus[o - 1]
                low[o - 1, kind] = float((cond & is_low).sum()) / max(int(cond.sum()), 1)
            for c in (0, 1):
                tag = ((o - 1) * 2 + kind) * 2 + c
                surv = cond.copy() if taus[o - 1] else None
                for m in range(o + 1, k + 1):
                    kind_at[tag, m] = (COR if kind else BON) if m == o + 1 else ACC
                    if taus[o - 1]:
                        e = agree[m - 1]
                        sel = surv & (is_low if c else ~is_low)
                        base = (surv & e).sum() / max(int(surv.sum()), 1)
                        rate = (sel & e).sum() / max(int(sel.sum()), 1)
                        factor[tag, m] = rate / base if base > 0 and sel.any() else 1.0
                        surv = surv & e
    return TokenClasses(low, kind_at, factor)


# --------------------------------------------------------------------------- 4 levels, exact


def _mean_pass(model: AgreementModel, plan: Plan, cls: TokenClasses) -> np.ndarray:
    """(tags, k+1): P(level m accepts a token with this tag) at the model's rates
    (the fixed rate of the token's kind at m x its class factor)."""
    levels = plan.levels
    rates = np.zeros((len(levels) - 1, 3))  # serving.level_rates on this model: after_accept, after_reject, marginal
    for j in range(len(levels) - 1):
        r = model.rates(None if j == 0 else np.array([levels[j - 1]]), np.array([levels[j]]), np.array([levels[j + 1]]))
        rates[j] = [r.after_accept[0], r.after_reject[0], r.marginal[0]]
    k = plan.depth
    out = np.zeros((cls.tags, k + 1))
    for m in range(2, k + 1):
        out[:, m] = np.clip(rates[m - 2][cls.kind_at[:, m]] * cls.factor[:, m], 0.0, 1.0)
    return out


def _level2_blocks(cls: TokenClasses, P: np.ndarray, g: int) -> list[tuple[float, list[int], bool]]:
    """Every block one level-2 check can pass up, with its probability: (p, tags, escalates).
    A round drafts N = min(g, first unsure draft) (draft tag = its class), level 2 keeps the
    accepted prefix and adds its own token (correction or bonus) whose class at l_2 decides
    escalation."""
    h = 1.0 - cls.low[0, 0]
    out = []
    for N in range(1, g + 1):
        seqs = [(h ** (N - 1) * (1 - h), [0] * (N - 1) + [1])] if N < g else [
            (h ** g, [0] * g), (h ** (g - 1) * (1 - h), [0] * (g - 1) + [1])]
        for pc, tags in seqs:
            if pc <= 0:
                continue
            acc = 1.0
            for a in range(N + 1):
                kind = 1 if a < N else 0
                pr = pc * acc * ((1 - P[tags[a], 2]) if a < N else 1.0)
                for c2 in (0, 1):
                    pl = cls.low[1, kind] if c2 else 1 - cls.low[1, kind]
                    if pl > 0 and pr > 0:
                        out.append((pr * pl, tags[:a] + [((1 * 2 + kind) * 2 + c2)], bool(c2)))
                if a < N:
                    acc *= P[tags[a], 2]
    return out


def analytic_four_level(cost: CostModel, model: AgreementModel, plan: Plan) -> AdaptiveEstimate:
    """Exact E[committed] / E[cycle] of a [l1, l2, l3, L] plan with draft_confidence and
    escalate_confidence (fixed plans too), positions i.i.d., each token's pass probability
    at every later check = the fixed Markov-along-levels rate of its kind x its confidence
    class factor (token_classes; the same model as the serving simulator's draws).

    Level-2 blocks are enumerated (_level2_blocks). A level-3 check takes the level-2 buffer
    (blocks until >= windows[0] tokens or an escalating block); a DP over that buffer's
    length carries, for the all-accepted-at-level-3 prefix, E[1{accepted at 3} x prod p4]
    and E[1{accepted at 3} x sum of leading prod p4] (pass probabilities are independent
    per token given their tags), which gives the level-3 blocks' distribution by (length,
    escalation) with E[prod p4] per class and E[leading level-4 accepted tokens]; a DP over
    the level-3 buffer (the 3-level model's, on these blocks) gives the cycle. Costs by
    Wald's identity: E[blocks per buffer] x E[cost per block] + E[check cost at the final
    length]."""
    if plan.depth != 4:
        raise ValueError("levels: the 4-level analytic adaptive model covers [l1, l2, l3, L] plans")
    l1, l2, l3, L = plan.levels
    g, (w2, w3) = plan.propose, plan.windows
    cls = token_classes(model.acc, plan, getattr(model, "rows", None))
    P = _mean_pass(model, plan, cls)
    round_ms = _round_terms(cost, model, l1, l2, g, plan.draft_confidence or 0.0)[4]  # drafts + level-2 check
    blocks = _level2_blocks(cls, P, g)
    width = w2 + g + 2
    check3 = _check_cost(cost, [l2], [l3], width)[0]
    check4 = _check_cost(cost, [l3], [L], w3 + width + 1)[0]
    U, A, W, Z = (np.zeros(w2) for _ in range(4))
    U[0] = A[0] = W[0] = 1.0
    P3 = np.zeros((width + 1, 2))  # level-3 blocks: P(length, escalates)
    PI3 = np.zeros((width + 1, 2))  # ... x E[prod of their level-4 pass probabilities]
    S3 = 0.0  # E[leading tokens of a level-3 block that level 4 accepts] (given all before accepted)
    E3 = 0.0  # E[level-3 check cost]
    for m in range(w2):
        for p, tags, esc in blocks:
            n = len(tags)
            end = m + n
            final = esc or end >= w2
            if final:
                E3 += U[m] * p * check3[end]
            else:
                U[end] += U[m] * p
            a_i = w_i = 1.0  # prod p3, prod p3 p4 over the block's first i tokens
            s_i = 0.0  # sum over i' <= i of prod_{t <= i'} p4 (within the block)
            q4 = 1.0  # prod p4 over the block's first i tokens
            for i in range(n + 1):
                if i < n:
                    r = 1.0 - P[tags[i], 3]
                    kind, length = 1, m + i + 1
                elif final:
                    r, kind, length = 1.0, 0, end + 1
                else:
                    A[end] += A[m] * p * a_i
                    W[end] += W[m] * p * w_i
                    Z[end] += p * a_i * (Z[m] + W[m] * s_i)
                    break
                prob, pi, s = A[m] * p * a_i * r, W[m] * p * w_i * r, p * a_i * r * (Z[m] + W[m] * s_i)
                for c3 in (0, 1):
                    pl = cls.low[2, kind] if c3 else 1 - cls.low[2, kind]
                    if pl <= 0:
                        continue
                    p4own = P[((2 * 2 + kind) * 2 + c3), 4]
                    P3[length, c3] += prob * pl
                    PI3[length, c3] += pi * pl * p4own
                    S3 += pl * (s + pi * p4own)
                if i < n:
                    p3, p4 = P[tags[i], 3], P[tags[i], 4]
                    q4 *= p4
                    a_i *= p3
                    w_i *= p3 * p4
                    s_i += q4
    cost3 = U.sum() * round_ms + E3  # E[cost of one level-3 block]
    u, v = np.zeros(w3), np.zeros(w3)
    u[0] = v[0] = 1.0
    check = 0.0
    lens = np.flatnonzero(P3.sum(1) > 0)
    for m in range(w3):
        for ln in lens:
            for e in (0, 1):
                pr = P3[ln, e]
                if pr <= 0:
                    continue
                end = m + ln
                if e or end >= w3:
                    check += u[m] * pr * check4[end]
                else:
                    u[end] += u[m] * pr
                    v[end] += v[m] * PI3[ln, e]
    committed = v.sum() * S3 + 1.0
    cycle = u.sum() * cost3 + check
    return AdaptiveEstimate(1000.0 * cost.batch * committed / cycle, committed, cycle)


EXACT = {2: (analytic_single_level, "analytic (i.i.d. positions)"),
         3: (analytic_three_level, "analytic 3-level (i.i.d. positions)"),
         4: (analytic_four_level, "analytic 4-level (i.i.d. positions)")}
