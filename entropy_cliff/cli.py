"""``entropy-cliff`` command line: parse options, call the library, format the result. Nothing else.

Every command takes ``--format table|json|csv``; JSON is the stable machine interface (SPEC §7).
Bad input is one line on stderr and exit status 2, with no traceback and no partial output file.
Heavy modules (the Numba kernel, matplotlib, FAISS) are imported only by the commands that need them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

import click
import numpy as np

from entropy_cliff import theory
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import KINDS, Schedule, paper_table2

DATA_DIR = Path(__file__).parent / "data"
DEMOS = ("constant", "cosine")
PROG = "entropy-cliff"


# ---------------------------------------------------------------------------- output formatting

def _clean(x: Any) -> Any:
    """JSON-safe values: numpy scalars/arrays to Python, NaN/inf to null."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _json(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(_clean(rows))
    return buf.getvalue()


def _fmt_cell(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "-"
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
    click.echo(_json(data) if fmt == "json" else _csv(rows) if fmt == "csv" else text)


format_option = click.option(
    "--format", "fmt", type=click.Choice(("table", "json", "csv")), default="table", show_default=True,
    help="table for people, json (stable fields, SPEC §7) or csv (one row per position) for programs.")


def _count(what: str):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return theory.parse_count(value, what)
        except EntropyCliffError as e:
            raise click.BadParameter(str(e).removeprefix(f"{what}: ")) from None
    return convert


def schedule_options(f):
    """--schedule/--kmin/--kmax/--power/--schedule-file, shared by predict, schedule, measure, assign."""
    f = click.option("--schedule-file", type=click.Path(dir_okay=False),
                     help="custom schedule: a JSON list of K_t, a sidecar with 'K', or numbers separated by spaces/commas.")(f)
    f = click.option("--power", type=float, default=2.5, show_default=True, help="p of the power schedule u**p.")(f)
    f = click.option("--kmax", callback=_count("--kmax"), metavar="COUNT", help="largest codebook size K_max.")(f)
    f = click.option("--kmin", callback=_count("--kmin"), metavar="COUNT", default="2", show_default=True, help="smallest codebook size K_min.")(f)
    f = click.option("--schedule", "kind", type=click.Choice(KINDS[:-1]),
                     help="codebook-size schedule K_t (paper Eq. 3); cosine is the paper's default.")(f)
    return f


def _schedule(kind: str | None, kmin: int, kmax: int | None, length: int, power: float,
              schedule_file: str | None) -> Schedule | None:
    if schedule_file:
        s = Schedule.from_file(schedule_file)
        if s.length != length:
            raise EntropyCliffError(f"{schedule_file}: {s.length} codebook sizes for {length} positions")
        return s
    if kind is None:
        return None
    if kmax is None:
        raise EntropyCliffError(f"--schedule {kind} needs --kmax")
    return Schedule(kind, kmax if kind == "constant" else kmin, kmax, length, power)


# ---------------------------------------------------------------------------- the group

@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="entropy-cliff")
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
@click.option("--K", "K", callback=_count("--K"), metavar="COUNT", help="uniform codebook size (a constant schedule).")
@schedule_options
@click.option("--length", "-L", type=click.IntRange(min=1), default=256, show_default=True,
              help="sequence length L (positions in the per-position bound).")
@click.option("--utilization", "-u", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="utilization-adjusted variant: replace log2 K_t by u log2 K_t.")
@click.option("--datasets", is_flag=True, help="print the paper's Table 1 (t* of standard datasets) for this codebook.")
@click.option("--rows", type=click.IntRange(min=1), help="table format: positions to list (default: until the bound is 0, plus 2).")
@format_option
def predict(N, K, kind, kmin, kmax, power, schedule_file, length, utilization, datasets, rows, fmt):
    """t*, the Proposition 1 bound per position, and the data needed to push t* back.

    \b
    entropy-cliff predict --N 1.28e6 --K 16384
    entropy-cliff predict --N 1.28e6 --schedule cosine --kmin 2 --kmax 16384 --length 256
    entropy-cliff predict --K 16384 --datasets
    """
    sched = _schedule(kind, kmin, kmax, length, power, schedule_file)
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
        f"t* = {ts if ts is not None else f'beyond L = {length} (C(L) < log2 N)'}"
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
def schedule(kind, kmin, kmax, power, schedule_file, length, N, image_size, table, plot, fmt, target_t=None):
    """K_t per position, mean K, bits per pixel, C(t) and t* of a codebook-size schedule.

    \b
    entropy-cliff schedule --schedule cosine --kmin 2 --kmax 16384
    entropy-cliff schedule --table
    entropy-cliff schedule --schedule power --power 2.5 --kmax 16384 --plot k.png
    """
    if N < 2:
        raise EntropyCliffError(f"--N must be at least 2, got {N}")
    if target_t is not None:
        return _target_t(target_t, N, kmin, kmax, length, fmt)
    if table:
        scheds = paper_table2(length, kmin)
    else:
        s = _schedule(kind, kmin, kmax, length, power, schedule_file)
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
        save_figure(schedule_figure(scheds, math.log2(N)), plot)
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


def _import_measure():
    """Import the Numba kernels without Numba's BLAS probe.

    On its first kernel load Numba imports ``scipy.linalg.cython_blas`` (about 0.3 s) only to learn
    whether ``np.dot`` may call BLAS; our kernels call no BLAS. Inside this command's own process we
    hide that module while Numba looks for it, so it records "no BLAS" for this process only.
    """
    if "numba.np.arraymath" not in sys.modules and "scipy.linalg.cython_blas" not in sys.modules:
        sys.modules["scipy.linalg.cython_blas"] = None  # type: ignore[assignment]
        try:
            import numba.np.arraymath  # noqa: F401
        finally:
            del sys.modules["scipy.linalg.cython_blas"]
    from entropy_cliff.measure import measure
    return measure


def _load_measurement(path: Path, key: str | None, sched_flags: dict[str, Any], uniform_K: int | None,
                      bootstrap: int, confidence: float, seed: int, quiet: bool) -> dict[str, Any]:
    """Load a corpus, resolve its K_t (flags > sidecar > inferred) and measure it."""
    from entropy_cliff.io import load_tokens, read_sidecar

    measure = _import_measure()
    X = load_tokens(path, key)
    N, L = X.shape
    sched = _schedule(length=L, **sched_flags)
    meta = read_sidecar(path)
    if sched is not None and uniform_K is not None:
        raise EntropyCliffError("give either --K or --schedule, not both")
    if uniform_K is not None:
        sched = Schedule("constant", uniform_K, uniform_K, L)
    if sched is not None:
        K, source = sched.K, f"flags ({sched.label})"
    elif meta is not None:
        K = np.asarray(meta["K"], dtype=np.int64)
        if K.shape != (L,):
            raise EntropyCliffError(f"{path}: sidecar lists {K.size} codebook sizes for L = {L} positions")
        sd = meta.get("schedule") or {}
        source = "sidecar" + (f" ({Schedule.from_dict(sd, L).label})" if sd.get("kind") in KINDS[:-1] else "")
    else:
        K, source = None, "inferred (max token + 1; no sidecar or --schedule)"
    m = measure(X, K, bootstrap=bootstrap, confidence=confidence, seed=seed, progress=False if quiet else None)
    return {"path": path, "measurement": m, "K_source": source, "meta": meta}


def _measure_report(run: dict[str, Any], delta: float, epsilon: float) -> dict[str, Any]:
    m = run["measurement"]
    bnd = theory.bound(m.N, m.K)
    rem = theory.remaining_budget(m.N, m.K)
    positions = []
    for i in range(m.L):
        p = {"t": i + 1, "K": int(m.K[i]), "H_cond": float(m.H_cond[i]), "H_cond_mm": float(m.H_cond_mm[i]),
             "H_prefix": float(m.H_prefix[i]), "H_marginal": float(m.H_marginal[i]),
             "utilization": float(m.utilization[i]), "groups": int(m.groups[i]),
             "remaining_budget": float(rem[i]), "bound": float(bnd[i])}
        if m.ci is not None:
            p["H_cond_ci_low"], p["H_cond_ci_high"] = float(m.ci[i, 0]), float(m.ci[i, 1])
        positions.append(p)
    return {"file": str(run["path"]), "N": m.N, "L": m.L, "log2_N": m.log2_N,
            "t_star_theory": theory.t_star(m.N, m.K), "t_star_budget": m.t_star_budget(delta),
            "t_star_threshold": m.t_star_threshold(epsilon), "t_star_sustained": m.t_star_sustained(epsilon),
            "delta": delta, "epsilon": epsilon,
            "K_source": run["K_source"], "positions": positions}


def _measure_text(rep: dict[str, Any]) -> str:
    pos = rep["positions"]
    N = rep["N"]
    last = next((p["t"] for p in pos if p["groups"] == N), None)
    shown = pos if last is None else pos[: min(len(pos), last + 1)]
    cols = {"t": "t", "K": "K_t", "H_cond": "H_t", "H_cond_mm": "H_t MM", "H_prefix": "H(X<=t)",
            "remaining_budget": "log2N-C(t-1)", "bound": "bound", "H_marginal": "H(X_t)",
            "utilization": "util", "groups": "prefixes"}
    if "H_cond_ci_low" in pos[0]:
        cols |= {"H_cond_ci_low": "CI lo", "H_cond_ci_high": "CI hi"}
    tail = (f"(every length-{last} prefix is distinct: H_t = 0 for all t > {last})"
            if last is not None and len(shown) < len(pos) else "")
    return "\n".join([
        f"{rep['file']}: N = {N:,} sequences x L = {rep['L']} positions, log2 N = {rep['log2_N']:.2f} bits",
        f"K_t: {rep['K_source']}",
        f"t* theory (C(t) >= log2 N): {rep['t_star_theory']}   "
        f"budget (log2 N - H(X<=t) <= {rep['delta']:g}): {rep['t_star_budget']}   "
        f"threshold (H_t < {rep['epsilon']:g}): {rep['t_star_threshold']}   "
        f"sustained (H_s < {rep['epsilon']:g} for all s >= t): {rep['t_star_sustained']}",
        "", _table(shown, cols), tail]).rstrip()


def _entropy_curve(rep: dict[str, Any], run: dict[str, Any], label: str):
    from entropy_cliff.plots import EntropyCurve
    m = run["measurement"]
    return EntropyCurve(label=label, H_cond=m.H_cond, remaining=theory.remaining_budget(m.N, m.K),
                        log2_K=np.log2(m.K.astype(float)), t_star_theory=rep["t_star_theory"],
                        t_star_empirical=rep["t_star_sustained"], ci=m.ci)


def _label(run: dict[str, Any]) -> str:
    sd = (run["meta"] or {}).get("schedule") or {}
    L = run["measurement"].L
    return Schedule.from_dict(sd, L).label if sd.get("kind") in KINDS[:-1] else Path(run["path"]).stem


def measure_options(f):
    f = click.option("--quiet", "-q", is_flag=True, help="no progress bar.")(f)
    f = click.option("--seed", type=int, default=0, show_default=True, help="bootstrap seed.")(f)
    f = click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
                     show_default=True, help="bootstrap interval level.")(f)
    f = click.option("--bootstrap", type=click.IntRange(min=0), default=0, show_default=True,
                     help="B bootstrap resamples of the rows: basic (bias-corrected) intervals for H_t.")(f)
    f = click.option("--epsilon", type=click.FloatRange(min=0), default=0.5, show_default=True,
                     help="empirical t*: first t with H_t < epsilon bits (threshold), and first t after which every H_s < epsilon (sustained).")(f)
    f = click.option("--delta", type=click.FloatRange(min=0), default=0.5, show_default=True,
                     help="empirical t* (budget): first t with log2 N - H(X<=t) <= delta bits.")(f)
    f = click.option("--K", "K", callback=_count("--K"), metavar="COUNT", help="uniform codebook size (checks every token < K).")(f)
    f = schedule_options(f)
    f = click.option("--key", help="array name inside an .npz file.")(f)
    return f


@cli.command()
@click.argument("tokens", type=click.Path(path_type=Path), required=False)
@click.option("--demo", type=click.Choice(DEMOS), help="measure an embedded demo corpus instead of TOKENS.")
@measure_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="also write DIR/measure.json, DIR/measure.csv and DIR/entropy.png.")
@format_option
def measure(tokens, demo, key, kind, kmin, kmax, power, schedule_file, K, delta, epsilon, bootstrap, confidence,
            seed, quiet, out, fmt):
    """Exact per-position conditional entropy H(X_t | X_<t) of a token corpus, and its t*.

    TOKENS is an (N, L) integer .npy (memory-mapped, may exceed RAM) or .npz (--key). K_t comes
    from --schedule/--K, else from the sidecar NAME.meta.json written by `vcq dump-tokens`, else
    it is inferred as the largest token + 1. Every token is checked against its K_t.

    \b
    entropy-cliff measure tokens.npy
    entropy-cliff measure tokens.npy --schedule cosine --kmin 2 --kmax 1024 --out results/
    entropy-cliff measure --demo cosine --format json
    """
    if (tokens is None) == (demo is None):
        raise EntropyCliffError("give one token file (TOKENS) or --demo NAME")
    path = tokens if tokens is not None else _demo_path(demo)
    flags = dict(kind=kind, kmin=kmin, kmax=kmax, power=power, schedule_file=schedule_file)
    run = _load_measurement(path, key, flags, K, bootstrap, confidence, seed, quiet)
    rep = _measure_report(run, delta, epsilon)
    text = _measure_text(rep)
    if out is not None:
        from entropy_cliff.io import atomic_paths
        from entropy_cliff.plots import entropy_figure
        fig = entropy_figure([_entropy_curve(rep, run, _label(run))], title=f"{Path(path).name}: entropy cliff")
        with atomic_paths(out / "measure.json", out / "measure.csv", out / "entropy.png") as (tj, tc, tp):
            tj.write_text(_json(rep) + "\n")
            tc.write_text(_csv(rep["positions"]))
            fig.savefig(tp, format="png", dpi=150)
        click.echo(f"wrote {out}/measure.json, measure.csv, entropy.png", err=True)
    _emit(fmt, rep, rep["positions"], text)


@cli.command()
@click.argument("tokens", nargs=-1, type=click.Path(path_type=Path))
@click.option("--demo", is_flag=True, help="compare the embedded demo corpora (constant K vs cosine VCQ).")
@click.option("--label", "labels", multiple=True, help="legend label per corpus (repeat; default: schedule or file name).")
@measure_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write the figure here (PNG).")
@format_option
def compare(tokens, demo, labels, key, kind, kmin, kmax, power, schedule_file, K, delta, epsilon, bootstrap,
            confidence, seed, quiet, out, fmt):
    """Several token dumps on one figure: per-position H_t and remaining budget (paper Fig. 2a).

    \b
    entropy-cliff compare constant.npy cosine.npy --out fig2a.png
    entropy-cliff compare --demo --out figures/demo_compare.png
    """
    paths = list(tokens) + ([_demo_path(n) for n in DEMOS] if demo else [])
    if not paths:
        raise EntropyCliffError("give token files to compare (or --demo)")
    if labels and len(labels) != len(paths):
        raise EntropyCliffError(f"{len(labels)} --label values for {len(paths)} corpora")
    flags = dict(kind=kind, kmin=kmin, kmax=kmax, power=power, schedule_file=schedule_file)
    runs = [_load_measurement(p, key, flags, K, bootstrap, confidence, seed, quiet)
            for p in paths]
    reps = [_measure_report(r, delta, epsilon) for r in runs]
    names = list(labels) if labels else [_label(r) for r in runs]
    summary = [{"label": n, "file": r["file"], "N": r["N"], "L": r["L"], "log2_N": r["log2_N"],
                "t_star_theory": r["t_star_theory"], "t_star_budget": r["t_star_budget"],
                "t_star_threshold": r["t_star_threshold"], "t_star_sustained": r["t_star_sustained"]}
               for n, r in zip(names, reps)]
    if out is not None:
        from entropy_cliff.plots import entropy_figure, save_figure
        save_figure(entropy_figure([_entropy_curve(rep, run, n) for rep, run, n in zip(reps, runs, names)]), out)
        click.echo(f"wrote {out}", err=True)
    text = _table(summary, {"label": "corpus", "N": "N", "L": "L", "log2_N": "log2 N", "t_star_theory": "t* theory",
                            "t_star_budget": "t* budget", "t_star_threshold": "t* threshold",
                            "t_star_sustained": "t* sustained"})
    _emit(fmt, {"corpora": [dict(s, positions=r["positions"]) for s, r in zip(summary, reps)]},
          [dict(p, corpus=s["label"]) for s, r in zip(summary, reps) for p in r["positions"]], text)


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
def assign(features, codebook, kind, kmin, kmax, power, schedule_file, out, use_gpu, threads, fmt):
    """Nearest-codebook tokens with nested codebooks: position t searches the first K_t codes.

    FEATURES is (N, L, d) float, CODEBOOK is (K_max, d). Writes an (N, L) token dump and its sidecar.

    \b
    entropy-cliff assign features.npy codebook.npy --schedule cosine --kmin 2 --kmax 1024 -o tokens.npy
    """
    from entropy_cliff.assign import nested_assign
    from entropy_cliff.io import load_array, save_tokens

    feats, cb = load_array(features), load_array(codebook)
    if feats.ndim != 3 or cb.ndim != 2:
        raise EntropyCliffError(f"expected features (N, L, d) and codebook (K_max, d), got {feats.shape} and {cb.shape}")
    sched = _schedule(kind, kmin, kmax if kmax is not None else cb.shape[0], feats.shape[1], power, schedule_file)
    if sched is None:
        raise EntropyCliffError("give --schedule KIND (with --kmax, default: the codebook size) or --schedule-file")
    if sched.kmax > cb.shape[0]:
        raise EntropyCliffError(f"K_max = {sched.kmax} exceeds the codebook's {cb.shape[0]} entries")
    tokens = nested_assign(feats, cb, sched.K, use_gpu=use_gpu, threads=threads)
    save_tokens(out, tokens, sched.K, sched.to_dict(), source={"features": str(features), "codebook": str(codebook)})
    info = {"out": str(out), "N": tokens.shape[0], "L": tokens.shape[1], "schedule": sched.to_dict(), "K": sched.K}
    _emit(fmt, info, [{"t": t + 1, "K": int(k)} for t, k in enumerate(sched.K)],
          f"wrote {out} ({tokens.shape[0]:,} x {tokens.shape[1]} tokens, {sched.label}) and its sidecar")


# ---------------------------------------------------------------------------- entry point

def run_one_line_errors(prog: str, invoke: Callable[[], Any]) -> NoReturn:
    """Run a click entry point; usage errors and bad input become one stderr line and exit 2."""
    try:
        rv = invoke()
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
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
