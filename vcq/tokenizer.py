"""TiTok-style 1D image tokenizer with a variable-codebook quantizer (paper §4, Appendix A).

Encoder: the image is cut into P = (H/p)^2 patches, embedded, and concatenated with L learnable
latent tokens; a pre-norm ViT runs over all P + L tokens and the L latent outputs are projected to
``code_dim`` and quantized by :class:`vcq.quantizer.VariableCodebookQuantizer` (position t uses the
first K_t codes). Decoder: the quantized latents, projected to the decoder width, are concatenated
with P copies of a learned mask token (each with its patch position embedding); a second ViT runs
over all P + L tokens and the P patch outputs are projected back to pixels (single stage, pixel
output, values in [-1, 1] space).

Also here: :func:`load_tokenizer` (run directory -> model), :func:`reconstruct`,
:func:`decode_tokens` and :func:`dump_tokens` (images -> token dump + sidecar that
``entropy-cliff measure`` reads). Training: :mod:`vcq.train_tokenizer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule
from vcq.data import DataSpec, ImageSet
from vcq.images import to_tensor, to_uint8
from vcq.presets import TokenizerConfig, from_dict, override, to_dict
from vcq.quantizer import QuantizerOutput, VariableCodebookQuantizer
from vcq.train import WEIGHTS_FILE, load_weights, read_config


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise EntropyCliffError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


@dataclass
class TokenizerOutput:
    recon: torch.Tensor  # (B, C, H, W)
    quant: QuantizerOutput


def schedule_of(cfg: TokenizerConfig) -> Schedule:
    """The codebook-size schedule a tokenizer configuration describes (docs/formulas.md)."""
    if cfg.kmin > cfg.kmax:
        raise EntropyCliffError(f"K_min = {cfg.kmin} exceeds K_max = {cfg.kmax}")
    kmin = cfg.kmax if cfg.schedule == "constant" else cfg.kmin  # a constant schedule is K_max everywhere
    return Schedule(cfg.schedule, kmin, cfg.kmax, cfg.num_latent, cfg.power)


class Tokenizer1D(nn.Module):
    """Image (B, C, H, W) in [-1, 1] <-> L tokens, token t in [0, K_t)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise EntropyCliffError(f"image size {cfg.image_size} is not a multiple of patch size {cfg.patch_size}")
        self.cfg = cfg
        self.schedule = schedule_of(cfg)
        p, c = cfg.patch_size, cfg.channels
        self.grid = cfg.image_size // p
        n_patches = self.grid**2
        self.patch_embed = nn.Conv2d(c, cfg.enc_width, p, stride=p)
        self.enc_pos = nn.Parameter(torch.randn(n_patches, cfg.enc_width) * cfg.embed_std)
        self.latent_tokens = nn.Parameter(torch.randn(cfg.num_latent, cfg.enc_width) * cfg.embed_std)
        self.latent_pos = nn.Parameter(torch.randn(cfg.num_latent, cfg.enc_width) * cfg.embed_std)
        self.encoder = ViT(cfg.enc_width, cfg.enc_depth, cfg.enc_heads, cfg.mlp_ratio)
        self.to_code = nn.Linear(cfg.enc_width, cfg.code_dim)
        self.quantizer = VariableCodebookQuantizer(
            self.schedule.K, cfg.code_dim, beta=cfg.beta, l2_norm=cfg.l2_norm_codes,
            dead_code_restart=cfg.dead_code_restart, dead_code_threshold=cfg.dead_code_threshold,
            chunk_size=cfg.chunk_size)
        self.from_code = nn.Linear(cfg.code_dim, cfg.dec_width)
        self.mask_token = nn.Parameter(torch.randn(cfg.dec_width) * cfg.embed_std)
        self.dec_pos = nn.Parameter(torch.randn(n_patches, cfg.dec_width) * cfg.embed_std)
        self.dec_latent_pos = nn.Parameter(torch.randn(cfg.num_latent, cfg.dec_width) * cfg.embed_std)
        self.decoder = ViT(cfg.dec_width, cfg.dec_depth, cfg.dec_heads, cfg.mlp_ratio)
        self.to_pixels = nn.Linear(cfg.dec_width, p * p * c)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                _init_linear(m, cfg.xavier_init)

    def check_images(self, x: torch.Tensor) -> None:
        c, s = self.cfg.channels, self.cfg.image_size
        if x.ndim != 4 or x.shape[1:] != (c, s, s):
            raise EntropyCliffError(f"images of shape {tuple(x.shape)[1:]} do not match this tokenizer's ({c}, {s}, {s})")

    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latents (B, L, code_dim) before quantization."""
        self.check_images(x)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2) + self.enc_pos
        latents = (self.latent_tokens + self.latent_pos).expand(x.shape[0], -1, -1)
        h = self.encoder(torch.cat([patches, latents], dim=1))
        return self.to_code(h[:, -self.cfg.num_latent :])

    def decode_codes(self, z_q: torch.Tensor) -> torch.Tensor:
        """Pixels (B, C, H, W) from quantized latents (B, L, code_dim)."""
        b = z_q.shape[0]
        lat = self.from_code(z_q) + self.dec_latent_pos
        masks = (self.mask_token + self.dec_pos).expand(b, -1, -1)
        h = self.decoder(torch.cat([masks, lat], dim=1))[:, : self.grid**2]
        p, c, g = self.cfg.patch_size, self.cfg.channels, self.grid
        out = self.to_pixels(h).view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c, g * p, g * p)

    def forward(self, x: torch.Tensor) -> TokenizerOutput:
        q = self.quantizer(self.encode_latents(x))
        return TokenizerOutput(self.decode_codes(q.z_q), q)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Token indices (B, L), index t < K_t."""
        return self.quantizer.nearest(self.encode_latents(x))

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pixels from token indices (B, L)."""
        if torch.any(tokens >= self.quantizer.K) or torch.any(tokens < 0):
            raise EntropyCliffError("tokens out of range for their position's codebook size")
        return self.decode_codes(self.quantizer.lookup(tokens))


def _init_linear(m: nn.Linear, xavier: bool) -> None:
    """Trunc-normal(0.02) weights (ViT practice at width 768) or Xavier-uniform, zero biases.

    At width 64 the 0.02 init makes attention logits near zero, so every token starts as an average
    of the others; Xavier's width-scaled init lets the tiny model leave that plateau in a few
    hundred steps.
    """
    if xavier:
        nn.init.xavier_uniform_(m.weight)
    else:
        nn.init.trunc_normal_(m.weight, std=0.02)
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def load_tokenizer(run_dir: str | Path, device: str | torch.device = "cpu") -> Tokenizer1D:
    """Rebuild a trained tokenizer from a run directory (``config.json`` + ``model.safetensors``).

    Raises :class:`EntropyCliffError` for a missing or corrupt checkpoint, or one that is not a
    tokenizer run.
    """
    run = Path(run_dir)
    if not run.is_dir() or not (run / WEIGHTS_FILE).is_file():
        raise EntropyCliffError(f"{run}: not a tokenizer checkpoint (missing {WEIGHTS_FILE})")
    config = read_config(run)
    if config.get("task") != "tokenizer" or "model" not in config:
        raise EntropyCliffError(f"{run}: not a tokenizer run (config.json task = {config.get('task')!r})")
    return load_weights(Tokenizer1D(from_dict(TokenizerConfig, config["model"])), run, device)


def tokenize_images(model: Tokenizer1D, images: ImageSet, batch_size: int = 256,
                    device: str | torch.device = "cpu", progress: bool = False,
                    rows: range | None = None) -> np.ndarray:
    """Tokens (n, L) int64 of the images ``rows`` (default: all) of ``images``, in order; position
    t < K_t."""
    from entropy_cliff.progress import Progress

    rows = range(len(images)) if rows is None else rows
    out = [np.zeros((0, model.cfg.num_latent), np.int64)]
    with Progress(len(rows), desc="tokenize", unit="image", quiet=not progress) as bar:
        for s in range(rows.start, rows.stop, batch_size):
            x = to_tensor(images.images(np.arange(s, min(s + batch_size, rows.stop))), device)
            out.append(model.encode(x).cpu().numpy())
            bar.update(len(x))
    return np.concatenate(out)


def reconstruct(model: Tokenizer1D, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 reconstructions of uint8 images (N, H, W, C) through the tokens, ``batch_size`` images at
    a time on the model's device (call it in eval mode)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return np.concatenate([to_uint8(model.decode(model.encode(to_tensor(np.asarray(images[s : s + batch_size]), device))))
                               for s in range(0, len(images), batch_size)])


def decode_tokens(model: Tokenizer1D, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 images (N, H, W, C) decoded from tokens (N, L), ``batch_size`` rows at a time on the
    model's device."""
    device = next(model.parameters()).device
    return np.concatenate([to_uint8(model.decode(torch.as_tensor(np.asarray(tokens[s:s + batch_size], dtype=np.int64),
                                                                 device=device)))
                           for s in range(0, len(tokens), batch_size)])


def dump_tokens(ckpt: str | Path, out: str | Path, *, data: dict[str, Any] | None = None, split: str = "train",
                expect: dict[str, Any] | None = None, batch_size: int = 256, labels: bool = True,
                device: str | None = None, progress: bool = False) -> Path:
    """Tokenize a dataset with the tokenizer in run directory ``ckpt`` and write a token dump.

    ``data`` replaces fields of the run's :class:`DataSpec` (another dataset: its path, labels and n
    start empty). ``expect`` (e.g. ``{"schedule": "cosine", "kmax": 256}``) must match the
    checkpoint's model config. Writes ``out`` (N × L, smallest unsigned dtype), its sidecar with the
    schedule and K_t, and its labels (:func:`entropy_cliff.io.save_tokens`) when ``labels``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each rank tokenizes its own contiguous slice of the
    images on its device and the result is a sharded dump, the directory ``out`` without ``.npy``
    (:func:`_dump_sharded`); that directory is returned.
    """
    import os

    from entropy_cliff.io import prepare_output, save_tokens
    from vcq.train import resolve_device

    config = read_config(ckpt)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _dump_sharded(ckpt, out, config, data, split, expect, batch_size, labels, device, progress)
    prepare_output(out, "file")
    dev = resolve_device(device)
    model = load_tokenizer(ckpt, dev)
    cfg = model.cfg
    _check_expected(ckpt, config, expect)
    spec, images = _dump_images(config, cfg, data, split)
    tokens = tokenize_images(model, images, batch_size, dev, progress)
    sched = schedule_of(cfg)
    return save_tokens(out, tokens, sched.K, sched.to_dict(), _dump_source(ckpt, config, spec, split, cfg),
                       images.label_array() if labels else None)


def _check_expected(ckpt: str | Path, config: dict[str, Any], expect: dict[str, Any] | None) -> None:
    for k, v in (expect or {}).items():
        if config["model"].get(k) != v:
            raise EntropyCliffError(f"{ckpt}: checkpoint was trained with {k} = {config['model'].get(k)!r}, not {v!r}")


def _dump_images(config: dict[str, Any], cfg: TokenizerConfig, data: dict[str, Any] | None,
                 split: str) -> tuple[DataSpec, ImageSet]:
    """The images a dump tokenizes: the run's data spec with ``data`` replacing fields."""
    spec = from_dict(DataSpec, config["data"])
    data = dict(data or {})
    if data.get("name", spec.name) != spec.name:
        spec = DataSpec(name=data["name"], seed=spec.seed, val_fraction=spec.val_fraction)
    spec = override(spec, **data)
    return spec, spec.load(split, cfg, augment=False)


def _dump_source(ckpt: str | Path, config: dict[str, Any], spec: DataSpec, split: str,
                 cfg: TokenizerConfig) -> dict[str, Any]:
    from vcq.runs import weights_step

    return {"tokenizer": str(ckpt), "preset": config.get("preset"), "step": weights_step(ckpt),
            "data": to_dict(spec), "split": split, "image_size": cfg.image_size}


def shard_rows(n: int, world: int, rank: int) -> range:
    """Rank ``rank``'s contiguous slice of ``n`` rows: ``[r n / W, (r + 1) n / W)`` (no padding, no
    repeats; sizes differ by at most one)."""
    return range(rank * n // world, (rank + 1) * n // world)


def _dump_sharded(ckpt: str | Path, out: str | Path, config: dict[str, Any], data: dict[str, Any] | None,
                  split: str, expect: dict[str, Any] | None, batch_size: int, labels: bool, device: str | None,
                  progress: bool) -> Path:
    """The torchrun form of :func:`dump_tokens`: rank r writes ``NAME/shard-0000r.npy`` (+
    ``shard-0000r.labels.npy``) with the tokens of :func:`shard_rows`; rank 0 then writes
    ``NAME/meta.json`` (the sidecar, N = all rows) last, so its presence marks a complete dump."""
    import torch.distributed as dist

    from entropy_cliff.io import (LABELS_SUFFIX, SHARDS_META, prepare_output, save_npy_atomic, smallest_uint_dtype,
                                  write_json_atomic)
    from vcq.train import finish_distributed, init_distributed

    joined = not dist.is_initialized()
    info = init_distributed(device)
    try:
        p = Path(out)
        target = p.with_suffix("") if p.suffix == ".npy" else p
        model = load_tokenizer(ckpt, info.device)
        cfg = model.cfg
        _check_expected(ckpt, config, expect)
        spec, images = _dump_images(config, cfg, data, split)
        if info.main:
            prepare_output(target, "dir")
            for old in [*target.glob("shard-*.npy"), target / SHARDS_META]:  # from an earlier dump
                old.unlink(missing_ok=True)
        dist.barrier()
        rows = shard_rows(len(images), info.world, info.rank)
        tokens = tokenize_images(model, images, batch_size, info.device, progress and info.main, rows)
        sched = schedule_of(cfg)
        name = f"shard-{info.rank:05d}"
        save_npy_atomic(target / f"{name}.npy", tokens.astype(smallest_uint_dtype(max(sched.K) - 1)))
        y = images.label_array() if labels else None
        if y is not None:
            y = np.asarray(y)[rows.start:rows.stop]
            save_npy_atomic(target / f"{name}{LABELS_SUFFIX}", y.astype(smallest_uint_dtype(int(y.max(initial=0)))))
        dist.barrier()
        if info.main:
            write_json_atomic(target / SHARDS_META, {"N": len(images), "L": cfg.num_latent, "schedule": sched.to_dict(),
                                                    "K": [int(k) for k in sched.K],
                                                    "source": {**_dump_source(ckpt, config, spec, split, cfg),
                                                               "shards": info.world}})
        dist.barrier()
        return target
    finally:
        if joined:
            finish_distributed()

