"""``vcq`` command line: train tokenizers, dump token corpora (and the AR commands).

Options start from a named preset (:mod:`vcq.presets`); every flag given replaces that preset
field, and the resolved configuration is what the run saves in ``config.json``. Errors in the input
are one line on stderr and exit status 2.
"""

from __future__ import annotations

import math
from typing import Any

import click

from entropy_cliff import __version__
from entropy_cliff.cli import OneLineGroup, run_one_line_errors
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import KINDS


class Group(OneLineGroup):
    """A click group whose bad input (:class:`EntropyCliffError` or a usage error) is one stderr line
    and exit status 2."""

    def main(self, args: Any = None, prog_name: str | None = None, **extra: Any) -> Any:
        extra.pop("standalone_mode", None)
        run_one_line_errors("vcq", lambda: super(Group, self).main(args, prog_name, standalone_mode=False, **extra))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vcq")
def main() -> None:
    """VCQ tokenizers and AR models (PyTorch side of entropy-cliff).

    \b
    vcq train-tokenizer --preset tiny --data digits --schedule cosine --kmin 2 --kmax 256 --steps 500 --out runs/tok
    vcq dump-tokens --ckpt runs/tok --data digits --split train --out tokens.npy
    """


# (flag, config section, field, click type, help); every default is None = "keep the preset's value"
TOKENIZER_FLAGS: list[tuple[str, str, str, Any, str]] = [
    ("--schedule", "model", "schedule", click.Choice(KINDS[:-1]), "codebook-size schedule K_t (paper Eq. 3)."),
    ("--kmin", "model", "kmin", int, "K_min of the schedule."),
    ("--kmax", "model", "kmax", int, "K_max: codebook entries."),
    ("--power", "model", "power", float, "p of the power schedule."),
    ("--image-size", "model", "image_size", int, "image side in pixels."),
    ("--channels", "model", "channels", click.IntRange(1, 3), "image channels (1 or 3)."),
    ("--patch-size", "model", "patch_size", int, "ViT patch side."),
    ("--num-latent", "model", "num_latent", int, "L: latent tokens per image."),
    ("--enc-width", "model", "enc_width", int, "encoder ViT width."),
    ("--enc-depth", "model", "enc_depth", int, "encoder ViT blocks."),
    ("--enc-heads", "model", "enc_heads", int, "encoder attention heads."),
    ("--dec-width", "model", "dec_width", int, "decoder ViT width."),
    ("--dec-depth", "model", "dec_depth", int, "decoder ViT blocks."),
    ("--dec-heads", "model", "dec_heads", int, "decoder attention heads."),
    ("--code-dim", "model", "code_dim", int, "width of the quantized latents."),
    ("--beta", "model", "beta", float, "commitment beta inside the VQ loss."),
    ("--l2-norm-codes/--no-l2-norm-codes", "model", "l2_norm_codes", None, "l2-normalise latents and codes."),
    ("--dead-code-restart/--no-dead-code-restart", "model", "dead_code_restart", None, "restart unused codes."),
    ("--dead-code-threshold", "model", "dead_code_threshold", float, "dead: EMA share < this × uniform share."),
    ("--disc-start", "model", "disc_start", int, "step at which the PatchGAN losses start."),
    ("--w-l1", "model", "w_l1", float, "L1 weight."),
    ("--w-lpips", "model", "w_lpips", float, "LPIPS weight."),
    ("--w-adv", "model", "w_adv", float, "adversarial generator weight."),
    ("--w-disc", "model", "w_disc", float, "discriminator weight."),
    ("--w-commit", "model", "w_commit", float, "VQ loss weight."),
    ("--lpips-path", "model", "lpips_path", click.Path(exists=True, dir_okay=False), "local LPIPS weights file."),
    ("--steps", "train", "steps", int, "optimizer steps."),
    ("--batch-size", "train", "batch_size", int, "batch size per process."),
    ("--lr", "train", "lr", float, "peak learning rate."),
    ("--min-lr", "train", "min_lr", float, "final learning rate."),
    ("--warmup-steps", "train", "warmup_steps", int, "linear warmup steps."),
    ("--weight-decay", "train", "weight_decay", float, "AdamW weight decay (matrices only)."),
    ("--grad-clip", "train", "grad_clip", float, "global gradient-norm clip (0 = off)."),
    ("--seed", "train", "seed", int, "training seed (init, data order)."),
    ("--ckpt-every", "train", "ckpt_every", int, "steps between checkpoints."),
    ("--log-every", "train", "log_every", int, "steps between metrics.jsonl rows."),
    ("--preview-every", "train", "preview_every", int, "steps between preview PNGs."),
    ("--bf16/--no-bf16", "train", "bf16", None, "bf16 autocast on CUDA."),
    ("--accum-steps", "train", "grad_accum", int,
     "micro-batches of --batch-size per optimizer step (gradient accumulation)."),
    ("--workers", "train", "workers", int, "DataLoader worker processes (0: load in the training process)."),
    ("--deterministic/--no-deterministic", "train", "deterministic", None,
     "deterministic algorithms (exact resume on CUDA; slower)."),
    ("--data", "data", "name", click.Choice(("digits", "patches", "shapes", "folder", "npy")), "training images."),
    ("--data-path", "data", "path", click.Path(), "folder / .npy path for --data folder|npy."),
    ("--labels-path", "data", "labels_path", click.Path(), "labels .npy for --data npy."),
    ("--n", "data", "n", int, "number of images (patches/shapes: how many to make)."),
    ("--data-seed", "data", "seed", int, "seed of the crops/shapes and of the train/val split."),
    ("--val-fraction", "data", "val_fraction", float, "share of images held out as val."),
]


def _flag_options(flags: list[tuple[str, str, str, Any, str]]):
    def deco(f):
        for flag, _, field, typ, help_ in reversed(flags):
            dest = f"{flag.split('/')[0].lstrip('-').replace('-', '_')}"
            kw = {"default": None, "help": help_}
            if typ is not None:
                kw["type"] = typ
            f = click.option(flag, dest, **kw)(f)
        return f
    return deco


def _flag_values(flags: list[tuple[str, str, str, Any, str]], kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{section: {field: value}} for the flags that were given."""
    out: dict[str, dict[str, Any]] = {}
    for flag, section, field, _, _ in flags:
        v = kwargs.pop(flag.split("/")[0].lstrip("-").replace("-", "_"))
        if v is not None:
            out.setdefault(section, {})[field] = v
    return out


def _logger(quiet: bool):
    return (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_options(f):
    """--out/--resume/--stop-at/--device, shared by the training commands."""
    f = click.option("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when present, else cpu).")(f)
    f = click.option("--stop-at", type=int, help="stop (with a checkpoint) at this step, e.g. to split a run.")(f)
    f = click.option("--resume", is_flag=True, help="continue the run in --out from its last checkpoint.")(f)
    return click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="run directory.")(f)


@main.command("train-tokenizer")
@click.option("--preset", help="tokenizer preset: tiny (CPU), base, large (paper). Default tiny.")
@_flag_options(TOKENIZER_FLAGS)
@run_options
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads (1 is fastest on a busy machine).")
@click.option("--quiet", is_flag=True, help="no progress bar or messages.")
def train_tokenizer_cmd(preset, out, resume, stop_at, device, threads, quiet, **kwargs) -> None:
    """Train a 1D VCQ tokenizer; under torchrun, one process per GPU (DDP).

    \b
    vcq train-tokenizer --preset tiny --data digits --schedule cosine --kmin 2 --kmax 256 --steps 500 --out runs/tok
    torchrun --nproc_per_node 8 -m vcq.cli train-tokenizer --preset base --data folder --data-path imagenet/train --out runs/b
    """
    from vcq.runs import train_run
    from vcq.train import is_main_process

    _set_threads(threads)
    out_ = train_run("tokenizer", out, preset=preset, overrides=_flag_values(TOKENIZER_FLAGS, kwargs), resume=resume,
                     stop_at=stop_at, device=device, quiet=quiet, log=_logger(quiet))
    res = out_.result
    if not quiet and res.metrics and is_main_process():
        click.echo(f"step {res.step}: loss {res.metrics['loss']:.4f}, PSNR {res.metrics.get('psnr', float('nan')):.2f} dB, "
                   f"{res.steps_per_s:.2f} steps/s", err=True)


@main.command("dump-tokens")
@click.option("--ckpt", required=True, type=click.Path(), help="tokenizer run directory.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="token file NAME.npy (sidecar NAME.meta.json beside it); under torchrun the sharded dump NAME/.")
@click.option("--data", "data_name", type=click.Choice(("digits", "patches", "shapes", "folder", "npy")),
              help="images to tokenize (default: the run's training data).")
@click.option("--data-path", type=click.Path(), help="folder / .npy path for --data folder|npy.")
@click.option("--labels-path", type=click.Path(), help="labels .npy for --data npy.")
@click.option("--n", type=int, help="number of images (patches/shapes).")
@click.option("--data-seed", type=int, help="seed of crops/shapes and split (default: the run's).")
@click.option("--split", type=click.Choice(("train", "val", "all")), default="train", show_default=True)
@click.option("--schedule", type=click.Choice(KINDS[:-1]), help="expected schedule; an error if the checkpoint's differs.")
@click.option("--kmin", type=int, help="expected K_min.")
@click.option("--kmax", type=int, help="expected K_max.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--no-labels", is_flag=True, help="do not write labels.npy.")
@click.option("--device", help="cpu, cuda or cuda:N (default: cuda when present).")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads.")
@click.option("--quiet", is_flag=True)
def dump_tokens_cmd(ckpt, out, data_name, data_path, labels_path, n, data_seed, split, schedule, kmin, kmax,
                    batch_size, no_labels, device, threads, quiet) -> None:
    """Tokenize images with a trained tokenizer: NAME.npy, NAME.meta.json (schedule, K_t), labels.npy.

    `entropy-cliff measure NAME.npy` reads the sidecar and checks every token against its K_t.
    """
    from vcq.tokenizer import dump_tokens

    _set_threads(threads)
    expected = {k: v for k, v in (("schedule", schedule), ("kmin", kmin), ("kmax", kmax)) if v is not None}
    data = {k: v for k, v in (("name", data_name), ("path", data_path), ("labels_path", labels_path), ("n", n),
                              ("seed", data_seed)) if v is not None}
    path = dump_tokens(ckpt, out, data=data, split=split, expect=expected, batch_size=batch_size,
                       labels=not no_labels, device=device, progress=not quiet)
    from vcq.train import is_main_process

    if not quiet and is_main_process():
        click.echo(f"wrote {path}", err=True)


# ---------------------------------------------------------------------------------------------
# AR model: train-ar, sample, evaluate (vcq.train_ar, vcq.sampling, vcq.evaluate)
# ---------------------------------------------------------------------------------------------

AR_FLAGS: list[tuple[str, str, str, Any, str]] = [
    ("--dim", "model", "dim", int, "transformer width."),
    ("--depth", "model", "depth", int, "transformer blocks."),
    ("--heads", "model", "heads", int, "attention heads."),
    ("--dropout", "model", "dropout", float, "AR dropout (attention and residual)."),
    ("--token-dropout", "model", "token_dropout", float, "dropout on the input embeddings."),
    ("--class-dropout", "model", "class_dropout", float, "label dropout to the null class (CFG)."),
    ("--num-classes", "model", "num_classes", int, "classes (default: max label + 1)."),
] + [f for f in TOKENIZER_FLAGS if f[1] == "train"]


@main.command("train-ar")
@click.option("--tokens", "tokens", required=True, type=click.Path(), help="token dump NAME.npy (sidecar beside it).")
@click.option("--labels", "labels", type=click.Path(), help="labels .npy (default: NAME.labels.npy beside NAME.npy, "
              "else labels.npy).")
@click.option("--val-tokens", type=click.Path(), help="a held-out token dump for the validation NLL.")
@click.option("--val-labels", type=click.Path(), help="labels of --val-tokens (default: found as for --labels).")
@click.option("--val-fraction", type=float,
              help="without --val-tokens: share of the dump's rows held out (default 0.1; --resume: the run's).")
@click.option("--preset", help="AR preset: tiny (CPU), B, L, XL (paper). Default tiny.")
@_flag_options(AR_FLAGS)
@run_options
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True,
              help="how to print the per-position NLL.")
@click.option("--quiet", is_flag=True, help="no progress bar or messages.")
def train_ar_cmd(tokens, labels, val_tokens, val_labels, val_fraction, preset, out, resume, stop_at, device, fmt,
                 quiet, **kwargs) -> None:
    """Train a class-conditional AR model on a token dump; under torchrun, one process per GPU.

    Prints the per-position NLL in bits on training and validation rows (also in OUT/nll.json), to
    set beside the data's H_t from `entropy-cliff measure`.

    \b
    vcq train-ar --tokens dump/tokens.npy --preset tiny --steps 600 --out runs/ar
    """
    import json

    from vcq.runs import train_run
    from vcq.train import is_main_process

    data = {"tokens": tokens, "labels": labels, "val_tokens": val_tokens, "val_labels": val_labels,
            "val_fraction": val_fraction}
    out_ = train_run("ar", out, preset=preset, overrides=_flag_values(AR_FLAGS, kwargs), data=data, resume=resume,
                     stop_at=stop_at, device=device, quiet=quiet, log=_logger(quiet))
    res, nll, config = out_.result, out_.nll, out_.config
    if not is_main_process():
        return
    if fmt == "json":
        click.echo(json.dumps(nll, indent=2))
        return
    K = config["model"]["K"]
    val = nll.get("val_nll_bits")
    click.echo(f"{'t':>4} {'K_t':>7} {'log2K':>7} {'H_t|c':>8} {'train':>8} {'val':>8}   "
               f"(bits; H_t|c = H(X_t | X_<t, c) of the training rows; NLL at step {res.step})")
    for t, (k, h, tr) in enumerate(zip(K, nll["data_H_cond_bits"], nll["train_nll_bits"]), 1):
        v = f"{val[t - 1]:8.3f}" if val else f"{'-':>8}"
        click.echo(f"{t:>4} {k:>7} {math.log2(k):7.2f} {h:8.3f} {tr:8.3f} {v}")
    v = f"{nll['val_bits_per_token']:.3f}" if val else "-"
    click.echo(f"mean bits/token: train {nll['train_bits_per_token']:.3f}, val {v}")


SAMPLING_FLAGS: list[tuple[str, str, str, Any, str]] = [
    ("--temperature", "sampling", "temperature", float, "softmax temperature (> 0)."),
    ("--scale", "sampling", "scale", float, "base CFG scale w (>= 0; 1 = no guidance)."),
    ("--schedule", "sampling", "schedule", click.Choice(("none", "constant", "linear", "cosine")),
     "guidance ramp over positions (default constant; cosine = pow-cosine, docs/formulas.md; none needs --scale 1)."),
    ("--power", "sampling", "power", float, "p of the pow-cosine ramp (0 = constant w)."),
    ("--codebook-aware/--no-codebook-aware", "sampling", "codebook_aware", None,
     "CodebookSize-Aware CFG: s_t = 1 + r_t (s_t^base - 1) (paper Eq. 4)."),
    ("--top-k", "sampling", "top_k", int, "keep the k most likely codes (0 = off)."),
    ("--top-p", "sampling", "top_p", float, "nucleus sampling mass in (0, 1] (1 = off)."),
]


@main.command("sample")
@click.option("--ckpt", required=True, type=click.Path(), help="AR run directory.")
@click.option("--tokenizer", type=click.Path(), help="tokenizer run directory, to decode grid.png.")
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True, help="samples.")
@click.option("--class", "classes", help="comma-separated class ids (cycled); default 0..C-1 cycled.")
@click.option("--preset", help="sampling preset (paper Table 7), e.g. vcq-cosine, vcq-L-XL-nocfg.")
@_flag_options(SAMPLING_FLAGS)
@click.option("--ratio", type=click.Choice(("log", "linear")), default="log", show_default=True,
              help="capacity ratio r_t in log2 K (default) or in K.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-cache", is_flag=True, help="recompute the prefix at every step (slow reference).")
@click.option("--cols", type=int, help="grid columns (default ~sqrt n).")
@click.option("--device", help="cpu or cuda (default: cuda when present).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="output directory.")
@click.option("--quiet", is_flag=True)
@click.option("--batch-size", type=click.IntRange(min=1),
              help="samples per batch (default: all at once); finished batches are kept in OUT/partial/.")
@click.option("--resume", is_flag=True, help="continue an interrupted request in OUT (same settings).")
@click.option("--bf16", is_flag=True, help="bf16 autocast and a bf16 KV cache (half the memory; for GPUs).")
def sample_cmd(ckpt, tokenizer, n, classes, preset, ratio, seed, no_cache, cols, device, out, quiet, batch_size,
               resume, bf16, **kwargs) -> None:
    """Sample token sequences with CFG; write OUT/tokens.npy (+ sidecar), OUT/labels.npy, OUT/grid.png.

    \b
    vcq sample --ckpt runs/ar --tokenizer runs/tok --n 16 --scale 4 --schedule cosine --power 1.5 --codebook-aware --out samples/
    vcq sample --ckpt runs/ar --preset vcq-cosine-nocfg --n 64 --out samples/
    """
    from vcq.sampling import resolve_sampling, sample_run

    cfg = resolve_sampling(preset, _flag_values(SAMPLING_FLAGS, kwargs).get("sampling", {}))
    try:
        ids = [int(c) for c in classes.split(",")] if classes else None
    except ValueError:
        raise EntropyCliffError(f"--class must list integers, got {classes!r}") from None
    res = sample_run(ckpt, out, n=n, classes=ids, cfg=cfg, tokenizer=tokenizer, seed=seed, ratio=ratio,
                     use_cache=not no_cache, cols=cols, device=device, progress=not quiet, batch_size=batch_size,
                     resume=resume, bf16=bf16)
    if not quiet:
        click.echo(f"wrote {n} samples to {res.out}" + (" (grid.png)" if res.grid is not None else ""), err=True)


@main.command("evaluate")
@click.option("--samples", type=click.Path(file_okay=False), help="directory written by vcq sample.")
@click.option("--ckpt", type=click.Path(file_okay=False), help="AR run directory (NLL, probe, memorization).")
@click.option("--tokenizer", type=click.Path(file_okay=False), help="tokenizer run directory (PSNR, FID/dFID).")
@click.option("--pt-inception", type=click.Path(dir_okay=False),
              help="local pt_inception-2015-12-05 weights (FID; torch-fidelity's network when it imports, "
                   "else our port); without it a dataset classifier gives dFID.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default="runs/dfid-cache", show_default=True,
              help="where the dFID classifier is cached.")
@click.option("--n-real", type=click.IntRange(min=4), default=2000, show_default=True,
              help="training images the samples are compared with.")
@click.option("--n-recon", type=click.IntRange(min=4), default=500, show_default=True,
              help="validation images for reconstruction metrics.")
@click.option("--probe-k", default="1,10,all", show_default=True, help="linear probe on the first k tokens.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="write the full results as JSON here.")
@click.option("--format", "fmt", type=click.Choice(("table", "json")), default="table", show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("--device", help="where decoding and featurizing run: cpu, cuda or cuda:N (default: cuda when present).")
def evaluate_cmd(samples, ckpt, tokenizer, pt_inception, cache_dir, n_real, n_recon, probe_k, seed, out, fmt,
                 quiet, device) -> None:
    """Reconstruction (PSNR, rFID/rdFID), generation (FID/dFID, precision/recall k=3, IS/dIS),
    linear probe (paper Table 6 form) and memorization of generated token sequences.

    \b
    vcq evaluate --samples samples/ --ckpt runs/ar --tokenizer runs/tok --out eval.json
    """
    import json

    from entropy_cliff.io import prepare_output, write_json_atomic
    from vcq.evaluate import evaluate_run

    try:
        firsts = tuple(0 if k.strip() == "all" else int(k) for k in probe_k.split(","))
    except ValueError:
        raise EntropyCliffError(f"--probe-k must list integers or 'all', got {probe_k!r}") from None
    if any(k < 1 and s.strip() != "all" for k, s in zip(firsts, probe_k.split(","))):
        raise EntropyCliffError("--probe-k values must be >= 1 (or 'all')")
    if out:
        prepare_output(out, "file")
    res = evaluate_run(samples, ckpt, tokenizer, inception_path=pt_inception, cache_dir=cache_dir, n_real=n_real,
                       n_recon=n_recon, probe_firsts=firsts, seed=seed, progress=not quiet, device=device)
    for w in res.get("warnings", []):
        click.echo(f"vcq: warning: {w}", err=True)
    if out:
        write_json_atomic(out, res)
    if fmt == "json":
        click.echo(json.dumps(res, indent=2))
        return
    for line in format_evaluation(res):
        click.echo(line)


def format_evaluation(res: dict[str, Any]) -> list[str]:
    """Human-readable lines for :func:`vcq.evaluate.evaluate_run` output."""
    lines = [f"features: {res['feature_extractor']}; metrics: {res['metrics_backend']}"] if "feature_extractor" in res else []
    if "reconstruction" in res:
        r = res["reconstruction"]
        extra = "".join(f", {k} {v:.3f}" for k, v in r.items() if k.startswith("r"))
        lines.append(f"reconstruction ({r['images']} val images): PSNR {r['psnr']:.2f} dB{extra}")
    if "generation" in res:
        g = res["generation"]
        ref = g["reference_heldout_real"]
        for name, d in (("samples", g), ("held-out real (reference)", ref)):
            lines.append(f"generation, {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()
                                                             if isinstance(v, float)))
    if "nll" in res:
        n = res["nll"]
        lines.append(f"AR NLL bits/token: train {n['train_bits_per_token']:.3f}"
                     + (f", val {n['val_bits_per_token']:.3f}" if "val_bits_per_token" in n else ""))
    if "linear_probe" in res:
        p = res["linear_probe"]
        lines.append(f"linear probe ({p['features']}, {p['rows']} rows): " +
                     "; ".join(f"first {r['tokens']}: top-1 {100 * r['top1']:.1f}%, top-5 {100 * r['top5']:.1f}%"
                               for r in p["table"]))
    if "memorization" in res:
        m = res["memorization"]
        for name in ("generated", "heldout_real"):
            if name in m:
                share = m[name]["prefix_share"]
                marks = [1, 2, 4, 8, 16, len(share)]
                lines.append(f"memorization, {name}: exact copies {100 * m[name]['exact_copy']:.1f}%, "
                             f"mean seen prefix {m[name]['mean_prefix']:.2f}; prefix seen at m = " +
                             ", ".join(f"{k}: {100 * share[k - 1]:.0f}%" for k in sorted(set(marks)) if k <= len(share)))
    return lines


@main.command("plot-metrics")
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write (default RUN/metrics.png).")
def plot_metrics_cmd(run, out) -> None:
    """Draw a run's training curves from RUN/metrics.jsonl: loss, validation metrics, learning rate.

    \b
    vcq plot-metrics runs/ar --out ar_curves.png
    """
    from vcq.plots import plot_metrics

    click.echo(f"wrote {plot_metrics(run, out)}", err=True)


if __name__ == "__main__":
    main()
