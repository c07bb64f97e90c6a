"""Exact nested-prefix nearest codes (vcq.quantizer.masked_nearest) vs the float32 expansion it replaced.

    python benchmarks/bench_nearest.py [--M 4096] [--kmax 1024] [--dims 12 256] [--offsets 0 1000]
                                       [--repeats 5] [--threads 1] [--device cpu]

Latents z (M, d) and codes (K_max, d) are Gaussian with scale 1 plus a shared offset; row i may use
the first K_t codes of a cosine schedule (K_min = 2) over L = 256 positions, repeated M / L times.
The old code (``||z||^2 - 2 z.E^T + ||E||^2`` in float32, masked argmin) runs in this process on the
same inputs; both take ``--chunk`` rows at a time. Reports the median seconds of ``--repeats`` interleaved runs,
new / old, how often the old code agrees with the exact result, and the share of rows the new code
re-ranks in float64 (``undecided``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from entropy_cliff.schedules import Schedule
from vcq import quantizer
from vcq.quantizer import masked_nearest


def old_masked_nearest(z: torch.Tensor, codebook: torch.Tensor, k_rows: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The float32 expansion masked_nearest used before it was made exact."""
    z, codebook = z.float(), codebook.float()
    e_sq = (codebook * codebook).sum(1)
    cols = torch.arange(codebook.shape[0], device=z.device)
    out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
    for s in range(0, z.shape[0], chunk_size):
        zc = z[s : s + chunk_size]
        d = (zc * zc).sum(1, keepdim=True) - 2.0 * zc @ codebook.T + e_sq
        d = d.masked_fill(cols[None, :] >= k_rows[s : s + chunk_size, None], float("inf"))
        out[s : s + chunk_size] = d.argmin(1)
    return out


def _median_seconds(fns, repeats: int, device: torch.device) -> list[float]:
    """Median wall time of each function, the functions run in turn ``repeats`` times (interleaved,
    so a busy machine's load falls on all of them alike)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def _undecided_share(z, e, k_rows, chunk) -> float:
    """Share of rows that masked_nearest sends to its float64 re-rank (counted by wrapping it)."""
    seen = []
    inner = quantizer._exact_rerank

    def counting(z64, e64, cand, *a):
        seen.append(z64.shape[0])
        return inner(z64, e64, cand, *a)

    quantizer._exact_rerank = counting
    try:
        masked_nearest(z, e, k_rows, chunk)
    finally:
        quantizer._exact_rerank = inner
    return sum(seen) / z.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--M", type=int, default=4096)
    ap.add_argument("--kmax", type=int, default=1024)
    ap.add_argument("--dims", type=int, nargs="+", default=[12, 256])
    ap.add_argument("--offsets", type=float, nargs="+", default=[0.0, 1000.0])
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    K = torch.from_numpy(Schedule("cosine", 2, args.kmax, 256).K)
    k_rows = K.repeat(-(-args.M // len(K)))[: args.M].to(dev)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for d in args.dims:
        for off in args.offsets:
            z = (torch.randn(args.M, d, generator=gen) + off).to(dev)
            e = (torch.randn(args.kmax, d, generator=gen) + off).to(dev)
            exact = masked_nearest(z, e, k_rows, args.chunk)
            old = old_masked_nearest(z, e, k_rows, args.chunk)
            t_old, t_new = _median_seconds([lambda: old_masked_nearest(z, e, k_rows, args.chunk),
                                            lambda: masked_nearest(z, e, k_rows, args.chunk)], args.repeats, dev)
            rows.append({"dim": d, "offset": off, "old_s": round(t_old, 4), "new_s": round(t_new, 4),
                         "new_over_old": round(t_new / t_old, 2), "old_agrees": float((old == exact).float().mean()),
                         "undecided": _undecided_share(z, e, k_rows, args.chunk)})
    print(json.dumps({"M": args.M, "kmax": args.kmax, "chunk": args.chunk, "threads": args.threads,
                      "device": str(dev), "repeats": args.repeats, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
