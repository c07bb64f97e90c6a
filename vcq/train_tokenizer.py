"""Training a tokenizer (:class:`vcq.tokenizer.Tokenizer1D`) through the shared loop of :mod:`vcq.train`.

- :class:`TokenizerTask`: the objective of :mod:`vcq.losses` (L1 + MSE + VQ, optional LPIPS and
  PatchGAN terms), with codebook usage and validation metrics at logging steps (``val_l1``,
  ``val_psnr`` on up to :data:`VAL_IMAGES` fixed validation images) and a preview picture
  (originals over reconstructions);
- :func:`run_config`: the ``config.json`` of a tokenizer run; :func:`train_tokenizer` runs one
  (with the LPIPS loss on, ``config.json`` also names its implementation, :data:`LPIPS_KEY`: the
  ``lpips`` package or our port, see :func:`vcq.losses.load_lpips`; the log says it too).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vcq.data import DataSpec
from vcq.images import quantize_uint8, rows_grid, to_tensor, to_uint8, to_unit_range
from vcq.losses import PACKAGE, PatchDiscriminator, hinge_d_loss, hinge_g_loss, load_lpips, lpips_status
from vcq.metrics import mean_psnr, mean_psnr_tensor
from vcq.presets import TokenizerConfig, TrainConfig, from_dict, to_dict
from vcq.tokenizer import Tokenizer1D
from vcq.train import (MAIN, Task, TrainResult, check_run_dir, check_train_config, frozen, is_main_process,
                       seed_everything, train)

VAL_IMAGES = 64
LPIPS_KEY = "lpips_implementation"  # a config.json entry a resume may change (vcq.train.RESUME_FREE)


class TokenizerTask(Task):
    """Training objective of the tokenizer (see :mod:`vcq.losses`) for :func:`vcq.train.train`."""

    no_decay = ("codebook", "latent_tokens", "mask_token", "_pos")

    def __init__(self, model: Tokenizer1D, disc: nn.Module | None = None, lpips: nn.Module | None = None,
                 val_images: np.ndarray | None = None) -> None:
        self.cfg = model.cfg
        self.models = {MAIN: model} if disc is None else {MAIN: model, "disc": disc}
        self.aux = {} if lpips is None else {"lpips": lpips}
        self.model, self.disc, self.lpips = model, disc, lpips
        self.val_images = val_images

    def step(self, models: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        x = to_unit_range(batch["image"])
        out = models[MAIN](x)
        recon = out.recon.float()
        l1 = (recon - x).abs().mean()
        mse = F.mse_loss(recon, x)
        loss = c.w_l1 * l1 + c.w_mse * mse + c.w_commit * out.quant.loss
        m = {"l1": l1.detach(), "mse": mse.detach(), "vq": out.quant.loss.detach(),
             "commit": out.quant.commit_loss.detach(), "psnr": mean_psnr_tensor(batch["image"], quantize_uint8(recon))}
        if self.lpips is not None and c.w_lpips > 0:
            lp = self.lpips(recon, x)
            loss = loss + c.w_lpips * lp
            m["lpips"] = lp.detach()
        if self.disc is not None and step >= c.disc_start:
            with frozen(self.disc):
                g = hinge_g_loss(self.disc(recon))
            real, fake = models["disc"](torch.cat([x, recon.detach()])).float().chunk(2)
            d = hinge_d_loss(real, fake)
            loss = loss + c.w_adv * g + c.w_disc * d
            m.update(g_adv=g.detach(), d_loss=d.detach())
        return loss, m

    def after_step(self, step: int) -> dict[str, float]:
        n = self.model.quantizer.restart_dead_codes()
        return {"restarted_codes": float(n)} if self.cfg.dead_code_restart else {}

    def log_metrics(self) -> dict[str, float]:
        q = self.model.quantizer
        out = {}
        q.all_reduce_usage()
        if q.counts is not None:
            u = q.usage_stats()
            q.reset_usage()
            out = {"utilization": float(u["utilization"].mean()), "codes_used_mean": float(u["codes_used"].mean())}
        if self.val_images is not None and len(self.val_images):
            out.update(self.validation())
        return out

    @torch.no_grad()
    def validation(self) -> dict[str, float]:
        """``val_l1`` (the L1 term in [-1, 1] units) and ``val_psnr`` (:func:`vcq.metrics.mean_psnr`)
        of the fixed validation images, in eval mode (usage counts untouched)."""
        was = self.model.training
        self.model.eval()
        x = to_tensor(self.val_images, next(self.model.parameters()).device)
        recon = self.model(x).recon.float()
        self.model.train(was)
        return {"val_l1": float((recon - x).abs().mean()), "val_psnr": mean_psnr(self.val_images, to_uint8(recon))}

    @torch.no_grad()
    def preview(self, batch: dict[str, torch.Tensor]) -> np.ndarray:
        was = self.model.training
        self.model.eval()
        x = to_unit_range(batch["image"])
        recon = self.model(x).recon
        self.model.train(was)
        return rows_grid([("original", to_uint8(x)), ("reconstruction", to_uint8(recon))])


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
    check_train_config(train_cfg)
    train_set = data.load("train", model_cfg)
    val = data.load("val", model_cfg, augment=False) if data.val_fraction > 0 else train_set.subset(np.arange(len(train_set)), False)
    preview = val.batch(np.arange(min(8, len(val))), np.random.default_rng(0))
    val_images = val.images(np.arange(min(VAL_IMAGES, len(val))))
    seed_everything(train_cfg.seed)
    model = Tokenizer1D(model_cfg)
    use_disc = (model_cfg.w_adv > 0 or model_cfg.w_disc > 0) and model_cfg.disc_start < train_cfg.steps
    disc = PatchDiscriminator(model_cfg.channels, model_cfg.disc_channels, model_cfg.disc_layers) if use_disc else None
    lpips = None
    if model_cfg.w_lpips > 0 and model_cfg.lpips_path:
        lpips = load_lpips(model_cfg.lpips_path)
        config = {**config, LPIPS_KEY: lpips.implementation}
        if is_main_process():
            say(f"perceptual loss: LPIPS from {model_cfg.lpips_path} via {lpips.implementation}"
                + ("" if lpips.implementation == PACKAGE else f" ({lpips_status()[1]})"))
    elif model_cfg.w_lpips > 0 and is_main_process():
        say("perceptual (LPIPS) loss off: no --lpips-path given")
    return train(TokenizerTask(model, disc, lpips, val_images), train_set, train_cfg, out_dir, config=config, resume=resume,
                 stop_at=stop_at, quiet=quiet, device=device, log=log, preview_data=preview)
