"""Exact prefix / conditional entropy against a brute-force np.unique reference (SPEC §1)."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entropy_cliff import measure as M
from entropy_cliff import theory
from entropy_cliff.errors import EntropyCliffError

DTYPES = [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint64]


def brute_prefix(X, weights=None):
    """H(X_{<=t}) and G_t from np.unique over the first t columns (rows repeated by weight)."""
    if weights is not None:
        X = np.repeat(X, weights, axis=0)
    N, L = X.shape
    H, G = [], []
    for t in range(1, L + 1):
        _, c = np.unique(X[:, :t], axis=0, return_counts=True)
        H.append(math.log2(N) - float((c * np.log2(c)).sum()) / N)
        G.append(c.size)
    return np.array(H), np.array(G)


def brute_marginal(X):
    out = []
    for t in range(X.shape[1]):
        _, c = np.unique(X[:, t], return_counts=True)
        p = c / X.shape[0]
        out.append(float(-(p * np.log2(p)).sum()))
    return np.array(out)


@st.composite
def corpora(draw, max_n=300, max_l=20):
    """Random corpora: many shapes and dtypes, small or large alphabets, duplicated rows,
    C or Fortran order, a non-contiguous view of a larger array, or negative strides."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    n = draw(st.integers(2, max_n))
    length = draw(st.integers(1, max_l))
    info = np.iinfo(dtype)
    alphabet = draw(st.sampled_from([1, 2, 3, 5, 50, int(min(info.max, 2**62))]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = rng.integers(0, alphabet, size=(n, length), dtype=np.uint64, endpoint=False).astype(dtype)
    n_dup = draw(st.integers(0, n - 1))
    if n_dup:  # overwrite some rows with copies of others (shared prefixes of every length)
        src = rng.integers(0, n, n_dup)
        dst = rng.integers(0, n, n_dup)
        cut = rng.integers(0, length + 1, n_dup)
        for s, d, c in zip(src, dst, cut):
            X[d, :c] = X[s, :c]
    layout = draw(st.sampled_from(["C", "F", "view", "reversed"]))
    if layout == "F":
        X = np.asfortranarray(X)
    elif layout == "view":
        big = np.zeros((2 * n, 2 * length), dtype=dtype)
        big[::2, 1::2] = X
        X = big[::2, 1::2]
    elif layout == "reversed":  # negative strides on both axes
        X = X[::-1, ::-1]
    return X


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(), st.sampled_from([0, 2, 3, M.SMALL_GROUP, 10_000]))
def test_prefix_entropy_matches_brute_force(X, small_group):
    H, G = M.prefix_entropy(X, small_group=small_group)
    H_ref, G_ref = brute_prefix(X)
    np.testing.assert_array_equal(G, G_ref)
    np.testing.assert_allclose(H, H_ref, rtol=0, atol=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(max_n=60, max_l=10), st.integers(0, 2**32 - 1), st.sampled_from([0, 3, 10_000]))
def test_weighted_kernel_equals_repeated_rows(X, seed, small_group):
    w = np.random.default_rng(seed).integers(0, 4, X.shape[0])
    w[0] = max(w[0], 1)
    H, G = M.prefix_entropy(X, weights=w, small_group=small_group)
    H_ref, G_ref = brute_prefix(X, w)
    np.testing.assert_array_equal(G, G_ref)
    np.testing.assert_allclose(H, H_ref, rtol=0, atol=1e-9)


def test_both_code_paths_agree_on_a_larger_corpus():
    """Column hashing only (0), contiguous finishing only (>= N) and the default hybrid agree."""
    rng = np.random.default_rng(7)
    base = rng.integers(0, 3, (400, 30)).astype(np.uint8)
    X = np.concatenate([base, base[:150], base[:40]])  # duplicated rows: no early exit
    X[::7, 12:] = 1  # long shared suffixes
    results = [M.prefix_entropy(X, small_group=s) for s in (0, 1, 4, M.SMALL_GROUP, X.shape[0])]
    H_ref, G_ref = brute_prefix(X)
    for H, G in results:
        np.testing.assert_array_equal(G, G_ref)
        np.testing.assert_allclose(H, H_ref, rtol=0, atol=1e-9)


def test_conditional_entropy_is_exactly_zero_once_prefixes_are_distinct():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 1000, (500, 12)).astype(np.uint16)
    m = M.measure(X)
    assert m.groups[2] == 500  # all distinct by t = 3
    assert np.all(m.H_cond[3:] == 0.0)
    assert np.all(m.H_prefix[2:] == math.log2(500))


def test_exact_under_colliding_packings_and_hashes():
    """Tokens that differ only in high bits (so multiplicative hashes and bit packings collide)."""
    hi = np.arange(64, dtype=np.uint64) << np.uint64(58)  # 64 keys differing only in the top 6 bits
    rng = np.random.default_rng(3)
    col1 = rng.choice(hi, 3000)
    col2 = rng.choice(np.array([0, 1 << 32, 1, (1 << 32) + 1], dtype=np.uint64), 3000)
    col3 = np.where(rng.random(3000) < 0.5, np.uint64(2**64 - 1), np.uint64(2**63))
    X = np.stack([col1, col2, col3], axis=1)
    for s in (0, M.SMALL_GROUP, 10_000):
        H, G = M.prefix_entropy(X, small_group=s)
        H_ref, G_ref = brute_prefix(X)
        np.testing.assert_array_equal(G, G_ref)
        np.testing.assert_allclose(H, H_ref, rtol=0, atol=1e-9)
    # a packing (x1 << 32) | x2 would merge (0, 2^32) with (1, 0); the exact kernel keeps them apart
    Y = np.array([[0, 1 << 32], [1, 0], [0, 1 << 32], [1, 0]], dtype=np.uint64)
    H, G = M.prefix_entropy(Y)
    np.testing.assert_array_equal(G, [2, 2])
    np.testing.assert_allclose(H, [1.0, 1.0])


def test_signed_and_byte_swapped_views_agree():
    rng = np.random.default_rng(4)
    X = rng.integers(-3, 3, (200, 8)).astype(np.int16)
    H_ref, G_ref = brute_prefix(X)
    for Y in (X, X.astype(">i2"), X.view(np.uint16)):
        H, G = M.prefix_entropy(Y)
        np.testing.assert_array_equal(G, G_ref)
        np.testing.assert_allclose(H, H_ref, rtol=0, atol=1e-9)


def test_memmap_input_equals_in_memory(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.integers(0, 4, (3000, 16)).astype(np.uint16)
    X[1000:2000] = X[:1000]
    np.save(tmp_path / "x.npy", X)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a, b = M.measure(X), M.measure(mm)
    for field in ("H_prefix", "H_cond", "H_cond_mm", "groups", "H_marginal", "utilization", "K"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_measure_fields_against_direct_formulas():
    rng = np.random.default_rng(6)
    X = rng.integers(0, 6, (700, 9)).astype(np.uint8)
    X[:, 4] = rng.integers(0, 2, 700)
    X[350:] = X[:350]
    K = [6, 6, 6, 6, 2, 8, 6, 6, 256]
    m = M.measure(X, K)
    H_ref, G_ref = brute_prefix(X)
    N = 700
    assert (m.N, m.L, m.K_inferred) == (N, 9, False)
    np.testing.assert_array_equal(m.K, K)
    np.testing.assert_allclose(m.H_prefix, H_ref, atol=1e-9)
    np.testing.assert_allclose(m.H_cond, np.diff(H_ref, prepend=0.0), atol=1e-9)
    np.testing.assert_array_equal(m.groups, G_ref)
    G_prev = np.concatenate(([1], G_ref[:-1]))
    mm = np.diff(H_ref, prepend=0.0) + (G_ref - G_prev) / (2 * N * math.log(2))
    np.testing.assert_allclose(m.H_cond_mm, mm, atol=1e-9)
    M_ref = brute_marginal(X)
    np.testing.assert_allclose(m.H_marginal, M_ref, atol=1e-9)
    np.testing.assert_allclose(m.utilization, M_ref / np.log2(K), atol=1e-9)
    assert m.log2_N == math.log2(N)
    assert m.ci is None


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_histograms_exact_across_threads_tiles_blocks_and_parts(monkeypatch, threads):
    """Small tiles, blocks and thread shares, so that every split is crossed: per-thread 16-bit tile
    counts (K_t <= tile rows) and direct counts (K_t > tile rows), a strided part (copied per block),
    a byte-swapped part, invalid tokens never counted; all equal np.unique counts."""
    monkeypatch.setattr(M.nb.config, "NUMBA_NUM_THREADS", threads)
    monkeypatch.setattr(M, "_MIN_THREAD_ROWS", 50)
    monkeypatch.setattr(M, "_MAX_TILE_ROWS", 97)
    monkeypatch.setattr(M, "_BLOCK_BYTES", 97 * 3 * 5 * 2)
    rng = np.random.default_rng(11)
    K = np.array([1, 2, 90, 97, 98, 3000, 40000], dtype=np.int64)  # 40000 > 2^15: signed tokens need care
    X = np.stack([rng.integers(0, min(k, 1 << 15), 1201) for k in K], axis=1).astype(np.int16)
    X[::7, 2] = X[0, 2]  # a frequent token
    parts = [X[:400], np.asfortranarray(X[400:700]), X[700:1100].astype(">i2"), X[1100:]]
    counts = M._histograms(parts, K, False)
    ref = np.concatenate([np.bincount(X[:, t], minlength=k) for t, k in enumerate(K)])
    np.testing.assert_array_equal(counts, ref)
    monkeypatch.setattr(M, "_MARGINAL_CHUNK", 95)  # runs of positions, and positions wider than a run
    np.testing.assert_allclose(M._marginal_from_counts(len(X), K, counts), brute_marginal(X), atol=1e-9)
    Y = X.copy()
    Y[5, 3] = -1
    Y[6, 4] = 98  # == K_t
    Y[7, 6] = -30000  # its bits, read unsigned, would lie below K_t = 40000
    got = M._histograms([Y], K, False)
    ref[K[:3].sum() + X[5, 3]] -= 1
    ref[K[:4].sum() + X[6, 4]] -= 1
    ref[K[:6].sum() + X[7, 6]] -= 1
    np.testing.assert_array_equal(got, ref)


def test_inferred_K_and_sparse_marginal_fallback():
    rng = np.random.default_rng(8)
    X = rng.integers(0, 5, (300, 4)).astype(np.uint64)
    X[:, 2] *= np.uint64(1 << 40)  # inferred K would need a 2^42-bin histogram: per-column path
    m = M.measure(X)
    assert m.K_inferred
    np.testing.assert_array_equal(m.K, np.full(4, int(X.max()) + 1))
    np.testing.assert_allclose(m.H_marginal, brute_marginal(X), atol=1e-9)
    small = M.measure(X[:, [0, 1, 3]])
    np.testing.assert_array_equal(small.K, np.full(3, int(X[:, [0, 1, 3]].max()) + 1))
    np.testing.assert_allclose(small.H_marginal, brute_marginal(X[:, [0, 1, 3]]), atol=1e-9)


def test_codebook_of_one_has_undefined_utilization():
    X = np.zeros((10, 2), dtype=np.uint8)
    X[:5, 1] = 1
    m = M.measure(X, [1, 2])
    assert np.isnan(m.utilization[0]) and m.utilization[1] == pytest.approx(1.0)


def test_t_star_on_a_constructed_corpus():
    # N = 64: position 1 takes 8 values (8 rows each), position 2 splits each into 8 -> all distinct
    a = np.repeat(np.arange(8), 8)
    b = np.tile(np.arange(8), 8)
    X = np.stack([a, b, np.zeros(64, int)], axis=1).astype(np.uint8)
    m = M.measure(X)
    np.testing.assert_allclose(m.H_cond, [3.0, 3.0, 0.0], atol=1e-12)
    assert m.t_star_budget() == 2  # log2 64 - H(X_{<=2}) = 0
    assert m.t_star_budget(delta=3.0) == 1
    assert m.t_star_threshold() == 3
    assert m.t_star_threshold(epsilon=3.5) == 1
    m2 = M.measure(X[:, :2])
    assert m2.t_star_threshold() is None
    dup = M.measure(np.zeros((16, 3), dtype=np.uint8))  # one prefix: budget never spent
    assert dup.t_star_budget() is None and dup.t_star_threshold() == 1


def test_t_star_sustained_ignores_an_early_low_entropy_position():
    # position 1 is constant (H_1 = 0, as a VCQ K_1 = 2 code can be), positions 2-3 carry 3 bits each
    X = np.stack([np.zeros(64, int), np.repeat(np.arange(8), 8), np.tile(np.arange(8), 8),
                         np.zeros(64, int)], axis=1).astype(np.uint8)
    m = M.measure(X)
    np.testing.assert_allclose(m.H_cond, [0.0, 3.0, 3.0, 0.0], atol=1e-12)
    assert m.t_star_threshold() == 1
    assert m.t_star_sustained() == 4
    assert m.t_star_sustained(epsilon=3.5) == 1
    assert M.measure(X[:, :3]).t_star_sustained() is None


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_negative_token_raises_with_position(dtype):
    X = np.ones((20, 5), dtype=dtype)
    X[7, 2] = -3
    with pytest.raises(EntropyCliffError, match=r"position 3: negative token -3"):
        M.measure(X)
    with pytest.raises(EntropyCliffError, match=r"position 3: negative token -3 \(K_t = 4\)"):
        M.measure(X, [4] * 5)


def test_negative_token_under_a_codebook_wider_than_the_sign_bit_raises():
    """int16 tokens with K_t = 40000 > 2^15: a negative token's bits would fit below K_t."""
    X = np.ones((20, 5), dtype=np.int16)
    X[7, 2] = -30000
    with pytest.raises(EntropyCliffError, match=r"position 3: negative token -30000 \(K_t = 40000\)"):
        M.measure(X, [40000] * 5)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint64])
def test_token_beyond_codebook_raises_with_position(dtype):
    X = np.ones((20, 4), dtype=dtype)
    X[3, 1] = 9
    with pytest.raises(EntropyCliffError, match=r"position 2: token 9 >= K_t = 9"):
        M.measure(X, [16, 9, 16, 16])
    X[3, 1] = 1
    X[5, 3] = 2
    with pytest.raises(EntropyCliffError, match=r"position 4: token 2 >= K_t = 2"):
        M.measure(X, [16, 9, 16, 2])
    M.measure(X, [16, 9, 16, 3])


def test_bad_K_and_arguments_raise():
    X = np.zeros((4, 3), dtype=np.uint8)
    with pytest.raises(EntropyCliffError, match="L = 3"):
        M.measure(X, [2, 2])
    with pytest.raises(EntropyCliffError, match="positive"):
        M.measure(X, [2, 0, 2])
    with pytest.raises(EntropyCliffError, match="bootstrap"):
        M.measure(X, bootstrap=-1)
    with pytest.raises(EntropyCliffError, match="confidence"):
        M.measure(X, bootstrap=5, confidence=1.2)
    with pytest.raises(EntropyCliffError, match="weights"):
        M.prefix_entropy(X, weights=np.array([1, -1, 1, 1]))
    with pytest.raises(EntropyCliffError, match="zero"):
        M.prefix_entropy(X, weights=np.zeros(4, int))


def test_bootstrap_interval_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(9)
    cols = [rng.choice(4, 4000, p=[0.5, 0.25, 0.15, 0.1]), rng.choice(2, 4000, p=[0.7, 0.3]),
            rng.choice(3, 4000, p=[0.6, 0.3, 0.1])]
    X = np.stack(cols, axis=1).astype(np.uint8)  # skewed, so the estimate is not at a boundary
    m1 = M.measure(X, bootstrap=40, seed=1)
    m2 = M.measure(X, bootstrap=40, seed=1)
    m3 = M.measure(X, bootstrap=40, seed=2)
    pop = m1.population
    assert m1.ci.shape == (3, 2) and pop.reason == ("ok",) * 3
    np.testing.assert_array_equal(m1.ci, m2.ci)
    assert not np.array_equal(m1.ci, m3.ci)
    assert np.all(m1.ci[:, 0] <= pop.H_cond_pop) and np.all(pop.H_cond_pop <= m1.ci[:, 1])
    np.testing.assert_allclose(pop.H_cond_pop, m1.H_cond, atol=0.01)  # 4000 rows over <= 24 prefixes
    assert np.all(m1.ci[:, 1] - m1.ci[:, 0] < 0.1)


def test_progress_bar_goes_to_stderr(capsys):
    X = np.random.default_rng(10).integers(0, 3, (100, 6)).astype(np.uint8)
    quiet = M.measure(X, progress=False)
    loud = M.measure(X, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "prefix entropy" in captured.err and "scan" in captured.err
    np.testing.assert_array_equal(quiet.H_prefix, loud.H_prefix)


@pytest.mark.parametrize("bad", [np.zeros((3, 2), np.float32), np.zeros(5, np.uint8), np.zeros((0, 3), np.uint8),
                                 np.zeros((3, 2), bool)])
def test_non_integer_or_empty_input_raises(bad):
    with pytest.raises(EntropyCliffError, match="integer token array"):
        M.measure(bad)
    with pytest.raises(EntropyCliffError, match="integer token array"):
        M.prefix_entropy(bad)


@given(st.lists(st.sampled_from([0.0, 0.2, 0.49, 0.5, 0.7, 3.0]), min_size=1, max_size=12),
       st.sampled_from([0.1, 0.5, 1.0]))
def test_t_star_rules_on_a_bare_H_list(H, eps):
    """The two empirical t* rules against their definitions, brute force over t."""
    L = len(H)
    threshold = next((t for t in range(1, L + 1) if H[t - 1] < eps), None)
    sustained = next((t for t in range(1, L + 1) if all(h < eps for h in H[t - 1:])), None)
    assert theory.t_star_threshold(H, eps) == threshold
    assert theory.t_star_sustained(H, eps) == sustained


def test_t_star_rules_examples():
    assert theory.t_star_sustained([3, 0.1, 2, 0.4, 0.1]) == 4 and theory.t_star_threshold([3, 0.1, 2, 0.4, 0.1]) == 2
    assert theory.t_star_sustained([0.1, 0.2]) == 1
    assert theory.t_star_sustained([1, 1]) is None and theory.t_star_threshold([1, 1]) is None
