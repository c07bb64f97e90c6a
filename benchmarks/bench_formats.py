"""Reading other code bases' token dumps: LlamaGen folders (threads 1 vs 8), JSONL (polars vs a json loop).

Generates, once, under ``--dir`` (default /tmp/ec_bench_formats, outside the repository):

- a LlamaGen-shaped folder ``imagenet256_codes/`` of ``--files`` files ``{i}.npy`` of shape (1, 2, L)
  int64 (what ``extract_codes_c2i.py`` writes) plus ``imagenet256_labels/``;
- a TiTok-shaped JSONL of ``--lines`` lines ``{"class_id": int, "tokens": [L ints]}``;
- the same tokens as a Parquet file.

Tokens are uniform over K = 16384, L = 256. Times are wall seconds of the library readers
(:mod:`entropy_cliff.formats`), plus process CPU seconds (all threads; LlamaGen's four reads summed);
files come from the page cache (they were just written or read).

    python benchmarks/bench_formats.py [--files 200000] [--lines 1000000] [--dir /tmp/ec_bench_formats]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from entropy_cliff.formats import read_llamagen, read_parquet, read_titok_jsonl

K = 16384


def make_llamagen(root: Path, files: int, L: int) -> Path:
    codes, labels = root / "imagenet256_codes", root / "imagenet256_labels"
    if codes.is_dir() and (codes / f"{files - 1}.npy").exists() and not (codes / f"{files}.npy").exists():
        return codes
    codes.mkdir(parents=True, exist_ok=True)
    labels.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for lo in range(0, files, 10_000):
        block = rng.integers(0, K, size=(min(10_000, files - lo), 1, 2, L), dtype=np.int64)
        for k, arr in enumerate(block):
            np.save(codes / f"{lo + k}.npy", arr)
            np.save(labels / f"{lo + k}.npy", np.array([(lo + k) % 1000]))
    return codes


def make_jsonl(path: Path, lines: int, L: int) -> Path:
    import polars as pl

    if path.exists():
        return path
    rng = np.random.default_rng(1)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for lo in range(0, lines, 100_000):
            n = min(100_000, lines - lo)
            tok = rng.integers(0, K, size=(n, L), dtype=np.int64)
            pl.DataFrame({"class_id": np.arange(lo, lo + n) % 1000,
                          "tokens": pl.Series(tok).reshape((n, L)).arr.to_list()}).write_ndjson(f)
    os.replace(tmp, path)
    return path


def json_loop(path: Path, lines: int, L: int) -> np.ndarray:
    """Baseline: the plain Python loop a converter would write (json.loads per line)."""
    out = np.empty((lines, L), dtype=np.uint16)
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            out[i] = json.loads(line)["tokens"]
    return out


CPU_S: dict[str, float] = {}


def timed(fn, *args, **kw):
    """(result, wall seconds); the process CPU seconds (all threads) go to CPU_S[fn name], summed."""
    t, c = time.perf_counter(), time.process_time()
    r = fn(*args, **kw)
    CPU_S[fn.__name__] = CPU_S.get(fn.__name__, 0.0) + time.process_time() - c
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=200_000)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--L", type=int, default=256)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ec_bench_formats"))
    ap.add_argument("--skip-baseline", action="store_true", help="skip the slow json-loop baseline")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    res = {"files": args.files, "lines": args.lines, "L": args.L, "load_average": os.getloadavg()}

    t0 = time.perf_counter()
    codes = make_llamagen(args.dir, args.files, args.L)
    res["llamagen_generate_s"] = time.perf_counter() - t0
    read_llamagen(codes, threads=8, progress=False)  # warm the page cache and the dentry cache
    for threads in (1, 8, 1, 8):
        c, s = timed(read_llamagen, codes, threads=threads, progress=False)
        res.setdefault(f"llamagen_threads{threads}_s", []).append(s)
    assert c.tokens.shape == (args.files, args.L) and c.labels is not None

    jl = make_jsonl(args.dir / "pretokenized.jsonl", args.lines, args.L)
    res["jsonl_bytes"] = jl.stat().st_size
    c, res["jsonl_polars_s"] = timed(read_titok_jsonl, jl, view="all", progress=False)
    assert c.tokens.shape == (args.lines, args.L)
    if not args.skip_baseline:
        base, res["jsonl_json_loop_s"] = timed(json_loop, jl, args.lines, args.L)
        assert np.array_equal(base, c.tokens)

    import polars as pl
    pq = args.dir / "tokens.parquet"
    if not pq.exists():
        pl.DataFrame({"tokens": pl.Series(c.tokens.astype(np.int64)).reshape((args.lines, args.L)),
                      "label": c.labels}).write_parquet(pq)
    del c
    p, res["parquet_s"] = timed(read_parquet, pq, progress=False)
    assert p.tokens.shape == (args.lines, args.L)

    best = {t: min(res[f"llamagen_threads{t}_s"]) for t in (1, 8)}
    summary = {
        "llamagen files/s (threads 1, best of 2)": args.files / best[1],
        "llamagen files/s (threads 8, best of 2)": args.files / best[8],
        "jsonl rows/s (polars)": args.lines / res["jsonl_polars_s"],
        "jsonl rows/s (json loop)": args.lines / res["jsonl_json_loop_s"] if "jsonl_json_loop_s" in res else None,
        "parquet rows/s": args.lines / res["parquet_s"],
    }
    res["cpu_s"] = CPU_S
    res["load_average_end"] = os.getloadavg()
    print(json.dumps({"raw": res, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
