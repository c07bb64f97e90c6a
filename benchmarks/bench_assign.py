"""Nested-prefix assignment: FAISS (entropy_cliff.assign) vs torch brute force (vcq.quantizer).

    python benchmarks/bench_assign.py --N 500 --L 256 --dim 12 --kmax 16384 --schedule cosine [--gpu] [--offset 1e3]

Random Gaussian features (N, L, d) and codebook (K_max, d), both shifted by ``--offset``. FAISS
searches each K_t group in a flat index over the codebook slice E[:K_t]; the torch reference
computes the full masked distance matrix (chunked) and takes the argmin. Both equal a float64 brute force, so the agreement must be 1.
Reports seconds and queries/s. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from entropy_cliff.assign import gpu_available, nested_assign
from entropy_cliff.schedules import Schedule
from vcq.quantizer import masked_nearest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--N", type=int, default=500)
    ap.add_argument("--L", type=int, default=256)
    ap.add_argument("--dim", type=int, default=12)
    ap.add_argument("--kmin", type=int, default=2)
    ap.add_argument("--kmax", type=int, default=16384)
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--offset", type=float, default=0.0, help="added to features and codebook")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for FAISS and torch")
    ap.add_argument("--gpu", action="store_true", help="FAISS GPU index and torch on CUDA")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sched = Schedule(args.schedule, args.kmin, args.kmax, args.L)
    rng = np.random.default_rng(0)
    feats = (rng.standard_normal((args.N, args.L, args.dim)) + args.offset).astype(np.float32)
    code = (rng.standard_normal((args.kmax, args.dim)) + args.offset).astype(np.float32)

    t0 = time.perf_counter()
    got = nested_assign(feats, code, sched.K, use_gpu=args.gpu, threads=args.threads)
    t_faiss = time.perf_counter() - t0

    dev = torch.device("cuda" if args.gpu and torch.cuda.is_available() else "cpu")
    z = torch.from_numpy(feats).to(dev).reshape(-1, args.dim)
    e = torch.from_numpy(code).to(dev)
    k_rows = torch.from_numpy(sched.K).to(dev).repeat(args.N)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ref = masked_nearest(z, e, k_rows, chunk_size=4096).view(args.N, args.L)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_torch = time.perf_counter() - t0
    ref = ref.cpu().numpy()

    q = args.N * args.L
    print(json.dumps({
        "N": args.N, "L": args.L, "dim": args.dim, "offset": args.offset, "schedule": sched.label,
        "mean_K": sched.mean_K,
        "queries": q, "faiss_gpu": bool(args.gpu and gpu_available()), "torch_device": str(dev),
        "threads": args.threads, "faiss_s": round(t_faiss, 3), "torch_bruteforce_s": round(t_torch, 3),
        "faiss_queries_per_s": round(q / t_faiss), "torch_queries_per_s": round(q / t_torch),
        "agreement": float((got == ref).mean()), "all_below_K_t": bool((got < sched.K[None, :]).all()),
    }, indent=2))


if __name__ == "__main__":
    main()
