"""Adaptive plans: confidence-gated drafting (Plan.draft_confidence) and early escalation
(Plan.escalate_confidence), modelled on a workload's measured top-1 probabilities
(Acceptance.confidence.top1, one row per trace row). Assumption: they are predicted at the
workload's mean rates; a per-request spread (Acceptance.spread) is not taken into account.

Semantics (the executor's, hispec_exec.generate): level 1 drafts until it holds `propose`
drafts or a draft's top-1 probability at exit l_1 is < tau_d (that draft is kept and
checked); after level j's check (1 < j < k), level j+1 checks at once when level j's
buffer reached its window or level j's own emitted token (correction or bonus) has top-1
probability < tau_j.

* `analytic_single_level`: exact expectation for [E, L] plans with draft_confidence,
  assuming positions i.i.d. (each position's (top-1 bucket, agreement) drawn independently
  from the measured rows). With tau = 0 it is analytic.predict's value for the fixed plan.
* `replay`: Monte-Carlo over the measured rows, any depth, both knobs. order="trace":
  consecutive positions are consecutive rows of one prompt (the measured correlations
  kept); order="iid": every position of a cycle is a fresh uniformly drawn row (the
  analytic model's assumption, for checking it). A tentative token at position p is
  compared with what each exit predicted at row p: past a rejection the context differs
  from the measured one and the row stands in for it (positions exchangeable).
* `analytic_three_level`: exact expectation for [l1, l2, L] plans with draft_confidence
  (i.i.d. positions); escalation and deeper chains: replay only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acceptance import AgreementModel
from .analytic import _check_cost
from .latency import CostModel
from .schema import Acceptance, Plan


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
    tau = plan.draft_confidence or 0.0
    a = float(model.pair(E, L))  # the fixed model's rate, so tau = 0 reproduces it exactly
    if tau > 0:
        top = _top1(model.acc)
        t = model.traces
        ie, il = int(model.idx(E)), int(model.idx(L))
        low = top[:, ie] < tau
        h = 1.0 - float(low.mean())
        agree = t[:, ie] == t[:, il]
        # P(confident and accepted), scaled to the matrix's rate so tau = 0 gives exactly a
        q = a * float((~low & agree).mean()) / float(agree.mean()) if agree.any() else 0.0
    else:
        h, q = 1.0, a
    draft_ms = float(cost.forward([(np.array([E]), np.ones(1, int))], np.ones(1, int))[0])
    check_ms = _check_cost(cost, [E], [L], g)[0]
    n = np.arange(1, g + 1)
    reach = h ** (n - 1)  # P(N >= n)
    stop = np.append(reach[:-1] * (1 - h), reach[-1])  # P(N = n)
    cycle = draft_ms * reach.sum() + float((stop * check_ms[n]).sum())
    committed = 1.0 + a * float((q ** (n - 1)).sum())
    return AdaptiveEstimate(1000.0 * cost.batch * committed / cycle, committed, cycle, float(reach.sum()))


def replay(cost: CostModel, acc: Acceptance, plan: Plan, cycles: int = 4000, streams: int = 16, seed: int = 0,
           order: str = "trace") -> AdaptiveEstimate:
    """Monte-Carlo of any chain plan, adaptive or fixed, over the workload's measured rows
    (module docstring). `streams` independent streams of `cycles` full-model checks each;
    ci95 from the spread of the per-stream ratios (delta method)."""
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
    starts = list(acc.trace_starts or [0]) + [len(traces)]
    prompts = [(a, b - a) for a, b in zip(starts, starts[1:]) if b > a]
    rng = np.random.default_rng(seed)
    tau_d = plan.draft_confidence or 0.0
    tau_e = list(plan.escalate_confidence or [0.0] * max(k - 2, 0))
    draft_ms = float(cost.forward([(np.array([plan.levels[0]]), np.ones(1, int))], np.ones(1, int))[0]) if k > 1 else 0.0
    cap = plan.propose + sum(plan.windows) + k + 2
    check_ms = [_check_cost(cost, [plan.levels[j - 1]], [plan.levels[j]], cap)[0] for j in range(1, k)]
    ar_ms = cost.autoregressive_ms(plan.levels[0]) if k == 1 else 0.0
    tok = np.zeros(streams)
    ms = np.zeros(streams)
    for s in range(streams):
        p0, plen = prompts[rng.integers(len(prompts))]
        pos = int(rng.integers(plen))  # committed position (circular within the prompt)
        for _ in range(cycles):
            if k == 1:
                tok[s] += 1
                ms[s] += ar_ms
                continue
            if order == "iid":
                drawn: dict[int, int] = {}
                row = lambda p: drawn.setdefault(p, int(rng.integers(len(traces))))
            else:
                row = lambda p: p0 + (p % plen)
            bufs: list[list[int]] = [[] for _ in range(k)]  # bufs[j]: token values level j holds
            cascade = None
            stop = False
            while True:
                held = sum(len(b) for b in bufs)
                if cascade is None and len(bufs[1]) < plan.propose and not stop:
                    r = row(pos + held)
                    bufs[1].append(int(traces[r, cols[0]]))
                    stop = top[r, cols[0]] < tau_d
                    ms[s] += draft_ms
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
                ms[s] += check_ms[j - 1][len(buf)]
                kept = buf[:m] + [own]
                bufs[j] = []
                stop = False
                cascade = None
                if j + 1 < k:
                    bufs[j + 1].extend(kept)
                    if len(bufs[j + 1]) >= plan.windows[j - 1] or top[r_own, x] < tau_e[j - 1]:
                        cascade = j + 1
                    continue
                tok[s] += len(kept)
                pos += len(kept)
                break
    ratio = 1000.0 * cost.batch * tok.sum() / ms.sum()
    z = tok - (tok.sum() / ms.sum()) * ms
    half = 1.96 * 1000.0 * cost.batch * float(np.std(z, ddof=1) / np.sqrt(streams)) / float(ms.mean()) if streams > 1 else 0.0
    return AdaptiveEstimate(float(ratio), float(tok.sum() / (streams * cycles)), float(ms.sum() / (streams * cycles)),
                            None, (float(ratio - half), float(ratio + half)))


def with_thresholds(plan: Plan, tau_d: float | None, tau_e: list[float] | None = None) -> Plan:
    return Plan.model_validate({**plan.model_dump(), "draft_confidence": tau_d or None, "escalate_confidence": tau_e})


GRID = (0.0, 0.3, 0.5, 0.7, 0.9)


def search_adaptive(setting, fixed_best: list[Plan], grid=GRID, max_propose: int = 8, cycles: int = 1500,
                    streams: int = 8, seed: int = 0) -> dict:
    """Adaptive plans around the fixed search's best: every [E, L], propose 1..max_propose,
    tau_d in grid by the exact analytic model; the given hierarchical plans x tau_d x tau_e
    in grid by trace replay (common random numbers: the same seed for a plan's fixed and
    adaptive variants, so the gain is measured against the fixed plan's own replay)."""
    acc = setting.acceptance
    _top1(acc)
    L = setting.num_layers
    cost = setting.cost(max_propose + 64)
    single = []
    for E in acc.exits[:-1]:
        for g in range(1, max_propose + 1):
            for tau in grid:
                p = Plan(levels=[E, L], propose=g, draft_confidence=tau or None, batch=setting.batch)
                single.append((analytic_single_level(cost, setting.agreement, p).tokens_per_second, p))
    single.sort(key=lambda x: -x[0])
    best_fixed_single = max((x for x in single if not x[1].adaptive), key=lambda x: x[0])
    best_single = single[0]
    hier = []
    for base in fixed_best:
        if base.depth < 3:
            continue
        fixed = replay(cost, acc, base, cycles, streams, seed)
        for tau_d in grid:
            for tau_e in grid:
                p = with_thresholds(base, tau_d, [tau_e] * (base.depth - 2) if tau_e else None)
                r = fixed if not p.adaptive else replay(cost, acc, p, cycles, streams, seed)
                hier.append({"plan": p, "tokens_per_second": r.tokens_per_second, "ci95": r.ci95,
                             "fixed_tokens_per_second": fixed.tokens_per_second})
    hier.sort(key=lambda x: -x["tokens_per_second"])
    return {"single_level": {"best": best_single[1], "tokens_per_second": best_single[0],
                             "best_fixed": best_fixed_single[1], "fixed_tokens_per_second": best_fixed_single[0],
                             "model": "analytic (i.i.d. positions)"},
            "hierarchical": hier[0] if hier else None, "grid": list(grid),
            "replay": {"cycles": cycles, "streams": streams, "seed": seed, "order": "trace"}}


def cli_adaptive(setting, result, max_propose: int = 8, hier_bases: int = 3) -> dict:
    """`hispec-sim optimize --adaptive`: the threshold grid around the fixed search's best.
    Single-level plans by the exact analytic model; hierarchical plans by trace replay,
    their predicted tokens/s = the fixed plan's analytic value x the replay ratio
    adaptive / fixed (same rows, same seed)."""
    from .evaluate import score

    top = [s.plan for s in result.top if s.plan.depth >= 3][:hier_bases]
    found = search_adaptive(setting, top, max_propose=max_propose)
    best_fixed = result.best
    cands = []
    sl = found["single_level"]
    h = found["hierarchical"]
    fixed_tps = score(setting, [with_thresholds(h["plan"], None, None)])[0].tokens_per_second if h else None
    exact3 = h and h["plan"].depth == 3 and not any(h["plan"].escalate_confidence or [])
    if exact3:  # the exact 3-level model applies: use it instead of the replay ratio
        h_tps = analytic_three_level(setting.cost(max_propose + 64), setting.agreement, h["plan"]).tokens_per_second
    elif h:
        h_tps = fixed_tps * h["tokens_per_second"] / h["fixed_tokens_per_second"]
    cands.append((sl["tokens_per_second"], sl["best"], "analytic"))
    if h:
        cands.append((h_tps, h["plan"], "analytic 3-level (i.i.d. positions)" if exact3 else
                      f"trace replay x analytic ({found['replay']['streams']} streams x {found['replay']['cycles']} "
                      f"cycles, seed {found['replay']['seed']}; replay gain over its fixed plan "
                      f"x{h['tokens_per_second'] / h['fixed_tokens_per_second']:.3f})"))
    tps, plan, how = max(cands, key=lambda c: c[0])
    return {"best": {"plan": plan.model_dump(), "describe": plan.describe(), "tokens_per_second": round(tps, 4),
                     "model": how},
            "best_fixed": {"describe": best_fixed.plan.describe(), "tokens_per_second": round(best_fixed.tokens_per_second, 4)},
            "predicted_gain_over_best_fixed": round(tps / best_fixed.tokens_per_second, 4),
            "best_single_level": {"plan": sl["best"].model_dump(), "describe": sl["best"].describe(), "tokens_per_second": round(sl["tokens_per_second"], 4),
                                  "fixed": sl["best_fixed"].describe(),
                                  "fixed_tokens_per_second": round(sl["fixed_tokens_per_second"], 4)},
            "best_hierarchical": None if not h else {
                "plan": h["plan"].model_dump(), "describe": h["plan"].describe(),
                "predicted_tokens_per_second": round(float(h_tps), 4),
                "replay_tokens_per_second": round(h["tokens_per_second"], 4),
                "replay_fixed_tokens_per_second": round(h["fixed_tokens_per_second"], 4)},
            "grid": found["grid"]}


def cli_adaptive_text(a: dict) -> str:
    s = a["best_single_level"]
    lines = ["", f"adaptive (thresholds {a['grid']}):",
             f"  single-level: {s['describe']}  {s['tokens_per_second']:.2f} tokens/s  vs fixed {s['fixed']} "
             f"{s['fixed_tokens_per_second']:.2f}  (x{s['tokens_per_second'] / s['fixed_tokens_per_second']:.3f}, analytic)"]
    h = a["best_hierarchical"]
    if h:
        lines.append(f"  hierarchical: {h['describe']}  replay {h['replay_tokens_per_second']:.2f} tokens/s vs its fixed plan "
                     f"{h['replay_fixed_tokens_per_second']:.2f}  (x{h['replay_tokens_per_second'] / h['replay_fixed_tokens_per_second']:.3f})")
    b = a["best"]
    lines.append(f"best adaptive: {b['describe']}  {b['tokens_per_second']:.2f} tokens/s, "
                 f"x{a['predicted_gain_over_best_fixed']:.3f} the best fixed plan {a['best_fixed']['describe']} "
                 f"({a['best_fixed']['tokens_per_second']:.2f}); model: {b['model']}")
    return "\n".join(lines)


def predict_adaptive(setting, plan: Plan, cycles: int = 1500, streams: int = 8, seed: int = 0) -> dict:
    """Predicted tokens/s of an adaptive plan, as optimize --adaptive predicts it:
    single-level -> the exact analytic model; deeper -> the fixed plan's analytic value x
    the trace-replay ratio adaptive / fixed (same rows, same seed)."""
    from .evaluate import score

    setting.profile.check_plan(plan, setting.workload)
    fixed = with_thresholds(plan, None, None)
    ar, f = score(setting, [Plan(levels=[setting.num_layers], batch=plan.batch), fixed])
    cost = setting.cost(plan.propose + sum(plan.windows) + 16)
    if plan.depth == 2:
        tps, how = analytic_single_level(cost, setting.agreement, plan).tokens_per_second, "analytic (i.i.d. positions)"
    elif plan.depth == 3 and not any(plan.escalate_confidence or []):
        tps, how = analytic_three_level(cost, setting.agreement, plan).tokens_per_second, "analytic 3-level (i.i.d. positions)"
    else:
        a = replay(cost, setting.acceptance, plan, cycles, streams, seed)
        b = replay(cost, setting.acceptance, fixed, cycles, streams, seed)
        tps = f.tokens_per_second * a.tokens_per_second / b.tokens_per_second
        how = f"fixed analytic x trace-replay ratio {a.tokens_per_second / b.tokens_per_second:.4f} ({streams} x {cycles}, seed {seed})"
    return {"plan": plan.model_dump(), "describe": plan.describe(), "tokens_per_second": round(float(tps), 4),
            "speedup_vs_autoregressive": round(float(tps) / ar.tokens_per_second, 4),
            "fixed_tokens_per_second": round(f.tokens_per_second, 4),
            "gain_over_fixed": round(float(tps) / f.tokens_per_second, 4), "model": how}


def _round_terms(cost: CostModel, model: AgreementModel, lo: int, hi: int, g: int, tau: float):
    """One adaptive drafting round checked by exit `hi`: (h, q, a, p_low_agree, E[round ms])
    with h = P(confident draft), q = P(confident and accepted), a = P(accepted)."""
    a = float(model.pair(lo, hi))
    if tau > 0:
        top = _top1(model.acc)
        t = model.traces
        ie, il = int(model.idx(lo)), int(model.idx(hi))
        low = top[:, ie] < tau
        agree = t[:, ie] == t[:, il]
        h = 1.0 - float(low.mean())
        q = a * float((~low & agree).mean()) / float(agree.mean()) if agree.any() else 0.0
    else:
        h, q = 1.0, a
    draft_ms = float(cost.forward([(np.array([lo]), np.ones(1, int))], np.ones(1, int))[0])
    check_ms = _check_cost(cost, [lo], [hi], g)[0]
    n = np.arange(1, g + 1)
    reach = h ** (n - 1)
    stop = np.append(reach[:-1] * (1 - h), reach[-1])
    return h, q, a, a - q, draft_ms * reach.sum() + float((stop * check_ms[n]).sum())


def analytic_three_level(cost: CostModel, model: AgreementModel, plan: Plan) -> AdaptiveEstimate:
    """Exact E[committed] / E[cycle] of a [l1, l2, L] plan with draft_confidence (no
    escalation), positions i.i.d. Each level-2 check emits a block; block types: a
    confident accepted drafts then a correction (q^a (1 - a)); n - 1 confident accepted
    drafts, an unsure accepted one, then a bonus (q^(n-1) P(unsure, accepted), n < g); g
    accepted drafts then a bonus (q^(g-1) a). Level 3 accepts a survivor with
    P(E2 | E1, its draft's confidence class), a correction with P(E2 | not E1), a bonus with
    P(E2); blocks fill the level-2 buffer until it holds >= window tokens (renewal, Wald)."""
    if plan.depth != 3 or any(plan.escalate_confidence or []):
        raise ValueError("levels: the 3-level analytic adaptive model covers [l1, l2, L] with draft_confidence only")
    l1, l2, L = plan.levels
    g, w = plan.propose, plan.windows[0]
    tau = plan.draft_confidence or 0.0
    h, q, a, p_la, round_ms = _round_terms(cost, model, l1, l2, g, tau)
    r = model.rates(np.array([l1]), np.array([l2]), np.array([L]))
    beta, rho, mu = float(r.after_accept[0]), float(r.after_reject[0]), float(r.marginal[0])
    beta_h = beta_l = beta
    if tau > 0:
        t = model.traces
        i1, i2, i3 = (int(x) for x in model.idx([l1, l2, L]))
        e1, e2 = t[:, i1] == t[:, i2], t[:, i2] == t[:, i3]
        low = _top1(model.acc)[:, i1] < tau
        base = (e1 & e2).sum() / max(e1.sum(), 1)
        scale = lambda sel: ((sel & e1 & e2).sum() / max((sel & e1).sum(), 1)) / base if base > 0 else 1.0
        beta_h, beta_l = beta * scale(~low), beta * scale(low)
    types = []  # (probability, pass probabilities of its tokens in order)
    for k in range(g):
        types.append((q ** k * (1 - a), [beta_h] * k + [rho]))
    for n in range(1, g):
        types.append((q ** (n - 1) * p_la, [beta_h] * (n - 1) + [beta_l, mu]))
    types.append((q ** (g - 1) * a, [beta_h] * (g - 1) + [beta, mu]))
    size = g + 1
    p_blk = np.zeros(size)
    passes = np.zeros(size)
    per_block = 0.0
    for p, seq in types:
        cum = np.cumprod(seq)
        p_blk[len(seq) - 1] += p
        passes[len(seq) - 1] += p * cum[-1]
        per_block += p * cum.sum()  # E[leading tokens level 3 accepts]
    from .analytic import _renewal

    u = _renewal(p_blk[None], w)[0]
    v = _renewal(passes[None], w)[0]
    check3 = _check_cost(cost, [l2], [L], w + size)[0]
    check = sum(u[m0] * p_blk[j] * check3[m0 + j + 1] for m0 in range(w) for j in range(size) if m0 + j + 1 >= w)
    committed = v.sum() * per_block + 1.0
    cycle = u.sum() * round_ms + check
    return AdaptiveEstimate(1000.0 * cost.batch * committed / cycle, committed, cycle)
