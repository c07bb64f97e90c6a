"""The experiment suite: figure pipeline on tiny inputs, frontier search, replication summaries,
JPEG anchor, language corpus helpers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from entropy_cliff import theory
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.frontier import best_for_target, frontier, member
from entropy_cliff.io import save_tokens
from entropy_cliff.language import dedupe, entropy_record, windows
from entropy_cliff.paper_figures import OUTPUTS, Inputs, build
from entropy_cliff.theory import t_star_sustained
from entropy_cliff.replication import collect, regime
from entropy_cliff.schedules import Schedule


def _dump(path, kind, N=400, L=8, kmax=64, seed=0):
    s = Schedule(kind, kmax if kind == "constant" else 2, kmax, L)
    rng = np.random.default_rng(seed)
    X = np.minimum(rng.integers(0, kmax, size=(N, L)), s.K - 1)
    X[:, L // 2:] = X[:, :1] % s.K[L // 2:]  # the tail is a function of the first token
    return save_tokens(path, X, s.K, s.to_dict(), {}, rng.integers(0, 3, N))


def _run_record(name, schedule, L=8):
    H = list(np.linspace(3, 0, L))
    return {"name": name, "schedule": schedule, "kmin": 2, "kmax": 64, "power": None, "regularized": True,
            "steps": 10, "seed": 0, "N": 400, "t_star_theory": 2, "t_star_sustained": t_star_sustained(H),
            "psnr": 20.0, "psnr_jpeg": 25.0, "dfid_nocfg": 3.0, "dfid_cfg": 2.0, "dfid_cfg_aware": 1.5,
            "precision": 0.5, "recall": 0.4, "memorization": 0.1, "probe_first10": 0.3, "probe_all": 0.6,
            "memorization_prefix_share": list(np.linspace(1, 0.1, L)),
            "H_cond": H, "nll_train": [0.1] * L, "nll_val": [2.0] * L,
            "regime": regime([0.1] * L, [2.0] * L, t_star_sustained(H))}


def test_figure_pipeline_on_tiny_inputs(tmp_path):
    demo = {k: _dump(tmp_path / f"demo_{k}.npy", k, seed=i) for i, k in enumerate(("constant", "cosine"))}
    rep = tmp_path / "replication.json"
    rep.write_text(json.dumps({"runs": [_run_record("c", "constant"), _run_record("v", "cosine")]}))
    lang = tmp_path / "language.json"
    lang.write_text(json.dumps({"N": 200, "L": 16, "vocab": 300, "H_cond": list(np.linspace(8, 0, 16)),
                                "t_star_sustained": 15}))
    grid = tmp_path / "results" / "ar" / "c"
    grid.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(grid / "grid_cfg_aware.png")
    inp = Inputs(demo=demo, replication_dumps=demo, replication=rep, language=lang, subset_sizes=(100, 200),
                 replication_results=tmp_path / "results")
    out = tmp_path / "figs"
    done = build(inp, out)
    assert set(done) == set(OUTPUTS)
    for name, paths in done.items():
        assert not isinstance(paths, str), name
        assert all(p.is_file() and p.stat().st_size > 0 for p in paths), name
    assert json.loads(rep.read_text())["runs"][0]["name"] == "c"  # inputs untouched
    t1 = (out / "tables" / "table1.csv").read_text().splitlines()
    assert any(line.startswith("ImageNet-1K,") and line.endswith(",2,") for line in t1)
    rows = (out / "tables" / "tstar_vs_N.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 * 3  # two dumps x (100, 200, all 400)
    for line in rows:
        dump, _, n, _, uniform, capacity = line.split(",")
        K = Schedule(dump, 64 if dump == "constant" else 2, 64, 8).K
        assert int(capacity) == theory.t_star(int(n), K)
        assert int(uniform) == next(t for t in range(1, 9) if 64**t >= int(n))  # integer rule, K_max = 64
    md = (out / "tables" / "replication.md").read_text()
    assert "| constant K=64 | yes | 0 | 400 |" in md


def test_missing_replication_is_skipped(tmp_path):
    inp = Inputs(demo={}, replication_dumps={}, replication=tmp_path / "no.json", language=tmp_path / "no.json")
    done = build(inp, tmp_path / "figs", ["replication_nll", "table1"])
    assert done["replication_nll"].startswith("skipped")
    assert (tmp_path / "figs" / "tables" / "table1.md").is_file()


@pytest.mark.parametrize("N,kmax,L", [(2000, 1024, 32), (1_281_167, 16384, 256), (50, 16, 6)])
def test_best_for_target_is_the_largest_mean_K_on_a_grid(N, kmax, L):
    for T in range(1, min(L, 10) + 1):
        rows = {r["family"]: r for r in best_for_target(T, N, kmax, L)}
        for fam, grid in (("constant", range(2, kmax + 1, max(1, kmax // 200))),
                          ("cosine", range(2, kmax + 1, max(1, kmax // 200))),
                          ("power", np.geomspace(1e-3, 1e3, 400))):
            ok = [member(fam, p, 2, kmax, L) for p in grid]
            ok = [s for s in ok if (theory.t_star(N, s.K) or math.inf) >= T]
            r = rows[fam]
            if r["feasible"]:
                assert (theory.t_star(N, member(fam, r["param"], 2, kmax, L).K) or math.inf) >= T
                assert all(s.mean_K <= r["mean_K"] + 1e-9 for s in ok)
            else:
                assert not ok


def test_frontier_and_target_errors():
    pts = frontier(2000, 1024, 32, points=10)
    assert {p["family"] for p in pts} == {"constant", "linear", "cosine", "power"}
    with pytest.raises(EntropyCliffError, match="target t"):
        best_for_target(40, 2000, 1024, 32)


def test_schedule_target_t_cli():
    from entropy_cliff.cli import cli

    r = CliRunner().invoke(cli, ["schedule", "--target-t", "9", "--N", "1281167", "--kmax", "16384",
                                 "--length", "256", "--format", "json"])
    assert r.exit_code == 0, r.output
    fam = {x["family"]: x for x in json.loads(r.output)["families"]}
    assert fam["cosine"]["param"] == 2 and fam["cosine"]["t_star"] == 9  # the paper's cosine schedule
    assert not fam["linear"]["feasible"]
    assert fam["constant"]["param"] == 5  # 5^8 < N <= 6^8


def test_regime():
    r = regime([5, 0.2, 0.4], [5, 3, 1.5], 2)
    assert r["reached"] and r["train_after"] == pytest.approx(0.3) and r["val_after"] == pytest.approx(2.25)
    assert not regime([5, 0.2, 0.9], [5, 3, 1.5], 2)["reached"]


def test_collect_lists_missing_runs(tmp_path):
    res = tmp_path / "ar" / "a"
    res.mkdir(parents=True)
    (res / "nll.json").write_text(json.dumps({"train_rows": 100, "step": 5, "data_H_cond_bits": [2.0, 0.1],
                                              "train_nll_bits": [2.0, 0.2], "val_nll_bits": [3.0, 2.0]}))
    (res / "config.json").write_text(json.dumps({"model": {"K": [4, 4]}}))
    out = collect(tmp_path, [{"name": "a", "tok": "c", "regularized": False, "seed": 0},
                             {"name": "b", "tok": "c", "regularized": True, "seed": 0}],
                  {"c": {"schedule": "constant", "kmin": 4, "kmax": 4, "power": 1.0}})
    assert out["missing"] == ["b"]
    r = out["runs"][0]
    assert r["t_star_theory"] == theory.t_star(100, [4, 4]) and r["t_star_sustained"] == 2
    assert r["regime"]["reached"] and r["dfid_nocfg"] is None


def test_jpeg_anchor_stays_within_budget():
    pytest.importorskip("PIL")
    from entropy_cliff.schedules import bpp
    from vcq.jpeg_anchor import jpeg_at_bpp

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(32, 1, 1, 3))
    imgs = np.clip(base + rng.normal(0, 20, size=(32, 32, 32, 3)), 0, 255).astype(np.uint8)
    assert bpp([1024] * 32, 32, 32) == pytest.approx(0.3125)
    low, high = jpeg_at_bpp(imgs, [16] * 32), jpeg_at_bpp(imgs, [2**16] * 32)
    for r in (low, high):
        assert not r["within_budget"] or r["bpp"] <= r["bpp_target"]
    assert high["quality"] >= low["quality"] and high["psnr"] >= low["psnr"]


def test_dedupe_and_windows():
    assert dedupe(["a  b c d\n\nsecond paragraph here", "a b c d"], min_chars=3) == ["a b c d", "second paragraph here"]

    class Enc:
        def __init__(self, ids):
            self.ids = ids

    class Tok:
        def encode_batch(self, texts):
            return [Enc([ord(c) for c in t]) for t in texts]

    X = windows(["abcdefgh"], Tok(), L=4, stride=2)  # stream: abcdefgh\n\n (10 ids)
    assert X.tolist() == [[97, 98, 99, 100], [99, 100, 101, 102], [101, 102, 103, 104], [103, 104, 10, 10]]
    assert windows(["abcdefgh"], Tok(), L=4, stride=2, N=2, seed=1).shape == (2, 4)
    with pytest.raises(EntropyCliffError, match="fewer than N"):
        windows(["abcdefgh"], Tok(), L=4, N=5)
    rec = entropy_record(np.array([[1, 2], [1, 3], [2, 2], [2, 2]]), 4)
    assert rec["H_cond"][0] == pytest.approx(1.0) and rec["H_cond"][1] == pytest.approx(0.5)
    assert rec["t_star_sustained"] is None and rec["vocab"] == 4


def test_run_jobs_order_failures_and_resume(tmp_path):
    from entropy_cliff.jobs import Job, run_jobs

    ran: list[str] = []

    def act(name, fail=False):
        def f():
            if fail:
                raise RuntimeError("boom")
            ran.append(name)
        return f

    def jobs(fail_b):
        return [Job("a", act("a"), tmp_path / "a"), Job("b", act("b", fail_b), tmp_path / "b", ["a"]),
                Job("c", act("c"), tmp_path / "c", ["b"]), Job("d", act("d"), tmp_path / "d", ["a"])]

    assert run_jobs(jobs(True), workers=2, logfile=tmp_path / "log") == 2  # b failed, c skipped
    assert sorted(ran) == ["a", "d"] and not (tmp_path / "c").exists()
    assert "FAIL  b: boom" in (tmp_path / "log").read_text()
    ran.clear()
    assert run_jobs(jobs(False), workers=2) == 0  # resume: a and d are done, b then c run
    assert ran == ["b", "c"]
