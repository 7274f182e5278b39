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
