"""64-bit limits: huge codebooks give a correct answer or one line and exit 2, never a crash."""

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from entropy_cliff import measure as M
from entropy_cliff import theory
from entropy_cliff.errors import EntropyCliffError
from helpers import run


def one_line_exit_2(capsys, *argv):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("entropy-cliff: error:")
    return err


@pytest.fixture(scope="module")
def corpus256(tmp_path_factory):
    p = tmp_path_factory.mktemp("c") / "c256.npy"
    np.save(p, np.random.default_rng(0).integers(0, 50, (400, 256)).astype(np.uint8))
    return p


@pytest.mark.parametrize("exp", [56, 62])
def test_measure_under_a_huge_uniform_codebook_is_correct(capsys, corpus256, exp):
    code, out, err = run(capsys, "measure", corpus256, "--K", f"2^{exp}", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    ref = M.measure(np.load(corpus256))  # K inferred (50): same entropies, other K
    for p, h, hm, g in zip(d["positions"], ref.H_cond, ref.H_marginal, ref.groups):
        assert p["K"] == 2**exp and p["groups"] == g
        assert p["H_cond"] == pytest.approx(h, abs=1e-12) and p["H_marginal"] == pytest.approx(hm, abs=1e-12)
        assert p["utilization"] == pytest.approx(hm / exp, abs=1e-12)
    assert d["t_star_theory"] == 1


def test_measure_K_beyond_the_limit_is_one_line(capsys, corpus256):
    assert "2^62" in one_line_exit_2(capsys, "measure", corpus256, "--K", "2^62+1")
    assert "2^62" in one_line_exit_2(capsys, "measure", corpus256, "--K", "2^63")
    assert "2^62" in one_line_exit_2(capsys, "measure", corpus256, "--K", "2^70")


def test_library_refuses_codebooks_beyond_the_limit_and_huge_inferred_K():
    X = np.zeros((3, 2), np.uint64)
    with pytest.raises(EntropyCliffError, match="2\\^62"):
        M.measure(X, [2, 2**62 + 1])
    with pytest.raises(EntropyCliffError, match="2\\^62"):
        M.measure(X, np.array([2**63, 2], dtype=np.uint64))
    X[0, 0] = 2**62
    with pytest.raises(EntropyCliffError, match="2\\^62"):
        M.measure(X)  # K inferred = 2^62 + 1
    X[0, 0] = 2**62 - 1
    assert M.measure(X).K[0] == 2**62


def test_predict_K_beyond_the_limit_is_one_line(capsys):
    assert "2^62" in one_line_exit_2(capsys, "predict", "--N", "1e6", "--K", "2^70")


def test_predict_K_2_62_is_answered(capsys):
    code, out, err = run(capsys, "predict", "--N", "2^62+1", "--K", "2^62", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["t_star"] == 2 and [th["reached"] for th in d["thresholds"]][:2] == [True, False]


def test_predict_K_1_is_one_line_not_a_contradiction(capsys):
    assert "K = 1" in one_line_exit_2(capsys, "predict", "--N", "1e6", "--K", "1")
    assert theory.t_star(10**6, 1) is None


def test_thresholds_are_decided_in_integers():
    N = 2**56 + 1
    assert theory.t_star(N, 16384) == 5
    th = {t.t_star: t.reached for t in theory.thresholds(N, 16384)}
    assert th[5] is True and th[6] is False  # N > 2^56 (float log2 N == 56.0 said False)
    assert {t.t_star: t.reached for t in theory.thresholds(2**56, 16384)}[5] is False


@given(st.integers(2, 2**80), st.integers(2, 2**20), st.integers(2, 9))
def test_reached_agrees_with_t_star(N, K, upto):
    ts = theory.t_star(N, K)
    for th in theory.thresholds(N, K, upto=upto):
        assert th.reached == (ts >= th.t_star)
    Ks = [K, 2, K + 1, 3, 7]
    ts = theory.t_star(N, Ks)
    for th in theory.thresholds(N, Ks):
        assert th.reached == (ts is None or ts >= th.t_star)


def test_predict_table_says_reached_for_t_star(capsys):
    code, out, _ = run(capsys, "predict", "--N", "2^56+1", "--K", "16384")
    assert code == 0 and "t* = 5" in out
    row5 = next(line for line in out.splitlines() if line.split()[:2] == ["5", "56.000"])
    assert row5.split()[-1] == "yes" and math.log2(2**56 + 1) == 56.0
