"""Evaluate plans on a profile and search the exhaustive single-level + 3-level space."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .acceptance import AgreementModel
from .analytic import Prediction, expected_chain_terms, predict
from .latency import CostModel
from .schema import MAX_SEARCH_CELLS, Plan, Profile, rounded


@dataclass
class Setting:
    """Everything besides the plan that fixes a prediction."""

    profile: Profile
    workload: str | None = None
    tp: int | None = None
    stack: str | None = None
    batch: int = 1
    context: int | None = None

    def __post_init__(self):
        self.workload = self.profile.default_workload if self.workload is None else self.workload
        self.acceptance = self.profile.workload(self.workload)
        self.table = self.profile.table(self.tp, self.stack)
        self.tp, self.stack = self.table.tp, self.table.stack
        self.context = self.acceptance.context if self.context is None else self.context
        if self.context < 0:
            raise ValueError("context: must be >= 0")
        self.profile.model.check_context(self.context, "context")
        self.agreement = AgreementModel(self.acceptance)

    def cost(self, max_tokens: int = 512) -> CostModel:
        return CostModel(self.table, self.batch, self.context, max_tokens)

    def cost_for(self, plans) -> CostModel:
        """A cost model whose lookups cover every forward these plans run (a check carries at
        most plan.max_overshoot rows per sequence; a few spare)."""
        return self.cost(max(p.max_overshoot for p in plans) + 8)

    @property
    def num_layers(self) -> int:
        return self.profile.model.num_layers

    def header(self) -> str:
        """The line every text output starts with."""
        return (f"profile {self.profile.name}  workload {self.workload}  tp {self.tp}  stack {self.stack}  "
                f"batch {self.batch}  context {self.context}")

    def describe(self) -> dict:
        return {"profile": self.profile.name, "workload": self.workload, "tp": self.tp, "stack": self.stack,
                "batch": self.batch, "context": self.context}


def _max_tokens(plans: list[Plan]) -> int:
    """Largest token count any forward of these plans can carry when they are evaluated
    together (buffers are padded to the largest propose and window at every level)."""
    depth = max(p.depth for p in plans)
    widest = [max((p.windows[j] for p in plans if len(p.windows) > j), default=0) for j in range(depth - 2)]
    return max(p.propose for p in plans) + sum(widest) + depth + 8


def predict_plans(setting: Setting, plans: list[Plan]) -> Prediction:
    for p in plans:
        setting.profile.check_plan(p, setting.workload)
    return predict(setting.cost(_max_tokens(plans)), setting.agreement, plans)


def paper_default(setting: Setting) -> Plan:
    """The profile's published configuration, else HiSpec's rule: exits at ~1/8 and ~1/4
    of depth (snapped to measured exits), N_d = 2, N_i = 4."""
    if setting.profile.paper_default is not None:
        return setting.profile.paper_default
    L = setting.num_layers
    exits = np.array([e for e in setting.acceptance.exits if e < L])
    if len(exits) < 2:  # no room for a hierarchy: the closest published setting is plain decoding
        return Plan(levels=[L])
    d = int(exits[np.argmin(abs(exits - L / 8))])
    i = int(exits[np.argmin(abs(exits - L / 4))])
    if i <= d:
        i = int(exits[exits > d][0])
    return Plan(levels=[d, i, L], propose=2, windows=[4])


@dataclass
class Scored:
    plan: Plan
    tokens_per_second: float
    latency_ms: float
    tokens_per_full_forward: float
    acceptance: list[float] = field(default_factory=list)
    analytic_tokens_per_second: float | None = None  # set when re-scored by trace replay

    def as_dict(self, ar_tps: float) -> dict:
        out = {"plan": self.plan.model_dump(), "family": self.plan.family, "describe": self.plan.describe(),
               "tokens_per_second": rounded(self.tokens_per_second, 4),
               "speedup_vs_autoregressive": rounded(self.tokens_per_second / ar_tps, 6),
               "tokens_per_full_forward": rounded(self.tokens_per_full_forward, 4),
               "latency_ms_per_token": rounded(self.latency_ms, 4),
               "acceptance_per_level": [rounded(a, 4) for a in self.acceptance]}
        if self.analytic_tokens_per_second is not None:
            out["analytic_tokens_per_second"] = rounded(self.analytic_tokens_per_second, 4)
        return out


def score(setting: Setting, plans: list[Plan]) -> list[Scored]:
    pr = predict_plans(setting, plans)
    return [Scored(p, float(pr.tokens_per_second[i]), float(pr.latency_ms[i]), float(pr.tokens_per_full_forward[i]),
                   [float(a) for a in pr.acceptance[i, : p.depth - 1]]) for i, p in enumerate(plans)]


@dataclass
class SearchResult:
    setting: Setting
    top: list[Scored]
    autoregressive: Scored
    best_single_level: Scored
    paper_default: Scored
    plans_evaluated: int
    seconds: float
    rescored: dict | None = None  # how the ranking was re-scored (rescored_by_replay)

    @property
    def best(self) -> Scored:
        return self.top[0]

    def as_dict(self) -> dict:
        ar = self.autoregressive.tokens_per_second
        best = self.best.as_dict(ar)
        best["speedup_vs_best_single_level"] = rounded(self.best.tokens_per_second / self.best_single_level.tokens_per_second, 6)
        return {**self.setting.describe(), "best": best,
                "baselines": {"autoregressive": self.autoregressive.as_dict(ar),
                              "best_single_level": self.best_single_level.as_dict(ar),
                              "paper_default": self.paper_default.as_dict(ar)},
                "top": [s.as_dict(ar) for s in self.top],
                "plans_evaluated": self.plans_evaluated, "seconds": round(self.seconds, 4),
                **({"rescored": self.rescored} if self.rescored else {})}


def exhaustive_arrays(setting: Setting, max_propose: int = 8, max_window: int = 16):
    """Tokens/s of every single-level plan (exit, propose) and every 3-level plan
    (draft, intermediate, propose, window); one vectorised pass each.

    Returns (single, three): single[e_idx, g-1], three[pair, g-1, w-1] with the exit lists.
    """
    cost = setting.cost(max_propose + max_window + 8)
    model = setting.agreement
    L = setting.num_layers
    exits = np.array([e for e in setting.acceptance.exits if e < L])
    B = setting.batch
    if len(exits) == 0:  # only the full model was measured: autoregressive is the only plan
        return exits, np.zeros((0, max_propose)), np.zeros((0, 2), int), np.zeros((0, max_propose, max_window))
    # single level: sweep propose as the window of the draft buffer
    lv = np.stack([exits, np.full_like(exits, L)], 1)
    committed, cycle, _ = expected_chain_terms(cost, model, lv, np.ones(len(exits), int), np.zeros((len(exits), 0), int), max_propose)
    single = B * 1000.0 * committed / cycle
    d, i = np.triu_indices(len(exits), 1)
    pairs = np.stack([exits[d], exits[i]], 1)
    if len(pairs) == 0:
        return exits, single, pairs, np.zeros((0, max_propose, max_window))
    rows_pair = np.repeat(np.arange(len(pairs)), max_propose)
    rows_g = np.tile(np.arange(1, max_propose + 1), len(pairs))
    lv3 = np.concatenate([pairs[rows_pair], np.full((len(rows_pair), 1), L)], 1)
    committed, cycle, _ = expected_chain_terms(cost, model, lv3, rows_g, np.ones((len(rows_pair), 1), int), max_window)
    three = (B * 1000.0 * committed / cycle).reshape(len(pairs), max_propose, max_window)
    return exits, single, pairs, three


def ranked_plans(setting: Setting, arrays, top: int) -> dict[str, list[Plan]]:
    """The `top` best single-level and 3-level plans of exhaustive_arrays' output, best first."""
    exits, single, pairs, three = arrays
    L, B = setting.num_layers, setting.batch
    best = lambda a: zip(*np.unravel_index(np.argsort(a, axis=None)[::-1][:top], a.shape))
    return {"single_level": [Plan(levels=[int(exits[e]), L], propose=int(g) + 1, batch=B) for e, g in best(single)],
            "hierarchical": [Plan(levels=[int(pairs[p][0]), int(pairs[p][1]), L], propose=int(g) + 1,
                                  windows=[int(w) + 1], batch=B) for p, g, w in best(three)]}


def check_exhaustive_size(setting: Setting, max_propose: int, max_window: int) -> None:
    """Refuse a search too large to finish in minutes: every exit pair x propose g sweeps the
    windows 1..W over blocks of up to g + 1 tokens (analytic._level_terms: W x (g + 1)
    cells), once per acceptance scenario."""
    n = sum(e < setting.num_layers for e in setting.acceptance.exits)
    pairs = n * (n - 1) // 2
    scen = getattr(setting.agreement, "scenarios", None)
    scenarios = 1 if scen is None else len(scen.weights)
    cells = scenarios * (pairs * max_window * (max_propose * (max_propose + 3) // 2) + n * max_propose ** 2)
    if cells > MAX_SEARCH_CELLS:
        raise ValueError(f"max_window: an exhaustive search of {pairs:,} exit pairs x propose 1..{max_propose} x window "
                         f"1..{max_window} x {scenarios} acceptance scenario(s) evaluates {cells:.2e} cells, at most "
                         f"{MAX_SEARCH_CELLS:.2e}: lower --max-propose (1..64) or --max-window (1..256) "
                         "(optimize can also --search optuna)")


def exhaustive(setting: Setting, top: int = 10, max_propose: int = 8, max_window: int = 16, arrays=None) -> SearchResult:
    """arrays: exhaustive_arrays(setting, max_propose, max_window) where the caller has them."""
    if not (1 <= max_propose <= 64 and 1 <= max_window <= 256):
        raise ValueError("max_propose must be in [1, 64] and max_window in [1, 256]")
    check_exhaustive_size(setting, max_propose, max_window)
    t0 = time.perf_counter()
    arrays = exhaustive_arrays(setting, max_propose, max_window) if arrays is None else arrays
    ranked = ranked_plans(setting, arrays, top)
    candidates = [Plan(levels=[setting.num_layers], batch=setting.batch)] + ranked["single_level"] + ranked["hierarchical"]
    paper = paper_default(setting).model_copy(update={"batch": setting.batch})
    candidates.append(paper)
    scored = score(setting, candidates)  # re-scored through the generic path: one source of truth
    ar = scored[0]
    inside = paper.propose <= max_propose and max(paper.windows or [1]) <= max_window
    answers = scored if inside else scored[:-1]  # the paper default outside the bounds is a baseline only (round 23, D3)
    singles = [s for s in answers if s.plan.depth == 2]
    best_single_s = max(singles, key=lambda s: s.tokens_per_second) if singles else ar
    unique: dict[str, Scored] = {}
    for s in answers:
        unique.setdefault(s.plan.model_dump_json(), s)
    ranked = sorted(unique.values(), key=lambda s: -s.tokens_per_second)[:top]
    evaluated = 1 + arrays[1].size + arrays[3].size
    return SearchResult(setting, ranked, ar, best_single_s, scored[-1], evaluated, time.perf_counter() - t0)


DEFAULT_RESCORE = 50  # optimize's default where the workload has traces: the analytic best 50, walked (~0.2 s)


def optimized(setting: Setting, top: int = 10, max_propose: int = 8, max_window: int = 16,
              rescore: int | None = None, arrays=None) -> SearchResult:
    """`optimize`'s exhaustive answer: the analytic ranking, its `rescore` best re-scored by
    trace replay (`rescored_by_replay`); rescore None: DEFAULT_RESCORE where the workload has
    traces, else 0 (analytic only)."""
    if rescore is None:
        rescore = DEFAULT_RESCORE if setting.agreement.traces is not None else 0
    result = exhaustive(setting, top=max(top, rescore), max_propose=max_propose, max_window=max_window, arrays=arrays)
    return rescored_by_replay(result, top) if rescore else result


def rescored_by_replay(result: SearchResult, top: int) -> SearchResult:
    """The search's ranked plans and its baselines re-scored by trace replay and re-ranked
    (the best `top` kept). The analytic model ranks every plan in one pass but treats
    positions as independent; replay walks each measured request of the workload, keeping
    how agreement runs along positions and across levels (in-sample it does the executor's
    work exactly, tests/exec/test_replay_matches_executor.py), and prices the forwards with
    the same cost model. Needs a workload with traces."""
    from .montecarlo import simulate

    setting = result.setting
    if setting.agreement.traces is None:
        raise ValueError(f"rescore: workload {setting.workload!r} has no per-position traces; trace replay needs a "
                         "workload measured by `hispec-sim profile measure`")
    t0 = time.perf_counter()
    every = (*result.top, result.autoregressive, result.best_single_level, result.paper_default)  # all re-scored
    cost = setting.cost(max(s.plan.propose + sum(s.plan.windows) for s in every) + 8)

    done: dict[str, Scored] = {}  # a baseline is often among the ranked plans: walked once

    def replayed(s: Scored) -> Scored:
        key = s.plan.model_dump_json()
        if key not in done:
            r = simulate(cost, setting.agreement, s.plan, replay=True)
            done[key] = Scored(s.plan, r.tokens_per_second, 1000.0 * setting.batch / r.tokens_per_second,
                               r.tokens_per_full_forward, r.acceptance or s.acceptance, s.tokens_per_second)
        return done[key]

    ranked = sorted((replayed(s) for s in result.top), key=lambda s: -s.tokens_per_second)
    singles = [s for s in ranked if s.plan.depth == 2]
    best_single = replayed(result.best_single_level)
    if singles and singles[0].tokens_per_second > best_single.tokens_per_second:
        best_single = singles[0]
    requests = len(setting.acceptance.trace_starts or [0])  # no starts: the traces are one request
    note = {"by": "trace replay", "candidates": len(result.top), "requests": requests,
            "seconds": round(time.perf_counter() - t0, 4),
            "note": f"the analytic search's best {len(result.top)} plans re-scored by walking the workload's "
                    f"{requests} measured request{'s' if requests > 1 else ''}"}
    return SearchResult(setting, ranked[:top], replayed(result.autoregressive), best_single,
                        replayed(result.paper_default), result.plans_evaluated, result.seconds, note)
