"""Nested-prefix FAISS assignment against a brute-force argmin."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_cliff.assign import brute_force_assign, gpu_available, nested_assign
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule


def _gap(features, codebook, K):
    """Distance gap between the best and second-best allowed code per (n, t) (inf when K_t = 1)."""
    f, e = features.astype(np.float64), codebook.astype(np.float64)
    d = ((f[:, :, None, :] - e[None, None]) ** 2).sum(-1)
    d[:, np.arange(e.shape[0])[None, :] >= np.asarray(K)[:, None]] = np.inf
    d = np.sort(np.concatenate([d, np.full(d.shape[:2] + (1,), np.inf)], -1), -1)
    return d[..., 1] - d[..., 0], d[..., 0]


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["constant", "linear", "cosine", "power"]), st.integers(1, 64), st.integers(1, 10),
       st.integers(1, 16), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_faiss_equals_brute_force(kind, kmax, length, dim, n, seed):
    rng = np.random.default_rng(seed)
    K = Schedule(kind, min(2, kmax), kmax, length, 2.5).K
    feats = rng.standard_normal((n, length, dim)).astype(np.float32)
    code = rng.standard_normal((kmax + int(rng.integers(0, 5)), dim)).astype(np.float32)
    got = nested_assign(feats, code, K, use_gpu=False, batch_size=int(rng.integers(1, 200)), threads=1)
    ref = brute_force_assign(feats, code, K)
    assert got.dtype == np.int64 and got.shape == (n, length)
    assert (got >= 0).all() and (got < K[None, :]).all()
    gap, best = _gap(feats, code, K)
    clear = gap > 1e-4 * (1 + best)  # float32 (FAISS) and float64 may differ only on near-ties
    np.testing.assert_array_equal(got[clear], ref[clear])
    d_got = ((feats.astype(np.float64) - code.astype(np.float64)[got]) ** 2).sum(-1)
    np.testing.assert_allclose(d_got, best, rtol=1e-4, atol=1e-4)


def test_every_position_group_and_batch_split_agree():
    """Many distinct K_t (cosine, L = 64), tiny batches crossing sequence boundaries."""
    rng = np.random.default_rng(0)
    K = Schedule("cosine", 2, 512, 64).K
    feats = rng.standard_normal((300, 64, 8)).astype(np.float32)
    code = rng.standard_normal((512, 8)).astype(np.float32)
    a = nested_assign(feats, code, K, use_gpu=False)
    b = nested_assign(feats, code, K, use_gpu=False, batch_size=64 * 25 + 7, threads=1)
    np.testing.assert_array_equal(a, b)
    gap, _ = _gap(feats[:50], code, K)
    ref = brute_force_assign(feats[:50], code, K)
    np.testing.assert_array_equal(a[:50][gap > 1e-4], ref[gap > 1e-4])
    for t in range(64):
        assert a[:, t].max() < K[t]
    assert a[:, -1].max() > 256  # the last position really reaches into the full codebook


def test_integer_and_memmap_features(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.integers(-50, 50, (20, 3, 4)).astype(np.int32)
    code = rng.integers(-50, 50, (16, 4)).astype(np.float64)
    np.save(tmp_path / "f.npy", feats.astype(np.float32))
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    K = [4, 8, 16]
    gap, _ = _gap(feats, code, K)
    got = nested_assign(mm, code, K, use_gpu=False)
    np.testing.assert_array_equal(got[gap > 0], brute_force_assign(feats, code, K)[gap > 0])
    np.testing.assert_array_equal(got, nested_assign(feats, code, K, use_gpu=False))


def test_threads_setting_is_restored():
    import faiss

    before = faiss.omp_get_max_threads()
    rng = np.random.default_rng(3)
    f, e = rng.standard_normal((5, 2, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_array_equal(nested_assign(f, e, [2, 4], threads=1), nested_assign(f, e, [2, 4]))
    assert faiss.omp_get_max_threads() == before


def test_bad_input():
    f = np.zeros((2, 3, 4), np.float32)
    e = np.zeros((8, 4), np.float32)
    with pytest.raises(EntropyCliffError, match=r"\[1, 8\]"):
        nested_assign(f, e, [2, 4, 9])
    with pytest.raises(EntropyCliffError, match="3 positions"):
        nested_assign(f, e, [2, 4])
    with pytest.raises(EntropyCliffError, match="width"):
        nested_assign(f, np.zeros((8, 5)), [2, 4, 8])
    with pytest.raises(EntropyCliffError, match=r"\(N, L, d\)"):
        nested_assign(f[0], e, [2, 4, 8])
    bad = f.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(EntropyCliffError, match="NaN"):
        nested_assign(bad, e, [2, 4, 8])
    with pytest.raises(EntropyCliffError, match="empty"):
        nested_assign(np.zeros((0, 3, 4)), e, [2, 4, 8])


@pytest.mark.skipif(gpu_available(), reason="a FAISS GPU is present")
def test_gpu_request_without_gpu_is_an_error():
    with pytest.raises(EntropyCliffError, match="GPU"):
        nested_assign(np.zeros((2, 1, 2), np.float32), np.zeros((2, 2), np.float32), [2], use_gpu=True)


@pytest.mark.skipif(not gpu_available(), reason="needs faiss-gpu and a GPU")
def test_gpu_index_equals_cpu_index():
    rng = np.random.default_rng(2)
    K = Schedule("cosine", 2, 4096, 32).K
    feats = rng.standard_normal((2000, 32, 16)).astype(np.float32)
    code = rng.standard_normal((4096, 16)).astype(np.float32)
    gpu = nested_assign(feats, code, K, use_gpu=True)
    assert (gpu < K[None, :]).all()  # slicing, not an ID selector (ignored by GPU flat indexes)
    cpu = nested_assign(feats, code, K, use_gpu=False)
    assert (gpu == cpu).mean() > 0.9999


def test_missing_faiss_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(EntropyCliffError, match="pip install faiss-cpu"):
        nested_assign(np.zeros((2, 1, 2), np.float32), np.zeros((2, 2), np.float32), [2])


def test_assign_module_does_not_import_torch():
    import subprocess

    code = "import sys, entropy_cliff.assign as a; a.nested_assign; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
