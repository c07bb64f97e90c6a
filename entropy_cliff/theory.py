"""Entropy-cliff theory (paper §2.1): t*, the Proposition 1 bound, data thresholds.

With codebook sizes K_1..K_L and N training sequences:

- cumulative capacity ``C(t) = sum_{s<=t} log2 K_s`` (Eq. 2), remaining budget
  ``R(t) = log2 N - C(t-1)`` (what the paper's Fig. 2a plots);
- Proposition 1: ``H(X_t | X_<t) <= min(log2 K_t, max(0, log2 N - C(t-1)))``;
- ``t* = min {t : C(t) >= log2 N}`` (Eq. 1; ``ceil(log2 N / log2 K)`` for a uniform codebook);
- reaching ``t* = T`` needs ``log2 N > C(T-1)`` (uniform: ``(T-1) log2 K``).

The utilization-adjusted variant (paper remark after Prop. 1) replaces ``log2 K_t`` by
``u log2 K_t`` with ``0 < u <= 1``.

t* is exact at its boundaries: for ``u = 1`` the test ``C(t) >= log2 N`` is evaluated as the
integer comparison ``prod_{s<=t} K_s >= N`` (so N = 2^28, K = 16384 gives 2 and N = 2^28 + 1
gives 3), never as a float ceil of a float ratio.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np

from entropy_cliff.errors import EntropyCliffError

#: Largest supported codebook size K_t (tokens, K_t and their sums stay far inside int64/uint64).
MAX_CODEBOOK = 2**62

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
#: Largest count accepted by :func:`parse_count` (beyond it floats overflow: log2 N, 2^C(t) / N).
MAX_COUNT = 10**300
_THOUSANDS = re.compile(r"^\d{1,3}(,\d{3})+(\.\d*)?$")
_COUNT = re.compile(r"^\s*(?P<num>[0-9._,]+(?:[eE][+-]?[0-9]+)?)\s*(?P<suf>[kKmMbBgGtT]?)\s*$")
_POWER = re.compile(r"^\s*(?P<base>\d+)\s*(?:\^|\*\*)\s*(?P<exp>\d+)\s*(?:(?P<sign>[+-])\s*(?P<off>\d+))?\s*$")


def _limit(maximum: int) -> str:
    """A limit for people: ``2^62`` for a power of two, else ``1e+300``-style."""
    return f"2^{maximum.bit_length() - 1}" if maximum & (maximum - 1) == 0 else f"{maximum:.3g}"


def parse_count(text: str | int | float, what: str = "N", maximum: int = MAX_COUNT) -> int:
    """Parse a positive whole count: ``1.28e6``, ``1280000``, ``1,280,000``, ``400M``, ``5B``, ``50K``, ``2^28+1``.

    Decimal mantissas are parsed exactly (``1.28e6`` is 1280000, not a float near it). Commas must
    group thousands. A count above ``maximum`` (default :data:`MAX_COUNT`) is refused.
    """
    if isinstance(text, bool):
        raise EntropyCliffError(f"{what}: expected a number, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        s = str(text).strip()
        m = _POWER.match(s)
        if m:
            base, exp = int(m["base"]), int(m["exp"])
            if base > 1 and exp * math.log2(base) > maximum.bit_length() + 1:
                raise EntropyCliffError(f"{what}: {s!r} is out of range (at most {_limit(maximum)})")
            value = base**exp
            if m["off"]:
                value += int(m["off"]) if m["sign"] == "+" else -int(m["off"])
        else:
            m = _COUNT.match(s)
            if not m:
                raise EntropyCliffError(f"{what}: cannot parse {s!r} as a count (try 1.28e6, 1280000, 400M, 5B, 2^28)")
            num = m["num"]
            if "," in num:
                if not _THOUSANDS.match(num.split("e")[0].split("E")[0]):
                    raise EntropyCliffError(f"{what}: cannot parse {s!r}: commas must group thousands (1,280,000)")
                num = num.replace(",", "")
            if len(num) > 400:
                raise EntropyCliffError(f"{what}: {s[:20]!r}... is out of range (at most {_limit(maximum)})")
            try:
                d = Decimal(num.replace("_", "")) * _SUFFIX[m["suf"].upper()]
            except InvalidOperation:
                raise EntropyCliffError(f"{what}: cannot parse {s!r} as a count") from None
            if d.adjusted() > len(str(maximum)):
                raise EntropyCliffError(f"{what}: {s!r} is out of range (at most {_limit(maximum)})")
            if d != d.to_integral_value():
                raise EntropyCliffError(f"{what}: {s!r} is not a whole number")
            value = int(d)
    if value <= 0:
        raise EntropyCliffError(f"{what} must be positive, got {value}")
    if value > maximum:
        shown = f"{value:.3g}" if value.bit_length() < 1000 else f"2^{value.bit_length() - 1}+"
        raise EntropyCliffError(f"{what}: {shown} is out of range (at most {_limit(maximum)})")
    return value


def _check(N: int, K: np.ndarray, utilization: float) -> None:
    if N < 2:
        raise EntropyCliffError(f"N must be at least 2, got {N}")
    if np.any(K < 1):
        raise EntropyCliffError("codebook sizes must be positive")
    if not (0 < utilization <= 1):
        raise EntropyCliffError(f"utilization must be in (0, 1], got {utilization}")


def capacity(K: Sequence[int] | np.ndarray, utilization: float = 1.0) -> np.ndarray:
    """C(t) = u * sum_{s<=t} log2 K_s, t = 1..L (Eq. 2)."""
    return utilization * np.cumsum(np.log2(np.asarray(K, dtype=np.float64)))


def remaining_budget(N: int, K: Sequence[int] | np.ndarray, utilization: float = 1.0) -> np.ndarray:
    """R(t) = log2 N - C(t-1), t = 1..L (may go negative; Fig. 2a)."""
    c = capacity(K, utilization)
    return math.log2(N) - np.concatenate([[0.0], c[:-1]])


def bound(N: int, K: Sequence[int] | np.ndarray, utilization: float = 1.0) -> np.ndarray:
    """Proposition 1: min(u log2 K_t, max(0, log2 N - C(t-1))) per position t = 1..L.

    The ``log2 N - C(t-1)`` term presumes the earlier positions are fully used (H(X_<t) = C(t-1)).
    What always holds on data is ``H_t <= min(log2 K_t, log2 N - H(X_<t))``; where earlier
    positions are under-used a measured H_t can exceed this theoretical bound.
    """
    K = np.asarray(K, dtype=np.int64)
    _check(N, K, utilization)
    return np.minimum(utilization * np.log2(K.astype(np.float64)), np.maximum(0.0, remaining_budget(N, K, utilization)))


def t_star(N: int, K: int | Sequence[int] | np.ndarray, utilization: float = 1.0) -> int | None:
    """t* = min {t : C(t) >= log2 N} (Eq. 1), 1-based.

    ``K`` is one codebook size (uniform, unbounded length) or K_1..K_L; ``None`` when the L
    positions never exhaust the budget (or a uniform K = 1 never does).
    """
    if np.ndim(K) == 0:
        k = int(K)
        _check(N, np.array([k]), utilization)
        if k == 1:
            return None
        if utilization == 1.0:
            t, prod = 1, k
            while prod < N:
                t, prod = t + 1, prod * k
            return t
        return max(1, math.ceil(math.log2(N) / (utilization * math.log2(k)) - 1e-12))
    Ks = np.asarray(K, dtype=np.int64)
    _check(N, Ks, utilization)
    if utilization == 1.0:
        prod = 1
        for t, k in enumerate(Ks.tolist(), start=1):
            prod *= k
            if prod >= N:
                return t
        return None
    hit = np.nonzero(capacity(Ks, utilization) >= math.log2(N) - 1e-12)[0]
    return int(hit[0]) + 1 if hit.size else None


@dataclass(frozen=True)
class Threshold:
    """Data needed for t* to reach ``t_star``: ``log2 N > log2_N_min`` (= C(t_star - 1))."""

    t_star: int
    log2_N_min: float
    N_min: float
    times_N: float
    reached: bool

    def to_dict(self) -> dict:
        return {"t_star": self.t_star, "log2_N_min": self.log2_N_min, "N_min": self.N_min,
                "times_N": self.times_N, "reached": self.reached}


def thresholds(N: int, K: int | Sequence[int] | np.ndarray, utilization: float = 1.0,
               upto: int | None = None) -> list[Threshold]:
    """Data thresholds for t* = 2..upto: ``log2 N > C(T-1)``, also as N and as a multiple of N.

    ``upto`` defaults to max(5, t* + 2), capped at L for a variable schedule. For ``u = 1``
    "reached" is decided in integers (``N > prod_{s<T} K_s``), so it always agrees with
    :func:`t_star`. A uniform ``K = 1`` raises: it never reaches any t*.
    """
    uniform = np.ndim(K) == 0
    if uniform and int(K) == 1:
        raise EntropyCliffError("K = 1: a one-entry codebook carries no information, so no N reaches any t*")
    ts = t_star(N, K, utilization)
    top = upto if upto is not None else max(5, (ts or 1) + 2)
    if not uniform:
        top = min(top, len(K))
    Ks = np.full(top, int(K), dtype=np.int64) if uniform else np.asarray(K, dtype=np.int64)[:top]
    c = capacity(Ks, utilization)
    out = []
    prod = 1
    for T in range(2, top + 1):
        need = float(c[T - 2])
        prod *= int(Ks[T - 2])
        # u = 1: log2 N > C(T-1) is the integer test N > prod_{s<T} K_s (exact for any N)
        reached = N > prod if utilization == 1.0 else math.log2(N) > need
        out.append(Threshold(T, need, 2.0**need, 2.0**need / N, bool(reached)))
    return out


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str
    N: int


#: The paper's Table 1 (empirical rows).
DATASETS: tuple[Dataset, ...] = (
    Dataset("CIFAR-10/100", "Classification", 50_000),
    Dataset("COCO", "Detection/Segm.", 118_287),  # train2017; the paper's "118K", log2 N = 16.9
    Dataset("ImageNet-1K", "Classification (1K)", 1_280_000),
    Dataset("CC12M", "Image-text", 12_000_000),
    Dataset("LAION-400M", "Image-text", 400_000_000),
    Dataset("LAION-5B", "Image-text", 5_000_000_000),
)


# ----------------------------------------------------------------------------- empirical t*

def t_star_threshold(H_cond, epsilon: float = 0.5) -> int | None:
    """Smallest t (1-based) with ``H_t < epsilon`` in a list of H_t (bits); None if never reached."""
    hit = np.flatnonzero(np.asarray(H_cond, dtype=np.float64) < epsilon)
    return int(hit[0]) + 1 if hit.size else None


def t_star_sustained(H_cond, epsilon: float = 0.5) -> int | None:
    """Smallest t (1-based) with ``H_s < epsilon`` for every s >= t in a list of H_t (bits); None if
    H_L >= epsilon.

    Unlike :func:`t_star_threshold` it is not fooled by a low-entropy early position (a VCQ
    schedule's K_1 = 2 carries at most 1 bit) before the cliff.
    """
    H = np.asarray(H_cond, dtype=np.float64)
    above = np.flatnonzero(H >= epsilon)
    if above.size == 0:
        return 1
    return int(above[-1]) + 2 if above[-1] + 1 < H.size else None
