"""Codebook-size schedules K_t (paper §3, Eq. 3; Table 2).

    K_t = round(K_min + (K_max - K_min) * f(u_t)),   u_t = (t - 1) / (L - 1),   t = 1..L

with ``f(u) = u`` (linear), ``1 - cos(pi u / 2)`` (cosine, the paper's default), ``u**p`` (power)
and ``K_t = K_max`` for the constant schedule. Rounding is half-up (``floor(x + 0.5)``). For L = 1
the single position gets ``u = 0``. A custom schedule takes K_1..K_L from a list.

From K_t follow the cumulative capacity ``C(t) = sum_{s<=t} log2 K_s`` (Eq. 2), the mean K, and the
bits per pixel ``sum_t log2 K_t / (H W)``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.theory import MAX_CODEBOOK

KINDS = ("constant", "linear", "cosine", "power", "custom")


def ramp(kind: str, u: np.ndarray, power: float = 1.0) -> np.ndarray:
    """The shape f(u) of Eq. 3 on ``u`` in [0, 1]."""
    if kind == "linear":
        return u
    if kind == "cosine":
        return 1.0 - np.cos(np.pi * u / 2.0)
    if kind == "power":
        return u**power
    raise EntropyCliffError(f"no ramp for schedule kind {kind!r}")


@dataclass(frozen=True)
class Schedule:
    """A per-position codebook-size schedule.

    ``kind`` is one of constant / linear / cosine / power / custom; ``power`` is p for ``power``;
    ``values`` holds K_1..K_L for ``custom`` (then ``kmin``/``kmax`` are its min/max).
    """

    kind: str
    kmin: int
    kmax: int
    length: int
    power: float = 1.0
    values: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise EntropyCliffError(f"unknown schedule {self.kind!r} (choose from {', '.join(KINDS)})")
        if self.length < 1:
            raise EntropyCliffError(f"sequence length must be >= 1, got {self.length}")
        if self.kmin < 1 or self.kmax < 1:
            raise EntropyCliffError(f"codebook sizes must be >= 1 (K_min = {self.kmin}, K_max = {self.kmax})")
        if self.kmax > MAX_CODEBOOK:
            raise EntropyCliffError(f"K_max = {self.kmax} exceeds the largest supported codebook size 2^62")
        if self.kmin > self.kmax:
            raise EntropyCliffError(f"K_min = {self.kmin} exceeds K_max = {self.kmax}")
        if self.kind == "power" and not (self.power > 0 and math.isfinite(self.power)):
            raise EntropyCliffError(f"power must be a positive number, got {self.power}")
        if self.kind == "custom":
            if self.values is None or len(self.values) != self.length:
                raise EntropyCliffError("a custom schedule needs exactly one K_t per position")
            if min(self.values) < 1:
                raise EntropyCliffError("custom codebook sizes must be >= 1")

    @classmethod
    def custom(cls, values: list[int] | np.ndarray) -> Schedule:
        vals = tuple(int(v) for v in values)
        if not vals:
            raise EntropyCliffError("a custom schedule needs at least one K_t")
        return cls("custom", min(vals), max(vals), len(vals), values=vals)

    @classmethod
    def from_file(cls, path: str | Path) -> Schedule:
        """A custom schedule from a file: a JSON list, a sidecar with "K", or whitespace/comma text."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise EntropyCliffError(f"{p}: cannot read schedule file ({e.strerror})") from None
        try:
            obj = json.loads(text)
            vals = obj["K"] if isinstance(obj, dict) else obj
        except (json.JSONDecodeError, KeyError, TypeError):
            vals = text.replace(",", " ").split()
        try:
            ints = [int(v) for v in vals]
        except (TypeError, ValueError):
            raise EntropyCliffError(f"{p}: schedule file must list integer K_t values") from None
        return cls.custom(ints)

    @classmethod
    def from_dict(cls, d: dict[str, Any], length: int) -> Schedule:
        """Inverse of :meth:`to_dict` (the sidecar's ``schedule``)."""
        try:
            return cls(str(d["kind"]), int(d["kmin"]), int(d["kmax"]), int(length), float(d.get("power") or 1.0))
        except (KeyError, TypeError, ValueError) as e:
            raise EntropyCliffError(f"malformed schedule description {d!r} ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "kmin": self.kmin, "kmax": self.kmax,
                "power": self.power if self.kind == "power" else None}

    @property
    def label(self) -> str:
        if self.kind == "constant":
            return f"constant K={self.kmax}"
        if self.kind == "power":
            return f"power p={self.power:g} K={self.kmin}..{self.kmax}"
        return f"{self.kind} K={self.kmin}..{self.kmax}"

    @cached_property
    def K(self) -> np.ndarray:
        """K_1..K_L as int64 (Eq. 3)."""
        if self.kind == "custom":
            return np.asarray(self.values, dtype=np.int64)
        if self.kind == "constant":
            return np.full(self.length, self.kmax, dtype=np.int64)
        u = np.arange(self.length, dtype=np.float64) / max(self.length - 1, 1)
        k = self.kmin + (self.kmax - self.kmin) * ramp(self.kind, u, self.power)
        return np.floor(k + 0.5).astype(np.int64)

    @property
    def bits(self) -> np.ndarray:
        """log2 K_t per position."""
        return np.log2(self.K.astype(np.float64))

    @property
    def capacity(self) -> np.ndarray:
        """C(t) = sum_{s<=t} log2 K_s for t = 1..L (Eq. 2)."""
        return np.cumsum(self.bits)

    @property
    def mean_K(self) -> float:
        return float(self.K.mean())

    def bpp(self, height: int = 256, width: int = 256) -> float:
        """Bits per pixel of an H×W image (:func:`bpp`)."""
        return bpp(self.K, height, width)


def bpp(K: Sequence[int] | np.ndarray, height: int, width: int) -> float:
    """Bits per pixel of L fixed-length codes of sizes K_t for an H×W image: sum_t log2 K_t / (H W)."""
    return float(np.log2(np.asarray(K, dtype=np.float64)).sum() / (height * width))


#: The schedules of the paper's Table 2: (kind, K_max, power), with K_min = 2 and L = 256.
PAPER_TABLE2 = (("constant", 16384, 1.0), ("constant", 8192, 1.0), ("linear", 16384, 1.0),
                ("cosine", 16384, 1.0), ("power", 16384, 2.5), ("cosine", 11264, 1.0))


def paper_table2(length: int = 256, kmin: int = 2) -> list[Schedule]:
    """The six schedules of Table 2 (a constant schedule has K_min = K_max)."""
    return [Schedule(kind, kmax if kind == "constant" else kmin, kmax, length, p) for kind, kmax, p in PAPER_TABLE2]


def schedule_from_options(kind: str | None, kmin: int, kmax: int | None, length: int, power: float = 2.5,
                          schedule_file: str | Path | None = None) -> Schedule | None:
    """The schedule named by a command's options for ``length`` positions, or None when none is named.

    A ``schedule_file`` (see :meth:`Schedule.from_file`) wins over ``kind``; it must list exactly
    ``length`` sizes. A constant schedule uses ``kmax`` for every position.
    """
    if schedule_file:
        s = Schedule.from_file(schedule_file)
        if s.length != length:
            raise EntropyCliffError(f"{schedule_file}: {s.length} codebook sizes for {length} positions")
        return s
    if kind is None:
        return None
    if kmax is None:
        raise EntropyCliffError(f"schedule {kind!r} needs K_max (kmax)")
    return Schedule(kind, kmax if kind == "constant" else kmin, kmax, length, power)
