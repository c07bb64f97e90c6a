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


@pytest.mark.parametrize(("labels", "msg"), [
    (np.arange(7), r"labels of shape \(7,\) do not match N = 10"),
    (np.array([0, 1, -1, 2, 0, 1, 2, 0, 1, 2]), "non-negative integers, got int64 with minimum -1"),
    (np.linspace(0, 1, 10), "non-negative integers, got float64"),
])
def test_save_tokens_bad_labels_write_nothing(tmp_path, labels, msg):
    with pytest.raises(EntropyCliffError, match=msg):
        io.save_tokens(tmp_path / "x.npy", np.zeros((10, 2), np.int64), [2, 2], {"kind": "custom"}, labels=labels)
    assert list(tmp_path.iterdir()) == []


def test_save_tokens_without_labels_removes_stale_ones(tmp_path):
    X = np.zeros((4, 2), np.int64)
    io.save_tokens(tmp_path / "d.npy", X, [2, 2], {"kind": "custom"}, labels=np.arange(4))
    io.save_tokens(tmp_path / "d.npy", X[:3], [2, 2], {"kind": "custom"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.meta.json", "d.npy"]


def test_sidecar_path_and_labels_path_use_the_stem(tmp_path):
    for name, stem in (("a.npy", "a"), ("a.b.npy", "a.b"), ("noext", "noext"), (".hidden", ".hidden")):
        assert io.sidecar_path(tmp_path / name) == tmp_path / f"{stem}.meta.json"
        assert io.labels_path(tmp_path / name) == tmp_path / f"{stem}.labels.npy"


def test_write_json_atomic_writes_valid_json_for_nan(tmp_path):
    io.write_json_atomic(tmp_path / "r.json", {"h": float("nan"), "x": np.float32(1.5), "v": np.arange(2)})
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=pytest.fail) == {"h": None, "x": 1.5, "v": [0, 1]}


def test_smallest_uint_dtype():
    assert io.smallest_uint_dtype(255) == np.uint8
    assert io.smallest_uint_dtype(256) == np.uint16
    assert io.smallest_uint_dtype(2**32) == np.uint64


def _dump(tmp_path, name="d.npy"):
    from entropy_cliff.schedules import Schedule

    s = Schedule("linear", 2, 16, 4)
    X = np.stack([np.arange(20) % k for k in s.K], axis=1)
    return io.save_tokens(tmp_path / name, X, s.K, s.to_dict()), X


@pytest.mark.parametrize(("field", "value", "msg"), [
    ("N", 19, "field 'N' = 19 but the array has N = 20"),
    ("L", 5, "field 'L' = 5 but the array has L = 4"),
    ("K", [2, 6.5, 11, 16], "position 2: 6.5 is not an integer"),
    ("K", [2, "x", 11, 16], "position 2: 'x' is not an integer"),
    ("K", [2, 0, 11, 16], "position 2: 0 is below 1"),
    ("K", [2, 7, 11, 16, 16], "lists 5 codebook sizes but the array has L = 4"),
    ("K", [2, 7, 12, 16], "field 'schedule'"),
    ("schedule", {"kind": "cosine", "kmin": 2, "kmax": 16, "power": None}, "gives K_2 = "),
])
def test_sidecar_contradictions_name_file_field_value(tmp_path, field, value, msg):
    p, X = _dump(tmp_path)
    meta = json.loads(io.sidecar_path(p).read_text())
    meta[field] = value
    io.sidecar_path(p).write_text(json.dumps(meta))
    with pytest.raises(EntropyCliffError, match="d.meta.json") as e:
        io.read_sidecar(p, X.shape)
    assert msg in str(e.value)


def test_sidecar_integral_floats_pass(tmp_path):
    p, X = _dump(tmp_path)
    meta = json.loads(io.sidecar_path(p).read_text())
    meta["K"] = [float(k) for k in meta["K"]]
    io.sidecar_path(p).write_text(json.dumps(meta))
    assert io.read_sidecar(p, X.shape)["K"] == [2.0, 7.0, 11.0, 16.0]


def test_labels_path_new_name_and_fallback(tmp_path):
    p = tmp_path / "train.npy"
    assert io.labels_path(p) == tmp_path / "train.labels.npy"
    np.save(tmp_path / "labels.npy", np.zeros(3))
    assert io.labels_path(p) == tmp_path / "labels.npy"  # only the old name exists
    np.save(tmp_path / "train.labels.npy", np.zeros(3))
    assert io.labels_path(p) == tmp_path / "train.labels.npy"


def test_two_splits_keep_their_labels(tmp_path):
    X = np.zeros((4, 2), np.int64)
    io.save_tokens(tmp_path / "train.npy", X, [2, 2], {"kind": "custom"}, labels=np.array([0, 1, 2, 3]))
    io.save_tokens(tmp_path / "val.npy", X, [2, 2], {"kind": "custom"}, labels=np.array([3, 3, 3, 3]))
    assert np.load(io.labels_path(tmp_path / "train.npy")).tolist() == [0, 1, 2, 3]
    assert np.load(io.labels_path(tmp_path / "val.npy")).tolist() == [3, 3, 3, 3]


def test_prepare_output(tmp_path):
    d = io.prepare_output(tmp_path / "a" / "b" / "run", "dir")
    assert d.is_dir() and list(d.iterdir()) == []
    f = io.prepare_output(tmp_path / "x" / "y" / "fig.png", "file")
    assert f.parent.is_dir() and not f.exists()
    io.prepare_output(tmp_path / "gone" / "deeper", "dir", keep=False)
    assert not (tmp_path / "gone").exists()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    with pytest.raises(EntropyCliffError, match="blocker"):
        io.prepare_output(blocker / "out", "dir")
    with pytest.raises(EntropyCliffError, match="is a directory"):
        io.prepare_output(tmp_path, "file")


def test_prepare_output_read_only_mount(tmp_path, monkeypatch):
    """Root passes permission checks; the probe write is what fails on a read-only file system."""
    import errno
    import os as _os

    def refuse(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    with pytest.raises(EntropyCliffError, match="Read-only file system") as e:
        io.prepare_output(tmp_path / "ro" / "out", "dir", keep=False)
    assert "ro/out" in str(e.value) and not (tmp_path / "ro").exists()
    assert _os.access(tmp_path, _os.W_OK)


def test_csv_text_has_no_blank_last_line():
    assert io.csv_text([{"a": 1, "b": float("nan")}, {"a": 2, "b": 0.5}]) == "a,b\n1,\n2,0.5\n"
