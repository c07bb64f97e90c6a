"""The measurement report: one corpus measured, its K_t resolved, every t*, as JSON, CSV or a table.

:func:`measure_corpus` is the one way to measure a token dump (``entropy-cliff measure``,
``compare``, ``analysis/``). It resolves the per-position codebook sizes K_t in a fixed order:

1. ``schedule`` / ``K`` given by the caller ("flags"),
2. the dump's sidecar ``NAME.meta.json`` ("sidecar", checked by :func:`entropy_cliff.io.read_sidecar`),
3. the largest token + 1 at every position ("inferred"),

and returns a :class:`MeasureReport`. Its JSON keeps the reference field names (top level ``N``,
``L``, ``log2_N``, ``t_star_theory``, ``t_star_budget``, ``t_star_threshold``; ``positions`` with
``t``, ``K``, ``H_cond``, ``H_cond_mm``, ``H_prefix``, ``H_marginal``, ``utilization``,
``groups``) and adds ``version``, ``schedule``, ``K_source`` and ``bootstrap``; every field is
described in ``docs/output-fields.md``. Other parts of the toolkit extend a report without
touching this module: :meth:`MeasureReport.add_field` adds a top-level object (e.g. ``input``,
``engine``), :meth:`MeasureReport.add_column` a per-position column (e.g. ``H_cond_pop``).

With t = 1..L, ``C(t) = sum_{s<=t} log2 K_s``:

    t_star_theory    = min {t : C(t) >= log2 N}
    t_star_budget    = min {t : log2 N - H(X_<=t) <= delta}
    t_star_threshold = min {t : H_t < epsilon}
    t_star_sustained = min {t : H_s < epsilon for every s >= t}

pandas, polars and matplotlib are imported only by the methods that need them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from entropy_cliff import __version__, io, theory
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import KINDS, Schedule, schedule_from_options

if TYPE_CHECKING:
    from entropy_cliff.measure import Measurement
    from entropy_cliff.plots import EntropyCurve

#: Per-position fields of the reference JSON, in order.
SPEC_COLUMNS = ("t", "K", "H_cond", "H_cond_mm", "H_prefix", "H_marginal", "utilization", "groups")
#: Top-level t* fields, in order (the CSV repeats them on every row).
T_STAR_FIELDS = ("t_star_theory", "t_star_budget", "t_star_threshold", "t_star_sustained")
#: Most bootstrap row draws (B x N) accepted; at about 1e8 weighted rows a second this is hours.
MAX_BOOTSTRAP_DRAWS = 10**12
#: Share of physical memory the bootstrap replicates (B x L float64, twice) may take.
BOOTSTRAP_MEMORY_SHARE = 0.5


@dataclass(frozen=True)
class KSource:
    """Where K_t came from: ``kind`` is flags, sidecar or inferred; ``detail`` says which."""

    kind: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}

    def __str__(self) -> str:
        return f"{self.kind} ({self.detail})"


@dataclass
class MeasureReport:
    """A measured corpus with its t* values, ready for JSON, CSV, pandas/polars, a table or a figure.

    ``extra`` holds additional top-level JSON objects and ``columns`` additional per-position
    arrays (one value per position); add to them with :meth:`add_field` / :meth:`add_column`.
    ``warnings`` are one-line notes for the user (printed on stderr by the command line).
    """

    measurement: Measurement
    K_source: KSource
    schedule: Schedule | None
    file: str | None
    label: str
    delta: float = 0.5
    epsilon: float = 0.5
    bootstrap: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ scalars
    @property
    def N(self) -> int:
        return self.measurement.N

    @property
    def L(self) -> int:
        return self.measurement.L

    @property
    def K(self) -> np.ndarray:
        return self.measurement.K

    @property
    def log2_N(self) -> float:
        return self.measurement.log2_N

    @property
    def t_star_theory(self) -> int | None:
        return theory.t_star(self.N, self.K)

    @property
    def t_star_budget(self) -> int | None:
        return self.measurement.t_star_budget(self.delta)

    @property
    def t_star_threshold(self) -> int | None:
        return self.measurement.t_star_threshold(self.epsilon)

    @property
    def t_star_sustained(self) -> int | None:
        return self.measurement.t_star_sustained(self.epsilon)

    @property
    def remaining_budget(self) -> np.ndarray:
        """R(t) = log2 N - C(t-1)."""
        return theory.remaining_budget(self.N, self.K)

    @property
    def bound(self) -> np.ndarray:
        """Proposition 1: min(log2 K_t, max(0, R(t)))."""
        return theory.bound(self.N, self.K)

    @property
    def first_distinct(self) -> int | None:
        """The first t at which every length-t prefix is distinct (H_s = 0 for all s > t), or None."""
        hit = np.flatnonzero(self.measurement.groups == self.N)
        return int(hit[0]) + 1 if hit.size else None

    def t_stars(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in T_STAR_FIELDS}

    # ------------------------------------------------------------------ extension points
    def add_field(self, name: str, value: Any) -> None:
        """Add a top-level JSON field (e.g. ``input``, ``engine``); core fields cannot be replaced."""
        if name in self._core_fields() or name == "positions":
            raise EntropyCliffError(f"report field {name!r} is a core field and cannot be replaced")
        self.extra[name] = value

    def add_column(self, name: str, values: Any) -> None:
        """Add a per-position column (one value per position t = 1..L, e.g. ``H_cond_pop``)."""
        arr = np.asarray(values)
        if arr.shape[:1] != (self.L,) or arr.ndim != 1:
            raise EntropyCliffError(f"report column {name!r}: expected {self.L} values, got shape {arr.shape}")
        if name in self._base_columns():
            raise EntropyCliffError(f"report column {name!r} is a core column and cannot be replaced")
        self.columns[name] = arr

    # ------------------------------------------------------------------ tables
    def _base_columns(self) -> dict[str, np.ndarray]:
        m = self.measurement
        cols = {"t": np.arange(1, self.L + 1), "K": m.K, "H_cond": m.H_cond, "H_cond_mm": m.H_cond_mm,
                "H_prefix": m.H_prefix, "H_marginal": m.H_marginal, "utilization": m.utilization,
                "groups": m.groups, "remaining_budget": self.remaining_budget, "bound": self.bound}
        if m.population is not None:
            from entropy_cliff import population

            cols |= population.columns(m.population)
        return cols

    def table_columns(self) -> dict[str, np.ndarray]:
        """Every per-position column, name -> array of length L: the reference ones, R(t), the
        bound, bootstrap limits when computed, then the added columns."""
        return self._base_columns() | self.columns

    def positions(self) -> list[dict[str, Any]]:
        """The per-position objects of the JSON (one per t)."""
        cols = {k: io.jsonable(np.asarray(v)) for k, v in self.table_columns().items()}
        return [{k: v[i] for k, v in cols.items()} for i in range(self.L)]

    def _core_fields(self) -> dict[str, Any]:
        return {"version": __version__, "file": self.file, "label": self.label, "N": self.N, "L": self.L,
                "log2_N": self.log2_N, **self.t_stars(), "delta": self.delta, "epsilon": self.epsilon,
                "schedule": self.schedule.to_dict() | ({"K": self.K} if self.schedule.kind == "custom" else {})
                if self.schedule is not None else None,
                "K_source": self.K_source.to_dict(), "bootstrap": self.bootstrap}

    def summary(self) -> dict[str, Any]:
        """One line of a comparison: label, file, N, L, log2 N and the t* values."""
        return {"label": self.label, "file": self.file, "N": self.N, "L": self.L, "log2_N": self.log2_N,
                **self.t_stars()}

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (plain Python values; NaN/inf as None)."""
        return io.jsonable(self._core_fields() | self.extra | {"positions": self.positions()})

    def to_json(self) -> str:
        """The JSON text (see ``docs/output-fields.md``)."""
        return io.json_text(self.to_dict())

    def csv_rows(self) -> list[dict[str, Any]]:
        """CSV rows: file, N and the t* values on every row, then the per-position columns."""
        head = {"file": self.file, "N": self.N, **self.t_stars()}
        return [head | p for p in self.positions()]

    def to_csv(self) -> str:
        return io.csv_text(self.csv_rows())

    def to_pandas(self):
        """The per-position table as a :class:`pandas.DataFrame` (one row per t)."""
        import pandas as pd

        return pd.DataFrame({k: np.asarray(v) for k, v in self.table_columns().items()})

    def to_polars(self):
        """The per-position table as a :class:`polars.DataFrame` (one row per t)."""
        import polars as pl

        return pl.DataFrame({k: np.asarray(v) for k, v in self.table_columns().items()})

    # ------------------------------------------------------------------ figures and files
    def entropy_curve(self, label: str | None = None) -> EntropyCurve:
        """This corpus as one curve of :func:`entropy_cliff.plots.entropy_figure`."""
        from entropy_cliff.plots import EntropyCurve

        m = self.measurement
        return EntropyCurve.from_entropies(label or self.label, m.H_cond, m.K, self.N, epsilon=self.epsilon, ci=m.ci,
                                           H_pop=None if m.population is None else m.population.H_cond_pop)

    def save(self, out_dir: str | os.PathLike, *, symlog: bool = False) -> list[Path]:
        """Write ``measure.json``, ``measure.csv`` and ``entropy.png`` into ``out_dir`` atomically."""
        from entropy_cliff.plots import entropy_figure

        out = Path(out_dir)
        name = Path(self.file).name if self.file else self.label
        fig = entropy_figure([self.entropy_curve()], title=f"{name}: entropy cliff", symlog=symlog)
        paths = [out / "measure.json", out / "measure.csv", out / "entropy.png"]
        with io.atomic_paths(*paths) as (tj, tc, tp):
            tj.write_text(self.to_json() + "\n")
            tc.write_text(self.to_csv())
            fig.savefig(tp, format="png", dpi=150)
        return paths


# ---------------------------------------------------------------------------- K_t resolution

def resolve_K(path: str | os.PathLike | None, shape: tuple[int, int], *,
              schedule: Schedule | Mapping[str, Any] | None = None,
              K: int | None = None) -> tuple[np.ndarray | None, KSource, Schedule | None]:
    """K_t for a corpus of ``shape`` (N, L): flags (``schedule`` or uniform ``K``), else the sidecar of
    ``path``, else None (inferred by the measurement as the largest token + 1).

    ``schedule`` is a :class:`Schedule` of L positions or the keyword arguments of
    :func:`entropy_cliff.schedules.schedule_from_options` without ``length`` (``kind``, ``kmin``,
    ``kmax``, ``power``, ``schedule_file``), resolved for L; one naming no schedule counts as none.

    Returns ``(K or None, source, schedule or None)``. A sidecar is read (and checked) even when flags
    win, so a contradictory sidecar is always reported.
    """
    N, L = shape
    if isinstance(schedule, Mapping):
        if schedule.get("kind") is None and not schedule.get("schedule_file") and schedule.get("kmax") is not None:
            raise EntropyCliffError(f"kmax = {schedule['kmax']} given without a schedule kind (constant, linear, "
                                    "cosine, power) or a schedule file; for a uniform codebook give K")
        schedule = schedule_from_options(length=L, **schedule)
    if schedule is not None and K is not None:
        raise EntropyCliffError("give either a uniform codebook size K or a schedule, not both")
    meta = io.read_sidecar(path, shape) if path is not None else None
    if K is not None:
        schedule = Schedule("constant", int(K), int(K), L)
    if schedule is not None:
        if schedule.length != L:
            raise EntropyCliffError(f"schedule {schedule.label} has {schedule.length} positions, the corpus L = {L}")
        return schedule.K, KSource("flags", schedule.label), schedule
    if meta is not None:
        sd = meta.get("schedule") or {}
        sched = Schedule.from_dict(sd, L) if sd.get("kind") in KINDS[:-1] else Schedule.custom(meta["K"])
        return (np.asarray([int(k) for k in meta["K"]], dtype=np.int64),
                KSource("sidecar", f"{io.sidecar_path(path).name}: {sched.label}"), sched)
    why = "no sidecar for this input and no schedule given" if path is None else f"no sidecar {io.sidecar_path(path).name} and no schedule given"
    return None, KSource("inferred", f"largest token + 1 ({why})"), None


def check_bootstrap_fits(B: int, N: int, L: int, memory_bytes: int | None = None) -> None:
    """Refuse a bootstrap that cannot finish: replicates (2 x B x L float64) beyond
    :data:`BOOTSTRAP_MEMORY_SHARE` of memory, or more than :data:`MAX_BOOTSTRAP_DRAWS` row draws (B x N)."""
    if B <= 0:  # a negative B is refused by population.check_arguments
        return
    mem = memory_bytes if memory_bytes is not None else _physical_memory()
    need = 2 * 8 * B * L
    if need > BOOTSTRAP_MEMORY_SHARE * mem:
        raise EntropyCliffError(f"bootstrap: B = {B:,} resamples x L = {L} positions need {io.format_bytes(need)} for the "
                                f"replicates, more than {BOOTSTRAP_MEMORY_SHARE:.0%} of this machine's {io.format_bytes(mem)}")
    if B * N > MAX_BOOTSTRAP_DRAWS:
        raise EntropyCliffError(f"bootstrap: B = {B:,} resamples of N = {N:,} rows draw {B * N:.3g} rows "
                                f"(limit {MAX_BOOTSTRAP_DRAWS:.0e}: days of computing); use fewer resamples (200 is usual)")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def first_rows(parts: list[np.ndarray], rows: int) -> list[np.ndarray]:
    """The first ``rows`` rows of a corpus given as parts (one array, or the shards of a sharded dump), as parts."""
    out = []
    for X in parts:
        if rows <= 0:
            break
        out.append(X[:rows])
        rows -= out[-1].shape[0]
    return out


def looks_variable(parts: list[np.ndarray]) -> bool:
    """Whether a corpus (its parts: one array, or the shards of a sharded dump) has a per-position largest
    token that clearly grows with t, as a VCQ schedule's does: the largest token + 1 over the first
    quarter of positions is at most half that of the last quarter."""
    L = parts[0].shape[1]
    if L < 4:
        return False
    from entropy_cliff.measure import column_maxima

    top = column_maxima(parts)  # Python ints: no wrap-around for uint64 tokens
    q = -(-L // 4)
    return 2 * (max(top[:q]) + 1) <= max(top[-q:]) + 1


def measure_corpus(source: str | os.PathLike | np.ndarray, *, schedule: Schedule | Mapping[str, Any] | None = None, K: int | None = None,
                   key: str | None = None, delta: float = 0.5, epsilon: float = 0.5, bootstrap: int = 0,
                   confidence: float = 0.95, seed: int = 0, progress: bool | None = None, label: str | None = None,
                   warn_variable: bool = False, read_opts: Mapping[str, Any] | None = None,
                   scheduler: str | None = None, workers: int | None = None, rows: int | None = None) -> MeasureReport:
    """Measure one corpus into a :class:`MeasureReport`: an (N, L) integer array, or a path that
    :func:`entropy_cliff.formats.read_corpus` reads (``.npy``/``.npz``, a directory of shards, a
    LlamaGen codes folder, a TiTok/RAR ``.jsonl``, Parquet) with ``read_opts`` (``input_format``,
    ``view``, ``column``, ``ten_crop``, ``batch_size``, ``world_size``, ``threads``); what was read is
    the report's ``input`` field.

    K_t: ``schedule`` or uniform ``K``, else the sidecar, else inferred (see :func:`resolve_K`).
    ``bootstrap = B`` adds the population estimate of H_t and its intervals at level ``confidence``
    (refused at once when it cannot fit: :func:`check_bootstrap_fits`), the same on both engines.
    ``warn_variable`` adds a warning when K_t is inferred
    or constant but the per-position largest token grows with t (:func:`looks_variable`).
    The engine is this process (Numba kernel) unless ``scheduler`` (a dask.distributed address) or
    ``workers`` (a local Dask cluster of that many processes) is given: see
    :func:`entropy_cliff.distributed.measure_distributed`; both give identical results.

    ``rows = n`` measures only the first n rows (2 <= n <= N; nested subsets for t* against N) on
    the local engine: K_t is still resolved for the whole corpus (the sidecar checked against its
    N rows; an inferred K_t is the largest token + 1 over all N rows), and the report's ``rows``
    field gives ``{"measured": n, "of": N}``.
    """
    if scheduler is not None and workers is not None:
        raise EntropyCliffError("give either a scheduler address or a number of local workers, not both")
    if bootstrap:  # B and the level, before reading anything
        from entropy_cliff.population import MAX_SINGLETON_MASS, check_arguments

        check_arguments(confidence, MAX_SINGLETON_MASS, bootstrap)
    if rows is not None and (scheduler is not None or workers is not None):  # before reading anything
        raise EntropyCliffError(f"rows = {rows}: a subset of rows is measured by the local engine only, not by dask")
    dask = scheduler is not None or workers is not None
    if isinstance(source, np.ndarray):
        if dask:
            raise EntropyCliffError("the dask engine measures .npy files or shard directories, not in-memory arrays")
        path, X, info = None, io.as_corpus(source, "array"), None
    else:
        from entropy_cliff.formats import OUR_FORMATS, detect_format, read_corpus

        path = Path(source)
        if dask and (fmt := detect_format(path, (read_opts or {}).get("input_format"))) not in ("npy", "shards"):
            raise EntropyCliffError(f"{path}: the dask engine reads .npy files or shard directories, not {fmt} "
                                    "(write one with entropy-cliff convert first)")
        corpus = read_corpus(path, key=key, progress=progress, labels=False, **(read_opts or {}))
        X, info = corpus.tokens, corpus.info
    parts = X if isinstance(X, list) else [X]
    N, L = sum(p.shape[0] for p in parts), parts[0].shape[1]
    own = info is None or info["format"] in OUR_FORMATS  # only our dumps have sidecars
    Kt, src, sched = resolve_K(path if own else None, (N, L), schedule=schedule, K=K)
    if rows is not None:
        if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or not 2 <= rows <= N:
            raise EntropyCliffError(f"rows = {rows!r}: must be an integer from 2 to the corpus's N = {N:,}")
        if Kt is None:  # inferred from every row, as the whole corpus's measurement would
            from entropy_cliff.measure import column_maxima, inferred_codebook

            Kt = inferred_codebook(column_maxima(parts), L)
            src = KSource("inferred", f"{src.detail}, over all {N:,} rows")
        parts = first_rows(parts, int(rows))
        X = parts if isinstance(X, list) else parts[0]
    check_bootstrap_fits(bootstrap, N if rows is None else int(rows), L)
    if dask:
        from entropy_cliff.distributed import measure_distributed

        m = measure_distributed(path, Kt, scheduler=scheduler, workers=workers, bootstrap=bootstrap,
                                confidence=confidence, seed=seed)
    else:
        from entropy_cliff.measure import measure, without_scipy_linalg
        with without_scipy_linalg():
            m = measure(X, Kt, bootstrap=bootstrap, confidence=confidence, seed=seed, progress=progress)
        if rows is not None and src.kind == "inferred":
            m = dataclasses.replace(m, K_inferred=True)
    name = label or (sched.label if sched is not None and sched.kind != "custom" else
                     path.stem if path is not None else "corpus")
    rep = MeasureReport(measurement=m, K_source=src, schedule=sched, file=str(path) if path is not None else None,
                        label=name, delta=delta, epsilon=epsilon,
                        bootstrap={"B": bootstrap, "level": confidence, "seed": seed} if bootstrap else None)
    if info is not None:
        rep.add_field("input", info)
    if rows is not None:
        rep.add_field("rows", {"measured": int(rows), "of": N})
    rep.add_field("engine", m.engine)
    if m.population is not None:
        from entropy_cliff import population

        rep.add_field("population", population.summary(m.population))
    constant = sched is None or sched.kmin == sched.kmax
    if warn_variable and constant and looks_variable(parts):
        rep.warnings.append(f"{path or 'array'}: K_t {src.kind} ({'constant' if sched else 'inferred'}), but its "
                            "largest token grows with t like a variable schedule's; give --schedule or a sidecar")
    return rep


def compare_corpora(sources: list[str | os.PathLike | np.ndarray], *, labels: list[str] | None = None,
                    **kwargs: Any) -> list[MeasureReport]:
    """:func:`measure_corpus` for several corpora (same options), warning about variable-looking dumps."""
    if not sources:
        raise EntropyCliffError("no corpora to compare")
    if labels and len(labels) != len(sources):
        raise EntropyCliffError(f"{len(labels)} labels for {len(sources)} corpora")
    names = list(labels) if labels else [None] * len(sources)
    return [measure_corpus(s, label=n, warn_variable=True, **kwargs) for s, n in zip(sources, names)]


#: What a table prints for a t* that is not reached within L positions (JSON: null; CSV: empty).
NOT_REACHED = "-"


def not_reached(value: int | None) -> str:
    """A t* for people: the number, or :data:`NOT_REACHED`."""
    return NOT_REACHED if value is None else str(value)
