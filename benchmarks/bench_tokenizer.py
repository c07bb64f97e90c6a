"""Tokenizer training throughput (steps/s) through the real training loop.

    python benchmarks/bench_tokenizer.py --preset tiny --batch-size 32 --steps 30 [--kmax 1024] [--device cuda]
    python benchmarks/bench_tokenizer.py --workers 0,2      # with and without DataLoader workers

Runs :func:`vcq.train_tokenizer.train_tokenizer` on ``patches`` in a temporary directory: ``--warmup``
steps first (stopped with a checkpoint), then resumed for ``--steps`` timed steps; the rate is the
loop's own (data, forward, backward, optimizer; the final checkpoint is written after the timing).
Prints one JSON object per ``--workers`` value (DataLoader worker processes; 0 = batches are
prepared in the training process).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile

import torch

from vcq.presets import TOKENIZER_PRESETS, override
from vcq.data import DataSpec
from vcq.tokenizer import Tokenizer1D
from vcq.train_tokenizer import run_config, train_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--kmax", type=int, default=None)
    ap.add_argument("--schedule", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--workers", default="0", help="comma-separated DataLoader worker counts to compare")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = TOKENIZER_PRESETS[args.preset]
    model = override(p.model, kmax=args.kmax, schedule=args.schedule)
    total = args.warmup + args.steps
    data = DataSpec("patches", n=max(2000, 4 * args.batch_size))
    with torch.device("meta"):
        params = sum(q.numel() for q in Tokenizer1D(model).parameters())
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for workers in (int(w) for w in args.workers.split(",")):
        tcfg = override(p.train, steps=total, batch_size=args.batch_size, log_every=10**9, ckpt_every=10**9,
                        preview_every=10**9, workers=workers)
        config = run_config(model, tcfg, data, args.preset)
        with tempfile.TemporaryDirectory() as tmp:
            train_tokenizer(config, tmp, stop_at=args.warmup, quiet=True, device=args.device)
            res = train_tokenizer(config, tmp, resume=True, quiet=True, device=args.device)
        print(json.dumps({
            "preset": args.preset, "kmax": model.kmax, "schedule": model.schedule, "L": model.num_latent,
            "image": f"{model.image_size}x{model.image_size}x{model.channels}", "batch_size": args.batch_size,
            "params": params, "device": dev, "torch_threads": torch.get_num_threads(), "workers": workers,
            "machine": platform.machine(), "timed_steps": args.steps, "steps_per_s": round(res.steps_per_s, 3),
            "images_per_s": round(res.steps_per_s * args.batch_size, 1), "final_psnr_db": round(res.metrics["psnr"], 2),
        }, indent=2))


if __name__ == "__main__":
    main()
