import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from entropy_cliff import theory
from entropy_cliff.errors import EntropyCliffError


@pytest.mark.parametrize(("N", "expected"), [(2**28, 2), (2**28 + 1, 3), (2**14, 1), (2**14 + 1, 2), (2**42, 3), (2**42 + 1, 4)])
def test_t_star_exact_at_boundaries(N, expected):
    assert theory.t_star(N, 16384) == expected
    assert theory.t_star(N, [16384] * 8) == expected


@given(st.integers(2, 2**80), st.integers(2, 2**24))
def test_t_star_uniform_is_smallest_t_with_K_pow_t_at_least_N(N, K):
    t = theory.t_star(N, K)
    assert K**t >= N
    assert K ** (t - 1) < N


@given(st.integers(2, 2**40), st.lists(st.integers(1, 5000), min_size=1, max_size=30))
def test_t_star_schedule_matches_integer_products(N, Ks):
    t = theory.t_star(N, Ks)
    prods = np.cumprod([1] + Ks, dtype=object)
    if t is None:
        assert prods[-1] < N
    else:
        assert prods[t] >= N and prods[t - 1] < N


@given(st.integers(2, 2**20), st.integers(2, 2**16))
def test_half_utilization_equals_squared_data(N, K):
    # u C(t) >= log2 N  <=>  C(t) >= log2 N^2
    assert theory.t_star(N, K, utilization=0.5) == theory.t_star(N * N, K)
    assert theory.t_star(N, [K] * 64, utilization=0.5) == theory.t_star(N * N, [K] * 64)


def test_table1_check_values():
    expected = {"CIFAR-10/100": (15.6, 2), "COCO": (16.9, 2), "ImageNet-1K": (20.3, 2), "CC12M": (23.5, 2),
                "LAION-400M": (28.6, 3), "LAION-5B": (32.2, 3)}
    for d in theory.DATASETS:
        log2n, ts = expected[d.name]
        assert round(math.log2(d.N), 1) == log2n
        assert theory.t_star(d.N, 16384) == ts


def test_thresholds_check_values():
    ths = {th.t_star: th for th in theory.thresholds(1_280_000, 16384)}
    assert [ths[t].log2_N_min for t in (2, 3, 4, 5)] == [14.0, 28.0, 42.0, 56.0]
    assert round(ths[3].times_N, 1) == 209.7
    assert round(ths[4].times_N / 1e6, 1) == 3.4
    assert ths[4].N_min == pytest.approx(4.4e12, rel=0.01)
    assert ths[2].reached and not ths[3].reached


def test_thresholds_follow_a_variable_schedule():
    K = [2, 4, 8, 16, 32, 64]
    ths = theory.thresholds(1000, K)
    assert [th.log2_N_min for th in ths] == pytest.approx(np.cumsum(np.log2(K))[:-1][: len(ths)])
    assert [th.t_star for th in ths] == list(range(2, 2 + len(ths)))


def test_bound_is_prop1():
    N, K = 1_280_000, np.array([16384, 16384, 16384, 16384])
    b = theory.bound(N, K)
    assert b == pytest.approx([14.0, math.log2(N) - 14.0, 0.0, 0.0])
    b_u = theory.bound(N, K, utilization=0.5)
    assert b_u == pytest.approx([7.0, 7.0, math.log2(N) - 14.0, 0.0])


def test_remaining_budget_and_capacity():
    K = [2, 8, 1024]
    assert theory.capacity(K) == pytest.approx([1, 4, 14])
    assert theory.remaining_budget(2**10, K) == pytest.approx([10, 9, 6])


@pytest.mark.parametrize(("text", "value"), [("1.28e6", 1_280_000), ("1280000", 1_280_000), ("400M", 400_000_000),
                                             ("5B", 5_000_000_000), ("50K", 50_000), ("2^28+1", 2**28 + 1),
                                             ("2**10", 1024), ("1_000", 1000), (16384, 16384)])
def test_parse_count(text, value):
    assert theory.parse_count(text) == value


@pytest.mark.parametrize("text", ["abc", "1.5", "-3", "0", "", "1e-3", "2^", "12Q"])
def test_parse_count_rejects(text):
    with pytest.raises(EntropyCliffError):
        theory.parse_count(text)


def test_t_star_rejects_bad_input():
    with pytest.raises(EntropyCliffError):
        theory.t_star(1, 16384)
    with pytest.raises(EntropyCliffError):
        theory.t_star(100, 16384, utilization=1.5)
    assert theory.t_star(100, 1) is None
    assert theory.t_star(10**9, [2, 2, 2]) is None
