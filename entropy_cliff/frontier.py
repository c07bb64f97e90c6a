"""How far a schedule pushes the cliff, and what it costs: theoretical t* against mean K_t.

Within each schedule family one free parameter trades codebook size for a later cliff:

- ``constant``: K (K_t = K), t* >= T  iff  K^(T-1) < N;
- ``linear``: none (K_min and K_max fixed);
- ``cosine``: K_min (K_t = K_min + (K_max - K_min)(1 - cos(pi u / 2))), t* falls as K_min grows;
- ``power``: p (K_t = K_min + (K_max - K_min) u^p), t* grows with p.

Each K_t is monotone in the parameter, so C(t) = sum_{s<=t} log2 K_s is too, and so are t* (Eq. 1,
:func:`entropy_cliff.theory.t_star`) and the mean K_t. :func:`best_for_target` therefore finds, per
family, the schedule with the largest mean K_t whose theoretical t* is at least T by bisection on
the parameter; :func:`frontier` sweeps the parameters for the (t*, mean K_t) trade-off curve.
A t* of None (the L positions never exhaust log2 N) counts as beyond every T <= L.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule
from entropy_cliff.theory import t_star

FAMILIES = ("constant", "linear", "cosine", "power")
P_RANGE = (1e-3, 1e3)  # power exponents searched


def _t(N: int, s: Schedule) -> float:
    t = t_star(N, s.K)
    return math.inf if t is None else float(t)


def _round_up(x: float, digits: int = 4) -> float:
    """x rounded up to ``digits`` significant digits (so a bisection's upper end stays on its side)."""
    step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
    return float(f"{math.ceil(x / step - 1e-9) * step:.{digits}g}")


def member(family: str, param: float | None, kmin: int, kmax: int, length: int) -> Schedule:
    """The schedule of ``family`` with free parameter ``param`` (constant: K; cosine: K_min; power: p)."""
    if family == "constant":
        return Schedule("constant", int(param), int(param), length)
    if family == "linear":
        return Schedule("linear", kmin, kmax, length)
    if family == "cosine":
        return Schedule("cosine", int(param), kmax, length)
    if family == "power":
        return Schedule("power", kmin, kmax, length, float(param))
    raise EntropyCliffError(f"unknown schedule family {family!r} (choose from {', '.join(FAMILIES)})")


def _check(N: int, kmin: int, kmax: int, length: int) -> None:
    if N < 2:
        raise EntropyCliffError(f"N must be at least 2, got {N}")
    if not 1 <= kmin <= kmax or kmax < 2:
        raise EntropyCliffError(f"need 1 <= K_min <= K_max and K_max >= 2, got K_min = {kmin}, K_max = {kmax}")
    if length < 1:
        raise EntropyCliffError(f"length must be >= 1, got {length}")


def _summary(family: str, param: float | None, s: Schedule, N: int) -> dict[str, Any]:
    t = t_star(N, s.K)
    return {"family": family, "param": param, "schedule": s.to_dict(), "label": s.label, "t_star": t,
            "mean_K": s.mean_K, "bits": float(s.bits.sum())}


def best_for_target(target_t: int, N: int, kmax: int, length: int, kmin: int = 2,
                    families: tuple[str, ...] = FAMILIES) -> list[dict[str, Any]]:
    """Per family, the schedule with theoretical t* >= ``target_t`` and the largest mean K_t.

    Rows ``{"family", "param", "schedule", "label", "t_star", "mean_K", "bits", "feasible"}``;
    ``feasible`` is False (and the other fields None) when no parameter in range reaches the target:
    constant K in [K_min, K_max], cosine K_min in [K_min, K_max], power p in [1e-3, 1e3].
    """
    _check(N, kmin, kmax, length)
    if not 1 <= target_t <= length:
        raise EntropyCliffError(f"target t must lie in 1..{length} (the sequence length), got {target_t}")
    rows = []
    for fam in families:
        ok = lambda p: _t(N, member(fam, p, kmin, kmax, length)) >= target_t  # noqa: E731
        param: float | None
        if fam == "linear":
            param = None if ok(None) else "infeasible"  # type: ignore[assignment]
        elif fam in ("constant", "cosine"):  # t* falls as the integer parameter grows: largest that reaches T
            lo, hi = kmin, kmax
            if not ok(lo):
                param = "infeasible"  # type: ignore[assignment]
            else:
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
                param = lo
        else:  # power: t* grows with p -- smallest p that reaches T (bisection in log p)
            lo, hi = P_RANGE
            if ok(lo):
                param = lo
            elif not ok(hi):
                param = "infeasible"  # type: ignore[assignment]
            else:
                for _ in range(60):
                    mid = math.sqrt(lo * hi)
                    lo, hi = (lo, mid) if ok(mid) else (mid, hi)
                param = _round_up(hi)
        if param == "infeasible":
            rows.append({"family": fam, "param": None, "schedule": None, "label": None, "t_star": None,
                         "mean_K": None, "bits": None, "feasible": False})
        else:
            rows.append({**_summary(fam, param, member(fam, param, kmin, kmax, length), N), "feasible": True})
    return rows


def frontier(N: int, kmax: int, length: int, kmin: int = 2, points: int = 60,
             families: tuple[str, ...] = FAMILIES) -> list[dict[str, Any]]:
    """(t*, mean K_t) of each family over its parameter range (``points`` values per family, log-spaced;
    linear is one point)."""
    _check(N, kmin, kmax, length)
    grids: dict[str, Any] = {
        "constant": sorted({int(k) for k in np.geomspace(max(kmin, 2), kmax, points).round()}),
        "linear": [None],
        "cosine": sorted({int(k) for k in np.geomspace(kmin, kmax, points).round()}),
        "power": list(np.geomspace(0.1, 20.0, points)),
    }
    return [_summary(f, p, member(f, p, kmin, kmax, length), N) for f in families for p in grids[f]]
