"""Claims audit: what acceptance would a claimed speed-up need, and is that consistent with
what was published?

One parameter moves: the LEVEL of the workload's acceptance curve, its slope kept.
  * Profiles fitted to published figures (Acceptance.fit, family F(e) = sigmoid(m + c
    logit(e/L)), acceptance_fit.py): the level is m; the agreement matrix at level m is the
    depth-Markov F(a)/F(b) of that curve (unrounded), the per-request spread (logit_normal)
    kept.
  * Other workloads (measured matrices): every agreement rate shifted by z in logit space
    (acceptance.shift_logit), each request's own matrix of a measured spread too; the level
    is z, 0 = the workload as measured (the prediction of `evaluate`).
The predicted speed-up over autoregressive decoding (analytic.predict, the same cost model
as `evaluate`) rises with the level, so the level that reproduces a claim is found by
bisection. The ceiling is the speed-up at perfect acceptance (every rate 1): a claim
above it cannot be reached under the cost model whatever the acceptance -- the audit says
so and by how much; that is an answer, not an error. The floor is the family's own limit as
the level falls, read at the bottom of the search's bracket, which every level beats.

Against the published points: every point the workload's curve was fitted to (fit.points)
is recomputed on the curve at the required level as the fit read it (with the workload's
logit-normal spread, the average over requests that the builders' refit matched:
acceptance_fit.predict_over_requests; without one, Point.predict) and compared with the
published value; the band of a point is its value in the workload's
`<w>_low` / `<w>_high` variants (the published reading error). The claim is reconciled
with the published acceptance when every own point of the required curve lies within its
band. This is an audit, not a fit: nothing here changes a profile.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from .acceptance import AgreementModel, Scenarios, shift_logit, spread_scenarios
from .acceptance_fit import Point, curve, predict_over_requests, unit_cost
from .analytic import expected_chain_terms, predict
from .evaluate import Setting, _max_tokens
from . import schema
from .schema import Plan

LEVEL_RANGE = 40.0  # bisection bracket for the level (logit units): rates within ~1e-16 of 0 / 1 at the ends
BEST_SINGLE_LEVEL = "best_single_level"


class _LevelAcceptance:
    """Duck-typed schema.Acceptance for AgreementModel: a matrix, the spread kept."""

    joint = "independent"
    traces = None

    def __init__(self, exits, agreement, spread=None, joint="independent", traces=None):
        self.exits, self.agreement, self.spread = list(exits), np.asarray(agreement, float), spread
        self.joint, self.traces = joint, traces


def _curve_params(acc) -> tuple[float, float] | None:
    fit = acc.fit or {}
    p = fit.get("params") or {}
    if str(fit.get("family", "")).startswith("F(e) = sigmoid(m + c*logit(e/L))") and "m" in p and "c" in p:
        return float(p["m"]), float(p["c"])
    return None


def _depth_markov(F: np.ndarray) -> np.ndarray:
    F = np.maximum(np.maximum.accumulate(np.asarray(F, float)), 1e-300)
    A = np.minimum.outer(F, F) / np.maximum.outer(F, F)
    np.fill_diagonal(A, 1.0)
    return A


@dataclass
class Family:
    """The one-parameter family of a workload: matrix(level) and its description."""

    setting: Setting

    def __post_init__(self):
        acc = self.setting.acceptance
        self.acc = acc
        self.params = _curve_params(acc)
        self.L = self.setting.num_layers
        self.exits = np.asarray(acc.exits)
        self.spread = acc.spread
        if self.params is not None:
            self.kind = "curve"
            self.level0, self.c = self.params
            if self.spread is not None and self.spread.family != "logit_normal":  # measured matrices do not follow the curve
                self.spread = None
            self.describe = (f"F(e) = sigmoid(m + c*logit(e/L)), c = {self.c:.4f} kept; level = m (profile: {self.level0:.4f}); "
                             "agreement(a,b) = F(a)/F(b)")
        else:
            self.kind = "logit_shift"
            self.level0, self.c = 0.0, None
            self.describe = "every agreement rate of the workload shifted by z in logit space; level = z (profile: 0)"

    def F(self, level: float, exits) -> np.ndarray:
        """Agreement with the final layer at `exits` for this level."""
        exits = np.asarray(exits)
        if self.kind == "curve":
            return curve(exits / self.L, level, self.c)
        A = np.asarray(self.acc.agreement, float)
        idx = np.searchsorted(self.exits, exits)
        return shift_logit(A[idx, len(self.exits) - 1], level - self.level0)

    def spread_at(self, level: float):
        """The spread at `level`: a logit-normal one as it is; measured per-request matrices
        shifted with the workload's (none at +inf, where every request agrees always; the
        floor is read at a finite level, audit's bottom)."""
        sp = self.spread
        if sp is None or sp.family == "logit_normal":
            return sp
        if level == math.inf:  # every rate 1, but a rate of exactly 0 stays 0 under every shift
            limit = (np.asarray(sp.per_request, float) > 0).astype(float)
            return None if limit.all() else sp.model_copy(update={"per_request": limit})
        return sp.model_copy(update={"per_request": shift_logit(np.asarray(sp.per_request, float), level - self.level0)})

    def matrix(self, level: float) -> np.ndarray:
        """The agreement matrix at `level`; at +inf its limit, the ceiling: every rate 1
        (perfect acceptance), except that a measured rate of exactly 0 stays 0 (no logit shift
        moves it)."""
        n = len(self.exits)
        if level == math.inf:
            A = np.ones((n, n)) if self.kind == "curve" else (np.asarray(self.acc.agreement, float) > 0).astype(float)
            np.fill_diagonal(A, 1.0)
            return A
        if self.kind == "curve":
            A = _depth_markov(curve(self.exits / self.L, level, self.c))
        else:
            A = shift_logit(np.asarray(self.acc.agreement, float), level - self.level0)
        np.fill_diagonal(A, 1.0)
        return A

    def model(self, level: float) -> AgreementModel:
        A = self.matrix(level)
        if self.kind == "curve":
            return AgreementModel(_LevelAcceptance(self.exits, A, self.spread))
        if level == math.inf or self.acc.joint == "independent":
            return AgreementModel(_LevelAcceptance(self.exits, A, self.spread_at(level)))
        return _ShiftedModel(AgreementModel(self.acc), level - self.level0, A)

    def mean_matrix(self, level: float) -> np.ndarray:
        """The agreement the requests have on average at `level`: with measured per-request
        matrices, their weighted mean shifted request by request (what the speed-up is
        computed from; at the profile's level, the workload's matrix); else matrix(level)."""
        sp = self.spread_at(level)
        if sp is None or sp.family == "logit_normal":
            return self.matrix(level)
        A = np.average(np.asarray(sp.per_request, float), axis=0, weights=sp.weights)
        np.fill_diagonal(A, 1.0)
        return A

    def floor_reason(self, depth: int) -> str:
        """Why the speed-up of a plan of `depth` levels does not fall below the floor as the level falls."""
        if self.kind == "curve":
            if depth <= 2:
                return ("every draft is rejected in the limit: each full-model check commits one token and pays "
                        "for the drafts before it")
            return ("the agreement between two exits below the last tends to exp(-c |logit(a/L) - logit(b/L)|), "
                    "not 0, as the level falls")
        A = np.asarray(self.acc.agreement, float)
        off = ~np.eye(len(A), dtype=bool)
        sp = self.spread
        own = np.asarray(sp.per_request, float)[:, off] if sp is not None and sp.family != "logit_normal" else None
        if (A[off] >= 1.0).any() or (own is not None and (own >= 1.0).any()):
            return ("agreement rates of exactly 1, in the workload's matrix or in some requests' own, do not move with "
                    "the level; the others tend to 0")
        return "every agreement rate tends to 0 as the level falls"


class _ShiftedModel(AgreementModel):
    """A measured workload with joint='traces': the conditional rates shifted as well."""

    def __init__(self, base: AgreementModel, z: float, matrix: np.ndarray):
        self.__dict__.update(base.__dict__)
        self.matrix, self.z = matrix, z
        sc = base.scenarios
        if sc is not None and sc.matrices is not None:  # measured per-request matrices move with the workload's
            sc = Scenarios(sc.weights, matrices=shift_logit(sc.matrices, z))
        self.scenarios = sc

    def rates(self, lower2, lower, upper):
        from .acceptance import LevelRates

        r = AgreementModel.rates(self, lower2, lower, upper)
        return LevelRates(shift_logit(r.marginal, self.z), shift_logit(r.after_accept, self.z), shift_logit(r.after_reject, self.z))


def _speedup_fn(setting: Setting, family: Family, plan: Plan | str):
    """level -> (speed-up over autoregressive, the plan that achieves it)."""
    L, B = setting.num_layers, setting.batch
    if plan == BEST_SINGLE_LEVEL:
        exits = np.array([e for e in setting.acceptance.exits if e < L])
        G = 8
        cost = setting.cost(G + 16)
        ar = B * 1000.0 / cost.autoregressive_ms(L)
        lv = np.stack([exits, np.full_like(exits, L)], 1)

        def f(level):
            committed, cycle, _ = expected_chain_terms(cost, family.model(level), lv, np.ones(len(exits), int),
                                                       np.zeros((len(exits), 0), int), G)
            tps = B * 1000.0 * committed / cycle
            e, g = np.unravel_index(np.argmax(tps), tps.shape)
            return float(tps[e, g] / ar), Plan(levels=[int(exits[e]), L], propose=int(g) + 1, batch=B)
        return f
    setting.profile.check_plan(plan, setting.workload)
    cost = setting.cost(_max_tokens([plan]))
    ar = B * 1000.0 / cost.autoregressive_ms(L)

    def f(level):
        return float(predict(cost, family.model(level), [plan]).tokens_per_second[0] / ar), plan
    return f


def _solve(f, target: float, lo: float, hi: float, tol: float = 1e-7) -> float:
    """Bisection on an increasing f (speed-up in level)."""
    flo = f(lo)[0]
    if flo >= target:
        return lo
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid)[0] < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol:
            break
    return 0.5 * (lo + hi)


def _point_from_record(d: dict) -> Point:
    cfg = d.get("config")
    plan = Plan(levels=cfg["levels"], propose=cfg["propose"], windows=cfg["windows"]) if cfg else None
    return Point(workload=d["workload"], kind=d["kind"], value=float(d["value"]), exit=d.get("exit"), exit2=d.get("exit2"),
                 plan=plan, level=cfg["level"] if cfg else None, source=d.get("source", ""))


def _own_points(acc, workload_fit_name: str | None = None) -> list[dict]:
    fit = acc.fit or {}
    return [d for d in fit.get("points", []) if "used_for" not in d]


def _band_workloads(setting: Setting):
    """(low, high) variants of this workload: <base>_low / <base>_high, where base drops a
    reading suffix (the band is the published reading error, the same for either reading)."""
    name = setting.workload
    base = name.removesuffix("_per_position")
    wl = setting.profile.workloads
    low, high = wl.get(base + "_low"), wl.get(base + "_high")
    if name.endswith(("_low", "_high")) or low is None or high is None:
        return None
    return low, high


def audit(setting: Setting, plan: Plan | str, speedup: float) -> dict:
    """What level of the workload's acceptance curve reproduces `speedup` for `plan` (a Plan,
    or BEST_SINGLE_LEVEL: the best single-level plan at each level), the ceiling, and the
    distance to the published points (module docstring)."""
    if not (isinstance(speedup, (int, float)) and math.isfinite(speedup) and speedup > 0):
        raise ValueError(f"speedup: must be a finite number > 0, got {speedup}")
    fam = Family(setting)
    f = _speedup_fn(setting, fam, plan)
    ceiling, ceiling_plan = f(math.inf)
    # the floor: the family's limit as its level falls, where the search reaches it (every rate within
    # ~e-40 of its limit: ratios of vanishing rates, F(a)/F(b) on a curve, stay positive; rates of 1 stay)
    bottom = fam.level0 - LEVEL_RANGE
    floor, _ = f(bottom)
    own, own_plan = f(fam.level0)
    out = {**setting.describe(), "claimed_speedup": speedup,
           "plan": plan if isinstance(plan, str) else plan.describe(), "family": fam.kind, "family_describe": fam.describe,
           "profile_level": round(fam.level0, 6), "slope_c": None if fam.c is None else round(fam.c, 6),
           "speedup_at_profile_level": round(own, 6), "plan_at_profile_level": own_plan.describe(),
           "ceiling_speedup": round(ceiling, 6), "ceiling_plan": ceiling_plan.describe(),
           "floor_speedup": round(floor, 6)}
    zeros = fam.kind != "curve" and (
        bool((fam.matrix(math.inf) == 0).any()) or fam.spread_at(math.inf) is not None)
    perfect = "every rate that can move at 1: rates of exactly 0 stay 0" if zeros else "perfect acceptance"
    out["ceiling_note"] = perfect
    if round(speedup, 6) > round(ceiling, 6):  # the JSON's ceiling given back as a claim is at it (round 23, M7)
        out.update(reachable=False, unreachable_by_pct=round(100 * (speedup / ceiling - 1), 6), required_level=None,
                   verdict=f"unreachable: {speedup:g}x is {100 * (speedup / ceiling - 1):.4g} % above the ceiling "
                           f"{round(ceiling, 6)}x ({perfect}) under this cost model")
        out["reconciled"] = False
        return out
    if abs(own / speedup - 1) <= 1e-9 or round(speedup, 6) == round(own, 6) == round(ceiling, 6):
        level = fam.level0  # the profile's own level gives it (where the speed-up is flat, the only answer)
    elif round(speedup, 6) == round(ceiling, 6):  # at the ceiling: only perfect acceptance gives it
        level = math.inf
    elif speedup <= floor:  # every level beats the floor, a limit no level attains
        out.update(reachable=False, below_floor_by_pct=round(100 * (1 - speedup / floor), 6), required_level=None,
                   verdict=f"unreachable: {speedup:g}x is {100 * (1 - speedup / floor):.4g} % below the floor "
                           f"{round(floor, 6)}x: every level of this family gives more ("
                           + ("an autoregressive plan drafts nothing: 1x at any level"
                              if isinstance(plan, Plan) and plan.depth == 1 else
                              fam.floor_reason(plan.depth if isinstance(plan, Plan) else 2)) + ")")
        out["reconciled"] = False
        return out
    else:
        level = _solve(f, speedup, bottom, fam.level0 + LEVEL_RANGE)
        if f(level)[0] < speedup * (1 - 1e-6):  # the top of the bracket is not enough: the limit is the ceiling
            level = math.inf
    got, got_plan = f(level)
    note = perfect if math.isinf(level) else None
    out.update(reachable=True, required_level=None if math.isinf(level) else round(level, 6),
               level_shift=None if math.isinf(level) else round(level - fam.level0, 6), required_level_note=note,
               speedup_at_required_level=round(got, 6), plan_at_required_level=got_plan.describe())
    levels = got_plan.levels[:-1] if got_plan.depth >= 2 else []
    L = setting.num_layers
    band = _band_workloads(setting)
    params = [_curve_params(b) for b in band] if band is not None else None
    if params and all(params) and not setting.workload.endswith("_per_position"):
        lo_m, hi_m = sorted(p_[0] for p_ in params)  # the band moves the level only (c is not varied)
        out["profile_level_band"] = [round(lo_m, 6), round(hi_m, 6)]
        out["required_level_within_band"] = bool(lo_m <= level <= hi_m)
    A, at = fam.mean_matrix(level), {e: i for i, e in enumerate(fam.exits)}
    rows = []
    for e in levels:
        r = {"exit": e, "required": round(float(A[at[e], -1]), 5), "profile": round(float(fam.F(fam.level0, [e])[0]), 5)}
        if band is not None and not setting.workload.endswith("_per_position"):  # bands are around the central reading
            r["band"] = sorted(round(float(np.asarray(b.agreement)[b.exits.index(e), -1]), 5) for b in band)
        rows.append(r)
    out["agreement_with_final_at_exits"] = rows
    chain = list(got_plan.levels)
    out["agreement_between_consecutive_levels"] = [{"pair": [a, b], "required": round(float(A[at[a], at[b]]), 5)}
                                                   for a, b in zip(chain, chain[1:])]
    points = []
    own_pts = [(d, _point_from_record(d)) for d in _own_points(setting.acceptance)]
    band_pts = [_own_points(b) for b in band] if band is not None else None
    cost = unit_cost(L, [p.plan for _, p in own_pts])
    scen = spread_scenarios(setting.acceptance) if fam.kind == "curve" and fam.spread is not None else None
    for i, (d, p) in enumerate(own_pts):
        if fam.kind != "curve":
            continue
        req = None if math.isinf(level) else (float(p.predict(level, fam.c, L, cost)) if scen is None else
                                              predict_over_requests(p, level, fam.c, L, fam.spread, scen))
        row = {"kind": p.kind, "published": p.value, "source": p.source,
               "where": (d.get("config") or {}).get("plan") or (p.plan.describe(short=True) if p.plan else
                                                                 "the first layer agreeing with the last, mean"
                                                                 if p.kind == "mean_layer" else
                                                                 f"exit {p.exit}" + (f"/{p.exit2}" if p.exit2 else "")),
               "required_curve_gives": None if req is None else round(req, 5),
               "distance": None if req is None else round(req - p.value, 5)}
        lo_v, hi_v = sorted(float(b[i]["value"]) for b in band_pts) if band_pts is not None and all(
            len(b) == len(own_pts) for b in band_pts) else (math.nan, math.nan)
        if lo_v <= p.value <= hi_v:  # the same published figure, moved by its reading error
            row["band"] = [round(lo_v, 5), round(hi_v, 5)]
            row["within_band"] = req is not None and lo_v - 1e-9 <= req <= hi_v + 1e-9
        points.append(row)
    out["published_points"] = points
    judged = [r for r in points if "within_band" in r]
    out["reconciled"] = bool(judged) and all(r["within_band"] for r in judged) if judged else None
    if math.isinf(level):
        out["verdict"] = f"reachable only in the limit of {perfect}"
    else:
        ex = (", ".join(f"F({r['exit']}) = {r['required']:.3f} (profile {r['profile']:.3f})" for r in rows)
              or "no exit below the last, so acceptance plays no part")
        out["verdict"] = (f"needs level {level:.3f} ({level - fam.level0:+.3f} from the profile's): {ex}; "
                          + ("consistent with the published points" if out["reconciled"] else
                             "NOT consistent with the published points" if out["reconciled"] is False else
                             "published points but no reading band (<workload>_low / _high) to judge them against"
                             if points else "no published points to compare with"))
    return out


# --------------------------------------------------------------------------- command line


def add_parser(subparsers) -> None:
    from .cli import _setting_args
    from .cli_common import int_in

    p = subparsers.add_parser("audit", help="what acceptance a claimed speed-up needs, and whether it matches the published figures")
    _setting_args(p)
    p.add_argument("--plan", help="plan JSON file")
    p.add_argument("--levels", help=f"exit layers, e.g. 10,20,80, or '{BEST_SINGLE_LEVEL}'")
    p.add_argument("--propose", type=int_in(1, schema.MAX_PROPOSE), help="drafts per round (default 2)")
    p.add_argument("--window", help="window(s) of the intermediate level(s)")
    p.add_argument("--speedup", required=True, type=str, help="claimed speed-up over autoregressive decoding (0, 1e6]")
    p.set_defaults(func=run)


def _parse_speedup(text: str) -> float:
    try:
        v = schema.strict_float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and 0 < v <= MAX_SPEEDUP):
        raise ValueError(f"speedup: must be a number in (0, {MAX_SPEEDUP:g}], got {text!r}")
    return v


MAX_SPEEDUP = 1e6  # far above any ceiling; beyond it the percentages above the ceiling overflow


def run(args) -> int:
    from .cli import _setting
    from .cli_common import plan_from_args

    speedup = _parse_speedup(args.speedup)
    if args.levels == BEST_SINGLE_LEVEL and args.plan:
        raise ValueError(f"plan: --levels {BEST_SINGLE_LEVEL} picks its own plan at every level; drop --plan")
    try:
        plan = None if args.levels == BEST_SINGLE_LEVEL else plan_from_args(args, batch=args.batch)
    except ValueError as e:  # the parser knows integers only; the audit also takes the keyword
        if str(e).startswith("levels: expected"):
            raise ValueError(f"{e}; allowed: those, or {BEST_SINGLE_LEVEL}") from None
        raise
    setting = _setting(args, plan.batch if plan else None)  # the plan file's batch, as evaluate reads it
    if plan is not None and plan.adaptive:
        raise ValueError(f"plan: {plan.describe()} has confidence thresholds; the audit moves a fixed plan's acceptance "
                         "curve (the confidence statistics do not move with it): audit the plan without them")
    if args.levels == BEST_SINGLE_LEVEL:
        for flag in ("propose", "window"):  # the plan at each level is the best one: nothing to set
            if getattr(args, flag, None) is not None:
                raise ValueError(f"{flag}: --levels {BEST_SINGLE_LEVEL} picks its own plan at every level; drop --{flag}")
        if len(setting.acceptance.exits) < 2:
            raise ValueError(f"levels: workload {setting.workload!r} has no exit below the last layer to draft from")
        plan = BEST_SINGLE_LEVEL
    else:
        setting.profile.check_plan(plan, setting.workload)
    out = audit(setting, plan, speedup)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(setting.header())
    print(f"plan {out['plan']}  claimed {speedup:g}x autoregressive")
    print(f"  family: {out['family_describe']}")
    print(f"  profile's own level predicts {out['speedup_at_profile_level']:.3f}x ({out['plan_at_profile_level']}); "
          f"ceiling ({out['ceiling_note']}) {out['ceiling_speedup']:.3f}x; floor (the level falling) "
          f"{out['floor_speedup']:.3f}x")
    if not out["reachable"]:
        print(f"  verdict: {out['verdict']}")
        return 0
    band = (f"; the profile's band (<w>_low/<w>_high): {out['profile_level_band'][0]:.4f}..{out['profile_level_band'][1]:.4f}"
            if "profile_level_band" in out else "")
    level = (f"none finite ({out['required_level_note']})" if out["required_level"] is None
             else f"{out['required_level']} (shift {out['level_shift']})")
    print(f"  required level {level} -> {out['speedup_at_required_level']:.3f}x ({out['plan_at_required_level']}){band}")
    for r in out["agreement_with_final_at_exits"]:
        band = f"  band {r['band'][0]:.3f}-{r['band'][1]:.3f}" if "band" in r else ""
        print(f"  agreement with the final layer at exit {r['exit']}: required {r['required']:.3f}, profile {r['profile']:.3f}{band}")
    for r in out["published_points"]:
        band = f" band {r['band'][0]:.3f}-{r['band'][1]:.3f} ({'within' if r['within_band'] else 'OUTSIDE'})" if "band" in r else ""
        gives = ("none: no finite level gives the claim" if r["required_curve_gives"] is None
                 else f"gives {r['required_curve_gives']:.3f} (distance {r['distance']:+.3f})")
        print(f"  published {r['kind']} {r['where']}: {r['published']:.3f}; the required curve {gives}{band}")
    print(f"  verdict: {out['verdict']}")
    return 0
