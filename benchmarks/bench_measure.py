"""Benchmark of :func:`entropy_cliff.measure.measure` against a polars ``group_by`` baseline.

The baseline computes the same per-position conditional entropy from a rolling 64-bit prefix
hash ``h_t = mix(h_{t-1}, x_t)``: count the rows per hash value with polars ``group_by``, take the
plug-in entropy of those counts, stop once every prefix is distinct. (Its hash could in principle
merge two prefixes; ours cannot.)

Cases (data under ``bench_data/``, gitignored, written once and reused):

(a) ImageNet-shaped dump: N = 1,280,000 × L = 256 int16, tokens uniform over 16384, prefixes
    distinct by t = 4.
(b) worst case, no early exit: 640,000 random rows each present twice (shuffled), so all 256
    positions must be processed.
--big: N = 10,000,000 × 256 uint16 written to a memory-mapped .npy on disk (5.1 GB) and measured
    from disk by the command line in a child process.

Every file gets the sidecar a token dump has (K_t = 16384), so the command reads K_t from it.

Times are the best of ``--repeat`` runs in this process (compiled kernels already loaded); the whole
command runs in a fresh child process, and on (a) it is timed against the baseline run as a whole
process too (``--baseline FILE``; 5 alternating runs each, medians). Run:
``.venv/bin/python benchmarks/bench_measure.py [--big] [--repeat R]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench_data"
PY = ROOT / ".venv" / "bin" / "python"
CLI = ROOT / ".venv" / "bin" / "entropy-cliff"
K_TOKENS = 16384
L = 256


def _mix(h: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One step of the baseline's rolling 64-bit hash (splitmix64 finaliser of ``h ^ x``)."""
    z = h ^ (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def baseline_conditional_entropy(X: np.ndarray) -> np.ndarray:
    """H_t (bits, t = 1..L) from polars ``group_by`` counts of a rolling prefix hash."""
    import polars as pl

    N, n_pos = X.shape
    h = np.zeros(N, dtype=np.uint64)
    H_prefix = np.full(n_pos, math.log2(N))
    with np.errstate(over="ignore"):
        for t in range(n_pos):
            h = _mix(h, np.asarray(X[:, t]))
            counts = pl.DataFrame({"h": h}).group_by("h").len()["len"].to_numpy().astype(np.float64)
            H_prefix[t] = math.log2(N) - float((counts * np.log2(counts)).sum()) / N
            if counts.size == N:
                break
    return np.diff(H_prefix, prepend=0.0)


def _write_sidecar(path: Path, n: int) -> None:
    """The sidecar a token dump of a constant K = 16384 codebook has (so K_t is given, not inferred)."""
    meta = {"N": n, "L": L, "K": [K_TOKENS] * L, "source": {"bench": path.stem},
            "schedule": {"kind": "constant", "kmin": K_TOKENS, "kmax": K_TOKENS, "power": None}}
    path.with_name(f"{path.stem}.meta.json").write_text(json.dumps(meta))


def _write_case(name: str, make) -> Path:
    path = DATA / f"{name}.npy"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        X = make()
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, X)
        _write_sidecar(path, X.shape[0])
        tmp.rename(path)
    return path


def case_a() -> Path:
    rng = np.random.default_rng(1)
    return _write_case("a_imagenet", lambda: rng.integers(0, K_TOKENS, (1_280_000, L), dtype=np.int16))


def case_b() -> Path:
    def make():
        rng = np.random.default_rng(2)
        U = rng.integers(0, K_TOKENS, (640_000, L), dtype=np.int16)
        return np.concatenate([U, U])[rng.permutation(1_280_000)]

    return _write_case("b_pairs", make)


def case_big() -> Path:
    """10M × 256 uint16 written block by block into a memory-mapped .npy (never whole in RAM)."""
    path = DATA / "big_10M.npy"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        n = 10_000_000
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(n, L))
        rng = np.random.default_rng(3)
        for r0 in range(0, n, 500_000):
            out[r0 : r0 + 500_000] = rng.integers(0, K_TOKENS, (min(500_000, n - r0), L), dtype=np.uint16)
        out.flush()
        del out
        _write_sidecar(path, n)
        tmp.rename(path)
    return path


def _best(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def _child(args: list[str]) -> tuple[float, int, float]:
    """Wall time (s), peak RSS (MiB) and CPU time (user + sys, s) of a child process.

    Peak and CPU come from ``/usr/bin/time`` when present: a child spawned from this (large) process
    starts its ``ru_maxrss`` from this process's resident size, so ``wait4`` here would overstate it.
    """
    gnu_time = Path("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        cmd = [str(gnu_time), "-f", "%M %U %S", "-o", rss.name, *args] if gnu_time.exists() else args
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
        text = rss.read().strip()
    if text:
        kib, user, sys_ = text.splitlines()[-1].split()
        return wall, int(kib) // 1024, float(user) + float(sys_)
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, float("nan")


def compare_whole_commands(path: Path, runs: int = 5) -> str:
    """``entropy-cliff measure FILE --format json`` against the baseline as a whole process
    (``bench_measure.py --baseline FILE``: interpreter, imports, H_t, JSON), one warm-up each, then
    ``runs`` alternating runs each; medians of wall and CPU (user + sys) time and their ratios."""
    ours, _ = command_for(path)
    base = [str(PY), str(Path(__file__).resolve()), "--baseline", str(path)]
    _child(ours), _child(base)
    a, b = [], []
    for _ in range(runs):
        a.append(_child(ours))
        b.append(_child(base))
    med = lambda rows, i: float(np.median([r[i] for r in rows]))  # noqa: E731
    return (f"whole command vs baseline script, {runs} alternating runs each (medians): "
            f"measure {med(a, 0):.2f} s wall, {med(a, 2):.2f} s CPU, {med(a, 1)} MiB; "
            f"baseline {med(b, 0):.2f} s wall, {med(b, 2):.2f} s CPU; ratio ours/baseline "
            f"{med(a, 0) / med(b, 0):.2f} wall, {med(a, 2) / med(b, 2):.2f} CPU "
            f"(load average {os.getloadavg()[0]:.1f})")


def command_for(path: Path) -> tuple[list[str], str]:
    """The whole-command measurement: the CLI if installed, else ``python -c`` load_tokens+measure."""
    if CLI.exists():
        return [str(CLI), "measure", str(path), "--format", "json"], "entropy-cliff measure --format json"
    code = ("import sys, json; from entropy_cliff.io import load_tokens, read_sidecar; "
            "from entropy_cliff.measure import measure; p = sys.argv[1]; meta = read_sidecar(p); "
            "m = measure(load_tokens(p), None if meta is None else meta['K']); "
            "print(json.dumps({'H_cond': m.H_cond.tolist()}))")
    return [str(PY), "-c", code, str(path)], "python -c load_tokens+measure (CLI not installed)"


def run_command(path: Path) -> str:
    """Wall time and peak RSS of the whole command on ``path``, as a printable line."""
    args, what = command_for(path)
    wall, peak, _ = _child(args)
    size = np.load(path, mmap_mode="r").nbytes / 2**20
    return f"whole command [{what}]: {wall:.3f} s wall, peak RSS {peak} MiB (input {size:.0f} MiB)"


def bench_case(label: str, path: Path, repeat: int, command_line: str) -> None:
    from entropy_cliff.io import load_tokens, read_sidecar
    from entropy_cliff.measure import measure, prefix_entropy

    X = load_tokens(path)
    K = read_sidecar(path)["K"]
    print(f"\n== {label}: {path.name}  N = {X.shape[0]:,} x L = {X.shape[1]}  {X.dtype}  "
          f"({X.nbytes / 2**20:.0f} MiB)")
    measure(X[:1000], K)  # load the compiled kernels once, outside the timings
    t_ours, m = _best(lambda: measure(X, K, progress=False), repeat)
    t_cond, _ = _best(lambda: prefix_entropy(X, progress=False), repeat)
    t_base, H_base = _best(lambda: baseline_conditional_entropy(X), 1)
    err = float(np.abs(m.H_cond - H_base).max())
    last = int(np.flatnonzero(m.H_cond > 0)[-1]) + 1 if (m.H_cond > 0).any() else 0
    print(f"  baseline polars group_by (H_t only):        {t_base:8.3f} s")
    print(f"  prefix_entropy (H_t only, same work):       {t_cond:8.3f} s   {t_base / t_cond:6.1f} x faster")
    print("  measure (all fields: + value checks and")
    print(f"           marginals, a pass over all tokens): {t_ours:8.3f} s   {t_base / t_ours:6.1f} x faster")
    print(f"  max |H_t(ours) - H_t(baseline)|:            {err:.2e} bits  (last t with H_t > 0: {last})")
    print(f"  {command_line}")


def case_sharded() -> Path:
    """Case (a) as a sharded dump: 4 uneven shards + meta.json (written once)."""
    d = DATA / "a_sharded"
    if not (d / "meta.json").exists():
        X = np.load(case_a(), mmap_mode="r")
        d.mkdir(parents=True, exist_ok=True)
        for i, (r0, r1) in enumerate([(0, 200_000), (200_000, 700_000), (700_000, 1_000_000), (1_000_000, X.shape[0])]):
            np.save(d / f"shard-{i:05d}.npy", X[r0:r1])
        (d / "meta.json").write_text(case_a().with_name("a_imagenet.meta.json").read_text())
    return d


def bench_sharded(repeat: int) -> None:
    from entropy_cliff.measure import measure
    from entropy_cliff.io import read_sidecar
    from entropy_cliff.shards import load_corpus

    parts, meta = load_corpus(case_sharded()), read_sidecar(case_sharded())
    X = load_corpus(case_a())
    t_one, m1 = _best(lambda: measure(X, meta["K"], progress=False), repeat)
    t_sh, m2 = _best(lambda: measure(parts, meta["K"], progress=False), repeat)
    assert (m1.groups == m2.groups).all()
    print(f"\n== sharded (a): 4 shards, {sum(p.shape[0] for p in parts):,} rows: measure {t_sh:.3f} s "
          f"(one file {t_one:.3f} s), groups equal, max |dH| = {np.abs(m1.H_cond - m2.H_cond).max():.1e}")


def bench_dask_weak(rows_per_worker: int = 200_000) -> None:
    """Dask weak scaling: 1 -> 2 worker processes on 127.0.0.1, rows per worker fixed.

    The corpus has duplicated rows and a heavy prefix (10 % one row, 10 % one 8-token prefix), so
    the exchange and the partition kernels do real work.
    """
    from distributed import Client, LocalCluster

    from entropy_cliff.distributed import measure_distributed

    for w in (1, 2):
        d = DATA / f"dask_{w}w"
        n = rows_per_worker * w
        if not (d / "shard-00000.npy").exists():
            rng = np.random.default_rng(10 + w)
            X = rng.integers(0, K_TOKENS, (n, L), dtype=np.uint16)
            X[: n // 10] = X[n // 2]
            X[n // 10 : n // 5, :8] = X[7, :8]
            d.mkdir(parents=True, exist_ok=True)
            for i, part in enumerate(np.array_split(X[rng.permutation(n)], 2 * w)):
                np.save(d / f"shard-{i:05d}.npy", part)
        with LocalCluster(n_workers=w, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cl, \
                Client(cl) as client:
            measure_distributed(d, [K_TOKENS] * L, client=client)  # warm the workers' kernels
            t0 = time.perf_counter()
            m = measure_distributed(d, [K_TOKENS] * L, client=client)
            dt = time.perf_counter() - t0
        print(f"== dask weak scaling: {w} worker(s), {n:,} x {L} uint16: {dt:.2f} s, "
              f"{n / dt / w:,.0f} rows/s per worker ({m.engine['levels']} levels, "
              f"{m.engine['heavy_groups']} heavy keys, {m.engine['rows_in_kernels']:,} rows in kernels)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", action="store_true", help="also measure 10M x 256 uint16 from disk (5.1 GB)")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of measure (best is shown)")
    ap.add_argument("--no-dask", action="store_true", help="skip the Dask weak-scaling case")
    ap.add_argument("--baseline", metavar="FILE", type=Path,
                    help="only run the baseline on FILE (memory-mapped .npy) as a whole process and print its H_t "
                         "as JSON: the command `entropy-cliff measure FILE --format json` is timed against")
    args = ap.parse_args()
    if args.baseline is not None:
        H = baseline_conditional_entropy(np.load(args.baseline, mmap_mode="r"))
        print(json.dumps({"H_cond": H.tolist()}))
        return
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
          f"(other processes share the cores; timings are wall clock)")
    cases = [("(a) ImageNet-shaped", case_a()), ("(b) worst case, every row twice", case_b())]
    big = case_big() if args.big else None
    # Child processes first, while this process is small: a forked child's ru_maxrss counts the
    # parent's resident pages it started from.
    lines = [run_command(path) for _, path in cases]
    big_line = run_command(big) if big is not None else None
    print(compare_whole_commands(cases[0][1]))
    for (label, path), line in zip(cases, lines):
        bench_case(label, path, args.repeat, line)
    bench_sharded(args.repeat)
    if not args.no_dask:
        bench_dask_weak()
    if big is not None:
        X = np.load(big, mmap_mode="r")
        print(f"\n== big: {big.name}  N = {X.shape[0]:,} x L = {X.shape[1]}  {X.dtype}  "
              f"({X.nbytes / 2**30:.2f} GiB on disk, memory-mapped)\n  {big_line}")


if __name__ == "__main__":
    main()
