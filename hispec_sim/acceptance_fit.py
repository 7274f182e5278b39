"""Fit an agreement-with-final curve F(e) over relative depth to published points, and
build the agreement matrix over every exit 1..L from it.

Curve family ("logistic in logit of relative depth"), x = e / L:
    F(x) = sigmoid(m + c * logit(x)),   F(0) = 0, F(1) = 1 exactly
c (steepness) is shared by the workloads of one model, m (location) is per workload.
Least squares in probability space (scipy.optimize.least_squares).

Depth-Markov assumption: a token's argmax changes between consecutive layers
independently of what happened below, and a token that agrees with the final layer at
exit a keeps agreeing at every deeper exit. Then
    agreement(a, b) = P(exit a == exit b) = F(a) / F(b)        for a < b,
and the agreement events of consecutive levels of a chain are independent, which is what
`Acceptance.joint = 'independent'` means.

Point kinds accepted by the fit:
  final:       agreement(exit, L) = value
  pair:        agreement(exit, exit2) = value = F(exit)/F(exit2)
  mean_layer:  the mean over tokens of the first layer from which the prediction equals
               the final one = value (layers); under the model = sum_{e=0}^{L-1} (1 - F(e))
  per_draft:   an ACCEPTANCE RATE measured in a speculative loop: accepted / checked at level
               `level` (2..k) of the chain `plan` = value, as hispec_sim.analytic.predict
               computes it from the agreement matrix the curve implies. This is how papers
               usually report acceptance ("39.7 % of draft tokens accepted" with N_d = 2 drafts
               per round); with g drafts a per-position rate alpha gives
               (alpha - alpha^(g+1)) / (g (1 - alpha)) < alpha.

Readings (`READINGS`): a published acceptance figure is read either as a per-position
agreement rate of one exit with a deeper one (`per_position`: kinds final / pair) or as
accepted/checked of the loop it was measured in (`per_draft`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from .schema import FIT_C_RANGE, FIT_M_RANGE, Acceptance, AcceptanceSpread, Plan, Source

READINGS = ("per_draft", "per_position")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def curve(x, m: float, c: float) -> np.ndarray:
    """F at relative depth x in [0, 1]."""
    x = np.clip(np.asarray(x, dtype=float), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        lg = np.log(x) - np.log1p(-x)
    out = _sigmoid(m + c * lg)
    return np.where(x >= 1.0, 1.0, np.where(x <= 0.0, 0.0, out))


@dataclass
class Point:
    workload: str
    kind: str  # final | pair | mean_layer
    value: float
    exit: int | None = None
    exit2: int | None = None
    weight: float = 1.0
    source: str = ""
    note: str = ""
    plan: Plan | None = None  # per_draft: the configuration the figure was measured in
    level: int | None = None  # per_draft: the level (2..k) whose accepted/checked it is; default k

    def predict(self, m: float, c: float, L: int, cost=None) -> float:
        if self.kind == "per_draft":
            return plan_acceptance(self.plan, self.level, m, c, L, cost)
        if self.kind == "final":
            return float(curve(self.exit / L, m, c))
        if self.kind == "pair":
            return float(curve(self.exit / L, m, c) / curve(self.exit2 / L, m, c))
        if self.kind == "mean_layer":
            e = np.arange(0, L)
            return float(np.sum(1.0 - curve(e / L, m, c)))
        raise ValueError(f"kind: unknown point kind {self.kind!r}; known: final, pair, mean_layer, per_draft")

    def scale(self, L: int) -> float:
        return float(L) if self.kind == "mean_layer" else 1.0



class _CurveAcceptance:
    """The duck-typed part of schema.Acceptance that AgreementModel reads: the (unrounded)
    depth-Markov matrix of a curve over the exits of one plan."""

    joint = "independent"
    traces = None

    def __init__(self, exits, F, spread=None):
        self.exits = list(exits)
        self.spread = spread
        F = np.maximum(np.maximum.accumulate(np.asarray(F, dtype=float)), 1e-12)
        A = np.minimum.outer(F, F) / np.maximum.outer(F, F)
        np.fill_diagonal(A, 1.0)
        self.agreement = A


def unit_cost(num_layers: int, plans=()):
    """A cost model with 1 ms per layer: accepted/checked of a plan does not depend on cost.
    Its lookups cover every forward of `plans` (at least 64 rows)."""
    from .latency import CostModel
    from .synthetic import synthetic_profile

    rows = max([64] + [p.max_overshoot + 8 for p in plans if p is not None])
    return CostModel(synthetic_profile(num_layers, 1.0, 0.5).table(), batch=1, context=0, max_tokens=rows)


def plan_acceptance(plan: Plan, level: int | None, m: float, c: float, L: int, cost=None, spread=None) -> float:
    """accepted/checked at `level` (2..k; default k) of `plan`, from hispec_sim.analytic.predict
    with the agreement matrix of the curve (m, c) over the plan's exits (with a per-request
    `spread`: the mean over requests, as predict reports it)."""
    from .acceptance import AgreementModel
    from .analytic import predict

    if plan is None or plan.depth < 2:
        raise ValueError("acceptance: a per_draft point needs a plan of depth >= 2")
    if plan.levels[-1] != L:
        raise ValueError(f"acceptance: a per_draft plan must end at the full model {L}, got {plan.levels}")
    level = plan.depth if level is None else level
    if not (2 <= level <= plan.depth):
        raise ValueError(f"acceptance: level {level} out of range 2..{plan.depth}")
    ex = np.asarray(plan.levels)
    model = AgreementModel(_CurveAcceptance(ex, curve(ex / L, m, c), spread))
    pr = predict(cost if cost is not None else unit_cost(L, [plan]), model, [plan])
    return float(pr.acceptance[0, level - 2])


def implied_pair(p: Point) -> tuple[int, int]:
    """The exit pair whose per-position agreement a per_draft figure mainly reflects: the
    two levels below and at `level`."""
    lv = p.plan.depth if p.level is None else p.level
    return p.plan.levels[lv - 2], p.plan.levels[lv - 1]


@dataclass
class CurveFit:
    num_layers: int
    c: float
    m: dict[str, float]
    points: list[Point]
    residuals: list[float]
    c_fixed: bool
    c_note: str = ""
    extra: dict = field(default_factory=dict)
    reading: str = "per_position"

    def F(self, workload: str, exits=None) -> np.ndarray:
        L = self.num_layers
        exits = np.arange(1, L + 1) if exits is None else np.asarray(exits)
        return curve(exits / L, self.m[workload], self.c)

    def record(self, workload: str) -> dict:
        """What goes into Acceptance.fit: family, parameters, every input point, residuals."""
        pts = []
        for p, r in zip(self.points, self.residuals):
            if p.workload != workload and not self.c_fixed:
                shared = True
            elif p.workload != workload:
                continue
            else:
                shared = False
            d = {"workload": p.workload, "kind": p.kind, "value": p.value, "predicted": round(p.value + r, 5),
                 "residual": round(r, 5) + 0.0,  # + 0.0: no -0.0 (its sign is rounding noise)
                 "source": p.source}
            if p.exit is not None:
                d["exit"] = p.exit
            if p.exit2 is not None:
                d["exit2"] = p.exit2
            if p.kind == "per_draft":
                lv = p.plan.depth if p.level is None else p.level
                a, b = implied_pair(p)
                d["config"] = {"plan": p.plan.describe(short=True), "levels": list(p.plan.levels), "propose": p.plan.propose,
                               "windows": list(p.plan.windows), "level": lv,
                               "measure": f"accepted/checked at level {lv} (exit {p.plan.levels[lv - 1]}"
                                          + (", the full model)" if lv == p.plan.depth else ")")
                               + " by hispec_sim.analytic.predict"}
                ma = self.m[p.workload]
                d["implied_agreement"] = {"pair": [a, b], "value": round(float(
                    curve(a / self.num_layers, ma, self.c) / curve(b / self.num_layers, ma, self.c)), 5)}
            if p.note:
                d["note"] = p.note
            if shared:
                d["used_for"] = "another workload of the joint fit (shares c with this one)"
            pts.append(d)
        own = [abs(r) for p, r in zip(self.points, self.residuals) if p.workload == workload]
        return {
            "reading": self.reading,
            "reading_note": READING_NOTES[self.reading],
            "family": "F(e) = sigmoid(m + c*logit(e/L)); F(L) = 1",
            "matrix": "agreement(a,b) = F(min(a,b)) / F(max(a,b)) (depth-Markov), rounded to 5 digits",
            "num_layers": self.num_layers,
            "params": {"m": round(self.m[workload], 6), "c": round(self.c, 6)},
            "params_all_workloads": {"c": round(self.c, 6), "m": {k: round(v, 6) for k, v in self.m.items()}},
            "c_fixed": self.c_fixed,
            "c_note": self.c_note,
            "points": pts,
            "max_abs_residual": round(max(own), 5) if own else 0.0,
            **self.extra,
        }


READING_NOTES = {
    "per_draft": "published figures read as ACCEPTANCE RATES (accepted / checked) of the speculative loop each was "
                 "measured in (config per point); the curve is fitted so that hispec_sim.analytic.predict reproduces them",
    "per_position": "published figures read as per-position greedy agreement rates of that exit with the final layer "
                    "(the alternative reading; with N_d drafts per round it underestimates the per-position rate)",
}


def fit_curves(points: list[Point], num_layers: int, workloads: list[str] | None = None,
               c: float | None = None, c_note: str = "", cost=None, reading: str | None = None) -> CurveFit:
    """Joint least-squares fit: shared c (unless given), one m per workload.

    per_draft points are evaluated by hispec_sim.analytic.predict on `cost` (the profile
    being built; a unit-cost model if None: accepted/checked does not depend on cost)."""
    L = num_layers
    if any(p.kind == "per_draft" for p in points) and cost is None:
        cost = unit_cost(L, [p.plan for p in points])
    if reading is None:
        reading = "per_draft" if any(p.kind == "per_draft" for p in points) else "per_position"
    if reading not in READINGS:
        raise ValueError(f"acceptance: unknown reading {reading!r}; known: {', '.join(READINGS)}")
    for p in points:
        if p.kind == "per_draft":
            if p.plan is None:
                raise ValueError(f"acceptance: per_draft point without a plan: {p}")
            if p.plan.levels[-1] != L or p.plan.levels[0] < 1:
                raise ValueError(f"acceptance: per_draft plan {p.plan.levels} must end at the full model {L}")
        if not (0.0 <= p.value) or (p.kind != "mean_layer" and p.value > 1.0):
            raise ValueError(f"acceptance: point value out of range: {p}")
        for e in (p.exit, p.exit2):
            if e is not None and not (1 <= e <= L):
                raise ValueError(f"acceptance: exit {e} out of range 1..{L}")
    wl = workloads or sorted({p.workload for p in points})
    missing = [w for w in wl if not any(p.workload == w for p in points)]
    if missing:
        raise ValueError(f"acceptance: no points for workloads {missing}")
    fix_c = c is not None
    if not fix_c:
        depths = {}
        for p in points:
            if p.workload in wl and p.kind == "per_draft":
                depths.setdefault(p.workload, set()).update(e for e in p.plan.levels if e != L)
            elif p.workload in wl and p.kind != "mean_layer":
                depths.setdefault(p.workload, set()).update(e for e in (p.exit, p.exit2) if e is not None)
        if not any(len(v) >= 2 for v in depths.values()):
            raise ValueError("acceptance: the steepness c needs one workload with points at two depths; pass c=")

    def unpack(theta):
        cc = c if fix_c else theta[0]
        ms = theta[0 if fix_c else 1:]
        return cc, dict(zip(wl, ms))

    def resid(theta):
        cc, ms = unpack(theta)
        return np.array([p.weight * (p.predict(ms[p.workload], cc, L, cost) - p.value) / p.scale(L)
                         for p in points if p.workload in ms])

    x0 = ([] if fix_c else [0.8]) + [1.0] * len(wl)
    lo = ([] if fix_c else [FIT_C_RANGE[0]]) + [FIT_M_RANGE[0]] * len(wl)
    hi = ([] if fix_c else [FIT_C_RANGE[1]]) + [FIT_M_RANGE[1]] * len(wl)
    sol = least_squares(resid, x0, bounds=(lo, hi), xtol=1e-12, ftol=1e-12, gtol=1e-12)
    cc, ms = unpack(sol.x)
    used = [p for p in points if p.workload in ms]
    res = [p.predict(ms[p.workload], cc, L, cost) - p.value for p in used]
    return CurveFit(num_layers=L, c=float(cc), m={k: float(v) for k, v in ms.items()}, points=used,
                    residuals=[float(r) for r in res], c_fixed=fix_c, c_note=c_note, reading=reading)


def agreement_matrix(F: np.ndarray, digits: int = 5) -> list[list[float]]:
    """agreement[a][b] = F[min]/F[max] (F over exits 1..L, increasing, F[-1] = 1)."""
    F = np.maximum(np.asarray(F, dtype=float), 1e-12)
    F = np.maximum.accumulate(F)
    lo = np.minimum.outer(F, F)
    hi = np.maximum.outer(F, F)
    A = np.clip(np.round(lo / hi, digits), 0.0, 1.0)
    np.fill_diagonal(A, 1.0)
    return A.tolist()


def acceptance_from_fit(fit: CurveFit, workload: str, context: int, source: Source,
                        context_note: str = "", extra: dict | None = None) -> Acceptance:
    L = fit.num_layers
    F = fit.F(workload)
    rec = fit.record(workload)
    rec["F_at_exits"] = {str(e): round(float(v), 5) for e, v in zip(range(1, L + 1), F) if e in _report_exits(L)}
    if context_note:
        rec["context_note"] = context_note
    if extra:
        rec.update(extra)
    return Acceptance(exits=list(range(1, L + 1)), agreement=agreement_matrix(F), context=context,
                      joint="independent", source=source, fit=rec)


def _report_exits(L: int) -> set[int]:
    return {max(1, round(L * f)) for f in (1 / 32, 1 / 16, 1 / 8, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 3 / 4, 7 / 8, 1)}


def constant_acceptance(num_layers: int, agreement: float, source: Source, context: int = 512,
                        fit: dict | None = None) -> Acceptance:
    """Every exit pair agrees with probability `agreement` (diagonal 1). Note: this is not
    depth-Markov consistent for 3-level chains; it is the what-if the synthetic profile asks for."""
    if not (isinstance(agreement, (int, float)) and math.isfinite(agreement) and 0.0 <= agreement <= 1.0):
        raise ValueError(f"agreement: must be in [0, 1], got {agreement}")
    n = num_layers
    A = np.full((n, n), float(agreement))
    np.fill_diagonal(A, 1.0)
    return Acceptance(exits=list(range(1, n + 1)), agreement=A.tolist(), context=context, joint="independent",
                      source=source, fit=fit)


# --------------------------------------------------------------------------- per-request spread of published profiles

PUBLISHED_SIGMA = 0.4
PUBLISHED_SIGMA_NOTE = (
    "ASSUMED: no publication reports acceptance per request. sigma = 0.4 is the between-prompt standard deviation of "
    "logit(agreement with the final layer) at 1/8-1/4 depth measured on the shipped CPU model (profiles/cpu_hispec_tiny.json, "
    "16 prompts x 128 tokens: 0.41 at exit 2/16, 0.40 at exit 4/16, binomial noise of 128 tokens included). Every rate of a "
    "request (each exit pair, marginal and conditional) is the workload's rate shifted by the request's z ~ N(0, sigma) in "
    "logit space: around the fitted curve's level (for pairs with the final layer exactly a shift of the level m of "
    "F(e) = sigmoid(m + c logit(e/L))).")


def published_spread(sigma: float = PUBLISHED_SIGMA, note: str = PUBLISHED_SIGMA_NOTE) -> AcceptanceSpread:
    """The per-request spread a profile built from published (mean) acceptance figures carries."""
    return AcceptanceSpread(family="logit_normal", sigma=sigma,
                            source=Source(kind="assumed", detail=note, reference="profiles/cpu_hispec_tiny.json"))


def with_published_spread(workloads: dict[str, Acceptance], sigma: float = PUBLISHED_SIGMA) -> dict[str, Acceptance]:
    """The builders' one call: every workload with the assumed logit-normal spread (workloads
    that already carry a measured spread keep it). A workload fitted to published figures
    (fit family F(e) = sigmoid(m + c logit(e/L)) over exits 1..L) gets its level m refitted,
    c kept, so that its published figures stay reproduced as averages over requests:
    per_draft figures as predict's per-level acceptance with the spread, per-position
    figures as E_z[sigmoid(logit(rate) + z)]."""
    sp = published_spread(sigma)
    out = {}
    for k, v in workloads.items():
        if v.spread is not None:
            out[k] = v
        elif _refittable(v):
            out[k] = _refit_with_spread(v, sp)
        else:
            out[k] = v.model_copy(update={"spread": sp})
    return out


def _refittable(acc: Acceptance) -> bool:
    f = acc.fit or {}
    return (str(f.get("family", "")).startswith("F(e) = sigmoid(m + c*logit(e/L))") and "params" in f
            and acc.exits == list(range(1, int(f.get("num_layers", 0)) + 1))
            and any("used_for" not in d for d in f.get("points", [])))


def _points_of(fit: dict) -> list[Point]:
    out = []
    for d in fit["points"]:
        if "used_for" in d:
            continue
        cfg = d.get("config")
        out.append(Point(workload=d["workload"], kind=d["kind"], value=float(d["value"]), exit=d.get("exit"),
                         exit2=d.get("exit2"), plan=Plan(levels=cfg["levels"], propose=cfg["propose"], windows=cfg["windows"])
                         if cfg else None, level=cfg["level"] if cfg else None, source=d.get("source", "")))
    return out


def predict_over_requests(p: Point, m: float, c: float, L: int, spread: AcceptanceSpread, scen) -> float:
    """p's figure on the curve (m, c) as an average over requests of the logit-normal `spread`
    (scen: its spread_scenarios): per_draft the mean of each request's accepted/checked,
    final / pair the mean rate; mean_layer a depth, kept as the mean curve's."""
    from .acceptance import shift_logit

    if p.kind == "per_draft":
        return plan_acceptance(p.plan, p.level, m, c, L, spread=spread)
    if p.kind in ("final", "pair"):
        rate = p.predict(m, c, L)
        return float(np.dot(scen.weights, shift_logit(rate, scen.shifts)))
    return p.predict(m, c, L)


def _refit_with_spread(acc: Acceptance, spread: AcceptanceSpread) -> Acceptance:
    from .acceptance import spread_scenarios

    fit = dict(acc.fit)
    L = int(fit["num_layers"])
    m0, c = float(fit["params"]["m"]), float(fit["params"]["c"])
    pts = _points_of(fit)
    scen = spread_scenarios(acc.model_copy(update={"spread": spread}))
    if scen is None:  # sigma 0: nothing moves
        return acc.model_copy(update={"spread": spread})

    predictions = lambda m: [predict_over_requests(p, m, c, L, spread, scen) for p in pts]
    weighted = lambda pred: np.array([p.weight * (v - p.value) / p.scale(L) for p, v in zip(pts, pred)])
    m = float(least_squares(lambda theta: weighted(predictions(theta[0])), [m0], bounds=([-20.0], [20.0]),
                            xtol=1e-12, ftol=1e-12, gtol=1e-12).x[0])
    pred = predictions(m)
    res = weighted(pred)
    fit["params"] = {"m": round(m, 6), "c": fit["params"]["c"]}
    fit["spread_refit"] = {
        "m_without_spread": m0, "sigma": spread.sigma,
        "note": "level m refitted (c kept) so that the published figures are reproduced as averages over requests "
                "under the assumed per-request spread (per_draft: the mean of each request's accepted/checked)",
        "residuals": [round(float(r), 6) + 0.0 for r in res]}  # + 0.0: no -0.0
    own = iter(zip(pts, pred))  # each point's prediction, now an average over requests (in _points_of's order)
    points = []
    for d in fit["points"]:
        if "used_for" not in d:
            q, v = next(own)
            d = {**d, "predicted": round(v, 5), "residual": round(v - q.value, 5) + 0.0}
        points.append(d)
    fit["points"] = points
    fit["max_abs_residual"] = max(abs(d["residual"]) for d in fit["points"] if "used_for" not in d)
    F = curve(np.arange(1, L + 1) / L, m, c)
    if "F_at_exits" in fit:
        fit["F_at_exits"] = {e: round(float(F[int(e) - 1]), 5) for e in fit["F_at_exits"]}
    return acc.model_copy(update={"agreement": agreement_matrix(F), "spread": spread, "fit": fit})
