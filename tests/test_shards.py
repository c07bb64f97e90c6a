"""Sharded dumps measured as one corpus: equal to the concatenation, field by field."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entropy_cliff import measure as M
from entropy_cliff.cli import main
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import read_sidecar
from entropy_cliff.shards import load_corpus, load_shards, shard_paths
from helpers import assert_same


def corpus_with_cross_shard_duplicates(rng, n, L, alphabet):
    X = rng.integers(0, alphabet, (n, L))
    src, dst = rng.integers(0, n, n // 2), rng.integers(0, n, n // 2)
    cut = rng.integers(0, L + 1, n // 2)
    for s, d, c in zip(src, dst, cut):
        X[d, :c] = X[s, :c]
    return X


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from([2, 5, 300]),
       st.sampled_from([np.uint8, np.int16, np.uint32]), st.sampled_from([0, 3, M.SMALL_GROUP]))
def test_shards_equal_the_concatenation(seed, n_shards, alphabet, dtype, small_group):
    rng = np.random.default_rng(seed)
    X = corpus_with_cross_shard_duplicates(rng, int(rng.integers(2, 200)), int(rng.integers(1, 12)), alphabet)
    X = X.astype(dtype)
    cuts = np.sort(rng.integers(0, X.shape[0] + 1, n_shards - 1))
    parts = [p for p in np.split(X, cuts) if p.shape[0]]
    # mixed layouts: a Fortran-ordered part and a reversed view must not matter
    parts = [np.asfortranarray(p) if i % 3 == 1 else p[::-1] if i % 3 == 2 else p for i, p in enumerate(parts)]
    assert_same(M.measure(parts, small_group=small_group), M.measure(X, small_group=small_group))
    K = np.maximum(X.max(axis=0).astype(np.int64) + 1, 1)
    assert_same(M.measure(parts, K), M.measure(X, K))
    H, G = M.prefix_entropy(parts)
    H0, G0 = M.prefix_entropy(X)
    np.testing.assert_array_equal(G, G0)
    np.testing.assert_allclose(H, H0, atol=1e-12)


def test_weights_follow_rows_across_shards():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 3, (60, 5)).astype(np.uint8)
    w = rng.integers(0, 4, 60)
    H, G = M.prefix_entropy([X[:7], X[7:40], X[40:]], weights=w)
    H0, G0 = M.prefix_entropy(X, weights=w)
    np.testing.assert_array_equal(G, G0)
    np.testing.assert_allclose(H, H0, atol=1e-12)


def test_narrower_shards_are_widened_and_mixed_sign_refused():
    X = np.random.default_rng(1).integers(0, 200, (50, 4))
    assert_same(M.measure([X[:20].astype(np.uint8), X[20:].astype(np.uint16)]), M.measure(X.astype(np.uint16)))
    with pytest.raises(EntropyCliffError, match="signed and unsigned"):
        M.measure([X[:20].astype(np.uint8), X[20:].astype(np.int16)])
    with pytest.raises(EntropyCliffError, match="L = 3"):
        M.measure([X[:20], X[20:, :3]])


def write_dump(d, X, cuts, K=None, labels=True):
    d.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.split(X, cuts)):
        np.save(d / f"shard-{i:05d}.npy", part)
        if labels:
            np.save(d / f"shard-{i:05d}.labels.npy", np.arange(part.shape[0]))
    if K is not None:
        (d / "meta.json").write_text(json.dumps({"N": int(X.shape[0]), "L": int(X.shape[1]), "K": [int(k) for k in K],
                                                 "schedule": {"kind": "custom"}, "source": {}}))
    return d


def test_directory_reader_memory_maps_in_name_order_and_skips_labels(tmp_path):
    X = np.random.default_rng(2).integers(0, 9, (40, 6)).astype(np.uint8)
    d = write_dump(tmp_path / "dump", X, [0, 13, 13, 30], K=[9] * 6)
    assert [p.name for p in shard_paths(d)] == [f"shard-{i:05d}.npy" for i in range(5)]
    shards = load_shards(d)
    assert all(isinstance(s, np.memmap) for s in shards) and sum(s.shape[0] for s in shards) == 40
    np.testing.assert_array_equal(np.concatenate(shards), X)
    parts = load_corpus(d)
    assert read_sidecar(d)["K"] == [9] * 6 and len(parts) == 3  # empty shards skipped


def test_cli_measures_a_directory_like_its_concatenation(tmp_path, capsys):
    rng = np.random.default_rng(3)
    X = corpus_with_cross_shard_duplicates(rng, 300, 8, 4).astype(np.uint8)
    d = write_dump(tmp_path / "dump", X, [100, 250], K=[4] * 8)
    np.save(tmp_path / "whole.npy", X)
    (tmp_path / "whole.meta.json").write_text((d / "meta.json").read_text())
    outs = []
    for p in (d, tmp_path / "whole.npy"):
        with pytest.raises(SystemExit) as e:
            main(["measure", str(p), "--format", "json"])
        assert e.value.code == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0]["K_source"]["kind"] == outs[1]["K_source"]["kind"] == "sidecar"
    assert outs[0]["positions"] == outs[1]["positions"]


@pytest.mark.parametrize(("make", "msg"), [
    (lambda d: np.save(d / "shard-1.npy", np.zeros((3, 5), np.uint8)), "L = 5"),
    (lambda d: np.save(d / "shard-1.npy", np.zeros((3, 4), np.int8)), "signed and unsigned"),
    (lambda d: np.save(d / "shard-1.npy", np.zeros((3, 4, 2), np.uint8)), "2-D"),
    (lambda d: np.save(d / "shard-1.npy", np.zeros((3, 4), np.float32)), "integers"),
])
def test_bad_shards_are_one_line_exit_2(tmp_path, capsys, make, msg):
    d = tmp_path / "dump"
    d.mkdir()
    np.save(d / "shard-0.npy", np.zeros((3, 4), np.uint8))
    make(d)
    with pytest.raises(SystemExit) as e:
        main(["measure", str(d)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and msg in err


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(EntropyCliffError, match="no .npy shards"):
        load_shards(tmp_path)
