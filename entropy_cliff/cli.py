"""``entropy-cliff`` command line: parse options, call the library, format the result. Nothing else.

Every command takes ``--format table|json|csv``; JSON is the stable machine interface (fields: docs/output-fields.md).
Bad input is one line on stderr and exit status 2, with no traceback and no partial output file.
Heavy modules (the Numba kernel, matplotlib, FAISS) are imported only by the commands that need them.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import numpy as np

from entropy_cliff import __version__, theory
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import csv_text, json_text
from entropy_cliff.report import NOT_REACHED, not_reached
from entropy_cliff.schedules import KINDS, Schedule, paper_table2, schedule_from_options

DATA_DIR = Path(__file__).parent / "data"
DEMOS = ("constant", "cosine")
PROG = "entropy-cliff"


# ---------------------------------------------------------------------------- output formatting

def _fmt_cell(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return NOT_REACHED
    if isinstance(v, (float, np.floating)):
        return format(v, spec)
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    return str(v)


def _table(rows: list[dict[str, Any]], columns: dict[str, str | tuple[str, str]]) -> str:
    """A plain aligned text table; ``columns`` maps row keys to a header or (header, float format)."""
    heads = {k: (h if isinstance(h, tuple) else (h, ".3f")) for k, h in columns.items()}
    cells = [[_fmt_cell(r[k], spec) for k, (_, spec) in heads.items()] for r in rows]
    text_col = [isinstance(rows[0][k], str) if rows else False for k in heads]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(heads.values())]

    def line(values):
        return "  ".join(v.ljust(w) if left else v.rjust(w) for v, w, left in zip(values, widths, text_col)).rstrip()

    return "\n".join([line([h for h, _ in heads.values()])] + [line(c) for c in cells])


def _fmt_count(n: float) -> str:
    return f"{n:,.0f}" if n < 1e9 else f"{n:.3g}"


def _emit(fmt: str, data: dict[str, Any], rows: list[dict[str, Any]], text: str) -> None:
    if fmt == "csv":
        click.echo(csv_text(rows), nl=False)  # csv_text ends every row with a newline: no blank last line
    else:
        click.echo(json_text(data) if fmt == "json" else text)


format_option = click.option(
    "--format", "fmt", type=click.Choice(("table", "json", "csv")), default="table", show_default=True,
    help="table for people, json (stable fields, docs/output-fields.md) or csv (one row per position) for programs.")


def _count(what: str, maximum: int = theory.MAX_COUNT, zero: bool = False):
    def convert(ctx, param, value):
        if value is None:
            return None
        if zero and str(value).strip() == "0":
            return 0
        try:
            return theory.parse_count(value, what, maximum)
        except EntropyCliffError as e:
            raise click.BadParameter(str(e).removeprefix(f"{what}: ")) from None
    return convert


def schedule_options(f):
    """--schedule/--kmin/--kmax/--power/--schedule-file, passed on as one ``schedule`` dict (the keyword
    arguments of :func:`entropy_cliff.schedules.schedule_from_options` but ``length``); shared by
    predict, schedule, measure, compare, assign and convert."""

    @functools.wraps(f)
    def wrapper(*args, kind, kmin, kmax, power, schedule_file, **kwargs):
        return f(*args, schedule=dict(kind=kind, kmin=kmin, kmax=kmax, power=power, schedule_file=schedule_file),
                 **kwargs)

    options = [
        click.option("--schedule", "kind", type=click.Choice(KINDS[:-1]),
                     help="codebook-size schedule K_t (paper Eq. 3); cosine is the paper's default."),
        click.option("--kmin", callback=_count("--kmin", theory.MAX_CODEBOOK), metavar="COUNT", default="2", show_default=True, help="smallest codebook size K_min."),
        click.option("--kmax", callback=_count("--kmax", theory.MAX_CODEBOOK), metavar="COUNT", help="largest codebook size K_max."),
        click.option("--power", type=float, default=2.5, show_default=True, help="p of the power schedule u**p."),
        click.option("--schedule-file", type=click.Path(dir_okay=False),
                     help="custom schedule: a JSON list of K_t, a sidecar with 'K', or numbers separated by spaces/commas."),
    ]
    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper


# ---------------------------------------------------------------------------- the group

class Interrupted(Exception):
    """Ctrl-C inside a command, carried past click (which would print a blank line and abort)."""


class OneLineGroup(click.Group):
    """A click group whose Ctrl-C reaches :func:`run_one_line_errors` as :class:`Interrupted`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise Interrupted(*e.args) from None


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name=PROG)
def cli() -> None:
    """Where the entropy cliff of a token corpus sits, and what theory predicts for it.

    \b
    entropy-cliff predict --N 1.28e6 --K 16384        t*, Prop. 1 bound, data thresholds
    entropy-cliff schedule --table                      paper Table 2 (K_t schedules)
    entropy-cliff measure tokens.npy                    exact per-position H(X_t | X_<t)
    entropy-cliff compare a.npy b.npy --out fig.png     several dumps on one Fig. 2a
    entropy-cliff assign feats.npy codebook.npy ...     nested-codebook tokens (FAISS)
    """


# ---------------------------------------------------------------------------- predict

def _theory_rows(N: int, K: np.ndarray, utilization: float) -> list[dict[str, Any]]:
    cap = theory.capacity(K, utilization)
    rem = theory.remaining_budget(N, K, utilization)
    bnd = theory.bound(N, K, utilization)
    return [{"t": t + 1, "K": int(K[t]), "log2_K": float(np.log2(K[t])), "capacity": float(cap[t]),
             "remaining_budget": float(rem[t]), "bound": float(bnd[t])} for t in range(len(K))]


def _thresholds_text(ths: list[theory.Threshold], N: int) -> str:
    rows = [{"t": th.t_star, "log2": th.log2_N_min, "N": _fmt_count(th.N_min), "x": f"{th.times_N:.4g}",
             "ok": "yes" if th.reached else "no"} for th in ths]
    return _table(rows, {"t": "t*", "log2": "needs log2 N >", "N": "N >", "x": f"x N={_fmt_count(N)}",
                         "ok": "reached"})


@cli.command()
@click.option("--N", "N", callback=_count("--N"), metavar="COUNT", help="training-set size: 1.28e6, 1280000, 400M, 5B, 2^28+1.")
@click.option("--K", "K", callback=_count("--K", theory.MAX_CODEBOOK), metavar="COUNT", help="uniform codebook size (a constant schedule).")
@schedule_options
@click.option("--length", "-L", type=click.IntRange(min=1), default=256, show_default=True,
              help="sequence length L (positions in the per-position bound).")
@click.option("--utilization", "-u", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="utilization-adjusted variant: replace log2 K_t by u log2 K_t.")
@click.option("--datasets", is_flag=True, help="print the paper's Table 1 (t* of standard datasets) for this codebook.")
@click.option("--rows", type=click.IntRange(min=1), help="table format: positions to list (default: until the bound is 0, plus 2).")
@format_option
def predict(N, K, schedule, length, utilization, datasets, rows, fmt):
    """t*, the Proposition 1 bound per position, and the data needed to push t* back.

    \b
    entropy-cliff predict --N 1.28e6 --K 16384
    entropy-cliff predict --N 1.28e6 --schedule cosine --kmin 2 --kmax 16384 --length 256
    entropy-cliff predict --K 16384 --datasets
    """
    sched = schedule_from_options(length=length, **schedule)
    if sched is None and K is None:
        raise EntropyCliffError("give a uniform codebook (--K 16384) or a schedule (--schedule cosine --kmax 16384)")
    if sched is not None and K is not None:
        raise EntropyCliffError("give either --K or --schedule, not both")
    if sched is None:
        sched = Schedule("constant", K, K, length)
    uniform = sched.kind == "constant"
    Kt = sched.K
    if datasets:
        table1 = [{"dataset": d.name, "type": d.kind, "N": d.N, "log2_N": math.log2(d.N),
                   "t_star": theory.t_star(d.N, int(Kt[0]) if uniform else Kt, utilization)} for d in theory.DATASETS]
        text = f"Paper Table 1 for {sched.label} (u = {utilization:g}):\n" + _table(
            table1, {"dataset": "dataset", "type": "type", "N": "N", "log2_N": "log2 N", "t_star": "t*"})
        _emit(fmt, {"schedule": sched.to_dict(), "utilization": utilization, "datasets": table1}, table1, text)
        return
    if N is None:
        raise EntropyCliffError("--N is required (the number of training sequences, e.g. --N 1.28e6)")
    if N < 2:
        raise EntropyCliffError(f"--N must be at least 2, got {N}")
    ts = theory.t_star(N, int(Kt[0]) if uniform else Kt, utilization)
    ths = theory.thresholds(N, int(Kt[0]) if uniform else Kt, utilization)
    per_pos = _theory_rows(N, Kt, utilization)
    log2_N = math.log2(N)
    data = {"N": N, "log2_N": log2_N, "utilization": utilization, "length": length, "schedule": sched.to_dict(),
            "t_star": ts, "bound": [r["bound"] for r in per_pos], "capacity": [r["capacity"] for r in per_pos],
            "remaining_budget": [r["remaining_budget"] for r in per_pos], "K": Kt,
            "thresholds": [th.to_dict() for th in ths]}
    zero_from = next((r["t"] for r in per_pos if r["bound"] == 0.0), None)
    shown = per_pos[: rows or min(length, (zero_from or length) + 2)]
    text = "\n".join([
        f"N = {N:,} training sequences (log2 N = {log2_N:.2f} bits); {sched.label}, L = {length}"
        + (f", utilization u = {utilization:g}" if utilization != 1 else ""),
        f"t* = {ts if ts is not None else f'{NOT_REACHED} (not reached within L = {length}: C(L) < log2 N)'}"
        "   (first t with C(t) >= log2 N: from there on the training set's conditional entropy is 0)",
        "",
        _table(shown, {"t": "t", "K": "K_t", "log2_K": "log2 K_t", "capacity": "C(t)",
                       "remaining_budget": "log2 N - C(t-1)", "bound": "Prop.1 bound"}),
        f"(bound = 0 for every t >= {zero_from})" if zero_from and len(shown) < length else "",
        "",
        "Data needed to push t* back (t* >= T needs log2 N > C(T-1)):",
        _thresholds_text(ths, N),
    ])
    _emit(fmt, data, per_pos, text)


# ---------------------------------------------------------------------------- schedule

def _schedule_summary(s: Schedule, N: int, image_size: int) -> dict[str, Any]:
    return {"schedule": s.to_dict(), "label": s.label, "length": s.length, "K": s.K, "mean_K": s.mean_K,
            "bpp": s.bpp(image_size, image_size), "capacity": s.capacity, "N": N, "log2_N": math.log2(N),
            "t_star": theory.t_star(N, s.K)}


@cli.command()
@schedule_options
@click.option("--length", "-L", type=click.IntRange(min=1), default=256, show_default=True, help="sequence length L.")
@click.option("--N", "N", callback=_count("--N"), metavar="COUNT", default="1.28e6", show_default=True,
              help="training-set size for t* (default: ImageNet-1K).")
@click.option("--image-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="image side in pixels, for bits per pixel.")
@click.option("--table", is_flag=True, help="print the paper's Table 2 (six schedules, L = 256, K_min = 2).")
@click.option("--plot", type=click.Path(dir_okay=False), help="also write a PNG of K_t and C(t).")
@click.option("--target-t", type=click.IntRange(min=1), metavar="T",
              help="per family, the schedule with theoretical t* >= T and the largest mean K_t.")
@format_option
def schedule(schedule, length, N, image_size, table, plot, fmt, target_t=None):
    """K_t per position, mean K, bits per pixel, C(t) and t* of a codebook-size schedule.

    \b
    entropy-cliff schedule --schedule cosine --kmin 2 --kmax 16384
    entropy-cliff schedule --table
    entropy-cliff schedule --schedule power --power 2.5 --kmax 16384 --plot k.png
    """
    if N < 2:
        raise EntropyCliffError(f"--N must be at least 2, got {N}")
    if target_t is not None:
        return _target_t(target_t, N, schedule["kmin"], schedule["kmax"], length, fmt)
    if table:
        scheds = paper_table2(length, schedule["kmin"])
    else:
        s = schedule_from_options(length=length, **schedule)
        if s is None:
            raise EntropyCliffError("give --schedule KIND --kmax K (or --schedule-file, or --table)")
        scheds = [s]
    summaries = [_schedule_summary(s, N, image_size) for s in scheds]
    rows_t2 = [{"schedule": d["label"], "kmin": d["schedule"]["kmin"], "kmax": d["schedule"]["kmax"],
                "mean_K": d["mean_K"], "bpp": d["bpp"], "t_star": d["t_star"]} for d in summaries]
    if table:
        text = (f"Paper Table 2 (L = {length}, {image_size}x{image_size} images, t* from C(t) for N = {N:,}):\n"
                + _table(rows_t2, {"schedule": "schedule", "kmin": "K_min", "kmax": "K_max", "mean_K": ("mean K", ".1f"),
                                   "bpp": ("BPP", ".4f"), "t_star": "t* (theory)"})
                + "\nThe paper's Table 2 lists t* = 5 / 6 for cosine / power: those are measured on real token "
                  "dumps (entropy-cliff measure), not C(t).")
        _emit(fmt, {"schedules": summaries}, rows_t2, text)
    else:
        d = summaries[0]
        rows = [{"t": t + 1, "K": int(d["K"][t]), "capacity": float(d["capacity"][t])} for t in range(length)]
        text = "\n".join([
            f"{d['label']}, L = {length}: mean K = {d['mean_K']:.1f}, BPP = {d['bpp']:.4f} "
            f"({image_size}x{image_size}), t* = {d['t_star']} for N = {N:,} (log2 N = {d['log2_N']:.2f})",
            _table(rows, {"t": "t", "K": "K_t", "capacity": "C(t)"})])
        _emit(fmt, d, rows, text)
    if plot:
        from entropy_cliff.plots import save_figure, schedule_figure
        save_figure(schedule_figure(scheds, N), plot)
        click.echo(f"wrote {plot}", err=True)


def _target_t(target_t: int, N: int, kmin: int, kmax: int | None, length: int, fmt: str) -> None:
    from entropy_cliff.frontier import best_for_target

    if kmax is None:
        raise EntropyCliffError("give --kmax K with --target-t")
    rows = best_for_target(target_t, N, kmax, length, kmin)
    flat = [{**{k: v for k, v in r.items() if k != "schedule"}, "feasible": "yes" if r["feasible"] else "no"} for r in rows]
    text = (f"Largest mean K_t with theoretical t* >= {target_t} (N = {N:,}, L = {length}, K_max = {kmax}, "
            f"K_min = {kmin}; free parameter: constant K, cosine K_min, power p):\n"
            + _table(flat, {"family": "family", "param": "parameter", "label": "schedule", "mean_K": ("mean K", ".1f"),
                            "t_star": "t* (theory)", "feasible": "feasible"}))
    _emit(fmt, {"target_t": target_t, "N": N, "length": length, "kmin": kmin, "kmax": kmax, "families": rows}, flat, text)


# ---------------------------------------------------------------------------- measure / compare

def _demo_path(name: str) -> Path:
    p = DATA_DIR / f"demo_{name}.npy"
    if not p.exists():
        raise EntropyCliffError(f"the embedded demo corpus {p.name} is missing from this installation")
    return p


def _measure_text(rep) -> str:
    """The per-position table of a :class:`entropy_cliff.report.MeasureReport`, for people."""
    from entropy_cliff.formats import OUR_FORMATS, describe

    pos = rep.positions()
    last = rep.first_distinct
    shown = pos if last is None else pos[: min(len(pos), last + 1)]
    cols = {"t": "t", "K": "K_t", "H_cond": "H_t", "H_cond_mm": "H_t MM", "H_prefix": "H(X<=t)",
            "remaining_budget": "log2N-C(t-1)", "bound": "bound", "H_marginal": "H(X_t)",
            "utilization": "util", "groups": "prefixes"}
    notes = []
    if "H_cond_pop" in pos[0]:
        from entropy_cliff import population
        cols |= {"H_cond_pop": "H_t pop", "H_cond_ci_low": "CI lo", "H_cond_ci_high": "CI hi", "pop_flag": ""}
        shown = [dict(p, pop_flag=population.FLAGS[p["pop_status"]]) for p in shown]
        notes = population.footnotes(rep.extra["population"], [p["pop_status"] for p in shown])
    cols |= {k: k for k in pos[0] if k not in cols and k not in ("singleton_mass", "pop_status")}  # columns added by other modules
    tail = (f"(every length-{last} prefix is distinct: H_t = 0 for all t > {last})"
            if last is not None and len(shown) < len(pos) else "")
    tail = "\n".join([tail, *notes]).strip()
    text = "\n".join([
        f"{rep.file or rep.label}: N = {rep.N:,} sequences x L = {rep.L} positions, log2 N = {rep.log2_N:.2f} bits",
        f"K_t: {rep.K_source}",
        f"t* theory (C(t) >= log2 N): {not_reached(rep.t_star_theory)}   "
        f"budget (log2 N - H(X<=t) <= {rep.delta:g}): {not_reached(rep.t_star_budget)}   "
        f"threshold (H_t < {rep.epsilon:g}): {not_reached(rep.t_star_threshold)}   "
        f"sustained (H_s < {rep.epsilon:g} for all s >= t): {not_reached(rep.t_star_sustained)}"
        f"   ({NOT_REACHED} = not reached within L)",
        "", _table(shown, cols), tail]).rstrip()
    inp = rep.extra.get("input")
    if inp is not None and inp["format"] not in OUR_FORMATS:  # say how another code base's tokens were read
        text = describe(inp) + "\n" + text
    return text


def measure_options(f):
    f = click.option("--quiet", "-q", is_flag=True, help="no progress bar.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="bootstrap seed.")(f)
    f = click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
                     show_default=True, help="bootstrap interval level.")(f)
    f = click.option("--bootstrap", callback=_count("--bootstrap", zero=True), metavar="COUNT", default="0",
                     show_default=True, help="B bootstrap resamples of the rows: population estimate of H_t with intervals, null where "
                     "not identifiable (docs/uncertainty.md; refused at once when B x N or B x L cannot fit this machine).")(f)
    f = click.option("--symlog", is_flag=True, help="figure: symmetric-log y axis, to read the small H_t of the tail.")(f)
    f = click.option("--epsilon", type=click.FloatRange(min=0), default=0.5, show_default=True,
                     help="empirical t*: first t with H_t < epsilon bits (threshold), and first t after which every H_s < epsilon (sustained).")(f)
    f = click.option("--delta", type=click.FloatRange(min=0), default=0.5, show_default=True,
                     help="empirical t* (budget): first t with log2 N - H(X<=t) <= delta bits.")(f)
    f = click.option("--K", "K", callback=_count("--K", theory.MAX_CODEBOOK), metavar="COUNT", help="uniform codebook size (checks every token < K).")(f)
    f = schedule_options(f)
    f = click.option("--key", help="array name inside an .npz file.")(f)
    return f


def input_options(f):
    """--input-format/--view/--column/--ten-crop/--batch-size/--world-size/--threads, passed on as ``read_opts``."""
    from entropy_cliff.formats import FORMATS

    @functools.wraps(f)
    def wrapper(*args, input_format, view, column, ten_crop, batch_size, world_size, threads, **kwargs):
        return f(*args, read_opts=dict(input_format=input_format, view=view, column=column, ten_crop=ten_crop,
                                       batch_size=batch_size, world_size=world_size, threads=threads), **kwargs)

    options = [
        click.option("--input-format", type=click.Choice(FORMATS),
                     help="input format (default: recognised from the path: .npy/.npz, a LlamaGen codes folder, "
                          "a TiTok/RAR .jsonl, a .parquet file or folder, a sharded dump folder)."),
        click.option("--view", default="original", show_default=True, metavar="original|all|INDEX",
                     help="augmented inputs: the un-augmented view (flip: 0, ten-crop: the centre crop 4), "
                          "every view as its own row (all; not independent samples), or one view index."),
        click.option("--column", help="Parquet: the token column (default: tokens/input_ids/codes, or the only integer-list column)."),
        click.option("--ten-crop", is_flag=True, help="JSONL: written with --ten_crop (10 lines per image); default flip mode."),
        click.option("--batch-size", type=click.IntRange(min=1),
                     help="JSONL flip mode: the writer's per-GPU --batch_size (needed to find the originals)."),
        click.option("--world-size", type=click.IntRange(min=1),
                     help="the writer's number of GPUs (JSONL flip mode needs it; also counts padded rows)."),
        click.option("--threads", type=click.IntRange(min=1), help="reading threads for LlamaGen folders (default 8)."),
    ]
    for opt in reversed(options):
        wrapper = opt(wrapper)
    return wrapper


@cli.command()
@click.argument("tokens", type=click.Path(path_type=Path), required=False)
@click.option("--demo", type=click.Choice(DEMOS), help="measure an embedded demo corpus instead of TOKENS.")
@measure_options
@input_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="also write DIR/measure.json, DIR/measure.csv and DIR/entropy.png.")
@click.option("--scheduler", metavar="ADDRESS", help="run on this dask.distributed scheduler (tcp://host:8786).")
@click.option("--workers", type=click.IntRange(min=1), help="run on a local Dask cluster of N worker processes.")
@format_option
def measure(tokens, demo, key, schedule, K, delta, epsilon, bootstrap, symlog,
            confidence, seed, quiet, read_opts, out, scheduler, workers, fmt):
    """Exact per-position conditional entropy H(X_t | X_<t) of a token corpus, and its t*.

    TOKENS is an (N, L) integer .npy (memory-mapped, may exceed RAM), an .npz (--key) or a
    directory of .npy shards measured as one corpus (K_t from DIR/meta.json). K_t comes
    from --schedule/--K, else from the sidecar NAME.meta.json written by `vcq dump-tokens`, else
    it is inferred as the largest token + 1. Every token is checked against its K_t. Formulas:
    docs/formulas.md; output fields: docs/output-fields.md.

    \b
    entropy-cliff measure tokens.npy
    entropy-cliff measure tokens.npy --schedule cosine --kmin 2 --kmax 1024 --out results/
    entropy-cliff measure --demo cosine --format json
    entropy-cliff measure shards/ --scheduler tcp://10.0.0.1:8786
    """
    from entropy_cliff.io import prepare_output
    from entropy_cliff.report import measure_corpus

    if (tokens is None) == (demo is None):
        raise EntropyCliffError("give one token file (TOKENS) or --demo NAME")
    if out is not None:
        prepare_output(out, "dir", keep=False)
    rep = measure_corpus(tokens if tokens is not None else _demo_path(demo),
                         schedule=schedule,
                         K=K, key=key, delta=delta, epsilon=epsilon, bootstrap=bootstrap, confidence=confidence,
                         seed=seed, progress=False if quiet else None, read_opts=read_opts,
                         scheduler=scheduler, workers=workers)
    if out is not None:
        rep.save(out, symlog=symlog)
        click.echo(f"wrote {out}/measure.json, measure.csv, entropy.png", err=True)
    _emit(fmt, rep.to_dict(), rep.csv_rows(), _measure_text(rep))


@cli.command()
@click.argument("tokens", nargs=-1, type=click.Path(path_type=Path))
@click.option("--demo", is_flag=True, help="compare the embedded demo corpora (constant K vs cosine VCQ).")
@click.option("--label", "labels", multiple=True, help="legend label per corpus (repeat; default: schedule or file name).")
@measure_options
@input_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write the figure here (PNG).")
@format_option
def compare(tokens, demo, labels, key, schedule, K, delta, epsilon, bootstrap, symlog,
            confidence, seed, quiet, read_opts, out, fmt):
    """Several token dumps on one figure: per-position H_t and remaining budget (paper Fig. 2a).

    Each dump's K_t is resolved on its own (flags, else its sidecar, else inferred) and the table
    says which; a dump whose largest token grows with t but whose K_t is constant or inferred gets
    a warning on stderr.

    \b
    entropy-cliff compare constant.npy cosine.npy --out fig2a.png
    entropy-cliff compare --demo --out demo-out/compare.png
    """
    from entropy_cliff.io import prepare_output
    from entropy_cliff.report import compare_corpora

    if out is not None:
        prepare_output(out, "file", keep=False)
    reps = compare_corpora(list(tokens) + ([_demo_path(n) for n in DEMOS] if demo else []), labels=list(labels) or None,
                           schedule=schedule,
                           K=K, key=key, delta=delta, epsilon=epsilon, bootstrap=bootstrap, confidence=confidence,
                           seed=seed, progress=False if quiet else None, read_opts=read_opts)
    for w in (w for r in reps for w in r.warnings):
        click.echo(f"{PROG}: warning: {w}", err=True)
    if out is not None:
        from entropy_cliff.plots import entropy_figure, save_figure
        save_figure(entropy_figure([r.entropy_curve() for r in reps], symlog=symlog), out)
        click.echo(f"wrote {out}", err=True)
    summary = [r.summary() | {"K_source": str(r.K_source)} for r in reps]
    text = _table(summary, {"label": "corpus", "N": "N", "L": "L", "log2_N": "log2 N", "t_star_theory": "t* theory",
                            "t_star_budget": "t* budget", "t_star_threshold": "t* threshold",
                            "t_star_sustained": "t* sustained", "K_source": "K_t from"})
    _emit(fmt, {"version": __version__, "corpora": [r.to_dict() for r in reps]},
          [{"corpus": r.label} | row for r in reps for row in r.csv_rows()], text)


# ---------------------------------------------------------------------------- assign

@cli.command()
@click.argument("features", type=click.Path(path_type=Path))
@click.argument("codebook", type=click.Path(path_type=Path))
@schedule_options
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="token dump to write (.npy, with a .meta.json sidecar).")
@click.option("--gpu/--cpu", "use_gpu", default=None, help="force the FAISS GPU or CPU index (default: GPU when available).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU search threads (default: FAISS's; 1 is best on a busy machine).")
@format_option
def assign(features, codebook, schedule, out, use_gpu, threads, fmt):
    """Nearest-codebook tokens with nested codebooks: position t searches the first K_t codes.

    FEATURES is (N, L, d) float, CODEBOOK is (K_max, d). Writes an (N, L) token dump and its sidecar.

    \b
    entropy-cliff assign features.npy codebook.npy --schedule cosine --kmin 2 --kmax 1024 -o tokens.npy
    """
    from entropy_cliff.assign import assign_file

    info = assign_file(features, codebook, out, use_gpu=use_gpu, threads=threads,
                       schedule=schedule)
    _emit(fmt, info, [{"t": t + 1, "K": k} for t, k in enumerate(info["K"])],
          f"wrote {out} ({info['N']:,} x {info['L']} tokens, {info['label']}) and its sidecar")


# ---------------------------------------------------------------------------- convert

@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="token dump to write (.npy, with NAME.meta.json and the labels beside it).")
@input_options
@click.option("--key", help="array name inside an .npz file.")
@schedule_options
@click.option("--K", "K", callback=_count("--K", theory.MAX_CODEBOOK), metavar="COUNT", help="uniform codebook size for the sidecar.")
@click.option("--quiet", "-q", is_flag=True, help="no progress.")
@format_option
def convert(path, out, read_opts, key, schedule, K, quiet, fmt):
    """Write another code base's tokens as our dump: N x L .npy (smallest unsigned dtype) + sidecar + labels.

    PATH is anything `measure` reads (LlamaGen codes folder, TiTok/RAR .jsonl, .parquet, .npz).
    K_t for the sidecar comes from --K/--schedule, else the largest token + 1.

    \b
    entropy-cliff convert imagenet256_codes/ --out tokens.npy --world-size 8
    entropy-cliff convert pretokenized.jsonl --out tokens.npy --batch-size 128 --world-size 8
    entropy-cliff convert train.parquet --column input_ids --out tokens.npy --K 16384
    """
    from entropy_cliff.formats import convert as convert_input, describe

    info = convert_input(path, out, schedule=schedule,
                         K=K, key=key, progress=False if quiet else None, **read_opts)
    _emit(fmt, info, [dict(info["input"], out=info["out"], N=info["N"], L=info["L"], K_source=info["K_source"]["kind"])],
          f"wrote {out} ({info['N']:,} x {info['L']} tokens, K_t {info['K_source']['kind']}: {info['K_source']['detail']}) and its sidecar\n"
          + describe(info["input"]))


# ---------------------------------------------------------------------------- entry point

def _interrupted(prog: str, e: BaseException) -> NoReturn:
    """``PROG: interrupted[: MSG]`` and exit 130 (128 + SIGINT); a terminal's ``^C`` gets its own line."""
    msg = ": ".join(str(a) for a in e.args if str(a))
    lead = "\n" if sys.stderr.isatty() else ""
    click.echo(f"{lead}{prog}: interrupted" + (f": {msg}" if msg else ""), err=True)
    sys.exit(130)


def run_one_line_errors(prog: str, invoke: Callable[[], Any]) -> NoReturn:
    """Run a click entry point; usage errors and bad input become one stderr line and exit 2.

    Ctrl-C is one line, ``PROG: interrupted`` (``PROG: interrupted: MSG`` for
    ``KeyboardInterrupt("MSG")``, e.g. the checkpoint step a resume continues from), and exit 130.
    """
    try:
        rv = invoke()
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, Interrupted) as e:
        _interrupted(prog, e)
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, KeyboardInterrupt):
            _interrupted(prog, e.__cause__)
        click.echo(f"{prog}: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo(f"{prog}: error: {e.format_message()}", err=True)
        sys.exit(2)
    except EntropyCliffError as e:
        click.echo(f"{prog}: error: {e}", err=True)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # an unwritable --out, a full disk: the user's to fix, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"{prog}: error: {where}{e.strerror or e}", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point ``entropy-cliff``."""
    run_one_line_errors(PROG, lambda: cli.main(args=argv, prog_name=PROG, standalone_mode=False))


if __name__ == "__main__":  # python -m entropy_cliff.cli, like python -m vcq.cli
    main()
