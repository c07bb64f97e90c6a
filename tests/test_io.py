import json

import numpy as np
import pytest

from entropy_cliff import io
from entropy_cliff.errors import EntropyCliffError


def test_memmap_is_not_copied(tmp_path):
    p = tmp_path / "t.npy"
    np.save(p, np.arange(20, dtype=np.uint16).reshape(4, 5))
    X = io.load_tokens(p)
    assert isinstance(X, np.memmap) and X.shape == (4, 5)


def test_npz_with_and_without_key(tmp_path):
    p = tmp_path / "t.npz"
    np.savez(p, a=np.ones((3, 2), np.int8), b=np.zeros((2, 2), np.int64))
    assert io.load_tokens(p, "b").shape == (2, 2)
    with pytest.raises(EntropyCliffError, match="--key"):
        io.load_tokens(p)
    with pytest.raises(EntropyCliffError, match="no array"):
        io.load_tokens(p, "c")


def test_integral_floats_are_accepted(tmp_path):
    p = tmp_path / "f.npy"
    np.save(p, np.array([[1.0, 2.0], [3.0, 300.0]], np.float32))
    X = io.load_tokens(p)
    assert X.dtype == np.uint16 and X.tolist() == [[1, 2], [3, 300]]


@pytest.mark.parametrize(("arr", "msg"), [
    (np.array([[0.5, 1.0], [1.0, 2.0]]), "non-integer"),
    (np.array([[np.nan, 1.0], [1.0, 2.0]]), "non-integer"),
    (np.arange(5), "2-D"),
    (np.zeros((2, 2, 2), np.int32), "2-D"),
    (np.zeros((0, 4), np.int32), "empty"),
    (np.zeros((3, 0), np.int32), "empty"),
    (np.zeros((1, 4), np.int32), "at least 2"),
    (np.array([["a", "b"], ["c", "d"]]), "strings"),
])
def test_bad_arrays(tmp_path, arr, msg):
    p = tmp_path / "bad.npy"
    np.save(p, arr)
    with pytest.raises(EntropyCliffError, match=msg):
        io.load_tokens(p)


def test_bad_files(tmp_path):
    with pytest.raises(EntropyCliffError, match="no such file"):
        io.load_tokens(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(EntropyCliffError, match="not a readable"):
        io.load_tokens(tmp_path / "text.npy")
    np.save(tmp_path / "full.npy", np.zeros((100, 10), np.int32))
    data = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(EntropyCliffError, match="not a readable"):
        io.load_tokens(tmp_path / "trunc.npy")
    np.save(tmp_path / "obj.npy", np.array([[1, None], [2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(EntropyCliffError, match="objects"):
        io.load_tokens(tmp_path / "obj.npy")
    with pytest.raises(EntropyCliffError, match="directory"):
        io.load_tokens(tmp_path)


def test_atomic_paths_leave_nothing_after_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with io.atomic_paths(tmp_path / "a.json", tmp_path / "b.csv") as (ta, tb):
            ta.write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with io.atomic_paths(tmp_path / "a.json", tmp_path / "b.csv") as (ta, tb):
        ta.write_text("x")
        tb.write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.csv"]
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~io._UMASK


def test_save_tokens_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    K = [2, 16, 300]
    tokens = np.stack([rng.integers(0, k, 50) for k in K], axis=1)
    labels = rng.integers(0, 10, 50)
    p = io.save_tokens(tmp_path / "tok.npy", tokens, K, {"kind": "custom"}, {"run": "x"}, labels)
    X = io.load_tokens(p)
    assert X.dtype == np.uint16 and np.array_equal(X, tokens)
    meta = io.read_sidecar(p)
    assert meta["K"] == K and meta["N"] == 50 and meta["L"] == 3 and meta["source"] == {"run": "x"}
    assert json.loads(io.sidecar_path(p).read_text()) == meta
    assert np.array_equal(np.load(tmp_path / "tok.labels.npy"), labels) and io.labels_path(p) == tmp_path / "tok.labels.npy"
    with pytest.raises(EntropyCliffError, match="out of range"):
        io.save_tokens(tmp_path / "bad.npy", tokens, [2, 16, 100], {"kind": "custom"})
    assert not (tmp_path / "bad.npy").exists()


def test_smallest_uint_dtype():
    assert io.smallest_uint_dtype(255) == np.uint8
    assert io.smallest_uint_dtype(256) == np.uint16
    assert io.smallest_uint_dtype(2**32) == np.uint64
