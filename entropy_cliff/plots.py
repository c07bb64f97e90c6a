"""Figures. Every function returns a :class:`matplotlib.figure.Figure`; nothing calls ``show()``.

:func:`entropy_figure` is the paper's Fig. 2a: per-position conditional entropy H_t (solid) and the
remaining information budget R(t) = log2 N - C(t-1) (dashed) for one or more corpora, with the
theoretical t* marked. With a population estimate (``measure --bootstrap``) it adds that estimate
and its interval band beside the exact plug-in curve, and hatches the positions where the sample
cannot identify it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from entropy_cliff.io import atomic_path
from entropy_cliff.schedules import Schedule


@dataclass(frozen=True)
class EntropyCurve:
    """One corpus on an entropy figure (arrays indexed by t - 1)."""

    label: str
    H_cond: np.ndarray
    remaining: np.ndarray
    log2_K: np.ndarray
    t_star_theory: int | None = None
    t_star_empirical: int | None = None
    ci: np.ndarray | None = None
    H_pop: np.ndarray | None = None


def _positions_axis(ax, L: int) -> None:
    if L > 32:
        ax.set_xscale("log", base=2)
    ax.set_xlim(1, max(L, 2))
    ax.set_xlabel("position t")


def _population(ax, t: np.ndarray, c: EntropyCurve, color) -> None:
    """The population estimate (dash-dot) with its interval band, and a hatched span over the
    positions where it is not identifiable (NaN)."""
    ax.plot(t, c.H_pop, color=color, lw=1.3, ls="-.", label=f"{c.label}: population H_t estimate")
    if c.ci is not None:
        ax.fill_between(t, c.ci[:, 0], c.ci[:, 1], color=color, alpha=0.2, lw=0)
    gone = np.flatnonzero(np.isnan(c.H_pop))
    if gone.size:
        ax.axvspan(t[gone[0]] - 0.5, t[-1] + 0.5, color=color, alpha=0.07, hatch="//", lw=0,
                   label=f"{c.label}: population not identifiable (t >= {t[gone[0]]})")


def entropy_figure(curves: Sequence[EntropyCurve], title: str | None = None) -> Figure:
    """H_t and R(t) per position for each corpus (Fig. 2a), plus log2 K_t on a second panel."""
    colors = sns.color_palette("deep", max(len(curves), 1))
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax, ax_k = fig.subplots(1, 2, width_ratios=[2.2, 1])
    L = max(len(c.H_cond) for c in curves)
    for c, color in zip(curves, colors):
        t = np.arange(1, len(c.H_cond) + 1)
        ax.plot(t, c.H_cond, color=color, lw=2, label=f"{c.label}: H(X_t | X_<t)")
        if c.H_pop is not None:
            _population(ax, t, c, color)
        ax.plot(t, c.remaining, color=color, lw=1.3, ls="--", label=f"{c.label}: log2 N - C(t-1)")
        if c.t_star_theory is not None:
            ax.axvline(c.t_star_theory, color=color, lw=0.8, ls=":")
            ax.text(c.t_star_theory, 0.97, f" t*={c.t_star_theory} (theory)", color=color, fontsize=8, va="top",
                    transform=ax.get_xaxis_transform())
        if c.t_star_empirical is not None:
            ax.plot([c.t_star_empirical], [c.H_cond[c.t_star_empirical - 1]], "o", color=color, ms=6,
                    label=f"{c.label}: measured t*={c.t_star_empirical}")
        ax_k.plot(t, c.log2_K, color=color, lw=2, label=c.label)
    ax.axhline(0, color="0.3", lw=0.8)
    top = max(float(np.max(c.remaining[:1])) for c in curves)
    ax.set_ylim(-0.05 * top - 0.5, 1.08 * top + 0.5)
    _positions_axis(ax, L)
    ax.set_ylabel("bits")
    ax.set_title(title or "Per-position conditional entropy on the training set")
    ax.legend(fontsize=7, loc="center right")
    ax.grid(alpha=0.3)
    _positions_axis(ax_k, L)
    ax_k.set_ylabel("log2 K_t (bits per position)")
    ax_k.set_title("codebook capacity per position")
    ax_k.grid(alpha=0.3)
    return fig


def schedule_figure(schedules: Sequence[Schedule], log2_N: float | None = None) -> Figure:
    """K_t (left) and cumulative capacity C(t) against log2 N (right) for several schedules."""
    colors = sns.color_palette("deep", max(len(schedules), 1))
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_k, ax_c = fig.subplots(1, 2)
    for s, color in zip(schedules, colors):
        t = np.arange(1, s.length + 1)
        ax_k.plot(t, s.K, color=color, lw=2, label=s.label)
        ax_c.plot(t, s.capacity, color=color, lw=2, label=s.label)
    if log2_N is not None:
        ax_c.axhline(log2_N, color="0.2", ls="--", lw=1, label=f"log2 N = {log2_N:.1f}")
    ax_k.set_yscale("log", base=2)
    ax_k.set_ylabel("K_t")
    ax_k.set_title("codebook size per position (Eq. 3)")
    ax_c.set_ylabel("C(t) = sum log2 K_s (bits)")
    ax_c.set_title("cumulative capacity (Eq. 2)")
    L = max(s.length for s in schedules)
    for a in (ax_k, ax_c):
        _positions_axis(a, L)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    if log2_N is not None:
        ax_c.set_ylim(0, 3 * log2_N)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG atomically (no partial file on failure)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)
