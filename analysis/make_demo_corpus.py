"""Build the embedded demo corpus: token dumps of two tokenizers trained here on bundled images.

    python analysis/make_demo_corpus.py [--steps 1500] [--n-dump 30000] [--runs runs/demo]

Trains two 1D tokenizers with the same preset and budget on ``patches`` (random crops of the
natural images bundled with scikit-image), one with a constant codebook (K_t = K_max) and one
with cosine VCQ (K_t from K_min to K_max, paper Eq. 3), both with L = 32 tokens per 32×32 crop.
The two ``vcq train-tokenizer`` runs go in parallel, one CPU thread each. Each tokenizer then
tokenizes ``--n-dump`` crops, written with :func:`entropy_cliff.io.save_tokens` to
``entropy_cliff/data/demo_{constant,cosine}.npy`` (+ ``.meta.json`` whose ``source`` names the
preset, data, steps and held-out PSNR). Also writes ``figures/tokenizer_recon.png`` (held-out
originals vs both reconstructions). Re-running resumes finished or interrupted runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("constant", "cosine")


def train_both(args: argparse.Namespace) -> None:
    """Two `vcq train-tokenizer` processes in parallel (one torch thread each)."""
    procs = []
    for kind in KINDS:
        out = args.runs / kind
        cmd = [sys.executable, "-m", "vcq.cli", "train-tokenizer", "--preset", args.preset, "--data", "patches",
               "--n", str(args.n_train), "--schedule", kind, "--kmin", str(args.kmin), "--kmax", str(args.kmax),
               "--num-latent", "32", "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--enc-width", str(args.width), "--dec-width", str(args.width), *(["--lr", str(args.lr)] if args.lr else []),
               "--l2-norm-codes", "--dead-code-restart", "--ckpt-every", "250", "--log-every", "50",
               "--preview-every", "500", "--out", str(out), "--quiet"]
        if (out / "train_state.pt").exists():
            cmd = [sys.executable, "-m", "vcq.cli", "train-tokenizer", "--out", str(out), "--resume", "--quiet"]
        procs.append((kind, subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)))
    for kind, p in procs:
        if p.wait() != 0:
            sys.exit(f"training the {kind} tokenizer failed (exit {p.returncode})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    ap.add_argument("--width", type=int, default=64, help="encoder and decoder width (the tiny preset's is 64)")
    ap.add_argument("--kmin", type=int, default=2)
    ap.add_argument("--kmax", type=int, default=1024)
    ap.add_argument("--n-train", type=int, default=20000, help="training crops")
    ap.add_argument("--n-dump", type=int, default=30000, help="crops tokenized into each demo dump")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "entropy_cliff" / "data")
    ap.add_argument("--figure", type=Path, default=ROOT / "figures" / "tokenizer_recon.png")
    args = ap.parse_args()

    t0 = time.perf_counter()
    train_both(args)
    t_train = time.perf_counter() - t0

    import torch

    torch.set_num_threads(1)
    from entropy_cliff.io import save_tokens
    from vcq.data import DataSpec
    from vcq.metrics import mean_psnr
    from vcq.tokenizer import load_tokenizer, reconstruct, schedule_of, tokenize_images
    from vcq.train import read_config

    recon, psnrs, originals = {}, {}, None
    for kind in KINDS:
        run = args.runs / kind
        cfg = read_config(run)
        model = load_tokenizer(run)
        val = DataSpec(**cfg["data"]).load("val", model.cfg, augment=False)
        x = val.images(np.arange(min(1000, len(val))))
        r = reconstruct(model, x)
        psnrs[kind] = mean_psnr(x, r)
        recon[kind], originals = r[:12], x[:12]
        dump = DataSpec("patches", n=args.n_dump, seed=cfg["data"]["seed"])
        tokens = tokenize_images(model, dump.load("all", model.cfg, augment=False), batch_size=500)
        sched = schedule_of(model.cfg)
        source = {"tokenizer": "vcq 1D tokenizer (TiTok-style), trained by analysis/make_demo_corpus.py",
                  "preset": cfg["preset"], "overrides": {"enc_width": args.width, "dec_width": args.width,
                                                         "l2_norm_codes": True, "dead_code_restart": True},
                  "train_data": cfg["data"], "steps": cfg["train"]["steps"], "batch_size": cfg["train"]["batch_size"],
                  "image_size": model.cfg.image_size, "psnr_db_heldout": round(psnrs[kind], 2),
                  "dump_data": {"name": "patches", "n": args.n_dump, "seed": dump.seed, "split": "all"}}
        path = save_tokens(args.out_dir / f"demo_{kind}.npy", tokens, sched.K, sched.to_dict(), source)
        print(f"{kind}: PSNR {psnrs[kind]:.2f} dB on {len(x)} held-out crops; wrote {path} "
              f"({tokens.shape[0]} x {tokens.shape[1]}, {path.stat().st_size / 1e6:.2f} MB)")
    figure(originals, recon, psnrs, args.figure)
    print(f"figure: {args.figure}; total {time.perf_counter() - t0:.0f} s (training {t_train:.0f} s)")
    print(json.dumps({"psnr_db": psnrs, "train_seconds": round(t_train)}))


def figure(originals: np.ndarray, recon: dict[str, np.ndarray], psnrs: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from entropy_cliff.io import atomic_path

    rows = [("original", originals)] + [(f"{k} ({psnrs[k]:.1f} dB)", recon[k]) for k in KINDS]
    n = len(originals)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 1.0, len(rows) * 1.15))
    for i, (name, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Held-out 32×32 crops and their reconstructions from 32 tokens (K_max = 1024)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
