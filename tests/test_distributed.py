"""The Dask engine against the single-machine kernel, on an in-process LocalCluster."""

import json

import numpy as np
import pytest

from entropy_cliff import measure as M
from entropy_cliff.cli import main
from entropy_cliff.errors import EntropyCliffError

distributed = pytest.importorskip("distributed")
from entropy_cliff.distributed import _windows, measure_distributed  # noqa: E402
from helpers import assert_same


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address="127.0.0.1:0") as cluster, distributed.Client(cluster) as c:
        yield c


def sharded(tmp_path, X, cuts):
    d = tmp_path / "dump"
    d.mkdir()
    for i, part in enumerate(np.split(X, cuts)):
        np.save(d / f"shard-{i:05d}.npy", part)
        np.save(d / f"shard-{i:05d}.labels.npy", np.zeros(part.shape[0], np.uint8))
    return d


def hard_corpus(rng, n=2400, L=10, alphabet=4, dtype=np.uint8):
    """Duplicates across shards, a heavy full-row duplicate, a heavy prefix, random rest."""
    X = rng.integers(0, alphabet, (n, L)).astype(dtype)
    X[: n // 4] = X[n // 2]  # a quarter of the rows: one row, spread over every shard
    X[n // 4 : n // 2, : L // 2] = X[n - 1, : L // 2]  # another quarter shares a half-length prefix
    return X[rng.permutation(n)]


def assert_same_population(a, b):
    pa, pb = a.population, b.population
    assert pa.reason == pb.reason and pa.bootstrap == pb.bootstrap and pa.confidence == pb.confidence
    np.testing.assert_array_equal(pa.singleton_mass, pb.singleton_mass)
    for x, y in ((pa.H_cond_pop, pb.H_cond_pop), (pa.ci, pb.ci)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize(("K", "kw", "B"), [
    (None, {}, 0),  # K inferred, one window (2 bits x 10 positions)
    (None, {}, 9),
    ("huge", {"heavy_rows": 40}, 6),  # one position per window: 10 levels of heavy prefixes, kernels run
    ("uint16", {"heavy_rows": 100, "block_rows": 700, "partitions": 3}, 6),  # 4 positions a window
    ("tiny", {"local_keys": 0, "partitions": 2}, 6),  # tiny early codebooks: 10 positions in one key,
    # an exchange for every prefix length
])
def test_dask_engine_equals_local_kernel(tmp_path, client, K, kw, B):
    rng = np.random.default_rng(7)
    if K == "uint16":
        X = hard_corpus(rng, L=12, alphabet=16384, dtype=np.uint16)
        X[:, :2] %= 3  # positions 1-2 well sampled, the rest 14-bit tokens
        K = [16384] * 12
    elif K == "tiny":
        K = [2, 2, 3, 4, 8, 16, 64, 256, 1024, 4096]
        X = (hard_corpus(rng, alphabet=2**16, dtype=np.int32) % np.array(K)).astype(np.int32)
    elif K == "huge":
        X = hard_corpus(rng)
        K = [2**50] * X.shape[1]
    else:
        X = hard_corpus(rng)
    d = sharded(tmp_path, X, [500, 501, 1700])
    m = measure_distributed(d, K, client=client, bootstrap=B, seed=11, **kw)
    local = M.measure(X, K, bootstrap=B, seed=11)
    assert_same(m, local)
    if B:  # the population columns: the same resamples, the same sums, the same estimate
        assert_same_population(m, local)
        pop = m.population.reason
        assert "ok" in pop and "sparse" in pop  # both kinds of position were compared
        assert not np.array_equal(m.ci, M.measure(X, K, bootstrap=B, seed=12).ci, equal_nan=True)
    else:
        assert m.population is None
    e = m.engine
    assert e["name"] == "dask" and e["workers"] == 2 and e["blocks"] >= 3
    assert e["scan_tasks"] == min(e["blocks"], e["partitions"])  # one histogram per run of blocks
    if "heavy_rows" in kw:  # heavy keys went on to longer prefixes
        assert e["heavy_groups"] > 0 and e["levels"] > 1
    if kw.get("heavy_rows") == 40:
        assert e["levels"] == 10 and e["rows_in_kernels"] > 0


@pytest.mark.parametrize("K", [None, [300] * 6])
def test_shards_of_different_widths_and_byte_orders_in_one_scan_task(tmp_path, client, K):
    """uint8, big-endian uint16 and uint16 shards, small blocks and one partition: every scan task
    holds blocks of several dtypes (one scan per dtype, none narrowed); equal to the local engine."""
    rng = np.random.default_rng(5)
    X = hard_corpus(rng, n=900, L=6, alphabet=300, dtype=np.uint16)
    X[:300] %= 256  # the uint8 shard
    d = tmp_path / "dump"
    d.mkdir()
    for i, (part, dt) in enumerate(zip(np.split(X, [300, 600]), ["u1", ">u2", "<u2"])):
        np.save(d / f"shard-{i:05d}.npy", part.astype(dt))
    m = measure_distributed(d, K, client=client, partitions=1, block_rows=128)
    assert m.engine["scan_tasks"] == 1 and m.engine["blocks"] == 9
    assert_same(m, M.measure(X, K))


@pytest.mark.parametrize("apart_at", [6, None])
def test_kernel_bootstrap_sums_stop_where_its_rows_are_apart_and_equal_the_sums_over_every_position(tmp_path, apart_at):
    """A partition kernel's population sums are computed up to the first prefix length where its
    rows are all apart and held constant after it: equal to the sums over all L positions."""
    from entropy_cliff import population as POP
    from entropy_cliff.distributed import _corpus, _kernel_task

    rng = np.random.default_rng(2)
    L = 10
    X = rng.integers(0, 50, (40, L)).astype(np.uint16)
    X[1::2, :5] = X[::2, :5]  # pairs sharing 5 tokens: apart at t = 6
    if apart_at is None:
        X[1::2] = X[::2]  # pairs of equal rows: never apart
    d = sharded(tmp_path, X, [15])
    bucket = (np.zeros(40, np.uint64), np.repeat(np.arange(20, dtype=np.uint64), 2), np.arange(40))
    S, G, n, (A, f1) = _kernel_task(_corpus(d), bucket, 2, 16, (5, 3))
    A_all, f1_all, _ = POP.prefix_group_sums([X], np.arange(40), L, 5, 3)
    assert n == 40 and A.shape == (6, L - 2)
    np.testing.assert_allclose(A, A_all[:, 3:], rtol=1e-12)
    np.testing.assert_array_equal(f1, f1_all[3:])


def test_windows_pack_exactly_64_bits():
    assert _windows(np.array([16384] * 10)) == [(0, 4), (4, 8), (8, 10)]
    assert _windows(np.array([2] * 70)) == [(0, 64), (64, 70)]
    assert _windows(np.array([1, 2**62, 4, 2**62])) == [(0, 3), (3, 4)]


def test_value_errors_match_the_local_engine(tmp_path, client):
    X = np.array([[0, 1], [1, 5], [2, 2]], np.int16)
    with pytest.raises(EntropyCliffError, match="position 2: token 5 >= K_t = 3"):
        measure_distributed(sharded(tmp_path, X, [1]), [3, 3], client=client)


def test_scheduler_without_workers_is_an_error_after_a_bounded_wait(tmp_path):
    X = np.zeros((4, 2), np.uint8)
    d = sharded(tmp_path, X, [2])
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as empty:
        with pytest.raises(EntropyCliffError, match="has no workers \\(waited 0.5 s\\)"):
            measure_distributed(d, scheduler=empty.scheduler_address, connect_timeout=0.5)
    with pytest.raises(EntropyCliffError, match="cannot reach the dask scheduler"):
        measure_distributed(d, scheduler="tcp://127.0.0.1:9", connect_timeout=0.5)


def test_cli_scheduler_without_workers_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    import entropy_cliff.distributed as D

    monkeypatch.setattr(D, "CONNECT_TIMEOUT", 0.5)
    d = sharded(tmp_path, np.zeros((4, 2), np.uint8), [2])
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as empty:
        with pytest.raises(SystemExit) as e:
            main(["measure", str(d), "--scheduler", empty.scheduler_address])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "no workers" in err


def test_local_engine_reports_itself_in_json(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.uint8).reshape(4, 3))
    with pytest.raises(SystemExit):
        main(["measure", str(tmp_path / "x.npy"), "--format", "json"])
    assert json.loads(capsys.readouterr().out)["engine"]["name"] == "local"


def test_cli_bootstrap_on_local_workers_equals_the_local_run(tmp_path, capsys):
    X = hard_corpus(np.random.default_rng(3), n=900, L=6)
    d = sharded(tmp_path, X, [300, 301])
    runs = []
    for engine in ([], ["--workers", "2"]):
        with pytest.raises(SystemExit) as e:
            main(["measure", str(d), "--bootstrap", "20", "--format", "json", *engine])
        assert e.value.code in (0, None)
        runs.append(json.loads(capsys.readouterr().out))
    local, dask = runs
    assert (local.pop("engine")["name"], dask.pop("engine")["name"]) == ("local", "dask")
    rows_l, rows_d = local.pop("positions"), dask.pop("positions")
    assert local == dask and local["population"]["bootstrap"] == 20
    statuses = [r["pop_status"] for r in rows_l]
    assert "ok" in statuses and "sparse" in statuses
    for a, b in zip(rows_l, rows_d, strict=True):
        assert a.keys() == b.keys()
        for f, v in a.items():
            if isinstance(v, float):
                assert b[f] == pytest.approx(v, abs=1e-9), f
            else:
                assert b[f] == v, f
