"""Tiny end-to-end AR demo: token dump -> AR model -> samples -> evaluation, for two tokenizers.

    python analysis/ar_demo.py [--runs runs/demo] [--out runs/ar_demo] [--steps 2000] [--n 510]

Uses the two tokenizers of ``analysis/make_demo_corpus.py`` (``RUNS/constant`` and ``RUNS/cosine``:
32×32 ``patches`` crops, L = 32, K_max = 1024, labels = source image, 15 classes). For each it
dumps the train and val splits with ``vcq dump-tokens``, trains an AR model (``vcq train-ar``,
preset tiny), samples ``--n`` sequences without guidance (T = 1) and with CodebookSize-Aware CFG
(scale 4, pow-cosine p = 1.5), and evaluates them (``vcq evaluate``: dFID from a classifier trained
on the crops, precision/recall, dIS, linear probe, memorization). The two AR runs go in parallel,
one torch thread each. The tokenizers are copied to ``OUT/{constant,cosine}/tokenizer`` first, so
everything uses one fixed checkpoint. Writes ``figures/ar_eval.json`` (every number) and ``figures/ar_samples.png``
(held-out crops and guided samples of both models, one column per class) and ``figures/ar_nll.png``
(per-position NLL beside the data's conditional entropy). A second, small-N AR run per tokenizer
(the first ``--small-n`` training rows, ``--small-steps`` steps, so many epochs) shows what
memorisation looks like: ``figures/ar_memorization.png`` plots, against m, the share of generated
sequences whose first m tokens start a training sequence, beside the same share for held-out real
sequences. Finished steps are skipped on a re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("constant", "cosine")
GUIDED = ["--scale", "4", "--schedule", "cosine", "--power", "1.5", "--codebook-aware"]
UNGUIDED = ["--schedule", "none", "--temperature", "1.0"]


def vcq(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "vcq.cli", *map(str, args)]


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def heldout_crops(args: argparse.Namespace):
    """The validation split of the tokenizers' training images (both share it)."""
    from vcq.presets import TokenizerConfig, from_dict
    from vcq.data import DataSpec
    from vcq.train import read_config

    cfg = read_config(snapshot_tokenizer("cosine", args))
    return DataSpec(**cfg["data"]).load("val", from_dict(TokenizerConfig, cfg["model"]), augment=False)


def snapshot_tokenizer(kind: str, args: argparse.Namespace) -> Path:
    """A copy of the tokenizer's ``config.json`` and ``model.safetensors`` under ``OUT/kind``, so the
    dumps, samples and evaluations keep using one tokenizer even if ``RUNS/kind`` is retrained."""
    import shutil

    dst = args.out / kind / "tokenizer"
    if not (dst / "model.safetensors").exists():
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(args.runs / kind / name, dst / name)
    return dst


def pipeline(kind: str, args: argparse.Namespace, classes: int) -> list[list[str]]:
    """The commands for one tokenizer, in order (each skipped when its output exists)."""
    tok, d = snapshot_tokenizer(kind, args), args.out / kind
    steps: list[tuple[Path, list[str]]] = [
        (d / "train/tokens.npy", vcq("dump-tokens", "--ckpt", tok, "--split", "train", "--out", d / "train/tokens.npy", "--quiet")),
        (d / "val/tokens.npy", vcq("dump-tokens", "--ckpt", tok, "--split", "val", "--out", d / "val/tokens.npy", "--quiet")),
        (d / "ar/nll.json", vcq("train-ar", "--tokens", d / "train/tokens.npy", "--val-tokens", d / "val/tokens.npy",
                                "--preset", "tiny", "--steps", args.steps, "--ckpt-every", 500, "--out", d / "ar",
                                "--format", "json", "--quiet")),
        (d / "guided/tokens.npy", vcq("sample", "--ckpt", d / "ar", "--tokenizer", tok, "--n", args.n, "--cols", classes,
                                      *GUIDED, "--seed", 1, "--out", d / "guided", "--quiet")),
        (d / "unguided/tokens.npy", vcq("sample", "--ckpt", d / "ar", "--tokenizer", tok, "--n", args.n, "--cols", classes,
                                        *UNGUIDED, "--seed", 1, "--out", d / "unguided", "--quiet")),
        (d / "grid/grid.png", vcq("sample", "--ckpt", d / "ar", "--tokenizer", tok, "--n", 3 * classes, "--cols", classes,
                                  *GUIDED, "--seed", 2, "--out", d / "grid", "--quiet")),
        # small N: the first --small-n training rows, many epochs, to see what memorisation looks like
        (d / "small/tokens.npy", lambda: subset_dump(d / "train/tokens.npy", d / "small/tokens.npy", args.small_n)),
        (d / "small_ar/nll.json", vcq("train-ar", "--tokens", d / "small/tokens.npy", "--val-tokens", d / "val/tokens.npy",
                                      "--preset", "tiny", "--steps", args.small_steps, "--ckpt-every", 1000,
                                      "--out", d / "small_ar", "--format", "json", "--quiet")),
        (d / "small_unguided/tokens.npy", vcq("sample", "--ckpt", d / "small_ar", "--n", args.n, *UNGUIDED, "--seed", 1,
                                              "--out", d / "small_unguided", "--quiet")),
    ]
    return [action for out, action in steps if not out.exists()]


def subset_dump(src: Path, dst: Path, rows: int) -> None:
    """The first ``rows`` sequences (and labels) of a token dump, as a dump of their own."""
    from entropy_cliff.io import save_tokens
    from vcq.train_ar import load_token_dump

    d = load_token_dump(src)
    save_tokens(dst, np.asarray(d.tokens[:rows]), d.K, d.schedule, {"subset_of": str(src), "rows": rows},
                d.labels[:rows])


def do(action) -> None:
    """Run one pipeline step: a command line, or a Python callable."""
    action() if callable(action) else run(action)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo", help="tokenizer runs (constant, cosine)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ar_demo")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--n", type=int, default=510, help="samples per setting (a multiple of the class count)")
    ap.add_argument("--small-n", type=int, default=2000, help="training rows of the small-N (memorisation) runs")
    ap.add_argument("--small-steps", type=int, default=3000)
    ap.add_argument("--figures", type=Path, default=ROOT / "figures")
    args = ap.parse_args()

    val = heldout_crops(args)
    classes = len(val.class_names)
    with ThreadPoolExecutor(len(KINDS)) as pool:  # the two pipelines in parallel, commands in order
        list(pool.map(lambda k: [do(a) for a in pipeline(k, args, classes)], KINDS))
    results: dict = {"settings": {"tokenizers": str(args.runs), "ar_preset": "tiny", "steps": args.steps,
                                  "samples": args.n, "guided": " ".join(GUIDED), "unguided": " ".join(UNGUIDED),
                                  "small_n": args.small_n, "small_steps": args.small_steps}}
    for kind in KINDS:
        d = args.out / kind
        for setting in ("guided", "unguided"):
            ev = d / f"eval_{setting}.json"
            if not ev.exists():
                run(vcq("evaluate", "--samples", d / setting, "--ckpt", d / "ar", "--tokenizer", d / "tokenizer",
                        "--cache-dir", args.out / "dfid-cache", "--probe-k", "1,2,4,10,all", "--out", ev, "--quiet"))
            results.setdefault(kind, {})[setting] = json.loads(ev.read_text())
        ev = d / "eval_small.json"
        if not ev.exists():
            run(vcq("evaluate", "--samples", d / "small_unguided", "--ckpt", d / "small_ar", "--probe-k", "1,10,all",
                    "--out", ev, "--quiet"))
        results[kind]["small_n_unguided"] = json.loads(ev.read_text())
    from entropy_cliff.io import write_json_atomic

    write_json_atomic(args.figures / "ar_eval.json", results)
    figure(args, val, args.figures / "ar_samples.png")
    nll_figure(results, args.figures / "ar_nll.png")
    memorization_figure(results, args.figures / "ar_memorization.png")
    print(f"wrote {args.figures}/ar_eval.json, ar_samples.png, ar_nll.png, ar_memorization.png")


def memorization_figure(results: dict, path: Path) -> None:
    """Share of sequences whose first m tokens start some training sequence, against m."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from entropy_cliff.plots import save_figure

    n_full = results["cosine"]["unguided"]["memorization"]["training_rows"]
    n_small = results["settings"]["small_n"]
    fig, axes = plt.subplots(1, len(KINDS), figsize=(10, 3.4), sharey=True)
    for ax, kind in zip(axes, KINDS):
        full, small = results[kind]["unguided"]["memorization"], results[kind]["small_n_unguided"]["memorization"]
        curves = [(f"AR samples, N = {n_full}", full["generated"], "C0-"),
                  (f"held-out real, vs N = {n_full}", full["heldout_real"], "C0:"),
                  (f"AR samples, N = {n_small}", small["generated"], "C3-"),
                  (f"held-out real, vs N = {n_small}", small["heldout_real"], "C3:")]
        for label, m, style in curves:
            share = m["prefix_share"]
            ax.plot(np.arange(1, len(share) + 1), share, style, label=label)
        ax.set_title(f"{kind} codebook", fontsize=9)
        ax.set_xlabel("prefix length m")
    axes[0].set_ylabel("share with a training prefix")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def nll_figure(results: dict, path: Path) -> None:
    """Per position: the training rows' H(X_t | X_<t, c) beside the AR model's train and val NLL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from entropy_cliff.plots import save_figure

    fig, axes = plt.subplots(1, len(KINDS), figsize=(10, 3.4), sharey=True)
    for ax, kind in zip(axes, KINDS):
        nll = results[kind]["guided"]["nll"]
        t = np.arange(1, len(nll["train_nll_bits"]) + 1)
        ax.plot(t, nll["data_H_cond_bits"], "k-", label="data H(X_t | X_<t, c), train rows")
        ax.plot(t, nll["train_nll_bits"], "C0.-", label="AR NLL, train rows")
        ax.plot(t, nll["val_nll_bits"], "C3.-", label="AR NLL, held-out rows")
        ax.set_title(f"{kind} codebook", fontsize=9)
        ax.set_xlabel("position t")
    axes[0].set_ylabel("bits")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def figure(args: argparse.Namespace, val, path: Path) -> None:
    """Held-out crops (3 per class) above the guided samples of the constant and cosine AR models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from entropy_cliff.plots import save_figure
    from vcq.images import image_grid

    labels, classes = val.label_array(), len(val.class_names)
    picks = np.stack([np.flatnonzero(labels == c)[:3] for c in range(classes)], 1)  # (3, classes)
    panels = [("held-out real crops (one column per class)", image_grid(val.images(picks.ravel()), cols=classes))]
    for kind in KINDS:
        ev = json.loads((args.out / kind / "eval_guided.json").read_text())
        g = ev["generation"]
        panels.append((f"AR samples, {kind} codebook, CodebookSize-Aware CFG (scale 4, p 1.5): "
                       f"dFID {g['dFID']:.1f}, exact copies {100 * ev['memorization']['generated']['exact_copy']:.0f}%",
                       np.asarray(Image.open(args.out / kind / "grid" / "grid.png"))))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


if __name__ == "__main__":
    main()
