"""Step-time noise: every simulated serving step's time x one draw of the measured ratio
(real iteration ms / the serving calibration's fitted ms), shared by every sequence in
that step.

What is measured (hispec_exec.measure_serving.fit_step_overheads): after the NNLS fit of
the serve loop's iterations, each iteration's ratio measured / fitted. Stored
(`schema.StepNoise`): the ratio's quantiles at probabilities (i + 1/2) / n, per step-size
class (below): rescaled so that the sampler below has mean exactly 1 in each class (the
deterministic model's throughput is kept; the noise only spreads the steps), the lag-1
autocorrelation of the ratio's normal scores (ranks within its class) within each serve()
run, and the iterations counted. Every iteration counts, also those the fit rejected as
outliers: slow steps are the tail this models.

The sampler (assumptions): a Gaussian copula. z_t ~ N(0, 1) is mapped to a ratio by the
quantile function, linear in the normal score between the stored quantiles (z_i =
Phi^-1((i + 1/2) / n)) and flat beyond the first and last (no tail beyond the measured
range). z_t is AR(1), z_t = rho z_{t-1} + sqrt(1 - rho^2) e_t, with rho the stored
lag-1 autocorrelation: slow windows of a loaded machine (several slow steps in a row)
are kept when the measurement saw them; rho = 0 is i.i.d. The measurement stores rho
only when it exceeds its noise level (2 / sqrt(pairs)), else 0 (i.i.d.): on a loaded
VM it is large (0.65 measured under load ~2.5, runs minutes apart at different speeds),
so the AR(1) is what such a profile gets. Prefill forwards are not in the iteration fit
and stay deterministic.

Step size: the ratio's spread differs between short steps (drafts of a few layers: host
time dominates) and long ones (a loaded 2-core VM, measured: 5-95 % of the ratio
0.41-1.98 below the median fitted step, 0.59-2.27 above), so it is conditioned simply: two
classes split at the median fitted step ms of the calibration (`split_ms`), each with its
own quantiles (`short_quantiles` below, `quantiles` at or above), one AR(1) normal score
per step mapped through the quantiles of that step's class (the copula is shared). A class
of fewer than MIN_CLASS iterations: one pooled distribution (no split).
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from .schema import MAX_LAG1

NOISE_STREAM = 0x5E7  # the noise's RNG stream: [NOISE_STREAM, seed], apart from the acceptance draws
QUANTILES = 65
MIN_CLASS = 2 * QUANTILES  # iterations a step-size class needs for quantiles of its own


def probabilities(n: int) -> np.ndarray:
    """Probability levels of n stored quantiles."""
    return (np.arange(n) + 0.5) / n


def normal_scores(n: int) -> np.ndarray:
    nd = NormalDist()
    return np.array([nd.inv_cdf(p) for p in probabilities(n)])


def sampler_mean(quantiles) -> float:
    """E[ratio] under the sampler: E[f(Z)], f linear in z between (z_i, q_i), flat beyond
    (closed form: on [a, b], f = q_a + s (z - a) and the integral of z phi is phi(a) - phi(b))."""
    q = np.asarray(quantiles, float)
    z = normal_scores(len(q))
    nd = NormalDist()
    cdf = np.array([nd.cdf(v) for v in z])
    pdf = np.array([nd.pdf(v) for v in z])
    dz = np.diff(z)
    slope = np.diff(q) / dz
    mass = np.diff(cdf)
    inner = q[:-1] * mass + slope * ((pdf[:-1] - pdf[1:]) - z[:-1] * mass)
    return float(q[0] * cdf[0] + inner.sum() + q[-1] * (1.0 - cdf[-1]))


def _scores(x: np.ndarray) -> np.ndarray:
    """Normal scores of x (ranks mapped through Phi^-1)."""
    n = len(x)
    rank = np.empty(n)
    rank[np.argsort(x, kind="stable")] = np.arange(n)
    nd = NormalDist()
    return np.array([nd.inv_cdf((r + 0.5) / n) for r in rank])


def lag1_normal_scores(ratio: np.ndarray, group: np.ndarray, cls: np.ndarray | None = None) -> tuple[float, int]:
    """Lag-1 autocorrelation of the ratios' normal scores (ranks within each class `cls`
    mapped through Phi^-1), over consecutive iterations of the same run; and the pairs."""
    ratio = np.asarray(ratio, float)
    z = np.empty(len(ratio))
    cls = np.zeros(len(ratio), int) if cls is None else np.asarray(cls)
    for c in np.unique(cls):
        z[cls == c] = _scores(ratio[cls == c])
    same = group[1:] == group[:-1]
    a, b = z[:-1][same], z[1:][same]
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return 0.0, int(len(a))
    return float(np.corrcoef(a, b)[0, 1]), int(len(a))


def _quantiles(ratio: np.ndarray, n: int) -> list[float]:
    q = np.quantile(ratio, probabilities(n))
    return [float(v) for v in np.round(q / sampler_mean(q), 6)]


def describe(ratio: np.ndarray, group: np.ndarray, fitted_ms: np.ndarray | None = None,
             n_quantiles: int = QUANTILES) -> dict:
    """The StepNoise fields from per-iteration ratios measured / fitted, in run order
    (group: the serve() run of each iteration; fitted_ms: each one's fitted step ms, for
    the two step-size classes; None: pooled)."""
    ratio = np.asarray(ratio, float)
    group = np.asarray(group)
    out = {"iterations": int(len(ratio)), "ratio_mean": round(float(ratio.mean()), 6)}
    cls = None
    if fitted_ms is not None:
        fitted_ms = np.asarray(fitted_ms, float)
        split = float(np.median(fitted_ms))
        short = fitted_ms < split
        if min(short.sum(), (~short).sum()) >= MIN_CLASS:
            cls = short.astype(int)
            out.update(quantiles=_quantiles(ratio[~short], n_quantiles), short_quantiles=_quantiles(ratio[short], n_quantiles),
                       split_ms=round(split, 6))
    if cls is None:
        out["quantiles"] = _quantiles(ratio, n_quantiles)
    rho, pairs = lag1_normal_scores(ratio, group, cls)
    significant = pairs > 0 and abs(rho) > 2.0 / np.sqrt(pairs)
    used = float(np.clip(rho, -MAX_LAG1, MAX_LAG1))  # a loaded machine measured 0.9514: capped, not refused
    out.update(lag1_autocorrelation=round(used, 4) if significant else 0.0, lag1_measured=round(rho, 4))
    return out


def ar1(rho: float, first: float, e: np.ndarray, chunk: int = 64) -> np.ndarray:
    """z_0 = first, z_t = rho z_{t-1} + sqrt(1 - rho^2) e_t (t = 1..len(e)), vectorised:
    within chunks of `chunk` steps a triangular matrix of powers of rho, then one carry
    per chunk."""
    c = np.sqrt(1.0 - rho ** 2)
    n = len(e)
    m = -(-n // chunk)
    x = np.zeros(m * chunk)
    x[:n] = c * e
    lag = np.arange(chunk)[:, None] - np.arange(chunk)[None, :]
    powers = np.where(lag >= 0, rho ** np.maximum(lag, 0), 0.0)  # (i, j): rho^(i - j), j <= i
    local = x.reshape(m, chunk) @ powers.T  # each chunk started from 0
    decay = rho ** np.arange(1, chunk + 1)  # the carry's weight at each position of the next chunk
    out = np.empty_like(local)
    prev = first
    for i in range(m):
        out[i] = local[i] + decay * prev
        prev = out[i, -1]
    return np.concatenate([[first], out.reshape(-1)[:n]])


class NoiseStream:
    """Normal scores of consecutive steps, drawn in blocks (vectorised), handed out in
    order: peek(c) shows the next c without using them, advance(c) uses them, take(c)
    both; scale(z, ms) maps them to the multipliers of steps of deterministic time ms."""

    BLOCK = 1 << 14

    def __init__(self, quantiles, rho: float, seed: int, short_quantiles=None, split_ms: float | None = None):
        q = np.asarray(quantiles, float)
        self.q = q / sampler_mean(q)  # mean exactly 1 (stored quantiles already are, to rounding)
        self.z = normal_scores(len(q))
        self.split = split_ms if short_quantiles is not None else None
        if self.split is not None:
            qs = np.asarray(short_quantiles, float)
            self.q_short, self.z_short = qs / sampler_mean(qs), normal_scores(len(qs))
        self.rho = float(rho)
        self.rng = np.random.default_rng([NOISE_STREAM, int(seed)])
        self.last_z = None
        self.buf = np.zeros(0)
        self.pos = 0

    def _more(self, count: int) -> np.ndarray:
        e = self.rng.standard_normal(max(self.BLOCK, count))
        if self.rho == 0.0:
            z = e
        else:  # AR(1), stationary start (z_0 ~ N(0, 1)); z_{t-1} carried across blocks
            first = e[0] if self.last_z is None else self.rho * self.last_z + np.sqrt(1.0 - self.rho ** 2) * e[0]
            z = ar1(self.rho, first, e[1:])
            self.last_z = float(z[-1])
        return z

    def scale(self, z: np.ndarray, ms) -> np.ndarray:
        """Multipliers for normal scores z of steps whose deterministic time is ms."""
        long = np.interp(z, self.z, self.q)
        if self.split is None:
            return long
        return np.where(np.asarray(ms) < self.split, np.interp(z, self.z_short, self.q_short), long)

    def ratios(self, count: int, ms: float = np.inf) -> np.ndarray:
        """The next count multipliers of steps of ms each (tests, benchmarks)."""
        return self.scale(self.take(count), ms)

    def peek(self, count: int) -> np.ndarray:
        if self.pos + count > len(self.buf):
            self.buf = np.concatenate([self.buf[self.pos:], self._more(count)])
            self.pos = 0
        return self.buf[self.pos:self.pos + count]

    def advance(self, count: int) -> None:
        self.peek(count)
        self.pos += count

    def take(self, count: int) -> np.ndarray:
        out = self.peek(count)
        self.pos += count
        return out


def stream_for(table, seed: int) -> NoiseStream | None:
    """The table's step-noise stream for this seed; None when its serving calibration
    has none (older profiles, or the noise switched off: deterministic steps)."""
    sv = getattr(table, "serving", None)
    noise = sv.step_noise if sv is not None else None
    if noise is None:
        return None
    return NoiseStream(noise.quantiles, noise.lag1_autocorrelation, seed, noise.short_quantiles, noise.split_ms)
