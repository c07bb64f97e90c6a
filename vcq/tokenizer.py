"""TiTok-style 1D image tokenizer with a variable-codebook quantizer (paper §4, Appendix A).

Encoder: the image is cut into P = (H/p)^2 patches, embedded, and concatenated with L learnable
latent tokens; a pre-norm ViT runs over all P + L tokens and the L latent outputs are projected to
``code_dim`` and quantized by :class:`vcq.quantizer.VariableCodebookQuantizer` (position t uses the
first K_t codes). Decoder: the quantized latents, projected to the decoder width, are concatenated
with P copies of a learned mask token (each with its patch position embedding); a second ViT runs
over all P + L tokens and the P patch outputs are projected back to pixels (single stage, pixel
output, values in [-1, 1] space).

Also here: :class:`TokenizerTask` (the tokenizer objective for :func:`vcq.train.train`),
:func:`train_tokenizer`, :func:`load_tokenizer` (run directory -> model) and :func:`dump_tokens`
(images -> token dump + sidecar that ``entropy-cliff measure`` reads).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import Schedule
from vcq.data import ImageSet, load_dataset
from vcq.losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss, load_lpips
from vcq.presets import TokenizerConfig, TrainConfig, from_dict, override, to_dict
from vcq.quantizer import QuantizerOutput, VariableCodebookQuantizer
from vcq.train import MAIN, WEIGHTS_FILE, Task, TrainResult, check_run_dir, frozen, read_config, seed_everything, train


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
    """The codebook-size schedule a tokenizer configuration describes (SPEC §3)."""
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = Path(run_dir)
    w_path = run / WEIGHTS_FILE
    if not run.is_dir() or not w_path.is_file():
        raise EntropyCliffError(f"{run}: not a tokenizer checkpoint (missing {WEIGHTS_FILE})")
    config = read_config(run)
    if config.get("task") != "tokenizer" or "model" not in config:
        raise EntropyCliffError(f"{run}: not a tokenizer run (config.json task = {config.get('task')!r})")
    model = Tokenizer1D(from_dict(TokenizerConfig, config["model"]))
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise EntropyCliffError(f"{w_path}: corrupt weights file ({str(e).splitlines()[0]})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise EntropyCliffError(f"{w_path}: weights do not match config.json ({str(e).splitlines()[1].strip()})") from None
    if missing or unexpected:
        raise EntropyCliffError(f"{w_path}: weights do not match config.json "
                                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model.to(device).eval()


def tokenize_images(model: Tokenizer1D, images: ImageSet, batch_size: int = 256,
                    device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """Tokens (N, L) int64 of every image of ``images`` (in order), position t < K_t."""
    from tqdm import tqdm

    out = [np.zeros((0, model.cfg.num_latent), np.int64)]
    bar = tqdm(range(0, len(images), batch_size), disable=not progress or not sys.stderr.isatty(), desc="tokenize",
               unit="batch", file=sys.stderr)
    for s in bar:
        x = to_tensor(images.images(np.arange(s, min(s + batch_size, len(images)))), device)
        out.append(model.encode(x).cpu().numpy())
    return np.concatenate(out)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 tensor (B, H, W, C) -> float (B, C, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 array (B, H, W, C) -> float tensor (B, C, H, W) in [-1, 1] on ``device``."""
    return to_unit_range(torch.from_numpy(np.ascontiguousarray(images)).to(device))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C)."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) from the MSE pooled over the batch:
    10 log10(4 / MSE). :func:`vcq.evaluate.psnr` instead averages per-image PSNRs, which reads
    several dB higher on sets with flat images (the demo crops: 16.5 dB pooled, 21.5 dB averaged)."""
    mse = F.mse_loss(x.float().clamp(-1, 1), y.float()).item()
    return float("inf") if mse == 0 else 10.0 * math.log10(4.0 / mse)


class TokenizerTask(Task):
    """Training objective of the tokenizer (see :mod:`vcq.losses`) for :func:`vcq.train.train`."""

    no_decay = ("codebook", "latent_tokens", "mask_token", "_pos")

    def __init__(self, model: Tokenizer1D, disc: nn.Module | None = None, lpips: nn.Module | None = None) -> None:
        self.cfg = model.cfg
        self.models = {MAIN: model} if disc is None else {MAIN: model, "disc": disc}
        self.model, self.disc, self.lpips = model, disc, lpips

    def step(self, models: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        x = to_unit_range(batch["image"])
        out = models[MAIN](x)
        recon = out.recon.float()
        l1 = (recon - x).abs().mean()
        mse = F.mse_loss(recon, x)
        loss = c.w_l1 * l1 + c.w_mse * mse + c.w_commit * out.quant.loss
        m = {"l1": l1.item(), "mse": mse.item(), "vq": out.quant.loss.item(), "commit": out.quant.commit_loss.item(), "psnr": psnr(recon, x)}
        if self.lpips is not None and c.w_lpips > 0:
            lp = self.lpips(recon, x)
            loss = loss + c.w_lpips * lp
            m["lpips"] = lp.item()
        if self.disc is not None and step >= c.disc_start:
            with frozen(self.disc):
                g = hinge_g_loss(self.disc(recon))
            real, fake = models["disc"](torch.cat([x, recon.detach()])).float().chunk(2)
            d = hinge_d_loss(real, fake)
            loss = loss + c.w_adv * g + c.w_disc * d
            m.update(g_adv=g.item(), d_loss=d.item())
        return loss, m

    def after_step(self, step: int) -> dict[str, float]:
        n = self.model.quantizer.restart_dead_codes()
        return {"restarted_codes": float(n)} if self.cfg.dead_code_restart else {}

    def log_metrics(self) -> dict[str, float]:
        q = self.model.quantizer
        if q.counts is None:
            return {}
        u = q.usage_stats()
        q.reset_usage()
        return {"utilization": float(u["utilization"].mean()), "codes_used_mean": float(u["codes_used"].mean())}

    @torch.no_grad()
    def preview(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        was = self.model.training
        self.model.eval()
        x = to_unit_range(batch["image"])
        recon = self.model(x).recon
        self.model.train(was)
        return recon_grid(to_uint8(x), to_uint8(recon))


def recon_grid(originals: np.ndarray, recons: np.ndarray, scale: int = 4, pad: int = 2) -> np.ndarray:
    """uint8 (H', W', 3) picture: originals on the top row, reconstructions below, upscaled."""
    rows = []
    for imgs in (originals, recons):
        imgs = np.repeat(np.repeat(imgs, scale, 1), scale, 2)
        if imgs.shape[-1] == 1:
            imgs = np.repeat(imgs, 3, -1)
        b, h, w, _ = imgs.shape
        row = np.full((h + 2 * pad, b * (w + pad) + pad, 3), 255, np.uint8)
        for i, im in enumerate(imgs):
            row[pad : pad + h, pad + i * (w + pad) : pad + i * (w + pad) + w] = im
        rows.append(row)
    return np.concatenate(rows, 0)


@dataclass(frozen=True)
class DataSpec:
    """Which images a tokenizer run reads (saved as ``config.json["data"]``)."""

    name: str = "digits"
    path: str | None = None
    labels_path: str | None = None
    n: int | None = None
    seed: int = 0
    val_fraction: float = 0.1

    def load(self, split: str, cfg: TokenizerConfig, augment: bool | None = None) -> ImageSet:
        return load_dataset(self.name, split=split, image_size=cfg.image_size, channels=cfg.channels, n=self.n,
                            path=self.path, labels_path=self.labels_path, seed=self.seed,
                            val_fraction=self.val_fraction, augment=augment)


def run_config(model: TokenizerConfig, train_cfg: TrainConfig, data: DataSpec, preset: str) -> dict[str, Any]:
    """The resolved configuration a tokenizer run saves as ``config.json``."""
    return {"task": "tokenizer", "preset": preset, "model": to_dict(model), "train": to_dict(train_cfg),
            "data": to_dict(data)}


def train_tokenizer(config: dict[str, Any], out_dir: str | Path, *, resume: bool = False, stop_at: int | None = None,
                    quiet: bool = False, device: str | None = None, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a tokenizer described by :func:`run_config` output into ``out_dir``."""
    model_cfg = from_dict(TokenizerConfig, config["model"])
    train_cfg = from_dict(TrainConfig, config["train"])
    data = from_dict(DataSpec, config["data"])
    say = log or (lambda s: None)
    check_run_dir(out_dir, config, resume)
    train_set = data.load("train", model_cfg)
    val = data.load("val", model_cfg, augment=False) if data.val_fraction > 0 else data.load("train", model_cfg, augment=False)
    preview = val.batch(np.arange(min(8, len(val))), np.random.default_rng(0))
    seed_everything(train_cfg.seed)
    model = Tokenizer1D(model_cfg)
    use_disc = (model_cfg.w_adv > 0 or model_cfg.w_disc > 0) and model_cfg.disc_start < train_cfg.steps
    disc = PatchDiscriminator(model_cfg.channels, model_cfg.disc_channels, model_cfg.disc_layers) if use_disc else None
    lpips = None
    if model_cfg.w_lpips > 0 and model_cfg.lpips_path:
        lpips = load_lpips(model_cfg.lpips_path)
    elif model_cfg.w_lpips > 0 and int(os.environ.get("RANK", "0")) == 0:
        say("perceptual (LPIPS) loss off: no --lpips-path given")
    return train(TokenizerTask(model, disc, lpips), train_set, train_cfg, out_dir, config=config, resume=resume,
                 stop_at=stop_at, quiet=quiet, device=device, log=log, preview_data=preview)


def reconstruct(model: Tokenizer1D, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 reconstructions of uint8 images (N, H, W, C) through the tokens, ``batch_size`` images at
    a time on the model's device (call it in eval mode)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return np.concatenate([to_uint8(model.decode(model.encode(to_tensor(np.asarray(images[s : s + batch_size]), device))))
                               for s in range(0, len(images), batch_size)])


def dump_tokens(ckpt: str | Path, out: str | Path, *, data: dict[str, Any] | None = None, split: str = "train",
                expect: dict[str, Any] | None = None, batch_size: int = 256, labels: bool = True,
                device: str | None = None, progress: bool = False) -> Path:
    """Tokenize a dataset with the tokenizer in run directory ``ckpt`` and write a token dump.

    ``data`` replaces fields of the run's :class:`DataSpec` (another dataset: its path, labels and n
    start empty). ``expect`` (e.g. ``{"schedule": "cosine", "kmax": 256}``) must match the
    checkpoint's model config. Writes ``out`` (N × L, smallest unsigned dtype), its sidecar with the
    schedule and K_t, and ``labels.npy`` beside it when ``labels``.
    """
    from entropy_cliff.io import save_tokens

    config = read_config(ckpt)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_tokenizer(ckpt, dev)
    cfg = model.cfg
    for k, v in (expect or {}).items():
        if config["model"].get(k) != v:
            raise EntropyCliffError(f"{ckpt}: checkpoint was trained with {k} = {config['model'].get(k)!r}, not {v!r}")
    spec = from_dict(DataSpec, config["data"])
    data = dict(data or {})
    if data.get("name", spec.name) != spec.name:
        spec = DataSpec(name=data["name"], seed=spec.seed, val_fraction=spec.val_fraction)
    spec = override(spec, **data)
    images = spec.load(split, cfg, augment=False)
    tokens = tokenize_images(model, images, batch_size, dev, progress)
    sched = schedule_of(cfg)
    source = {"tokenizer": str(ckpt), "preset": config.get("preset"), "step": _weights_step(Path(ckpt)),
              "data": to_dict(spec), "split": split, "image_size": cfg.image_size}
    return save_tokens(out, tokens, sched.K, sched.to_dict(), source, images.label_array() if labels else None)


def _weights_step(run: Path) -> int | None:
    from safetensors import safe_open

    with safe_open(str(run / WEIGHTS_FILE), "pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None
