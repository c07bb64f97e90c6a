"""Sources with known per-position entropy, and a coverage simulation of the population intervals.

Each :class:`Source` draws (N, L) corpora and knows its true ``H_t = H(X_t | X_<t)`` (bits):

- i.i.d. tokens with probabilities ``p``: ``H_t = -sum_k p_k log2 p_k`` at every t;
- a Markov chain (transition matrix P, start distribution pi_1): ``H_1 = H(pi_1)``,
  ``H_t = sum_i pi_{t-1}(i) H(P_i)``, ``pi_t = pi_{t-1} P``;
- Zipf-like i.i.d. tokens, ``p_k ∝ k^(-a)``;
- a finite population of M sequences sampled with replacement: ``H_t`` is the plug-in conditional
  entropy of the population itself (exact kernel), which falls off a cliff near ``log2 M`` bits.

:func:`simulate` draws ``reps`` corpora, measures each, and returns per position the mean of
every estimator and how often each interval covered the truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from entropy_cliff import estimators
from entropy_cliff.measure import prefix_entropy
from entropy_cliff.population import population_entropy


@dataclass(frozen=True)
class Source:
    """A named token source: ``draw(rng, N)`` gives an (N, L) corpus; ``H_true`` its H_t; ``K`` its K_t."""

    name: str
    draw: Callable[[np.random.Generator, int], np.ndarray]
    H_true: np.ndarray
    K: np.ndarray


def _entropy(p: np.ndarray) -> float:
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def iid(p, L: int, name: str | None = None) -> Source:
    """Independent tokens with probabilities ``p`` at every position."""
    p = np.asarray(p, dtype=np.float64) / np.sum(p)
    K = p.size
    return Source(name or f"iid K={K}", lambda rng, N: rng.choice(K, size=(N, L), p=p).astype(np.int32),
                  np.full(L, _entropy(p)), np.full(L, K, np.int64))


def zipf(K: int, a: float, L: int) -> Source:
    """I.i.d. Zipf-like tokens, ``p_k ∝ k^(-a)``, k = 1..K."""
    return iid(np.arange(1, K + 1, dtype=np.float64) ** -a, L, name=f"zipf K={K} a={a:g}")


def markov(P, L: int, pi1=None, name: str | None = None) -> Source:
    """A Markov chain with row-stochastic ``P``, started from ``pi1`` (default: stationary)."""
    P = np.asarray(P, dtype=np.float64)
    K = P.shape[0]
    if pi1 is None:
        vals, vecs = np.linalg.eig(P.T)
        pi1 = np.real(vecs[:, np.argmin(np.abs(vals - 1))])
    pi = np.asarray(pi1, dtype=np.float64) / np.sum(pi1)
    row_H = np.array([_entropy(r) for r in P])
    H = [_entropy(pi)]
    marg = pi
    for _ in range(L - 1):
        H.append(float(marg @ row_H))
        marg = marg @ P
    cum = np.cumsum(P, axis=1)
    start = np.cumsum(pi)

    def draw(rng, N):
        X = np.empty((N, L), np.int32)
        X[:, 0] = np.minimum(np.searchsorted(start, rng.random(N), side="right"), K - 1)
        for t in range(1, L):
            X[:, t] = np.minimum((rng.random(N)[:, None] >= cum[X[:, t - 1]]).sum(axis=1), K - 1)
        return X

    return Source(name or f"markov K={K}", draw, np.array(H), np.full(L, K, np.int64))


def finite_population(base: Source, M: int, seed: int = 0) -> Source:
    """M sequences drawn once from ``base``; corpora then sample them uniformly with replacement."""
    Y = base.draw(np.random.default_rng(seed), M)
    H_prefix, _ = prefix_entropy(Y)
    return Source(f"population M={M} of {base.name}", lambda rng, N: Y[rng.integers(0, M, size=N)],
                  np.diff(H_prefix, prepend=0.0), base.K)


@dataclass(frozen=True)
class Coverage:
    """Per-position simulation results (arrays indexed by t - 1).

    ``mean_*``: mean estimate over the corpora (NaN where never reported); ``cover_pop``: fraction of
    reported population intervals containing the truth; ``reported``: fraction of corpora in which
    one was reported; ``cover_basic``: the same for the old basic bootstrap interval of the
    plug-in (None when not simulated); ``sparse_rows``: mean fraction of rows in once-seen prefixes;
    ``well_sampled``: fraction of corpora with fewer than N / 10 distinct length-t prefixes.
    """

    source: Source
    N: int
    reps: int
    mean_plugin: np.ndarray
    mean_mm: np.ndarray
    mean_pop: np.ndarray
    cover_pop: np.ndarray
    reported: np.ndarray
    cover_basic: np.ndarray | None
    sparse_rows: np.ndarray
    well_sampled: np.ndarray


def simulate(source: Source, N: int, reps: int, bootstrap: int, seed: int = 0, confidence: float = 0.95,
             basic: bool = False) -> Coverage:
    """Draw ``reps`` corpora of N rows from ``source`` and score estimators and intervals against
    ``source.H_true``; ``basic=True`` also scores the old basic interval (B exact-kernel reruns)."""
    rng = np.random.default_rng(seed)
    L = source.H_true.size
    truth = source.H_true
    sums = {k: np.zeros(L) for k in ("plugin", "mm", "pop")}
    n_pop = np.zeros(L)
    hit_pop = np.zeros(L)
    hit_basic = np.zeros(L)
    sparse = np.zeros(L)
    well = np.zeros(L)
    for _ in range(reps):
        X = source.draw(rng, N)
        H_prefix, G = prefix_entropy(X)
        H = np.diff(H_prefix, prepend=0.0)
        sums["plugin"] += H
        sums["mm"] += np.diff(estimators.miller_madow(H_prefix, G, N), prepend=0.0)
        well += G < N / 10
        pop = population_entropy(X, H, G, source.K, bootstrap=bootstrap, confidence=confidence,
                                 seed=int(rng.integers(2**63)))
        ok = np.isfinite(pop.H_cond_pop)
        n_pop += ok
        sums["pop"] += np.where(ok, pop.H_cond_pop, 0.0)
        hit_pop += ok & (pop.ci[:, 0] <= truth) & (truth <= pop.ci[:, 1])
        sparse += pop.singleton_mass
        if basic:
            reps_b = np.empty((bootstrap, L))
            for b in range(bootstrap):
                reps_b[b] = np.diff(prefix_entropy(X, estimators.bootstrap_weights(rng, N))[0], prepend=0.0)
            ci = estimators.basic_interval(H, reps_b, confidence)
            hit_basic += (ci[:, 0] <= truth) & (truth <= ci[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return Coverage(source=source, N=N, reps=reps, mean_plugin=sums["plugin"] / reps, mean_mm=sums["mm"] / reps,
                        mean_pop=sums["pop"] / n_pop, cover_pop=hit_pop / n_pop, reported=n_pop / reps,
                        cover_basic=hit_basic / reps if basic else None, sparse_rows=sparse / reps,
                        well_sampled=well / reps)


def standard_sources(L: int = 8) -> list[Source]:
    """The validation grid: i.i.d. (several alphabets and skews), Markov, Zipf, finite populations."""
    skew4 = iid([0.5, 0.25, 0.125, 0.125], L, name="iid K=4 skewed")
    chain = markov([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]], L, name="markov K=3")
    return [
        skew4,
        iid(np.ones(16), L, name="iid K=16 uniform"),
        iid(np.r_[0.9, np.full(9, 0.1 / 9)], L, name="iid K=10 skewed"),
        chain,
        zipf(256, 1.1, L),
        finite_population(iid(np.ones(16), L), 300),
        finite_population(zipf(64, 1.0, L), 20000),
    ]


def format_table(results: list[Coverage]) -> str:
    """One block per source: t, truth, mean plug-in / MM / pop, coverage of each interval."""
    lines = []
    for r in results:
        lines.append(f"\n{r.source.name}, N = {r.N}, {r.reps} corpora")
        lines.append("  t   H_true  plug-in       MM      pop  cov pop  reported  cov basic  sparse  well")
        for i in range(r.source.H_true.size):
            cb = "-" if r.cover_basic is None else f"{r.cover_basic[i]:.2f}"
            mp = "-" if not math.isfinite(r.mean_pop[i]) else f"{r.mean_pop[i]:.3f}"
            cp = "-" if not math.isfinite(r.cover_pop[i]) else f"{r.cover_pop[i]:.2f}"
            lines.append(f"{i + 1:3d}  {r.source.H_true[i]:7.3f}  {r.mean_plugin[i]:7.3f}  {r.mean_mm[i]:7.3f}  "
                         f"{mp:>7}  {cp:>7}  {r.reported[i]:8.2f}  {cb:>9}  {r.sparse_rows[i]:6.3f}  "
                         f"{r.well_sampled[i]:4.2f}")
    return "\n".join(lines)
