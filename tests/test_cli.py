"""The entropy-cliff command line, run in-process through its console entry point."""

import json
import math

import numpy as np

import entropy_cliff
import pytest

from entropy_cliff import theory
from entropy_cliff.io import save_tokens
from entropy_cliff.schedules import Schedule
from helpers import run


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def test_predict_json(capsys):
    d = run_json(capsys, "predict", "--N", "1.28e6", "--K", "16384")
    assert d["t_star"] == 2 and d["log2_N"] == pytest.approx(math.log2(1.28e6))
    assert len(d["bound"]) == 256 and d["bound"][:3] == pytest.approx([14.0, math.log2(1.28e6) - 14, 0.0])
    th = {t["t_star"]: t for t in d["thresholds"]}
    assert th[3]["log2_N_min"] == 28.0 and round(th[3]["times_N"], 1) == 209.7


@pytest.mark.parametrize(("n", "ts"), [("2^28", 2), ("268435457", 3), ("400M", 3), ("5B", 3), ("50K", 2)])
def test_predict_t_star(capsys, n, ts):
    assert run_json(capsys, "predict", "--N", n, "--K", "16384")["t_star"] == ts


def test_predict_schedule_and_utilization(capsys):
    d = run_json(capsys, "predict", "--N", "1.28e6", "--schedule", "linear", "--kmin", "2", "--kmax", "16384")
    assert d["t_star"] == 4 and d["schedule"]["kind"] == "linear" and len(d["K"]) == 256
    d = run_json(capsys, "predict", "--N", "1.28e6", "--K", "16384", "--utilization", "0.5")
    assert d["t_star"] == 3 and d["bound"][0] == pytest.approx(7.0)


def test_predict_csv_and_table(capsys):
    code, out, _ = run(capsys, "predict", "--N", "1.28e6", "--K", "16384", "--format", "csv")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0] == "t,K,log2_K,capacity,remaining_budget,bound" and len(lines) == 257
    code, out, _ = run(capsys, "predict", "--N", "1.28e6", "--K", "16384")
    assert code == 0 and "t* = 2" in out and "209.7" in out


def test_schedule_json_and_table2(capsys):
    d = run_json(capsys, "schedule", "--schedule", "cosine", "--kmin", "2", "--kmax", "16384")
    assert round(d["mean_K"], 1) == 5963.7 and round(d["bpp"], 4) == 0.0443 and d["t_star"] == 9
    assert len(d["K"]) == 256 and d["capacity"][-1] == pytest.approx(sum(np.log2(d["K"])))
    rows = run_json(capsys, "schedule", "--table")["schedules"]
    assert [r["t_star"] for r in rows] == [2, 2, 4, 9, 12, 9]


def test_schedule_plot(capsys, tmp_path):
    code, _, err = run(capsys, "schedule", "--schedule", "power", "--kmax", "1024", "--length", "32",
                       "--plot", tmp_path / "k.png")
    assert code == 0 and (tmp_path / "k.png").read_bytes()[:4] == b"\x89PNG"


def test_help_lists_commands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(c in out for c in ("predict", "measure", "schedule", "compare", "assign"))


# ----------------------------------------------------------------------------------- measure

@pytest.fixture
def dump(tmp_path):
    rng = np.random.default_rng(0)
    s = Schedule("cosine", 2, 64, 6)
    X = np.stack([rng.integers(0, k, 400) for k in s.K], axis=1)
    return save_tokens(tmp_path / "tok.npy", X, s.K, s.to_dict(), labels=rng.integers(0, 3, 400)), X, s


def brute_H_prefix(X):
    out = []
    for t in range(1, X.shape[1] + 1):
        _, c = np.unique(X[:, :t], axis=0, return_counts=True)
        p = c / c.sum()
        out.append(float(-(p * np.log2(p)).sum()))
    return np.array(out)


def test_measure_json_reads_sidecar(capsys, dump):
    path, X, s = dump
    d = run_json(capsys, "measure", path)
    assert {"N", "L", "log2_N", "t_star_theory", "t_star_budget", "t_star_threshold", "positions"} <= set(d)
    assert d["N"] == 400 and d["L"] == 6 and d["K_source"]["kind"] == "sidecar" and d["version"] == entropy_cliff.__version__
    assert d["t_star_theory"] == theory.t_star(400, s.K)
    pos = d["positions"]
    assert [p["t"] for p in pos] == list(range(1, 7)) and [p["K"] for p in pos] == list(s.K)
    assert set(pos[0]) >= {"t", "K", "H_cond", "H_cond_mm", "H_prefix", "H_marginal", "utilization", "groups"}
    H = brute_H_prefix(X)
    assert [p["H_prefix"] for p in pos] == pytest.approx(H, abs=1e-9)
    assert [p["H_cond"] for p in pos] == pytest.approx(np.diff(H, prepend=0.0), abs=1e-9)
    # The rigorous bound: H_t <= min(log2 K_t, log2 N - H(X_<t)). Prop. 1's log2 N - C(t-1) assumes every
    # earlier position is fully used (H(X_<t) = C(t-1)) and can be exceeded on finite data.
    prev = np.concatenate([[0.0], H[:-1]])
    assert all(p["H_cond"] <= min(np.log2(p["K"]), d["log2_N"] - h) + 1e-9 for p, h in zip(pos, prev))


def test_measure_out_writes_three_files(capsys, dump, tmp_path):
    path, _, _ = dump
    code, out, err = run(capsys, "measure", path, "--out", tmp_path / "res")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["entropy.png", "measure.csv", "measure.json"]
    assert json.loads((tmp_path / "res" / "measure.json").read_text())["N"] == 400
    assert (tmp_path / "res" / "measure.csv").read_text().count("\n") == 7 and not (tmp_path / "res" / "measure.csv").read_text().endswith("\n\n")


def test_compare_figure(capsys, dump, tmp_path):
    path, X, s = dump
    other = save_tokens(tmp_path / "other" / "c.npy", np.minimum(X, 1), s.K, s.to_dict())
    d = run_json(capsys, "compare", path, other, "--out", tmp_path / "fig.png")
    assert [c["N"] for c in d["corpora"]] == [400, 400]
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------- bad input

def _save(tmp_path, name, arr, **kw):
    p = tmp_path / name
    np.save(p, arr, **kw)
    return p


BAD = {
    "missing": lambda t: ["measure", t / "nope.npy"],
    "text": lambda t: ["measure", (t / "text.npy", (t / "text.npy").write_text("1 2\n3 4\n"))[0]],
    "truncated": lambda t: ["measure", (t / "tr.npy", (t / "tr.npy").write_bytes(
        (_save(t, "full.npy", np.zeros((50, 8), np.int32))).read_bytes()[:300]))[0]],
    "float": lambda t: ["measure", _save(t, "f.npy", np.array([[0.5, 1.0], [2.0, 3.0]]))],
    "negative": lambda t: ["measure", _save(t, "neg.npy", np.array([[0, -1], [2, 3]], np.int16))],
    "object": lambda t: ["measure", _save(t, "o.npy", np.array([[1, None], [2, 3]], object), allow_pickle=True)],
    "rank": lambda t: ["measure", _save(t, "r.npy", np.zeros((2, 2, 2), np.int8))],
    "empty": lambda t: ["measure", _save(t, "e.npy", np.zeros((0, 5), np.int8))],
    "N<2": lambda t: ["measure", _save(t, "one.npy", np.zeros((1, 5), np.int8))],
    "token>=K_t": lambda t: ["measure", _save(t, "k.npy", np.array([[0, 5], [1, 2]], np.int8)),
                             "--schedule", "linear", "--kmin", "2", "--kmax", "5"],
    "token>=K": lambda t: ["measure", _save(t, "k2.npy", np.array([[0, 5], [1, 2]], np.int8)), "--K", "5"],
    "N unparsable": lambda t: ["predict", "--N", "lots", "--K", "16384"],
    "N non-positive": lambda t: ["predict", "--N", "-5", "--K", "16384"],
    "N one": lambda t: ["predict", "--N", "1", "--K", "16384"],
    "K unparsable": lambda t: ["predict", "--N", "1e6", "--K", "big"],
    "K zero": lambda t: ["predict", "--N", "1e6", "--K", "0"],
    "kmin>kmax": lambda t: ["schedule", "--schedule", "cosine", "--kmin", "100", "--kmax", "10"],
    "no K at all": lambda t: ["predict", "--N", "1e6"],
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_no_partial_files(capsys, tmp_path, case):
    argv = BAD[case](tmp_path)
    out_dir = tmp_path / "out"
    if argv[0] == "measure":
        argv += ["--out", out_dir]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("entropy-cliff: error:")
    assert "Traceback" not in err and out == ""
    assert not out_dir.exists()


def test_sidecar_k_violation(capsys, tmp_path):
    p = save_tokens(tmp_path / "t.npy", np.array([[0, 3], [1, 2]]), [2, 4], {"kind": "custom"})
    meta = json.loads((tmp_path / "t.meta.json").read_text())
    meta["K"] = [2, 3]
    (tmp_path / "t.meta.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "measure", p)
    assert code == 2 and "position 2" in err


def test_assign_writes_a_dump_that_measure_reads(capsys, tmp_path):
    from entropy_cliff.assign import brute_force_assign

    rng = np.random.default_rng(1)
    feats, code = rng.normal(size=(60, 5, 3)).astype(np.float32), rng.normal(size=(32, 3)).astype(np.float32)
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "c.npy", code)
    code_, _, err = run(capsys, "assign", tmp_path / "f.npy", tmp_path / "c.npy", "--schedule", "linear",
                        "--kmin", "2", "--threads", "1", "-o", tmp_path / "tok.npy")
    assert code_ == 0, err
    s = Schedule("linear", 2, 32, 5)
    np.testing.assert_array_equal(np.load(tmp_path / "tok.npy"), brute_force_assign(feats, code, s.K))
    d = run_json(capsys, "measure", tmp_path / "tok.npy")
    assert [p["K"] for p in d["positions"]] == list(s.K)
    code_, _, err = run(capsys, "assign", tmp_path / "f.npy", tmp_path / "f.npy", "--schedule", "cosine", "-o",
                        tmp_path / "bad.npy")
    assert code_ == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "bad.npy").exists()


def test_assign_unwritable_out_is_one_line_before_work(capsys, tmp_path, monkeypatch):
    import entropy_cliff.io as io

    loaded = []
    monkeypatch.setattr(io, "load_array", lambda *a, **k: loaded.append(a))
    (tmp_path / "file").write_text("x")
    code_, out, err = run(capsys, "assign", tmp_path / "f.npy", tmp_path / "c.npy", "--schedule", "cosine",
                          "-o", tmp_path / "file" / "tok.npy")
    assert code_ == 2 and out == "" and loaded == []  # refused before the inputs are even opened
    assert err.strip().splitlines() == [f"entropy-cliff: error: {tmp_path / 'file' / 'tok.npy'}: cannot write here (File exists)"]


def test_unwritable_out_is_one_line(capsys, dump, tmp_path):
    path, _, _ = dump
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, out, err = run(capsys, "measure", path, "--out", blocker / "res")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""


# ---------------------------------------------------------------------------- issue 10: everyday paths

def test_version_on_both_clis(capsys):
    from vcq.cli import main as vcq_main

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"entropy-cliff, version {entropy_cliff.__version__}"
    with pytest.raises(SystemExit) as e:
        vcq_main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vcq, version {entropy_cliff.__version__}"


@pytest.mark.parametrize(("n", "ts"), [("1,280,000", 2), ("1,280,000,000", 3)])
def test_n_with_thousands_separators(capsys, n, ts):
    d = run_json(capsys, "predict", "--N", n, "--K", "16384")
    assert d["t_star"] == ts and d["N"] == int(n.replace(",", ""))


@pytest.mark.parametrize("argv", [["predict", "--N", "1e400", "--K", "16"], ["predict", "--N", "2^5000", "--K", "16"],
                                  ["predict", "--N", "1e6", "--K", "1e30"], ["predict", "--N", "12,80,000", "--K", "16"]])
def test_out_of_range_numbers_are_one_line(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert argv[2] in err or argv[4] in err


def test_impossible_bootstrap_is_refused_at_once(capsys, dump, tmp_path):
    path, _, _ = dump
    code, out, err = run(capsys, "measure", path, "--bootstrap", "1e11", "--out", tmp_path / "res")
    assert code == 2 and "bootstrap: B = 100,000,000,000" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "res").exists()


def test_measure_csv_carries_file_n_and_t_stars(capsys, dump):
    path, X, s = dump
    code, out, _ = run(capsys, "measure", path, "--format", "csv")
    lines = out.split("\n")
    assert code == 0 and lines[-1] == "" and lines[-2] != "" and len(lines) == 8  # header, 6 rows, final newline
    head = lines[0].split(",")
    assert head[:6] == ["file", "N", "t_star_theory", "t_star_budget", "t_star_threshold", "t_star_sustained"]
    first = dict(zip(head, lines[1].split(",")))
    assert first["file"] == str(path) and first["N"] == "400" and first["t_star_theory"] == str(theory.t_star(400, s.K))


def test_not_reached_is_one_symbol(capsys, tmp_path):
    X = np.repeat(np.arange(4)[:, None], 3, axis=1).repeat(50, axis=0)  # 4 distinct rows x 50: H_t never hits 0
    p = save_tokens(tmp_path / "rep.npy", X, [1024] * 3, {"kind": "constant", "kmin": 1024, "kmax": 1024, "power": None})
    d = run_json(capsys, "measure", p)
    assert d["t_star_theory"] == 1 and d["t_star_budget"] is None
    code, out, _ = run(capsys, "measure", p)
    assert "budget (log2 N - H(X<=t) <= 0.5): -   " in out and "None" not in out
    code, out, _ = run(capsys, "predict", "--N", "1e9", "--schedule", "linear", "--kmin", "2", "--kmax", "4", "--length", "3")
    assert "None" not in out and "t* = -" in out


def test_compare_reports_k_source_and_warns(capsys, dump, tmp_path):
    path, X, s = dump
    np.save(tmp_path / "bare.npy", X)
    code, out, err = run(capsys, "compare", path, tmp_path / "bare.npy")
    assert code == 0 and "sidecar (tok.meta.json" in out and "inferred (largest token + 1" in out
    warns = [line for line in err.splitlines() if "warning" in line]
    assert len(warns) == 1 and "bare.npy" in warns[0]
    d = run_json(capsys, "compare", path, tmp_path / "bare.npy")
    assert [c["K_source"]["kind"] for c in d["corpora"]] == ["sidecar", "inferred"]


def test_output_checked_before_work(capsys, dump, tmp_path, monkeypatch):
    """An unwritable --out fails before the measurement starts."""
    import entropy_cliff.report as report

    path, _, _ = dump
    called = []
    monkeypatch.setattr(report, "measure_corpus", lambda *a, **k: called.append(1))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, "measure", path, "--out", blocker / "res")
    assert code == 2 and str(blocker / "res") in err and called == []
    code, _, err = run(capsys, "compare", path, "--out", blocker / "f.png")
    assert code == 2 and str(blocker) in err and called == []


@pytest.mark.parametrize(("exc", "line"), [(KeyboardInterrupt(), "entropy-cliff: interrupted"),
                                            (KeyboardInterrupt("checkpoint at step 300 (resume with --resume)"),
                                             "entropy-cliff: interrupted: checkpoint at step 300 (resume with --resume)")])
def test_ctrl_c_is_one_line_exit_130(capsys, dump, monkeypatch, exc, line):
    import entropy_cliff.report as report

    def interrupt(*a, **k):
        raise exc

    monkeypatch.setattr(report, "measure_corpus", interrupt)
    code, out, err = run(capsys, "measure", dump[0])
    assert code == 130 and err == line + "\n" and out == ""


def test_ctrl_c_in_vcq_is_one_line_exit_130(capsys, monkeypatch):
    import click

    from vcq.cli import main as vcq_main

    @vcq_main.command("boom-test")
    def boom():
        raise KeyboardInterrupt("checkpoint at step 7")

    try:
        with pytest.raises(SystemExit) as e:
            vcq_main(["boom-test"])
        assert e.value.code == 130 and capsys.readouterr().err == "vcq: interrupted: checkpoint at step 7\n"
    finally:
        vcq_main.commands.pop("boom-test")
    assert isinstance(vcq_main, click.Group)


def test_runner_handles_abort_from_keyboard_interrupt(capsys):
    import click

    from entropy_cliff.cli import run_one_line_errors

    def invoke():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise click.exceptions.Abort() from e

    with pytest.raises(SystemExit) as e:
        run_one_line_errors("prog", invoke)
    assert e.value.code == 130 and capsys.readouterr().err == "prog: interrupted\n"


def test_figure_options(capsys, dump, tmp_path):
    path, _, _ = dump
    code, _, err = run(capsys, "compare", path, path, path, path, "--label", "a", "--label", "b", "--label", "c",
                       "--label", "d", "--symlog", "--bootstrap", "3", "--out", tmp_path / "f.png")
    assert code == 0, err
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"

def test_measure_bootstrap_reports_population_columns_and_marks_sparse_positions(capsys, tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "iid.npy"
    np.save(path, rng.choice(4, size=(400, 6), p=[0.5, 0.25, 0.125, 0.125]).astype(np.int16))
    d = run_json(capsys, "measure", path, "--bootstrap", "20")
    assert d["population"]["bootstrap"] == 20 and d["population"]["max_singleton_mass"] == 0.2
    first, last = d["positions"][0], d["positions"][-1]
    assert first["pop_status"] == "ok" and first["H_cond_ci_low"] <= first["H_cond_pop"] <= first["H_cond_ci_high"]
    assert last["pop_status"] == "sparse" and last["singleton_mass"] > 0.2
    assert last["H_cond_pop"] is None and last["H_cond_ci_low"] is None and last["H_cond_ci_high"] is None
    code, out, err = run(capsys, "measure", path, "--bootstrap", "20")
    assert code == 0 and "H_t pop" in out and out.count("†") == 1 + sum(p["pop_status"] == "sparse" for p in d["positions"])
    assert "not identifiable" in out


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "entropy_cliff.cli", "predict", "--N", "1e6", "--K", "16384",
                        "--format", "json"], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["t_star"] == 2
