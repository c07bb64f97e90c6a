"""Every figure and table of ``make figures``, from committed inputs only (no training).

Inputs (:class:`Inputs`): token dumps (the embedded demo dumps, the replication's training dumps),
``figures/replication.json`` (:mod:`entropy_cliff.replication`) and ``figures/language.json``
(:mod:`entropy_cliff.language`); the two JSON summaries are read, never written. Outputs go under
one folder: figures as PNG (+ PDF for the paper-style ones), tables as Markdown + CSV under
``tables/``. :data:`OUTPUTS` lists each output with the inputs it needs; :func:`build` makes those
whose inputs exist and reports the others as skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from entropy_cliff import theory
from entropy_cliff.io import csv_text, load_tokens, read_json, read_sidecar, write_text_atomic
from entropy_cliff.report import MeasureReport, measure_corpus
from entropy_cliff.schedules import bpp, paper_table2

IMAGENET_N = 1_281_167
EPSILON = 0.5  # sustained-t* threshold (bits)


@dataclass
class Inputs:
    """Where the committed inputs live."""

    demo: dict[str, Path]                      # name -> dump (large N: nested-subset analysis)
    replication_dumps: dict[str, Path]          # tokenizer name -> training dump
    replication: Path                           # figures/replication.json
    language: Path                              # figures/language.json
    replication_results: Path | None = None     # results/replication (sample grids)
    subset_sizes: Sequence[int] = (1000, 2000, 4000, 8000, 16000, 30000)


# ------------------------------------------------------------------------------------ writers

def write_table(rows: list[dict[str, Any]], stem: Path, title: str = "") -> list[Path]:
    """``stem.csv`` and ``stem.md`` (a pipe table under ``title``) from a list of flat dicts."""
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:.1f}"
        return str(v)

    md = ([f"# {title}", ""] if title else []) + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(cell(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    csv_p, md_p = stem.with_suffix(".csv"), stem.with_suffix(".md")
    write_text_atomic(csv_p, csv_text(rows))
    write_text_atomic(md_p, "\n".join(md) + "\n")
    return [csv_p, md_p]


def save(fig, stem: Path, pdf: bool = True) -> list[Path]:
    """``stem.png`` and, for paper-style figures, ``stem.pdf`` (:func:`entropy_cliff.plots.save_figure`)."""
    from entropy_cliff.plots import save_figure

    return [save_figure(fig, stem.with_suffix(f".{ext}")) for ext in (("png", "pdf") if pdf else ("png",))]


def _figure(*args, **kw):
    from matplotlib.figure import Figure

    return Figure(*args, layout="constrained", **kw)


def _measure(path: Path, rows: int | None = None) -> MeasureReport:
    """The report of a dump (its first ``rows`` rows), K_t resolved by :func:`measure_corpus`, t* at :data:`EPSILON`."""
    return measure_corpus(path, rows=rows, epsilon=EPSILON, progress=False)


def _rows(path: Path) -> int:
    """N of a dump (its array header; the tokens stay on disk)."""
    return load_tokens(path).shape[0]


def _image_side(path: Path) -> int | None:
    """The image side of a dump's tokenizer, from its sidecar's ``source.image_size`` (for bits per pixel)."""
    side = ((read_sidecar(path) or {}).get("source") or {}).get("image_size")
    return int(side) if side else None


# ------------------------------------------------------------------------------------ tables 1-2

def table1(inp: Inputs, out: Path) -> list[Path]:
    """Paper Table 1 (t* of standard datasets at K = 16384) and the data thresholds for t* = 2..5."""
    K = 16384
    rows = [{"dataset": d.name, "type": d.kind, "N": d.N, "log2_N": round(math.log2(d.N), 1),
             "t_star_theory": theory.t_star(d.N, K)} for d in theory.DATASETS]
    rows += [{"dataset": f"threshold t* = {th.t_star}", "type": "N needed", "N": th.N_min,
              "log2_N": th.log2_N_min, "t_star_theory": th.t_star, "x_ImageNet": th.times_N}
             for th in theory.thresholds(IMAGENET_N, K, upto=5)]
    return write_table(rows, out / "tables" / "table1", f"Table 1: theoretical t* at K = {K} (Eq. 1)")


def table2(inp: Inputs, out: Path) -> list[Path]:
    """Paper Table 2 at paper scale (theory), then every dump we have: theoretical and measured t*."""
    rows = [{"schedule": s.label, "source": "theory, paper scale", "N": IMAGENET_N, "L": s.length,
             "K_min": s.kmin, "K_max": s.kmax, "mean_K": round(s.mean_K, 1), "bpp": round(s.bpp(256, 256), 4),
             "t_star_theory": theory.t_star(IMAGENET_N, s.K)} for s in paper_table2()]
    for name, path in {**{f"demo {k}": p for k, p in inp.demo.items()},
                       **{f"replication {k}": p for k, p in inp.replication_dumps.items()}}.items():
        r, side = _measure(path), _image_side(path)
        rows.append({"schedule": r.label, "source": f"measured: {name} dump", "N": r.N, "L": r.L,
                     "K_min": int(r.K.min()), "K_max": int(r.K.max()), "mean_K": round(float(r.K.mean()), 1),
                     "bpp": round(bpp(r.K, side, side), 4) if side else None,
                     "t_star_theory": r.t_star_theory, "t_star_budget": r.t_star_budget,
                     "t_star_threshold": r.t_star_threshold, "t_star_sustained": r.t_star_sustained})
    return write_table(rows, out / "tables" / "table2",
                       "Table 2: schedules; theoretical t* (Eq. 1) and, per dump, measured t* "
                       "(budget: log2 N - H(X<=t) <= 0.5; threshold: first H_t < 0.5; sustained: H_s < 0.5 for all s >= t)"
                       "; a dump's bpp uses the image side in its sidecar")


# ------------------------------------------------------------------------------------ Fig. 2

def fig2a(inp: Inputs, out: Path) -> list[Path]:
    """H_t and remaining budget of the constant and cosine VCQ image dumps (replication dumps, else the
    demo dumps, cut to the text's N) and the text corpus, at one N."""
    lang = read_json(inp.language)
    N = int(lang["N"]) if lang else None
    dumps = inp.replication_dumps or inp.demo
    dumps = {k: p for k, p in dumps.items() if k in ("constant", "cosine")} or dumps  # the paper's pair
    curves = []
    for path in dumps.values():
        total = _rows(path)
        n = min(total, N or total)
        r = _measure(path, rows=n)
        curves.append(r.entropy_curve(f"image {r.label}"))
        N = n if N is None else N
    from entropy_cliff.plots import EntropyCurve, entropy_figure

    if lang:
        curves.append(EntropyCurve.from_entropies(f"text BPE V={lang['vocab']}, L={lang['L']}", lang["H_cond"],
                                                  np.full(lang["L"], lang["vocab"]), lang["N"], epsilon=EPSILON))

    fig = entropy_figure(curves, f"Fig. 2a at matched N = {N:,}: H(X_t | X_<t) (solid), log2 N - C(t-1) (dashed)")
    return save(fig, out / "fig2a")


def fig2b(inp: Inputs, out: Path) -> list[Path]:
    """The schedules of Table 2 (L = 256, K_min = 2): K_t and C(t) against log2 N of ImageNet."""
    from entropy_cliff.plots import schedule_figure

    return save(schedule_figure(paper_table2(), IMAGENET_N), out / "fig2b")


# ------------------------------------------------------------------------------------ new analyses

def tstar_vs_N(inp: Inputs, out: Path) -> list[Path]:
    """Measured sustained t* of nested subsets (first n rows) of each demo dump beside
    ceil(log2 n / log2 K_max) and the schedule's capacity prediction t*(n, K_t)."""
    rows = []
    for name, path in inp.demo.items():
        total = _rows(path)
        for n in [s for s in inp.subset_sizes if s < total] + [total]:
            r = _measure(path, rows=n)
            rows.append({"dump": name, "schedule": r.label, "N": n, "t_star_sustained": r.t_star_sustained,
                         "t_star_uniform_kmax": theory.t_star(n, int(r.K.max())),
                         "t_star_capacity": r.t_star_theory})
    fig = _figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for i, name in enumerate(inp.demo):
        r = [x for x in rows if x["dump"] == name]
        n = [x["N"] for x in r]
        c = f"C{i}"
        ax.plot(n, [x["t_star_sustained"] or np.nan for x in r], "o-", color=c, label=f"{name}: measured (sustained)")
        ax.plot(n, [x["t_star_capacity"] for x in r], "s--", color=c, mfc="none", label=f"{name}: capacity t*(N, K_t)")
    ax.plot(n, [x["t_star_uniform_kmax"] for x in r], "k:", label="ceil(log2 N / log2 K_max)")
    ax.set_xscale("log")
    ax.set_xlabel("N (first N rows of the dump)")
    ax.set_ylabel("t*")
    ax.set_title("t* against N for nested subsets", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, out / "tstar_vs_N") + write_table(rows, out / "tables" / "tstar_vs_N",
                                                        "Measured t* (sustained, eps 0.5) vs N, nested subsets")


def frontier_fig(inp: Inputs, out: Path) -> list[Path]:
    """Per schedule family, the largest mean K_t at each theoretical t* it reaches (the frontier), at
    paper scale and at our scale, and the best schedule per family for a few targets T
    (``entropy-cliff schedule --target-t``)."""
    from entropy_cliff.frontier import best_for_target, frontier

    scales = [("paper scale: N = 1.28M, K_max = 16384, L = 256", IMAGENET_N, 16384, 256, (2, 4, 6, 9, 12)),
              ("our scale: N = 2000, K_max = 1024, L = 32", 2000, 1024, 32, (2, 3, 4, 6, 8))]
    fig = _figure(figsize=(11, 4))
    rows = []
    for ax, (title, N, kmax, L, targets) in zip(fig.subplots(1, 2), scales):
        pts = frontier(N, kmax, L)
        for i, fam in enumerate(("constant", "linear", "cosine", "power")):
            best: dict[int, float] = {}  # the family's best mean K_t at each reachable t*
            for x in pts:
                if x["family"] == fam and x["t_star"] is not None:
                    best[x["t_star"]] = max(best.get(x["t_star"], 0.0), x["mean_K"])
            t = sorted(best)
            ax.plot(t, [best[k] for k in t], "o-" if fam != "linear" else "D", color=f"C{i}",
                    ms=4 if fam != "linear" else 8, zorder=3 if fam == "linear" else 2, label=fam)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("theoretical t*")
        ax.set_ylabel("mean K_t")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        for T in targets:
            for r in best_for_target(T, N, kmax, L):
                rows.append({"scale": title, "target_t": T, "family": r["family"], "param": r["param"],
                             "schedule": r["label"], "t_star_theory": r["t_star"], "mean_K": r["mean_K"],
                             "feasible": r["feasible"]})
    return save(fig, out / "frontier") + write_table(rows, out / "tables" / "frontier_targets",
                                                      "Largest mean K_t per family with theoretical t* >= T")


# ------------------------------------------------------------------------------------ replication

def replication_tables(inp: Inputs, out: Path) -> list[Path]:
    """Our Table 4 analogue, the CFG ablation (App. C, Table 8) and the linear probe table (§4.4)."""
    rep = read_json(inp.replication)
    runs = rep["runs"]

    def head(r: dict) -> dict:
        k = f"K={r['kmax']}" if r["schedule"] == "constant" else f"K={r['kmin']}..{r['kmax']}"
        p = f" p={r['power']:g}" if r.get("power") else ""
        return {"schedule": f"{r['schedule']} {k}{p}", "regularized": "yes" if r["regularized"] else "no",
                "seed": r["seed"], "N": r["N"], "steps": r["steps"]}

    t4 = [{**head(r), "t_star_theory": r.get("t_star_theory"), "t_star_sustained": r.get("t_star_sustained"),
           "psnr": r.get("psnr"), "psnr_jpeg_same_bpp": r.get("psnr_jpeg"), "dfid_nocfg": r.get("dfid_nocfg"),
           "dfid_cfg_aware": r.get("dfid_cfg_aware"), "precision": r.get("precision"), "recall": r.get("recall"),
           "exact_copies": r.get("memorization"),
           "train_nll_after_t*": (r.get("regime") or {}).get("train_after"),
           "val_nll_after_t*": (r.get("regime") or {}).get("val_after"),
           "memorization_regime": (r.get("regime") or {}).get("reached")} for r in runs]
    t8 = [{**head(r), "dfid_nocfg": r.get("dfid_nocfg"), "dfid_pow_cosine_cfg": r.get("dfid_cfg"),
           "dfid_codebook_aware_cfg": r.get("dfid_cfg_aware"), "dfid_heldout_real": r.get("dfid_heldout_real")}
          for r in runs]
    probe = [{**head(r), "probe_first10pct": r.get("probe_first10"), "probe_all": r.get("probe_all")} for r in runs]
    return (write_table(t4, out / "tables" / "replication", "Replication (Table 4 analogue; dFID = dataset-classifier FID)")
            + write_table(t8, out / "tables" / "cfg_ablation", "CFG ablation (Appendix C, Table 8 analogue): dFID")
            + write_table(probe, out / "tables" / "linear_probe", "Linear probe top-1 (Section 4.4 analogue)"))


def _grid(n: int):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = _figure(figsize=(4 * cols, 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _run_title(r: dict) -> str:
    return f"{r.get('name', r['schedule'])} ({'reg' if r['regularized'] else 'no reg'}, seed {r['seed']})"


def replication_nll(inp: Inputs, out: Path) -> list[Path]:
    """Per run: the data's class-conditional H_t beside the AR's train and held-out NLL per position."""
    runs = read_json(inp.replication)["runs"]
    fig, axes = _grid(len(runs))
    for ax, r in zip(axes, runs):
        t = np.arange(1, len(r["H_cond"]) + 1)
        ax.plot(t, r["H_cond"], "k-", lw=2, label="data H(X_t | X_<t, c)")
        ax.plot(t, r["nll_train"], "C0.-", label="AR NLL, train rows")
        ax.plot(t, r["nll_val"], "C3.-", label="AR NLL, held-out rows")
        if r.get("t_star_sustained"):
            ax.axvline(r["t_star_sustained"], color="0.4", ls=":", lw=1)
        reg = r.get("regime") or {}
        tag = (f"after t*: train {reg['train_after']:.2f}, val {reg['val_after']:.2f}"
               if reg.get("train_after") is not None else "")
        ax.set_title(f"{_run_title(r)}\n{tag}", fontsize=8)
        ax.set_xlabel("position t")
        ax.set_ylabel("bits")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save(fig, out / "replication_nll")


def replication_memorization(inp: Inputs, out: Path) -> list[Path]:
    """Share of unguided samples whose first m tokens start a training sequence, per run."""
    runs = [r for r in read_json(inp.replication)["runs"] if r.get("memorization_prefix_share")]
    fig = _figure(figsize=(7, 4.2))
    ax = fig.subplots()
    for i, r in enumerate(runs):
        s = r["memorization_prefix_share"]
        ax.plot(np.arange(1, len(s) + 1), s, color=f"C{i % 10}", ls="-" if r["regularized"] else "--",
                label=_run_title(r))
    ax.set_xlabel("prefix length m")
    ax.set_ylabel("share of samples with a training prefix")
    ax.set_title("Memorization: samples without CFG vs the AR's training rows", fontsize=9)
    ax.grid(alpha=0.3)
    if runs:
        ax.legend(fontsize=6)
    return save(fig, out / "replication_memorization")


def replication_samples(inp: Inputs, out: Path) -> list[Path]:
    """Sample grids (CodebookSize-Aware CFG, one column per class) of the regularized seed-0 runs."""
    from PIL import Image

    runs = [r for r in read_json(inp.replication)["runs"] if r["regularized"] and r["seed"] == 0]
    grids = [(r, inp.replication_results / "ar" / r["name"] / "grid_cfg_aware.png") for r in runs]
    grids = [(r, p) for r, p in grids if p.is_file()]
    fig = _figure(figsize=(9, 2.0 * max(len(grids), 1)))
    axes = np.atleast_1d(fig.subplots(max(len(grids), 1), 1, squeeze=False)).ravel()
    for ax, (r, p) in zip(axes, grids):
        ax.imshow(np.asarray(Image.open(p)), interpolation="nearest")
        ax.set_title(f"{_run_title(r)}: dFID {r.get('dfid_cfg_aware') or float('nan'):.1f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    return save(fig, out / "replication_samples", pdf=False)


# ------------------------------------------------------------------------------------ driver

def _has_replication(inp: Inputs) -> bool:
    rep = read_json(inp.replication)
    return bool(rep and rep.get("runs"))


#: name -> (builder, inputs present?)
OUTPUTS: dict[str, tuple[Callable[[Inputs, Path], list[Path]], Callable[[Inputs], bool]]] = {
    "table1": (table1, lambda inp: True),
    "table2": (table2, lambda inp: True),
    "fig2a": (fig2a, lambda inp: bool(inp.replication_dumps or inp.demo)),
    "fig2b": (fig2b, lambda inp: True),
    "tstar_vs_N": (tstar_vs_N, lambda inp: bool(inp.demo)),
    "frontier": (frontier_fig, lambda inp: True),
    "replication_tables": (replication_tables, _has_replication),
    "replication_nll": (replication_nll, _has_replication),
    "replication_memorization": (replication_memorization, _has_replication),
    "replication_samples": (replication_samples, lambda inp: _has_replication(inp) and inp.replication_results is not None
                            and any((inp.replication_results / "ar").glob("*/grid_cfg_aware.png"))),
}


def build(inp: Inputs, out: Path, only: Sequence[str] | None = None) -> dict[str, list[Path] | str]:
    """Make every output of :data:`OUTPUTS` (or ``only`` those); ``{name: paths}`` or ``{name: "skipped: why"}``."""
    import matplotlib

    matplotlib.use("Agg")
    done: dict[str, list[Path] | str] = {}
    for name, (fn, ready) in OUTPUTS.items():
        if only and name not in only:
            continue
        done[name] = fn(inp, out) if ready(inp) else "skipped: its inputs are missing"
    return done
