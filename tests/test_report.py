"""entropy_cliff.report: K_t resolution, the report's JSON/CSV/tables, extension points, refusals."""

import json

import numpy as np
import pytest

import entropy_cliff
from entropy_cliff import theory
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import save_tokens
from entropy_cliff.report import (SPEC_COLUMNS, check_bootstrap_fits, compare_corpora, looks_variable,
                                  measure_corpus, resolve_K)
from entropy_cliff.schedules import Schedule
from test_cli import brute_H_prefix  # the brute-force reference (np.unique per prefix length)


@pytest.fixture
def cosine_dump(tmp_path):
    rng = np.random.default_rng(3)
    s = Schedule("cosine", 2, 256, 8)
    X = np.stack([rng.integers(0, k, 500) for k in s.K], axis=1)
    return save_tokens(tmp_path / "cos.npy", X, s.K, s.to_dict()), X, s


def test_k_resolution_order(cosine_dump):
    path, X, s = cosine_dump
    K, src, sched = resolve_K(path, X.shape)
    assert src.kind == "sidecar" and sched == s and K.tolist() == s.K.tolist()
    K, src, sched = resolve_K(path, X.shape, K=300)
    assert src.kind == "flags" and K.tolist() == [300] * 8
    K, src, _ = resolve_K(path, X.shape, schedule=dict(kind="linear", kmin=2, kmax=256, power=2.5, schedule_file=None))
    assert src.kind == "flags" and K.tolist() == Schedule("linear", 2, 256, 8).K.tolist()
    K, src, _ = resolve_K(path, X.shape, schedule=dict(kind=None, kmin=2, kmax=None, power=2.5, schedule_file=None))
    assert src.kind == "sidecar"
    K, src, sched = resolve_K(None, X.shape)
    assert K is None and src.kind == "inferred" and sched is None
    with pytest.raises(EntropyCliffError, match="not both"):
        resolve_K(path, X.shape, K=300, schedule=s)


def test_report_json_keeps_reference_fields_and_values(cosine_dump):
    path, X, s = cosine_dump
    rep = measure_corpus(path, progress=False)
    d = json.loads(rep.to_json())
    assert {"N", "L", "log2_N", "t_star_theory", "t_star_budget", "t_star_threshold", "positions"} <= set(d)
    assert d["version"] == entropy_cliff.__version__
    assert d["schedule"] == {"kind": "cosine", "kmin": 2, "kmax": 256, "power": None}
    assert d["K_source"]["kind"] == "sidecar" and "cos.meta.json" in d["K_source"]["detail"]
    assert d["bootstrap"] is None and d["N"] == 500 and d["L"] == 8
    assert d["t_star_theory"] == theory.t_star(500, s.K)
    assert [list(p)[:8] for p in d["positions"]] == [list(SPEC_COLUMNS)] * 8
    H = brute_H_prefix(X)
    assert [p["H_prefix"] for p in d["positions"]] == pytest.approx(H, abs=1e-9)
    assert [p["H_cond"] for p in d["positions"]] == pytest.approx(np.diff(H, prepend=0.0), abs=1e-9)


def test_report_tables_agree(cosine_dump):
    path, _, _ = cosine_dump
    rep = measure_corpus(path, progress=False, bootstrap=5, seed=1)
    assert rep.bootstrap == {"B": 5, "level": 0.95, "seed": 1}
    pdf, pldf = rep.to_pandas(), rep.to_polars()
    assert list(pdf.columns) == list(pldf.columns) and list(pdf.columns)[:8] == list(SPEC_COLUMNS)
    assert "H_cond_ci_low" in pdf.columns
    np.testing.assert_allclose(pdf["H_cond"], rep.measurement.H_cond)
    np.testing.assert_allclose(pldf["H_prefix"].to_numpy(), rep.measurement.H_prefix)
    rows = rep.csv_rows()
    assert list(rows[0])[:6] == ["file", "N", "t_star_theory", "t_star_budget", "t_star_threshold", "t_star_sustained"]
    assert rows[3]["t"] == 4 and rows[3]["file"] == str(path)
    text = rep.to_csv()
    assert text.count("\n") == 9 and not text.endswith("\n\n")


def test_extension_points(cosine_dump):
    path, _, _ = cosine_dump
    rep = measure_corpus(path, progress=False)
    rep.add_field("engine", {"name": "numba", "workers": 1})
    rep.add_column("H_cond_pop", rep.measurement.H_cond_mm + 1.0)
    d = rep.to_dict()
    assert d["engine"] == {"name": "numba", "workers": 1}
    assert [p["H_cond_pop"] for p in d["positions"]] == pytest.approx(rep.measurement.H_cond_mm + 1.0)
    assert "H_cond_pop" in rep.to_pandas().columns and "H_cond_pop" in rep.csv_rows()[0]
    with pytest.raises(EntropyCliffError, match="core"):
        rep.add_field("N", 3)
    with pytest.raises(EntropyCliffError, match="core"):
        rep.add_column("H_cond", np.zeros(8))
    with pytest.raises(EntropyCliffError, match="expected 8 values"):
        rep.add_column("x", np.zeros(7))


def test_array_source_is_inferred():
    X = np.array([[0, 1], [1, 1], [2, 0], [2, 1]])
    rep = measure_corpus(X, progress=False)
    assert rep.file is None and rep.K_source.kind == "inferred" and rep.K.tolist() == [3, 3]
    assert rep.to_dict()["schedule"] is None


def test_compare_warns_when_a_variable_dump_is_taken_as_constant(tmp_path, cosine_dump):
    path, X, _ = cosine_dump
    bare = tmp_path / "bare.npy"
    np.save(bare, X)  # no sidecar: K_t inferred
    reps = compare_corpora([path, bare], labels=["with sidecar", "bare"], progress=False)
    assert reps[0].warnings == [] and reps[0].label == "with sidecar"
    assert len(reps[1].warnings) == 1 and "largest token grows" in reps[1].warnings[0]
    assert reps[1].K_source.kind == "inferred"
    assert looks_variable([X]) and not looks_variable([np.random.default_rng(0).integers(0, 256, (500, 8))])
    with pytest.raises(EntropyCliffError, match="1 labels for 2"):
        compare_corpora([path, bare], labels=["x"])


def test_bootstrap_size_refusals():
    check_bootstrap_fits(200, 1_280_000, 256, memory_bytes=16 << 30)  # the usual request fits
    with pytest.raises(EntropyCliffError, match="TiB"):
        check_bootstrap_fits(10**11, 400, 256, memory_bytes=16 << 30)
    with pytest.raises(EntropyCliffError, match="draw"):
        check_bootstrap_fits(10**7, 1_280_000, 2, memory_bytes=16 << 30)
    # B and the level are refused before the corpus is read (this path does not exist)
    with pytest.raises(EntropyCliffError, match="bootstrap must be >= 0, got -1"):
        measure_corpus("no/such/corpus.npy", bootstrap=-1)
    with pytest.raises(EntropyCliffError, match="1.5"):
        measure_corpus("no/such/corpus.npy", bootstrap=20, confidence=1.5)


def test_rows_measures_the_first_rows_with_the_whole_corpus_K(tmp_path, cosine_dump):
    path, X, s = cosine_dump
    for n in (2, 37, 500):
        rep = measure_corpus(path, rows=n, progress=False)
        assert rep.N == n and rep.K.tolist() == s.K.tolist() and rep.K_source.kind == "sidecar"
        assert rep.measurement.H_cond == pytest.approx(np.diff(brute_H_prefix(X[:n]), prepend=0.0), abs=1e-9)
        assert rep.t_star_theory == theory.t_star(n, s.K)
        assert rep.to_dict()["rows"] == {"measured": n, "of": 500}
    assert "rows" not in measure_corpus(path, progress=False).to_dict()
    for bad in (1, 501, 0):
        with pytest.raises(EntropyCliffError, match=f"rows = {bad}: .*N = 500"):
            measure_corpus(path, rows=bad, progress=False)
    with pytest.raises(EntropyCliffError, match="rows = 2: .*local engine"):
        measure_corpus(path, rows=2, workers=2)
    meta = path.with_suffix(".meta.json")  # the sidecar is checked against all N rows, not the n measured
    d = json.loads(meta.read_text())
    meta.write_text(json.dumps(d | {"N": 100}))
    with pytest.raises(EntropyCliffError, match="'N' = 100 but the array has N = 500"):
        measure_corpus(path, rows=100, progress=False)
    # a sharded dump: the first rows cross shard borders; without a sidecar K_t is inferred from every row
    d_ = tmp_path / "shards"
    d_.mkdir()
    Y = X.astype(np.uint16)
    Y[-1, 0] = 999  # the largest token sits in the last row
    for i, part in enumerate(np.split(Y, [100, 100, 260])):
        np.save(d_ / f"shard-{i:05d}.npy", part)
    rep = measure_corpus(d_, rows=150, progress=False)
    assert rep.N == 150 and rep.K.tolist() == [1000] * 8 and rep.K_source.kind == "inferred"
    assert rep.measurement.K_inferred and "all 500 rows" in rep.K_source.detail
    ref = measure_corpus(Y[:150], K=1000, progress=False)
    assert rep.measurement.H_cond == pytest.approx(ref.measurement.H_cond, abs=1e-12)
    assert rep.t_stars() == ref.t_stars()


def test_entropy_curve_from_a_bare_H_list_matches_the_report(cosine_dump):
    from entropy_cliff.plots import EntropyCurve

    path, _, s = cosine_dump
    rep = measure_corpus(path, progress=False, epsilon=1.0)
    c = rep.entropy_curve()
    bare = EntropyCurve.from_entropies("x", rep.measurement.H_cond.tolist(), s.K, 500, epsilon=1.0)
    assert (c.t_star_empirical, c.t_star_threshold, c.t_star_theory) == \
           (rep.t_star_sustained, rep.t_star_threshold, rep.t_star_theory) == \
           (bare.t_star_empirical, bare.t_star_threshold, bare.t_star_theory)
    assert c.t_star_threshold is not None
    np.testing.assert_allclose(bare.remaining, rep.remaining_budget)
    np.testing.assert_allclose(bare.log2_K, np.log2(s.K))


def test_kmax_without_a_schedule_kind_is_refused_not_ignored(tmp_path):
    X = np.random.default_rng(0).integers(0, 8, (50, 4))
    with pytest.raises(EntropyCliffError, match="kmax = 1024 given without a schedule kind"):
        measure_corpus(X, schedule=dict(kind=None, kmin=2, kmax=1024, power=2.5, schedule_file=None))


def test_dask_engine_refuses_other_formats_before_reading_them(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"class_id": 0, "tokens": [1, 2]}\n' * 4)
    with pytest.raises(EntropyCliffError, match="dask engine reads .npy files or shard directories, not titok-jsonl"):
        measure_corpus(p, workers=1, read_opts={"view": "all"})
    with pytest.raises(EntropyCliffError, match="not in-memory arrays"):
        measure_corpus(np.zeros((4, 2), np.uint8), workers=1)


def test_rows_infers_K_like_the_whole_corpus_for_uint64_tokens():
    X = np.zeros((6, 3), np.uint64)
    X[5, 0] = 2**63  # beyond the 2^62 limit: refused with or without rows, never wrapped to a negative K
    X[1, 1] = 1
    for kw in ({}, {"rows": 3}):
        with pytest.raises(EntropyCliffError, match="> 2\\^62 entries"):
            measure_corpus(X, **kw)
    X[5, 0] = 2**40
    assert measure_corpus(X, rows=3).K.tolist() == [2**40 + 1] * 3
