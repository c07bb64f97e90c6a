"""Population H_t estimate and intervals: formulas against brute force, the reporting rule, and
seeded coverage against sources whose true H_t is known."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import digamma

from entropy_cliff import coverage
from entropy_cliff import population as P
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.measure import measure, prefix_entropy


def brute(X):
    """Per prefix length t = 0..L: the multiplicities of the distinct length-t prefixes."""
    N, L = X.shape
    return [np.unique(X[:, :t], axis=0, return_counts=True)[1] if t else np.array([N]) for t in range(L + 1)]


def test_grassberger_g_matches_digamma():
    for n in (1, 2, 7, 400):
        c = np.arange(1, n + 1, dtype=float)
        ref = digamma(c) + 0.5 * (-1.0) ** c * (digamma((c + 1) / 2) - digamma(c / 2))
        np.testing.assert_allclose(P.grassberger_g(n)[1:], ref, rtol=0, atol=1e-12)
    assert P.grassberger_g(3)[0] == 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 60), st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_estimate_and_singleton_mass_match_brute_force(N, L, k, seed):
    X = np.random.default_rng(seed).integers(0, k + 1, size=(N, L))
    H_prefix, G = prefix_entropy(X)
    H = np.diff(H_prefix, prepend=0.0)
    pop = P.population_entropy(X, H, G, np.full(L, 64), max_singleton_mass=1.0)  # K large: no clipping
    counts = brute(X)
    g = P.grassberger_g(N)
    A = np.array([(c * g[c]).sum() for c in counts])
    np.testing.assert_allclose(pop.H_cond_pop, (A[:-1] - A[1:]) / (N * math.log(2)), atol=1e-9)
    np.testing.assert_allclose(pop.singleton_mass, [(c == 1).sum() / N for c in counts[1:]])
    assert pop.ci is None and set(pop.reason) == {P.NO_BOOTSTRAP}


def test_grassberger_g_beyond_the_table_matches_digamma():
    c = np.array([P.G_TABLE - 1, P.G_TABLE, P.G_TABLE + 1, P.G_TABLE + 2, 10**6 + 1, 10**9, 2**40])
    ref = digamma(c) + 0.5 * (-1.0) ** c * (digamma((c + 1) / 2) - digamma(c / 2))
    got = [P.group_sums(np.array([[x]], np.int64), P.g_table())[0] / x for x in c]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_poisson_weights_are_keyed_by_seed_replicate_and_row():
    rows = np.arange(200_000)
    w = P.poisson_weights(P.as_seed(3), 3, rows)
    pmf = np.bincount(w.ravel(), minlength=4)[:4] / w.size
    np.testing.assert_allclose(pmf, [math.exp(-1) / math.factorial(k) for k in range(4)], atol=3e-3)
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.01)
    assert abs(np.corrcoef(w[:, 0], w[:, 1])[0, 1]) < 0.01  # replicates independent
    some = np.array([199_999, 5, 77_777])
    np.testing.assert_array_equal(P.poisson_weights(P.as_seed(3), 3, some), w[some])  # any subset, any order
    assert not np.array_equal(P.poisson_weights(P.as_seed(4), 3, rows), w)
    assert P.as_seed(-1) == np.uint64(2**64 - 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_replicate_sums_match_brute_force_on_weighted_counts(N, L, k, B, seed):
    X = np.random.default_rng(seed).integers(0, k + 1, size=(N, L))
    cut = N // 3
    A, f1, W = P.prefix_group_sums([X[:cut], X[cut:]] if cut else [X], np.arange(N), L, B, seed)
    w = P.poisson_weights(P.as_seed(seed), B, np.arange(N))
    for r in range(B + 1):
        wr = np.ones(N, np.int64) if r == 0 else w[:, r - 1]
        assert W[r] == wr.sum()
        for t in range(L + 1):
            keys = np.unique(X[:, :t], axis=0, return_inverse=True)[1].ravel() if t else np.zeros(N, np.int64)
            C = np.bincount(keys, weights=wr).astype(np.int64)
            np.testing.assert_allclose(A[r, t], (C * P.grassberger_g(max(C.max(), 1))[C]).sum(), rtol=1e-12)
            if r == 0:
                assert f1[t] == (C == 1).sum()


@settings(max_examples=40, deadline=None)
@given(st.integers(20, 300), st.integers(1, 6), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_every_well_sampled_position_is_reported_and_sparse_ones_are_not(N, L, k, seed):
    X = np.random.default_rng(seed).integers(0, k + 1, size=(N, L))
    m = measure(X, np.full(L, k + 1), bootstrap=5, seed=seed)
    pop = m.population
    for i in range(L):
        if m.groups[i] < N / 10:
            assert pop.reason[i] == P.OK and np.isfinite(m.ci[i]).all()
            assert 0 <= m.ci[i, 0] <= m.ci[i, 1] <= math.log2(k + 1)
            assert 0 <= pop.H_cond_pop[i] <= math.log2(k + 1)
        sparse = pop.singleton_mass[i] > P.MAX_SINGLETON_MASS
        assert (pop.reason[i] == P.SPARSE) == sparse
        assert np.isnan(pop.H_cond_pop[i]) == sparse and np.isnan(m.ci[i]).all() == sparse
        assert (pop.note(i) is not None) == sparse


def test_distinct_rows_are_not_identifiable():
    X = np.arange(40).reshape(20, 2)  # every prefix distinct from t = 1 on
    m = measure(X, bootstrap=10)
    assert m.population.reason == (P.SPARSE, P.SPARSE)
    assert np.isnan(m.population.H_cond_pop).all() and np.isnan(m.ci).all()
    assert "100% of rows have a length-1 prefix seen once" in m.population.note(0)
    assert (m.H_cond == [math.log2(20), 0.0]).all()  # the plug-in stays exact


def test_bad_arguments():
    X = np.zeros((4, 2), np.int64)
    with pytest.raises(EntropyCliffError, match="max_singleton_mass"):
        P.population_entropy(X, np.zeros(2), np.ones(2), np.full(2, 2), max_singleton_mass=1.5)
    with pytest.raises(EntropyCliffError, match="confidence"):
        P.population_entropy(X, np.zeros(2), np.ones(2), np.full(2, 2), bootstrap=3, confidence=0)


GRID = [
    (coverage.iid([0.5, 0.25, 0.125, 0.125], 7, name="iid K=4 skewed"), 1000),
    (coverage.markov([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]], 9), 1000),
    (coverage.finite_population(coverage.iid(np.ones(8), 5), 2000), 1000),  # population cliff past the sample's
]


@pytest.mark.parametrize("source,N", GRID, ids=[s.name for s, _ in GRID])
def test_intervals_cover_the_true_entropy_where_reported(source, N):
    r = coverage.simulate(source, N, reps=60, bootstrap=40, seed=3)
    reported = r.reported > 0
    assert np.all(r.cover_pop[reported] >= 0.855), r.cover_pop
    assert np.all(r.reported[r.well_sampled > 0] == 1.0)  # well-sampled: reported in every corpus
    assert reported.sum() >= 3
    assert not reported.all()  # each source's tail is beyond what N rows identify


def test_figure_draws_population_band_and_marks_unidentifiable_positions():
    from entropy_cliff.plots import EntropyCurve, entropy_figure

    X = np.random.default_rng(1).integers(0, 4, size=(300, 6))
    m = measure(X, np.full(6, 4), bootstrap=10)
    first = int(np.flatnonzero(np.isnan(m.population.H_cond_pop))[0]) + 1
    curve = EntropyCurve("c", m.H_cond, np.zeros(6), np.full(6, 2.0), ci=m.ci, H_pop=m.population.H_cond_pop)
    ax = entropy_figure([curve]).axes[0]
    pop = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-."]
    assert len(pop) == 1 and np.array_equal(pop[0].get_ydata(), m.population.H_cond_pop, equal_nan=True)
    hatched = [p for p in ax.patches if p.get_hatch() == "//"]
    span = hatched[0].get_patch_transform().transform(hatched[0].get_path().vertices)[:, 0]
    assert len(hatched) == 1 and span.min() == first - 0.5 and span.max() == 6.5
    style = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "population H_t estimate (--bootstrap)" in style and "population not identifiable" in style
