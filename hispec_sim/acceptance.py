"""Per-level acceptance rates of chain plans, from a workload's agreement statistics.

Greedy semantics: whatever level j emits at a position is its own argmax there, so level
j+1 accepts a buffered token iff exits l_j and l_{j+1} agree at that position (event E_j).
The models in this package assume:
  * positions are i.i.d. (trace replay in the Monte-Carlo simulator drops this);
  * along the levels of one position, E_1, E_2, ... form a Markov chain: whether level j+1
    accepts depends on the token's history only through whether level j accepted it
    (a survivor, "acc") or emitted it as its own correction ("cor"); a bonus token, which
    no lower level saw, is accepted with the marginal rate.
With `joint="independent"` the three rates coincide (the depth-Markov model of published
profiles makes consecutive events exactly independent); with `joint="traces"` they are
the empirical conditional frequencies over the measured positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schema import Acceptance


@dataclass
class LevelRates:
    """Rates for the check by level j+1 of tokens from level j; arrays of shape (plans,)."""

    marginal: np.ndarray  # P(E_j): a bonus token, or a draft (no lower history)
    after_accept: np.ndarray  # P(E_j | E_{j-1})
    after_reject: np.ndarray  # P(E_j | not E_{j-1})


class AgreementModel:
    """Vectorised access to one workload's statistics, indexed by exit layer."""

    def __init__(self, acc: Acceptance):
        self.acc = acc
        self.exits = np.asarray(acc.exits)
        self._index = np.full(self.exits.max() + 1, -1)
        self._index[self.exits] = np.arange(len(self.exits))
        self.matrix = np.asarray(acc.agreement, dtype=float)
        self.traces = None
        if acc.traces:
            self.traces = np.asarray(acc.traces, dtype=np.int64)
        self.scenarios = spread_scenarios(acc) if getattr(acc, "spread", None) else None  # None: every request at the mean rates

    def for_rows(self, row_scenario: np.ndarray) -> "RequestRates":
        """This model with row r of every rates() call at request scenario row_scenario[r]."""
        return RequestRates(self, self.scenarios, row_scenario)

    def idx(self, layers) -> np.ndarray:
        return self._index[np.asarray(layers)]

    def pair(self, a, b) -> np.ndarray:
        return self.matrix[self.idx(a), self.idx(b)]

    def rates(self, lower2, lower, upper) -> LevelRates:
        """Rates for `upper` checking tokens of `lower`, whose tokens came from `lower2`
        (pass lower2=None for drafts: then all three rates are the marginal)."""
        marg = self.pair(lower, upper)
        if lower2 is None or self.acc.joint == "independent":
            return LevelRates(marg, marg, marg)
        trip = np.stack(np.broadcast_arrays(self.idx(lower2), self.idx(lower), self.idx(upper)), -1).reshape(-1, 3)
        uniq, inverse = np.unique(trip, axis=0, return_inverse=True)
        t = self.traces
        e1 = t[:, uniq[:, 0]] == t[:, uniq[:, 1]]  # (positions, unique triples)
        e2 = t[:, uniq[:, 1]] == t[:, uniq[:, 2]]
        n1 = e1.sum(0)
        n0 = e1.shape[0] - n1
        marg_t = e2.mean(0)
        after_acc = np.where(n1 > 0, (e1 & e2).sum(0) / np.maximum(n1, 1), marg_t)
        after_rej = np.where(n0 > 0, (~e1 & e2).sum(0) / np.maximum(n0, 1), marg_t)
        shape = np.shape(marg)
        back = lambda x: x[inverse.reshape(-1)].reshape(shape)
        return LevelRates(back(marg_t), back(after_acc), back(after_rej))


# --------------------------------------------------------------------------- per-request spread

def quadrature_nodes(sigma: float) -> int:
    """Gauss-Hermite nodes for a logit-normal spread. Measured against 64-96 nodes on a
    12-layer curve (tests/sim/test_spread.py): relative error ~4e-9 at sigma 0.4 with 8
    nodes, ~5e-7 at sigma 1 with 16, ~3e-7 at sigma 1.5 with 32; wide spreads converge
    slowly (rates pile up near 0 and 1). Each node costs one pass of the vectorised model
    (the search runs once per node)."""
    return 8 if sigma <= 0.5 else 16 if sigma <= 1.0 else 32 if sigma <= 2.0 else 64


def _logit(x):
    x = np.clip(np.asarray(x, float), 1e-12, 1.0 - 1e-12)
    return np.log(x) - np.log1p(-x)


def shift_logit(x, z):
    """sigmoid(logit(x) + z) elementwise; x is returned bit for bit where z == 0, and
    rates 0 and 1 stay 0 and 1 (a token that never / always agrees does so in every request)."""
    x = np.asarray(x, float)
    z = np.broadcast_to(np.asarray(z, float), np.broadcast_shapes(np.shape(x), np.shape(z)))
    with np.errstate(over="ignore"):
        moved = 1.0 / (1.0 + np.exp(-(_logit(x) + z)))
    return np.where((z == 0) | (x <= 0.0) | (x >= 1.0), x, moved)


@dataclass
class Scenarios:
    """A request distribution discretised for exact expectation: scenario s has probability
    weights[s] (summing to 1). logit_normal: Gauss-Hermite nodes z_s of N(0, sigma);
    empirical: the distinct per-request matrices, weighted by their (token) weights."""

    weights: np.ndarray  # (S,)
    shifts: np.ndarray | None = None  # logit_normal: (S,) logit shifts
    matrices: np.ndarray | None = None  # empirical: (S, n, n)


def spread_scenarios(acc: Acceptance, nodes: int | None = None) -> Scenarios | None:
    """None when the workload has no spread or a degenerate one (sigma 0, or every request
    equal to the workload's own matrix): then every request runs at the mean rates and the
    prediction is the no-spread one, bit for bit."""
    sp = acc.spread
    if sp is None:
        return None
    if sp.family == "logit_normal":
        if sp.sigma == 0:
            return None
        x, w = np.polynomial.hermite_e.hermegauss(nodes or quadrature_nodes(sp.sigma))  # weight exp(-x^2 / 2)
        return Scenarios(weights=w / w.sum(), shifts=sp.sigma * x)
    mats = np.asarray(sp.per_request, float)
    w = np.ones(len(mats)) if sp.weights is None else np.asarray(sp.weights, float)
    uniq, inverse = np.unique(mats.reshape(len(mats), -1), axis=0, return_inverse=True)
    weights = np.bincount(inverse.reshape(-1), weights=w, minlength=len(uniq))
    uniq = uniq.reshape(len(uniq), *mats.shape[1:])
    if len(uniq) == 1 and np.array_equal(uniq[0], np.asarray(acc.agreement, float)):
        return None
    return Scenarios(weights=weights / weights.sum(), matrices=uniq)


class RequestRates:
    """An AgreementModel seen at one request per row: `rates` takes arrays over rows (as
    analytic.chain_terms passes them) and returns each row's request's rates.

    logit_normal: every rate of the row's request (marginal and both conditionals) is the
    workload's rate shifted by the request's z in logit space. empirical: the marginal is
    the request's own matrix entry; the conditional rates (joint='traces') are the workload's
    shifted in logit space by the same amount as the marginal moved (the per-request
    matrices carry no conditional rates)."""

    def __init__(self, model: "AgreementModel", scen: Scenarios, row_scenario: np.ndarray):
        self.model, self.scen, self.rows = model, scen, np.asarray(row_scenario)
        self.acc, self.exits, self.traces = model.acc, model.exits, model.traces

    def idx(self, layers):
        return self.model.idx(layers)

    def rates(self, lower2, lower, upper) -> LevelRates:
        base = self.model.rates(lower2, lower, upper)
        rows = self.rows  # one scenario per row of the arrays passed in
        if self.scen.shifts is not None:
            z = self.scen.shifts[rows]
            return LevelRates(shift_logit(base.marginal, z), shift_logit(base.after_accept, z),
                              shift_logit(base.after_reject, z))
        own = self.scen.matrices[rows, self.idx(lower), self.idx(upper)]
        if lower2 is None or self.acc.joint == "independent":
            return LevelRates(own, own, own)
        z = np.where(own == base.marginal, 0.0, _logit(own) - _logit(base.marginal))
        return LevelRates(own, shift_logit(base.after_accept, z), shift_logit(base.after_reject, z))

    def sample(self, rng, n: int) -> "RequestRates":
        """n requests drawn from the distribution itself (not the quadrature): for Monte-Carlo,
        one request per stream."""
        sp = self.acc.spread
        if sp.family == "logit_normal":
            return RequestRates(self.model, Scenarios(np.full(n, 1.0 / n), shifts=rng.normal(0.0, sp.sigma, n)), np.arange(n))
        return RequestRates(self.model, self.scen, rng.choice(len(self.scen.weights), n, p=self.scen.weights))
