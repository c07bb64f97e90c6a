"""Reading LlamaGen folders, TiTok/RAR JSONL and Parquet, laid out exactly as their public writers do.

The writers below follow LlamaGen ``autoregressive/train/extract_codes_c2i.py`` and 1d-tokenizer
``scripts/pretokenization.py``: a DistributedSampler(shuffle=False) pads the dataset to
R ceil(N/R) images by repeating its first indices and gives rank r the indices r, r+R, ...;
LlamaGen rank r saves its k-th image as ``{r + kR}.npy`` of shape (1, views, L) (int64) and its
label as ``(1,)``; TiTok ranks write, per batch of b images, the b originals then the b flips (or
10 consecutive crops per image), and rank 0 concatenates the rank lists in glob order.
"""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.formats import _flip_views, detect_format, read_corpus
from helpers import run

L = 6
K = 5


def sampler_indices(n: int, world: int, rank: int) -> list[int]:
    total = math.ceil(n / world) * world
    idx = list(range(n))
    idx += (idx * math.ceil((total - n) / n))[: total - n]  # as torch's DistributedSampler pads
    return idx[rank:total:world]


def make_images(n: int, views: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, views, L) tokens with few distinct prefixes (so H_t is non-trivial) and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, K, size=(n, views, L)).astype(np.int64), rng.integers(0, 1000, size=n)


def write_llamagen(root, images, labels, world):
    codes, labs = root / "imagenet256_codes", root / "imagenet256_labels"
    codes.mkdir(parents=True)
    labs.mkdir()
    for rank in range(world):
        total = 0
        for k in sampler_indices(len(images), world, rank):  # batch_size=1
            np.save(codes / f"{rank + total}.npy", images[k][None])
            np.save(labs / f"{rank + total}.npy", np.array([labels[k]]))
            total += world
    return codes


def write_titok(path, images, labels, batch, world, rank_order):
    """Returns the JSONL lines' (view, image) in file order."""
    views = images.shape[1]
    order, lines = [], []
    for rank in rank_order:
        sub = sampler_indices(len(images), world, rank)
        for b0 in range(0, len(sub), batch):
            chunk = sub[b0:b0 + batch]
            pairs = ([(k, c) for k in chunk for c in range(10)] if views == 10
                     else [(k, 0) for k in chunk] + [(k, 1) for k in chunk])
            for k, c in pairs:
                lines.append(json.dumps({"class_id": int(labels[k]), "tokens": images[k, c].tolist()}))
                order.append((c, k))
    path.write_text("\n".join(lines) + "\n")
    return order


def rows_of(images, order, view):
    sel = [(c, k) for c, k in order if view is None or c == view]
    return np.stack([images[k, c] for c, k in sel]), np.array([k for _, k in sel])


def measured(capsys, *argv):
    code, out, err = run(capsys, "measure", *argv, "--format", "json", "--quiet")
    assert code == 0, err
    d = json.loads(out)
    return d, {k: [p[k] for p in d["positions"]] for k in d["positions"][0]}


def assert_same_measure(capsys, tmp_path, argv, expected_rows):
    ref = tmp_path / "ref.npy"
    np.save(ref, expected_rows)
    d, pos = measured(capsys, *argv)
    d_ref, pos_ref = measured(capsys, ref)
    assert pos == pos_ref and d["N"] == d_ref["N"] and d["t_star_sustained"] == d_ref["t_star_sustained"]
    return d


# ---------------------------------------------------------------------------- LlamaGen

@pytest.mark.parametrize(("views", "view", "index"), [(2, "original", 0), (2, "1", 1), (10, "original", 4), (10, "7", 7)])
def test_llamagen_views(tmp_path, views, view, index):
    images, labels = make_images(10, views)
    codes = write_llamagen(tmp_path, images, labels, world=3)  # 12 files: images 0, 1 repeated
    padded = sampler_indices(10, 3, 0) and (list(range(10)) + [0, 1])
    for path in (tmp_path, codes):
        assert detect_format(path) == "llamagen"
        c = read_corpus(path, view=view, world_size=3)
        assert np.array_equal(c.tokens, images[padded, index]) and c.tokens.dtype == np.uint16
        assert np.array_equal(c.labels, labels[padded])
        assert c.info | {"path": None} == c.info | {
            "format": "llamagen", "path": None, "view": int(view) if view.isdigit() else view, "view_index": index,
            "views_per_image": views, "files": 12, "images": 12, "rows": 12, "padded_rows": 2, "labels": True}


def test_llamagen_all_views_and_unknown_padding(tmp_path):
    images, labels = make_images(9, 2)
    write_llamagen(tmp_path, images, labels, world=4)  # pads 3
    c = read_corpus(tmp_path, view="all", threads=2)
    order = list(range(9)) + [0, 1, 2]
    assert np.array_equal(c.tokens, images[order].reshape(-1, L))
    assert np.array_equal(c.labels, np.repeat(labels[order], 2))
    assert c.info["padded_rows"] is None and not c.info["independent_rows"]
    assert read_corpus(tmp_path, view="all", world_size=4).info["padded_rows"] == 6
    write_llamagen(tmp_path / "even", images, labels, world=3)  # 9 images on 3 ranks: no padding
    assert read_corpus(tmp_path / "even", world_size=3).info["padded_rows"] == 0


def test_llamagen_wide_tokens_and_no_labels(tmp_path):
    images = np.arange(2 * 2 * 3, dtype=np.int64).reshape(2, 2, 3) * 10_000  # max 110,000 > uint16
    codes = tmp_path / "x_codes"
    codes.mkdir()
    for i in range(2):
        np.save(codes / f"{i}.npy", images[i][None])
    c = read_corpus(codes, threads=1)
    assert c.tokens.dtype == np.uint32 and np.array_equal(c.tokens, images[:, 0]) and c.labels is None


def test_llamagen_measure_equals_npy(capsys, tmp_path):
    images, labels = make_images(40, 10, seed=3)
    write_llamagen(tmp_path / "lg", images, labels, world=3)
    padded = list(range(40)) + [0, 1]
    d = assert_same_measure(capsys, tmp_path, [tmp_path / "lg", "--world-size", "3"], images[padded, 4])
    assert d["input"]["padded_rows"] == 2 and d["input"]["view_index"] == 4
    assert_same_measure(capsys, tmp_path, [tmp_path / "lg", "--view", "all", "--threads", "2"],
                        images[padded].reshape(-1, L))


# ---------------------------------------------------------------------------- TiTok / RAR JSONL

@pytest.mark.parametrize(("n", "batch", "world", "rank_order"), [(11, 4, 2, [1, 0]), (7, 8, 1, [0]), (13, 2, 3, [2, 0, 1])])
def test_titok_flip_originals(tmp_path, n, batch, world, rank_order):
    images, labels = make_images(n, 2)
    order = write_titok(tmp_path / "p.jsonl", images, labels, batch, world, rank_order)
    assert detect_format(tmp_path / "p.jsonl") == "titok-jsonl"
    for view, index in (("original", 0), (1, 1)):
        c = read_corpus(tmp_path / "p.jsonl", view=view, batch_size=batch, world_size=world)
        rows, ks = rows_of(images, order, index)
        assert np.array_equal(c.tokens, rows) and np.array_equal(c.labels, labels[ks])
        pad = math.ceil(n / world) * world - n
        assert c.info["padded_rows"] == pad and c.info["rows"] == n + pad and c.info["lines"] == 2 * (n + pad)
    everything = read_corpus(tmp_path / "p.jsonl", view="all")  # no batch/world size needed
    assert np.array_equal(everything.tokens, rows_of(images, order, None)[0])
    assert everything.info["padded_rows"] is None


def test_titok_ten_crop_centre(tmp_path):
    images, labels = make_images(5, 10)
    order = write_titok(tmp_path / "p.jsonl", images, labels, 2, 2, [0, 1])
    c = read_corpus(tmp_path / "p.jsonl", ten_crop=True, world_size=2)
    rows, ks = rows_of(images, order, 4)
    assert np.array_equal(c.tokens, rows) and np.array_equal(c.labels, labels[ks])
    assert c.info["padded_rows"] == 1 and c.info["augmentation"] == "ten-crop"
    assert read_corpus(tmp_path / "p.jsonl", ten_crop=True, view="all", world_size=2).info["padded_rows"] == 10


def test_titok_measure_equals_npy(capsys, tmp_path):
    images, labels = make_images(50, 2, seed=5)
    order = write_titok(tmp_path / "p.jsonl", images, labels, 8, 3, [1, 2, 0])
    d = assert_same_measure(capsys, tmp_path, [tmp_path / "p.jsonl", "--batch-size", "8", "--world-size", "3"],
                            rows_of(images, order, 0)[0])
    assert d["input"]["format"] == "titok-jsonl" and d["input"]["padded_rows"] == 1
    code, out, err = run(capsys, "measure", tmp_path / "p.jsonl", "--batch-size", "8", "--world-size", "3")
    assert code == 0 and out.startswith("input: titok-jsonl; 51 rows; flip: view 0 (original) of 2; 1 rows")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.integers(1, 5))
def test_flip_views_match_writer(n, batch, world):
    """The closed-form view of each line equals the writer simulation's, for any N, B, R."""
    views = []
    for rank in range(world):
        sub = sampler_indices(n, world, rank)
        for b0 in range(0, len(sub), batch):
            nb = len(sub[b0:b0 + batch])
            views += [0] * nb + [1] * nb
    assert _flip_views(len(views), batch, world, "x").tolist() == views


# ---------------------------------------------------------------------------- Parquet

def test_parquet_file_folder_and_column(capsys, tmp_path):
    import polars as pl

    images, labels = make_images(30, 1, seed=7)
    rows = images[:, 0]
    df = pl.DataFrame({"input_ids": rows.tolist(), "label": labels, "other": [[1.5]] * 30})
    df.write_parquet(tmp_path / "t.parquet")
    folder = tmp_path / "ds"
    folder.mkdir()
    fixed = df.with_columns(pl.col("input_ids").list.to_array(L))  # datasets' Sequence(length=L) feature
    fixed[:12].write_parquet(folder / "train-00000.parquet")
    fixed[12:].write_parquet(folder / "train-00001.parquet")
    for path in (tmp_path / "t.parquet", folder):
        c = read_corpus(path)
        assert detect_format(path) == "parquet" and c.info["column"] == "input_ids" and c.info["label_column"] == "label"
        assert np.array_equal(c.tokens, rows) and np.array_equal(c.labels, labels)
    assert_same_measure(capsys, tmp_path, [tmp_path / "t.parquet", "--column", "input_ids"], rows)


# ---------------------------------------------------------------------------- convert

def test_convert_round_trip(capsys, tmp_path):
    images, labels = make_images(11, 2, seed=9)
    order = write_titok(tmp_path / "p.jsonl", images, labels, 4, 2, [0, 1])
    out = tmp_path / "tokens.npy"
    code, _, err = run(capsys, "convert", tmp_path / "p.jsonl", "--out", out, "--batch-size", "4", "--world-size", "2")
    assert code == 0, err
    rows, ks = rows_of(images, order, 0)
    got = np.load(out)
    assert got.dtype == np.uint8 and np.array_equal(got, rows)
    meta = json.loads((tmp_path / "tokens.meta.json").read_text())
    assert meta["N"] == 12 and meta["K"] == [int(rows.max()) + 1] * L
    src = meta["source"]
    assert (src["format"], src["view"], src["view_index"], src["padded_rows"], src["batch_size"]) == (
        "titok-jsonl", "original", 0, 1, 4)
    assert np.array_equal(np.load(tmp_path / "tokens.labels.npy"), labels[ks])
    # our dump measures like the JSONL, and its sidecar K_t is used
    d, pos = measured(capsys, out)
    d_src, pos_src = measured(capsys, tmp_path / "p.jsonl", "--batch-size", "4", "--world-size", "2")
    assert pos == pos_src and d["K_source"]["kind"] == "sidecar"
    code, _, err = run(capsys, "convert", tmp_path / "p.jsonl", "--out", tmp_path / "k.npy", "--view", "all", "--K", "300")
    assert code == 0 and np.load(tmp_path / "k.npy").dtype == np.uint16
    assert json.loads((tmp_path / "k.meta.json").read_text())["K"] == [300] * L


# ---------------------------------------------------------------------------- bad input

def bad_cases(tmp_path):
    images, labels = make_images(6, 2)
    cases = {}
    lg = tmp_path / "missing"
    write_llamagen(lg, images, labels, 2)
    (lg / "imagenet256_codes" / "3.npy").unlink()
    cases["missing"] = ([lg], "1 of files 0.npy..5.npy are missing (3.npy)")
    lg = tmp_path / "shapes"
    write_llamagen(lg, images, labels, 2)
    np.save(lg / "imagenet256_codes" / "4.npy", np.zeros((1, 10, L), dtype=np.int64))
    cases["shapes"] = ([lg], "4.npy: shape (1, 10, 6)")
    lg = tmp_path / "floats"
    write_llamagen(lg, images, labels, 2)
    np.save(lg / "imagenet256_codes" / "2.npy", np.full((1, 2, L), 0.5))
    cases["float files"] = ([lg], "shape (1, 2, 6) float64")
    for name, line, msg in [
        ("no tokens", '{"class_id": 1}', "line 3 has no 'tokens'"),
        ("length", '{"class_id": 1, "tokens": [1, 2]}', "line 3 has 2 tokens, line 1 has 6"),
        ("float", '{"class_id": 1, "tokens": [1, 2, 3, 4, 5, 6.5]}', "line 3: tokens must be integers, found 6.5"),
        ("string", '{"class_id": 1, "tokens": [1, 2, 3, 4, 5, "a"]}', "line 3: tokens must be integers, found 'a'"),
        ("negative", '{"class_id": 1, "tokens": [1, 2, 3, 4, 5, -1]}', "line 3: tokens must be non-negative"),
        ("not json", "oops", "line 3 is not JSON"),
    ]:
        good = json.dumps({"class_id": 0, "tokens": list(range(L))})
        p = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        p.write_text("\n".join([good, good, line, good]) + "\n")
        cases[name] = ([p, "--view", "all"], msg)
    p = tmp_path / "flip.jsonl"
    write_titok(p, images, labels, 2, 2, [0, 1])
    cases["flip original"] = ([p], "needs the writer's batch_size and world_size (got None and None)")
    cases["flip world"] = ([p, "--batch-size", "2", "--world-size", "4"], "12 lines cannot come from world_size 4")
    import polars as pl
    pq = tmp_path / "f.parquet"
    pl.DataFrame({"tokens": [[0.5] * L] * 3, "s": ["a"] * 3}).write_parquet(pq)
    cases["parquet floats"] = ([pq, "--column", "tokens"], "column 'tokens' is List(Float64), not a list of integers")
    cases["parquet strings"] = ([pq, "--column", "s"], "column 's' is String, not a list of integers")
    cases["parquet none"] = ([pq], "no integer-list columns")
    pq2 = tmp_path / "ragged.parquet"
    pl.DataFrame({"tokens": [[1, 2, 3], [1, 2], [1, 2, 3]]}).write_parquet(pq2)
    cases["parquet ragged"] = ([pq2], "row 1 of column 'tokens' has 2 tokens, row 0 has 3")
    one = tmp_path / "0.npy"
    np.save(one, images[:1])
    cases["3-D npy"] = ([one], "expected a 2-D array")
    return cases


def test_bad_inputs_one_line_exit_2(capsys, tmp_path):
    for name, (argv, msg) in bad_cases(tmp_path).items():
        for cmd in ("measure", "convert"):
            extra = ["--out", tmp_path / f"{cmd}.npy"] if cmd == "convert" else []
            code, out, err = run(capsys, cmd, *argv, *extra)
            assert code == 2 and err.count("\n") == 1 and msg in err, (name, cmd, err)
            assert not list(tmp_path.glob("convert*")), name


def test_detect_format_shards_and_overrides(tmp_path):
    sh = tmp_path / "sh"
    sh.mkdir()
    np.save(sh / "shard-00000.npy", np.zeros((3, L), np.uint16))
    np.save(sh / "shard-00000.labels.npy", np.zeros(3, np.uint16))
    assert detect_format(sh) == "shards"
    numbered = tmp_path / "numbered"
    numbered.mkdir()
    np.save(numbered / "0.npy", np.zeros((3, L), np.uint16))
    assert detect_format(numbered) == "shards" and detect_format(numbered, "llamagen") == "llamagen"
    with pytest.raises(EntropyCliffError, match=r"shape \(3, 6\), LlamaGen files are \(1, views, L\)"):
        read_corpus(numbered, "llamagen")
    noext = tmp_path / "tokens"
    noext.write_text('{"tokens": [1, 2]}\n{"tokens": [1, 3]}\n')
    assert detect_format(noext) == "titok-jsonl"
    c = read_corpus(noext, view="all")
    assert c.labels is None and c.tokens.tolist() == [[1, 2], [1, 3]] and not c.info["labels"]
    noext.write_text('{"tokens": [1, 2], "class_id": 4}\n{"tokens": [1, 3]}\n')  # one line lacks it: no labels
    assert read_corpus(noext, view="all").labels is None
    with pytest.raises(EntropyCliffError, match="no such file"):
        detect_format(tmp_path / "nope.jsonl")


def test_plain_progress_lines_off_a_terminal(tmp_path, capsys):
    images, labels = make_images(20, 2)
    write_llamagen(tmp_path, images, labels, 1)
    read_corpus(tmp_path, progress=True)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("reading imagenet256_codes: files 20/20 (100%)") and len(lines) <= 11
    read_corpus(tmp_path, progress=False)
    assert capsys.readouterr().err == ""


def test_llamagen_float_files(tmp_path):
    codes = tmp_path / "f_codes"
    codes.mkdir()
    for i in range(3):
        np.save(codes / f"{i}.npy", np.full((1, 2, L), float(i)))
    assert read_corpus(codes).tokens.tolist() == [[0] * L, [1] * L, [2] * L]
    np.save(codes / "1.npy", np.full((1, 2, L), 0.5))
    with pytest.raises(EntropyCliffError, match=r"1\.npy: tokens must be integers, found 0\.5"):
        read_corpus(codes)


# ---------------------------------------------------------------------------- labels against rows

def test_shard_labels_must_count_their_shards_rows(capsys, tmp_path):
    sh = tmp_path / "sh"
    sh.mkdir()
    for i, n_labels in enumerate((10, 7)):
        np.save(sh / f"shard-{i:05d}.npy", np.arange(20).reshape(10, 2) % 5)
        np.save(sh / f"shard-{i:05d}.labels.npy", np.zeros(n_labels, np.int64))
    with pytest.raises(EntropyCliffError) as e:
        read_corpus(sh)
    assert str(e.value) == f"{sh / 'shard-00001.labels.npy'}: 7 labels, but its shard shard-00001.npy has 10 rows"
    code, out, err = run(capsys, "convert", sh, "-o", tmp_path / "out" / "x.npy")
    assert code == 2 and out == "" and err.strip().splitlines() == [f"entropy-cliff: error: {e.value}"]
    assert not (tmp_path / "out").exists()  # no dump, no sidecar, no folder
    np.save(sh / "shard-00001.labels.npy", np.arange(10))
    assert read_corpus(sh).labels.tolist() == [0] * 10 + list(range(10))
    c = read_corpus(sh, labels=False)
    assert c.labels is None and c.info["labels"]


def test_legacy_shared_labels_of_another_length(capsys, tmp_path):
    X = np.arange(20).reshape(10, 2) % 3
    np.save(tmp_path / "d.npy", X)
    np.save(tmp_path / "labels.npy", np.arange(7))  # another dump's labels, under the old shared name
    with pytest.raises(EntropyCliffError, match=r"labels.npy: 7 labels for the 10 rows of d.npy \(the shared"):
        read_corpus(tmp_path / "d.npy")
    c = read_corpus(tmp_path / "d.npy", labels=False)  # measure: labels are informational, ignored with the reason
    assert c.labels is None and not c.info["labels"] and "7 labels for the 10 rows" in c.info["labels_ignored"]
    d, _ = measured(capsys, tmp_path / "d.npy")
    assert d["input"]["labels"] is False and "labels.npy: 7 labels" in d["input"]["labels_ignored"]
    code, _, err = run(capsys, "convert", tmp_path / "d.npy", "-o", tmp_path / "o" / "x.npy")
    assert code == 2 and "7 labels for the 10 rows" in err and not (tmp_path / "o").exists()
    np.save(tmp_path / "labels.npy", np.arange(10))  # the right length: still read (older dumps)
    assert read_corpus(tmp_path / "d.npy").labels.tolist() == list(range(10))
    np.save(tmp_path / "d.labels.npy", np.arange(9))  # the dump's own labels of the wrong length: refused
    with pytest.raises(EntropyCliffError, match="d.labels.npy: 9 labels for the 10 rows of d.npy$"):
        read_corpus(tmp_path / "d.npy", labels=False)


def test_measure_opens_no_llamagen_label_file(tmp_path, monkeypatch):
    import builtins
    import os

    from entropy_cliff.report import measure_corpus

    images, labels = make_images(12, 2)
    codes = write_llamagen(tmp_path, images, labels, world=2)
    opened = []
    real_open, real_os_open = builtins.open, os.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1])
    monkeypatch.setattr(os, "open", lambda f, *a, **k: (opened.append(str(f)), real_os_open(f, *a, **k))[1])
    rep = measure_corpus(codes, progress=False)
    assert any(f.startswith(str(codes)) for f in opened)  # the counter sees the code files
    assert not any("_labels" in f for f in opened) and rep.extra["input"]["labels"] is True
    c = read_corpus(codes)  # labels=True reads them
    assert any("_labels" in f for f in opened) and c.labels.shape == (12,)


def test_convert_probes_its_output_before_reading(capsys, tmp_path, monkeypatch):
    import entropy_cliff.formats as formats

    called = []
    monkeypatch.setattr(formats, "read_corpus", lambda *a, **k: called.append(1))
    np.save(tmp_path / "d.npy", np.zeros((4, 2), np.int64))
    (tmp_path / "file").write_text("x")
    code, out, err = run(capsys, "convert", tmp_path / "d.npy", "-o", tmp_path / "file" / "x.npy")
    assert code == 2 and out == "" and called == []
    assert err.strip().splitlines() == [f"entropy-cliff: error: {tmp_path / 'file' / 'x.npy'}: cannot write here (File exists)"]
