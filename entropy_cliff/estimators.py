"""Entropy estimators from counts: plug-in, Miller–Madow, basic bootstrap intervals.

All entropies are in bits. The per-position quantities of the paper (§2.1, Fig. 2a) are built from
these in :mod:`entropy_cliff.measure`; the functions here are small, pure and vectorised.
"""

from __future__ import annotations

import math

import numpy as np

from entropy_cliff.errors import EntropyCliffError


def xlog2x(c: np.ndarray) -> np.ndarray:
    """Elementwise ``c log2 c`` with ``0 log2 0 = 0`` (``c >= 0``)."""
    c = np.asarray(c, dtype=np.float64)
    return c * np.log2(np.where(c > 0, c, 1.0))


def plugin_entropy(counts: np.ndarray, axis: int = -1) -> np.ndarray:
    """Plug-in (maximum-likelihood) entropy of the empirical distribution given by ``counts``.

    ``H = -sum_i (c_i / n) log2 (c_i / n) = log2 n - (1 / n) sum_i c_i log2 c_i``, ``n = sum_i c_i``.
    Zero counts contribute nothing. Reduces over ``axis``.
    """
    counts = np.asarray(counts)
    n = counts.sum(axis=axis, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = np.log2(n) - xlog2x(counts).sum(axis=axis) / n
    return np.where(n > 0, h, 0.0)


def miller_madow(h: np.ndarray, bins: np.ndarray, n: int) -> np.ndarray:
    """Miller–Madow bias correction of a plug-in entropy: ``H + (m - 1) / (2 n ln 2)`` bits.

    ``m`` (``bins``) is the number of distinct outcomes seen in ``n`` samples. Applied to the
    prefix entropies ``H(X_{<=t})`` with ``m = G_t`` and differenced, it gives the corrected
    corrected conditional entropy (docs/formulas.md): ``H_t^MM = H_t + (G_t - G_{t-1}) / (2 N ln 2)``, ``G_0 = 1``.
    """
    return np.asarray(h, dtype=np.float64) + (np.asarray(bins, dtype=np.float64) - 1.0) / (2.0 * n * math.log(2.0))


def bootstrap_weights(rng: np.random.Generator, n: int) -> np.ndarray:
    """Row multiplicities of one bootstrap resample: ``Multinomial(n; 1/n, ..., 1/n)`` as int64.

    Drawing ``n`` row indices uniformly with replacement and counting them is exactly this
    multinomial; a weighted statistic with these weights equals the statistic of the resample.
    """
    return np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.int64, copy=False)


def basic_interval(estimate: np.ndarray, samples: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Basic (reverse-percentile) bootstrap interval ``[2 theta - q_hi, 2 theta - q_lo]``.

    ``q_lo``, ``q_hi`` are the ``(1 - c) / 2`` and ``(1 + c) / 2`` quantiles of the replicates
    (``samples``, replicates on axis 0) and ``theta`` is the estimate on the full data. Plug-in
    entropy is biased low, and a resample holds only about 63 % of the distinct rows, so near the
    entropy cliff the replicates sit well below the estimate: the plain percentile interval can then
    exclude the estimate altogether, while the basic interval reflects that bias back (first-order
    bias correction), so it lies near the Miller–Madow value. That correction is far too small
    where prefixes are rare: as an interval for the source's entropy it covers 0–37 % there (see
    ``docs/uncertainty.md``; :mod:`entropy_cliff.population` gives intervals that hold). Kept for
    that comparison. The result has shape ``samples.shape[1:] + (2,)``.
    """
    if not 0.0 < confidence < 1.0:
        raise EntropyCliffError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    lo, hi = np.quantile(np.asarray(samples, dtype=np.float64), [(1 - confidence) / 2, (1 + confidence) / 2], axis=0)
    est = np.asarray(estimate, dtype=np.float64)
    return np.stack([2 * est - hi, 2 * est - lo], axis=-1)
