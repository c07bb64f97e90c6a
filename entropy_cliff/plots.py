"""Figures. Every function returns a :class:`matplotlib.figure.Figure`; nothing calls ``show()``.

:func:`entropy_figure` is the paper's Fig. 2a: per-position conditional entropy H_t (solid) and the
remaining information budget R(t) = log2 N - C(t-1) (dashed) for one or more corpora, with the
theoretical t* marked. With a population estimate (``measure --bootstrap``) it adds that estimate
and its interval band beside the exact plug-in curve, and hatches the positions where the sample
cannot identify it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from entropy_cliff import theory
from entropy_cliff.io import atomic_path
from entropy_cliff.schedules import Schedule


@dataclass(frozen=True)
class EntropyCurve:
    """One corpus on an entropy figure (arrays indexed by t - 1).

    ``t_star_empirical`` is the sustained t* (first t after which every H_s < epsilon),
    ``t_star_threshold`` the first t with H_t < epsilon, ``t_star_theory`` the first t with C(t) >= log2 N.
    """

    label: str
    H_cond: np.ndarray
    remaining: np.ndarray
    log2_K: np.ndarray
    t_star_theory: int | None = None
    t_star_empirical: int | None = None
    ci: np.ndarray | None = None
    t_star_threshold: int | None = None
    H_pop: np.ndarray | None = None

    @classmethod
    def from_entropies(cls, label: str, H_cond: Sequence[float], K: Sequence[int] | np.ndarray, N: int, *,
                       epsilon: float = 0.5, ci: np.ndarray | None = None,
                       H_pop: np.ndarray | None = None) -> EntropyCurve:
        """The curve of a corpus of N rows from its H_t and K_t: R(t) = log2 N - C(t-1), log2 K_t, the
        theoretical t* (:func:`entropy_cliff.theory.t_star`) and the sustained and threshold t* at
        ``epsilon`` (:func:`entropy_cliff.theory.t_star_sustained`, :func:`~entropy_cliff.theory.t_star_threshold`)."""
        H, K = np.asarray(H_cond, dtype=np.float64), np.asarray(K, dtype=np.int64)
        return cls(label=label, H_cond=H, remaining=theory.remaining_budget(N, K), log2_K=np.log2(K.astype(float)),
                   t_star_theory=theory.t_star(N, K), t_star_empirical=theory.t_star_sustained(H, epsilon), ci=ci,
                   t_star_threshold=theory.t_star_threshold(H, epsilon), H_pop=H_pop)


def _positions_axis(ax, L: int) -> None:
    if L > 32:
        ax.set_xscale("log", base=2)
    ax.set_xlim(1, max(L, 2))
    ax.set_xlabel("position t")


def _population(ax, t: np.ndarray, c: EntropyCurve, color) -> None:
    """The population estimate (dash-dot) with its interval band, and a hatched span over the
    positions where it is not identifiable (NaN)."""
    ax.plot(t, c.H_pop, color=color, lw=1.3, ls="-.")
    gone = np.flatnonzero(np.isnan(c.H_pop))
    if gone.size:
        ax.axvspan(t[gone[0]] - 0.5, t[-1] + 0.5, color=color, alpha=0.07, hatch="//", lw=0)


def entropy_figure(curves: Sequence[EntropyCurve], title: str | None = None, symlog: bool = False) -> Figure:
    """H_t and R(t) per position for each corpus (Fig. 2a), plus log2 K_t on a second panel.

    Markers name each t*: a filled circle for the sustained t*, an open square for the threshold t*,
    a dotted vertical line for the theoretical t* (legend entries say which). ``symlog`` shows the
    y axis linear below 0.01 bit and logarithmic above, so the small H_t of the tail stay readable.
    With ``--bootstrap`` (``H_pop``, ``ci``): the population estimate (dash-dot) and its interval band,
    and a hatched span where it is not identifiable. The legends sit outside the data.
    """
    colors = sns.color_palette("deep", max(len(curves), 1))
    fig = Figure(figsize=(12.5, 4.8 + 0.25 * max(0, len(curves) - 2)), layout="constrained")
    ax, ax_k = fig.subplots(1, 2, width_ratios=[2.2, 1])
    L = max(len(c.H_cond) for c in curves)
    corpus_handles = []
    for c, color in zip(curves, colors):
        t = np.arange(1, len(c.H_cond) + 1)
        if c.ci is not None:
            ax.fill_between(t, np.maximum(c.ci[:, 0], 0.0), c.ci[:, 1], color=color, alpha=0.3, lw=0)
        ax.plot(t, c.H_cond, color=color, lw=2)
        if c.H_pop is not None:
            _population(ax, t, c, color)
        ax.plot(t, c.remaining, color=color, lw=1.3, ls="--")
        if c.t_star_theory is not None:
            ax.axvline(c.t_star_theory, color=color, lw=1.0, ls=":")
        if c.t_star_threshold is not None and c.t_star_threshold != c.t_star_empirical:
            ax.plot([c.t_star_threshold], [c.H_cond[c.t_star_threshold - 1]], "s", mfc="none", mec=color, mew=1.5, ms=8)
        if c.t_star_empirical is not None:
            ax.plot([c.t_star_empirical], [c.H_cond[c.t_star_empirical - 1]], "o", color=color, ms=7, mec="black", mew=0.6)
        stars = ", ".join(f"{name} {'-' if v is None else v}" for name, v in
                          (("sustained", c.t_star_empirical), ("threshold", c.t_star_threshold), ("theory", c.t_star_theory)))
        corpus_handles.append(Line2D([], [], color=color, lw=2, label=f"{c.label}  (t*: {stars})"))
        ax_k.plot(t, c.log2_K, color=color, lw=2, label=c.label)
    style_handles = [Line2D([], [], color="0.3", lw=2, label="H(X_t | X_<t), measured"),
                     Line2D([], [], color="0.3", lw=1.3, ls="--", label="log2 N - C(t-1), theory"),
                     Line2D([], [], color="0.3", lw=1.0, ls=":", label="t* theory: C(t) >= log2 N"),
                     Line2D([], [], color="0.3", marker="o", ls="", mec="black", mew=0.6, label="t* sustained: H_s < eps for all s >= t"),
                     Line2D([], [], color="0.3", marker="s", ls="", mfc="none", mew=1.5, label="t* threshold: first H_t < eps")]
    if any(c.ci is not None for c in curves):
        style_handles += [Line2D([], [], color="0.3", lw=1.3, ls="-.", label="population H_t estimate (--bootstrap)"),
                          Patch(color="0.3", alpha=0.3, lw=0, label="its interval (docs/uncertainty.md)"),
                          Patch(facecolor="0.3", alpha=0.15, hatch="//", lw=0, label="population not identifiable")]
    ax.axhline(0, color="0.3", lw=0.8)
    top = max(max(float(np.max(c.remaining[:1])), float(np.nanmax(c.H_cond))) for c in curves)
    if symlog:
        ax.set_yscale("symlog", linthresh=0.01, linscale=0.5)
        ax.set_ylim(0, 1.3 * top)
    else:
        ax.set_ylim(-0.02 * top - 0.1, 1.05 * top + 0.3)
    _positions_axis(ax, L)
    ax.set_ylabel("bits" + (" (symlog)" if symlog else ""))
    ax.set_title(title or "Per-position conditional entropy on the training set")
    leg = ax.legend(handles=corpus_handles, fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, -0.14),
                    frameon=False, title="corpus", title_fontsize=8)
    ax.add_artist(leg)
    ax.legend(handles=style_handles, fontsize=7.5, loc="upper right", bbox_to_anchor=(1.0, -0.14), frameon=False,
              title="lines and markers", title_fontsize=8)
    ax.grid(alpha=0.3)
    _positions_axis(ax_k, L)
    k_top = max(float(np.max(c.log2_K)) for c in curves)
    ax_k.set_ylim(0, 1.1 * k_top + 0.5)
    ax_k.set_ylabel("log2 K_t (bits per position)")
    ax_k.set_title("codebook capacity per position")
    ax_k.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), frameon=False)
    ax_k.grid(alpha=0.3)
    return fig


def schedule_figure(schedules: Sequence[Schedule], N: int | None = None) -> Figure:
    """K_t (left) and cumulative capacity C(t) against log2 N (right) for several schedules; with
    ``N`` each schedule's t* = min{t : C(t) >= log2 N} is marked on the right panel."""
    log2_N = math.log2(N) if N is not None else None
    colors = sns.color_palette("deep", max(len(schedules), 1))
    fig = Figure(figsize=(10, 5.2), layout="constrained")
    ax_k, ax_c = fig.subplots(1, 2)
    for s, color in zip(schedules, colors):
        t = np.arange(1, s.length + 1)
        ax_k.plot(t, s.K, color=color, lw=2, label=s.label)
        ax_c.plot(t, s.capacity, color=color, lw=2)
        ts = theory.t_star(N, s.K) if N is not None else None
        if ts is not None:
            ax_c.plot([ts], [s.capacity[ts - 1]], "o", color=color, ms=7, mec="black", mew=0.6,
                      label=f"{s.label}: t* = {ts}")
            ax_c.axvline(ts, color=color, lw=0.8, ls=":")
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
    ax_k.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False, ncols=2)
    ax_c.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False, ncols=2)
    if log2_N is not None:
        ax_c.set_ylim(0, 3 * log2_N)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` atomically (no partial file on failure) as PNG, or as PDF when ``path`` ends in
    ``.pdf`` (without a creation date, so that a rerun writes the same bytes)."""
    pdf = Path(path).suffix == ".pdf"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="pdf" if pdf else "png", dpi=dpi, metadata={"CreationDate": None} if pdf else None)
    return Path(path)
