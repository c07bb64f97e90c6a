"""Plug-in / Miller–Madow estimators and bootstrap helpers against their defining formulas."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from entropy_cliff import estimators
from entropy_cliff.errors import EntropyCliffError


def test_xlog2x_values():
    c = np.array([0, 1, 2, 8, 3])
    np.testing.assert_allclose(estimators.xlog2x(c), [0.0, 0.0, 2.0, 24.0, 3 * math.log2(3)], rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.integers(1, 40), elements=st.integers(0, 10_000)))
def test_plugin_entropy_matches_definition(counts):
    n = counts.sum()
    if n == 0:
        assert estimators.plugin_entropy(counts) == 0.0
        return
    p = counts[counts > 0] / n
    assert estimators.plugin_entropy(counts) == pytest.approx(float(-(p * np.log2(p)).sum()), abs=1e-9)


def test_plugin_entropy_uniform_and_rows():
    counts = np.array([[5, 5, 5, 5], [7, 0, 0, 0], [1, 1, 0, 2]])
    np.testing.assert_allclose(estimators.plugin_entropy(counts), [2.0, 0.0, 1.5], atol=1e-12)


def test_miller_madow_formula():
    h = np.array([0.0, 1.0, 3.5])
    bins = np.array([1, 2, 12])
    n = 50
    expect = h + (bins - 1) / (2 * n * math.log(2))
    np.testing.assert_allclose(estimators.miller_madow(h, bins, n), expect, rtol=0, atol=1e-15)
    assert estimators.miller_madow(np.array([0.0]), np.array([1]), 10)[0] == 0.0


def test_bootstrap_weights_are_a_reproducible_resample():
    w1 = estimators.bootstrap_weights(np.random.default_rng(5), 1000)
    w2 = estimators.bootstrap_weights(np.random.default_rng(5), 1000)
    w3 = estimators.bootstrap_weights(np.random.default_rng(6), 1000)
    assert w1.dtype == np.int64 and w1.shape == (1000,)
    assert w1.sum() == 1000 and w1.min() >= 0
    np.testing.assert_array_equal(w1, w2)
    assert not np.array_equal(w1, w3)
    # about 1 - 1/e of the rows are drawn at least once
    assert 0.58 < np.count_nonzero(w1) / 1000 < 0.69


def test_basic_interval_reflects_quantiles_about_the_estimate():
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(400, 3))
    est = np.array([0.0, 1.0, -2.0])
    ci = estimators.basic_interval(est, samples, 0.9)
    assert ci.shape == (3, 2)
    np.testing.assert_allclose(ci[:, 0], 2 * est - np.quantile(samples, 0.95, axis=0))
    np.testing.assert_allclose(ci[:, 1], 2 * est - np.quantile(samples, 0.05, axis=0))


def test_basic_interval_corrects_replicates_that_undershoot():
    # replicates biased low by 1 (as resampled plug-in entropies are): the percentile interval would
    # sit at 4; the basic interval moves the same distance the other way, to the bias-corrected 6
    samples = 4.0 + np.linspace(-0.1, 0.1, 101)[:, None]
    lo, hi = estimators.basic_interval(np.array([5.0]), samples, 0.95)[0]
    assert (lo + hi) / 2 == pytest.approx(6.0) and hi - lo == pytest.approx(0.19)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.1])
def test_basic_interval_rejects_bad_level(level):
    with pytest.raises(EntropyCliffError, match="confidence"):
        estimators.basic_interval(np.zeros(2), np.zeros((3, 2)), level)
