"""Nested-prefix FAISS assignment against a brute-force argmin."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_cliff.assign import brute_force_assign, distance_error_bound, gpu_available, nested_assign
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule


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
    np.testing.assert_array_equal(got, ref)  # exact, near-ties included


def test_every_position_group_and_batch_split_agree():
    """Many distinct K_t (cosine, L = 64), tiny batches crossing sequence boundaries."""
    rng = np.random.default_rng(0)
    K = Schedule("cosine", 2, 512, 64).K
    feats = rng.standard_normal((300, 64, 8)).astype(np.float32)
    code = rng.standard_normal((512, 8)).astype(np.float32)
    a = nested_assign(feats, code, K, use_gpu=False)
    b = nested_assign(feats, code, K, use_gpu=False, batch_size=64 * 25 + 7, threads=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:50], brute_force_assign(feats[:50], code, K))
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
    got = nested_assign(mm, code, K, use_gpu=False)
    np.testing.assert_array_equal(got, brute_force_assign(feats, code, K))  # exact ties: lowest index
    np.testing.assert_array_equal(got, nested_assign(feats, code, K, use_gpu=False))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([4, 12, 64]), st.sampled_from([0.0, 1e3, 1e4]), st.sampled_from(["gauss", "grid", "dup"]),
       st.sampled_from([1e-2, 1.0, 30.0]), st.integers(1, 300), st.integers(1, 6), st.integers(1, 80),
       st.sampled_from([2, 3, 8]), st.booleans(), st.integers(0, 2**32 - 1))
def test_exact_at_any_offset_width_and_with_ties(d, offset, kind, spread, kmax, length, n, candidates, small_batches,
                                                 seed):
    """Equal to the float64 brute force (lowest index on ties) for features and codes sharing an
    offset up to 1e4: Gaussian clouds, integer grids (exact ties everywhere) and duplicated codes
    (more copies than FAISS candidates), random nested K_t, any batch split. FAISS CPU computes the
    float32 expansion only for searches of >= 20 queries (fewer go through exact-ish direct sums),
    hence ``small_batches`` False: one batch of all n * L queries."""
    rng = np.random.default_rng(seed)
    if kind == "grid":
        code = rng.integers(-2, 3, (kmax, d)).astype(np.float64)
        feats = rng.integers(-2, 3, (n, length, d)).astype(np.float64) + rng.choice([0.0, 0.5], (n, length, d))
    elif kind == "dup":
        base = rng.standard_normal((int(rng.integers(1, 4)), d))
        code = base[rng.integers(0, len(base), kmax)] + (rng.random((kmax, 1)) < 0.2) * rng.standard_normal((kmax, d))
        feats = base[rng.integers(0, len(base), (n, length))] + 0.1 * rng.standard_normal((n, length, d))
    else:
        code, feats = rng.standard_normal((kmax, d)), rng.standard_normal((n, length, d))
    code = (code * spread + offset).astype(np.float32)
    feats = (feats * spread + offset).astype(np.float32)
    K = np.sort(rng.integers(1, kmax + 1, length))  # nested prefixes, repeats and K_t = 1 included
    batch = int(rng.integers(1, 100)) if small_batches else n * length
    got = nested_assign(feats, code, K, use_gpu=False, batch_size=batch, threads=1,
                        candidates=candidates)
    np.testing.assert_array_equal(got, brute_force_assign(feats, code, K))


def test_duplicated_nearest_code_takes_the_lowest_index():
    """Twenty copies of the nearest code (more than the FAISS candidates): the lowest index wins."""
    rng = np.random.default_rng(5)
    code = (rng.standard_normal((64, 12)) + 1e4).astype(np.float32)
    copies = rng.choice(np.arange(3, 64), 20, replace=False)
    code[copies] = code[2]
    feats = (code[2] + 1e-3 * rng.standard_normal((50, 1, 12))).astype(np.float32)
    got = nested_assign(feats, code, [64], use_gpu=False, candidates=4)
    ref = brute_force_assign(feats, code, [64])
    np.testing.assert_array_equal(got, ref)
    assert set(np.unique(got)) <= {2} | set(copies.tolist()) and (got == min(2, *copies)).all()


@pytest.mark.parametrize("d", [4, 12, 64, 300])
def test_distance_error_bound_holds_for_faiss(d):
    """FAISS's float32 distances on centred inputs stay within c (||x|| + ||y||)^2 of the float64
    brute-force distance, c = distance_error_bound(d), on data with an offset of 1e4."""
    import faiss

    rng = np.random.default_rng(d)
    code = rng.standard_normal((256, d)) * rng.choice([1e-3, 1.0, 1e2], (256, 1)) + 1e4
    feats = rng.standard_normal((512, d)) * rng.choice([1e-3, 1.0, 1e2], (512, 1)) + 1e4
    code, feats = code.astype(np.float32).astype(np.float64), feats.astype(np.float32).astype(np.float64)
    mu = code.mean(0)
    index = faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(code - mu, dtype=np.float32))
    dist, labels = index.search(np.ascontiguousarray(feats - mu, dtype=np.float32), 256)
    exact = ((feats[:, None, :] - code[labels]) ** 2).sum(-1)
    norms = np.linalg.norm(feats - mu, axis=1)[:, None] + np.linalg.norm(code - mu, axis=1)[labels]
    err = np.abs(dist - exact) / norms**2
    c = distance_error_bound(d)
    assert err.max() <= c
    assert err.max() > c / 1e4  # the bound is not vacuous: real errors come within 4 orders of it
    assert c < 1e-4 and distance_error_bound(d, 2.0**-11) > 2.0**-10  # TF32 inputs widen it


def test_candidates_must_be_at_least_two():
    with pytest.raises(EntropyCliffError, match="candidates"):
        nested_assign(np.zeros((1, 1, 2), np.float32), np.zeros((2, 2), np.float32), [2], candidates=1)


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
    np.testing.assert_array_equal(gpu, cpu)  # both equal the float64 brute force


def test_missing_faiss_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(EntropyCliffError, match="pip install faiss-cpu"):
        nested_assign(np.zeros((2, 1, 2), np.float32), np.zeros((2, 2), np.float32), [2])


def test_assign_module_does_not_import_torch():
    import subprocess

    code = "import sys, entropy_cliff.assign as a; a.nested_assign; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_assign_file_writes_the_dump_and_probes_first(tmp_path, monkeypatch):
    import entropy_cliff.assign as assign_mod
    from entropy_cliff.assign import assign_file
    from entropy_cliff.io import read_sidecar

    rng = np.random.default_rng(4)
    feats, code = rng.standard_normal((30, 6, 3)), rng.standard_normal((16, 3))
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "c.npy", code)
    sched = {"kind": "cosine", "kmin": 2, "kmax": None, "power": 2.5, "schedule_file": None}
    info = assign_file(tmp_path / "f.npy", tmp_path / "c.npy", tmp_path / "o" / "t.npy", schedule=sched, threads=1)
    K = Schedule("cosine", 2, 16, 6).K  # kmax None: the codebook's size
    assert info == {"out": str(tmp_path / "o" / "t.npy"), "N": 30, "L": 6, "schedule": Schedule("cosine", 2, 16, 6).to_dict(),
                    "label": "cosine K=2..16", "K": K.tolist()}
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "t.npy"), brute_force_assign(feats, code, K))
    assert read_sidecar(tmp_path / "o" / "t.npy", (30, 6))["source"] == {"features": str(tmp_path / "f.npy"),
                                                                         "codebook": str(tmp_path / "c.npy")}
    # an unwritable output fails before any array is read or assigned
    monkeypatch.setattr(assign_mod, "nested_assign", lambda *a, **k: pytest.fail("assigned before the probe"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(EntropyCliffError, match="file/t.npy: cannot write here"):
        assign_file(tmp_path / "missing.npy", tmp_path / "c.npy", tmp_path / "file" / "t.npy", schedule=sched)
    with pytest.raises(EntropyCliffError, match="token dumps are written as .npy"):
        assign_file(tmp_path / "f.npy", tmp_path / "c.npy", tmp_path / "t.txt", schedule=sched)
    with pytest.raises(EntropyCliffError, match="no schedule"):
        assign_file(tmp_path / "f.npy", tmp_path / "c.npy", tmp_path / "u" / "t.npy", schedule={**sched, "kind": None})
    assert not (tmp_path / "u").exists()
