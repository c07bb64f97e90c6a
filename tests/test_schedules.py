import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from entropy_cliff import theory
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule

# SPEC §3 check values: L = 256, K_min = 2, 256x256 images, N = 1.28M.
TABLE2 = [("constant", 16384, 1.0, 16384.0, 0.0547, 2), ("constant", 8192, 1.0, 8192.0, 0.0508, 2),
          ("linear", 16384, 1.0, 8193.0, 0.0490, 4), ("cosine", 16384, 1.0, 5963.7, 0.0443, 9),
          ("power", 16384, 2.5, 4696.3, 0.0411, 12), ("cosine", 11264, 1.0, 4100.4, 0.0422, 9)]


@pytest.mark.parametrize(("kind", "kmax", "p", "mean_k", "bpp", "ts"), TABLE2)
def test_spec_table(kind, kmax, p, mean_k, bpp, ts):
    s = Schedule(kind, 2, kmax, 256, p)
    assert round(s.mean_K, 1) == mean_k
    assert round(s.bpp(256, 256), 4) == bpp
    assert theory.t_star(1_280_000, s.K) == ts


@given(st.sampled_from(["linear", "cosine", "power"]), st.integers(1, 5000), st.integers(0, 20000),
       st.integers(2, 400), st.floats(0.2, 5))
def test_ramps_are_monotone_and_hit_both_ends(kind, kmin, extra, L, p):
    s = Schedule(kind, kmin, kmin + extra, L, p)
    assert s.K[0] == kmin and s.K[-1] == kmin + extra
    assert np.all(np.diff(s.K) >= 0)
    assert s.capacity == pytest.approx(np.cumsum(np.log2(s.K)))


def test_cosine_formula():
    s = Schedule("cosine", 2, 1026, 5)
    u = np.arange(5) / 4
    assert list(s.K) == list(np.floor(2 + 1024 * (1 - np.cos(np.pi * u / 2)) + 0.5).astype(int))


def test_custom_from_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([2, 4, 8]))
    (tmp_path / "b.meta.json").write_text(json.dumps({"K": [3, 5]}))
    (tmp_path / "c.txt").write_text("7, 9\n11")
    assert list(Schedule.from_file(tmp_path / "a.json").K) == [2, 4, 8]
    assert list(Schedule.from_file(tmp_path / "b.meta.json").K) == [3, 5]
    s = Schedule.from_file(tmp_path / "c.txt")
    assert (s.kind, s.kmin, s.kmax, list(s.K)) == ("custom", 7, 11, [7, 9, 11])
    (tmp_path / "bad.txt").write_text("1 two 3")
    with pytest.raises(EntropyCliffError):
        Schedule.from_file(tmp_path / "bad.txt")


def test_dict_round_trip():
    s = Schedule("power", 2, 1024, 32, 2.5)
    assert Schedule.from_dict(s.to_dict(), 32) == s


@pytest.mark.parametrize("args", [("cosine", 10, 5, 8), ("wavy", 2, 5, 8), ("linear", 0, 5, 8), ("linear", 2, 5, 0),
                                  ("power", 2, 5, 8, -1.0)])
def test_bad_schedules(args):
    with pytest.raises(EntropyCliffError):
        Schedule(*args)
