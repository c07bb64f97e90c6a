"""Named configurations as dataclasses (paper Appendix A).

A preset is a plain dataclass instance. The command line starts from a preset and replaces the
fields given as flags (:func:`override`); the resolved configuration (:func:`to_dict`) is what a run
saves in ``config.json`` and what rebuilds the model later (:func:`from_dict`).

Tokenizer presets:

- ``tiny``  — CPU scale: 32×32 RGB, patch 8, L = 32 latent tokens, 2-layer width-64 ViTs, K = 2..256.
- ``base``  — paper Base: 256×256, patch 16, L = 256, ViT-B encoder + ViT-B decoder (about 172M
  parameters), cosine VCQ K_min = 2, K_max = 16384.
- ``large`` — paper Large: ViT-B encoder + ViT-L decoder, K_max = 11264.

Loss weights follow the paper: L1 1.0, LPIPS 1.0, adversarial generator 0.1, discriminator 1.0,
commitment 1.0. Values the paper leaves out (code dimension, learning rates, discriminator start,
the commitment beta) follow TiTok / VQGAN practice and are marked as such below.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from entropy_cliff.errors import EntropyCliffError

T = TypeVar("T")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by every training task (:mod:`vcq.train`).

    Learning rate: linear warmup from 0 to ``lr`` over ``warmup_steps``, then linear decay to
    ``min_lr`` at ``steps``. One optimizer step sees ``batch_size × grad_accum × world_size``
    examples (``grad_accum`` micro-batches of ``batch_size`` per process). AdamW with ``weight_decay`` on weight matrices only (biases, norms,
    embeddings named in the task's ``no_decay`` are excluded).
    """

    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float | None = 1.0
    seed: int = 0
    ckpt_every: int = 100
    log_every: int = 10
    preview_every: int = 100
    bf16: bool = True  # bf16 autocast; only ever active on CUDA
    grad_accum: int = 1  # micro-batches of batch_size per optimizer step (per-process step batch: batch_size x grad_accum)
    workers: int = 0  # DataLoader worker processes preparing batches (0: in the training process)
    deterministic: bool = False  # torch.use_deterministic_algorithms + cuBLAS workspace (exact CUDA resume)


@dataclass(frozen=True)
class TokenizerConfig:
    """A 1D (TiTok-style) tokenizer with a variable-codebook quantizer (docs/formulas.md).

    ``schedule``/``kmin``/``kmax``/``power`` define K_t (Eq. 3) over the ``num_latent`` = L
    positions. ``code_dim`` is the quantized latent width; ``beta`` weighs the commitment term
    ``beta * ||z - sg(e)||^2`` inside the VQ loss, whose total is scaled by ``w_commit``.
    """

    image_size: int = 32
    channels: int = 3
    patch_size: int = 4
    num_latent: int = 32
    enc_width: int = 64
    enc_depth: int = 2
    enc_heads: int = 4
    dec_width: int = 64
    dec_depth: int = 2
    dec_heads: int = 4
    mlp_ratio: float = 4.0
    code_dim: int = 12  # TiTok's token size; not stated in the paper
    schedule: str = "cosine"
    kmin: int = 2
    kmax: int = 256
    power: float = 1.0
    beta: float = 0.25  # VQ-VAE commitment beta; not stated in the paper
    l2_norm_codes: bool = False
    # initialisation: linear layers trunc-normal(0.02) (ViT practice) or Xavier-uniform; learned
    # position embeddings, latent tokens and the mask token normal(0, embed_std)
    xavier_init: bool = False
    embed_std: float = 0.02
    dead_code_restart: bool = False
    dead_code_threshold: float = 0.05  # restart codes whose EMA share < this × their share under uniform use
    chunk_size: int = 4096  # rows of the distance matrix computed at once
    # losses (paper Appendix A)
    w_l1: float = 1.0
    w_mse: float = 0.0  # pixel MSE; not in the paper (the tiny preset uses it to leave the mean-colour plateau)
    w_lpips: float = 1.0
    w_adv: float = 0.1
    w_disc: float = 1.0
    w_commit: float = 1.0
    disc_start: int = 10**9  # step at which the PatchGAN starts; off by default at toy scale
    disc_channels: int = 64
    disc_layers: int = 3
    lpips_path: str | None = None  # local LPIPS weights; None -> perceptual loss off


@dataclass(frozen=True)
class TokenizerPreset:
    """A tokenizer configuration plus its default optimisation settings."""

    model: TokenizerConfig
    train: TrainConfig = field(default_factory=TrainConfig)


_BASE_TOKENIZER = TokenizerPreset(
    TokenizerConfig(image_size=256, patch_size=16, num_latent=256, enc_width=768, enc_depth=12,
                    enc_heads=12, dec_width=768, dec_depth=12, dec_heads=12, kmax=16384,
                    disc_start=20000, disc_channels=64, disc_layers=3),
    # global batch 256 over 8 GPUs; lr values are TiTok's (lost in the paper's text copy)
    TrainConfig(steps=1_300_000, batch_size=32, lr=1e-4, min_lr=1e-5, warmup_steps=13000,
                ckpt_every=5000, log_every=50, preview_every=5000),
)

TOKENIZER_PRESETS: dict[str, TokenizerPreset] = {
    # CPU scale. With the ViT defaults (patch 4, trunc-normal 0.02 init, L1 only, plain codes,
    # lr 1e-3) the model sits on the mean-colour plateau (~15.5-17 dB held-out PSNR on ``patches``
    # after 300-1500 steps, quantized or not). Patch 8, Xavier init with embeddings at std 0.5,
    # l2-normalised codes, an added MSE term and lr 4e-3 leave it after ~300-400 steps and reach
    # ~19 dB (18.9 dB on 1000 held-out crops, cosine VCQ K_max 1024, 600 steps): coarse colour
    # layout per 8×8 patch. Without the Xavier/embedding init, without l2 codes, or with L1
    # alone, 600-step runs stayed at or near the plateau.
    "tiny": TokenizerPreset(
        TokenizerConfig(patch_size=8, l2_norm_codes=True, xavier_init=True, embed_std=0.5, w_mse=1.0),
        TrainConfig(steps=600, batch_size=32, lr=4e-3, min_lr=4e-4, warmup_steps=50, weight_decay=1e-4),
    ),
    "base": _BASE_TOKENIZER,
    # the paper's large tokenizer: ViT-L decoder, K_max 11264; the rest as base
    "large": dataclasses.replace(_BASE_TOKENIZER, model=dataclasses.replace(
        _BASE_TOKENIZER.model, dec_width=1024, dec_depth=24, dec_heads=16, kmax=11264)),
}


def lookup(registry: dict[str, T], name: str, what: str = "preset") -> T:
    """``registry[name]`` or an :class:`EntropyCliffError` listing the known names."""
    try:
        return registry[name]
    except KeyError:
        raise EntropyCliffError(f"unknown {what} {name!r} (choose from {', '.join(registry)})") from None


def override(cfg: T, **values: Any) -> T:
    """A copy of dataclass ``cfg`` with the given fields replaced; ``None`` values are skipped.

    Unknown field names raise :class:`EntropyCliffError` (a flag must name a real field).
    """
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise EntropyCliffError(f"{type(cfg).__name__} has no field(s) {', '.join(unknown)}")
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if v is not None})


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass (possibly nested) as a JSON-ready dict."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """Rebuild dataclass ``cls`` from :func:`to_dict` output; extra keys are an error."""
    try:
        return cls(**d)
    except TypeError as e:
        raise EntropyCliffError(f"config does not describe a {cls.__name__} ({e})") from None


# ---------------------------------------------------------------------------------------------
# AR model and sampling presets (paper Appendix A and Table 7)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ARConfig:
    """A Llama-style class-conditional AR transformer over a variable-codebook token corpus.

    Architecture (:mod:`vcq.ar`): RMSNorm, SwiGLU, rotary position embeddings, no biases; the class
    token sits at position 0 and class id ``num_classes`` is the null class used by CFG.
    ``class_dropout`` (label dropout), ``dropout`` (attention and residual "AR dropout") and
    ``token_dropout`` (on the input embeddings) are the paper's three 0.1 dropouts.

    ``K`` (one codebook size per position, so ``L = len(K)`` and ``K_max = max(K)``) and
    ``num_classes`` describe the data; :func:`vcq.train_ar.ar_config_for_dump` fills them in from
    a token dump, the preset only fixes the architecture.
    """

    dim: int = 128
    depth: int = 4
    heads: int = 4
    ffn_multiple_of: int = 64  # SwiGLU hidden width = 8/3 dim rounded up to this (Llama practice)
    dropout: float = 0.1
    token_dropout: float = 0.1
    class_dropout: float = 0.1
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    num_classes: int = 10
    K: tuple[int, ...] = ()
    schedule: dict[str, Any] | None = None  # the dump's schedule description (informational)

    @property
    def length(self) -> int:
        return len(self.K)

    @property
    def kmax(self) -> int:
        return max(self.K)


@dataclass(frozen=True)
class ARPreset:
    """An AR architecture plus its default optimisation settings."""

    model: ARConfig
    train: TrainConfig = field(default_factory=TrainConfig)


# Paper Appendix A: B 12/12/768 (115M), L 24/16/1024 (343M), XL 32/20/1280 (684M); 1.0M steps at
# global batch 512 (8 GPUs -> 64 per process). The paper text copy lost the AdamW betas, learning
# rates and weight decay; the values below are RAR's recipe (lr 4e-4 -> 1e-5, wd 0.03,
# betas 0.9/0.96) and are marked as assumptions. Warmup 10k steps and grad clip 1.0 are the paper's.
_PAPER_AR_TRAIN = TrainConfig(steps=1_000_000, batch_size=64, lr=4e-4, min_lr=1e-5, warmup_steps=10_000,
                              weight_decay=0.03, beta1=0.9, beta2=0.96, grad_clip=1.0,
                              ckpt_every=10_000, log_every=100, preview_every=10_000)

AR_PRESETS: dict[str, ARPreset] = {
    # CPU scale: ~0.6M parameters in blocks; one step is ~4 GFLOP at L = 32, a few tenths of a second
    "tiny": ARPreset(
        ARConfig(dim=128, depth=3, heads=4),
        TrainConfig(steps=500, batch_size=32, lr=1e-3, min_lr=1e-4, warmup_steps=25, weight_decay=0.03,
                    beta1=0.9, beta2=0.96, ckpt_every=100, log_every=20, preview_every=10**9),
    ),
    "B": ARPreset(ARConfig(dim=768, depth=12, heads=12, ffn_multiple_of=256), _PAPER_AR_TRAIN),
    "L": ARPreset(ARConfig(dim=1024, depth=24, heads=16, ffn_multiple_of=256), _PAPER_AR_TRAIN),
    "XL": ARPreset(ARConfig(dim=1280, depth=32, heads=20, ffn_multiple_of=256), _PAPER_AR_TRAIN),
}


GUIDANCE_SCHEDULES = ("none", "constant", "linear", "cosine")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings (:func:`vcq.sampling.sample`), checked when built.

    ``schedule`` is the guidance ramp over positions (none / constant / linear / cosine, the
    pow-cosine of docs/formulas.md with exponent ``power``); ``scale`` is the base CFG scale w (1 = no
    guidance); ``codebook_aware`` applies the CodebookSize-Aware gating s_t = 1 + r_t (s_t^base - 1)
    (Eq. 4). The default ramp is ``constant``, so ``SamplingConfig(scale=4)`` is standard CFG with
    w = 4; ``schedule="none"`` with a scale other than 1 is refused (it would ignore the scale).
    ``top_k = 0`` and ``top_p = 1.0`` disable those filters (the paper does not use them).
    """

    temperature: float = 1.0
    scale: float = 1.0
    schedule: str = "constant"
    power: float = 1.0
    codebook_aware: bool = False
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise EntropyCliffError(f"temperature must be > 0, got {self.temperature}")
        if not (self.scale >= 0 and math.isfinite(self.scale)):
            raise EntropyCliffError(f"guidance scale must be a finite number >= 0, got {self.scale}")
        if not (self.power >= 0 and math.isfinite(self.power)):
            raise EntropyCliffError(f"guidance power must be a finite number >= 0, got {self.power}")
        if not 0.0 < self.top_p <= 1.0:
            raise EntropyCliffError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise EntropyCliffError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.schedule not in GUIDANCE_SCHEDULES:
            raise EntropyCliffError(f"unknown guidance schedule {self.schedule!r} "
                                    f"(choose from {', '.join(GUIDANCE_SCHEDULES)})")
        if self.schedule == "none" and self.scale != 1.0:
            raise EntropyCliffError(f"schedule = 'none' applies no guidance, so scale = {self.scale} would be "
                                    "ignored: choose schedule constant, linear or cosine, or scale 1")


def _table7(scale: float, power: float, aware: bool) -> SamplingConfig:
    return SamplingConfig(temperature=1.0, scale=scale, schedule="cosine", power=power, codebook_aware=aware)


def _nocfg(temperature: float) -> SamplingConfig:
    return SamplingConfig(temperature=temperature, schedule="none")


# Paper Table 7 ("cfg=0" rows sample without guidance). Constant codebooks use standard cosine
# CFG; VCQ rows use CodebookSize-Aware CFG (on a uniform codebook the two coincide).
SAMPLING_PRESETS: dict[str, SamplingConfig] = {
    "constant16384": _table7(20, 1.5, False),
    "constant16384-nocfg": _nocfg(0.85),
    "constant8192": _table7(20, 2.0, False),
    "constant8192-nocfg": _nocfg(0.85),
    "vcq-linear": _table7(14, 1.75, True),
    "vcq-linear-nocfg": _nocfg(0.85),
    "vcq-cosine": _table7(10, 1.5, True),  # = VCQ B-B
    "vcq-cosine-nocfg": _nocfg(0.85),
    "vcq-power2.5": _table7(10, 1.75, True),
    "vcq-power2.5-nocfg": _nocfg(0.85),
    "vcq-B-L": _table7(4, 0.75, True),
    "vcq-B-L-nocfg": _nocfg(0.85),
    "vcq-B-XL": _table7(5, 0.75, True),
    "vcq-B-XL-nocfg": _nocfg(0.85),
    "vcq-L-B": _table7(4, 1.25, True),
    "vcq-L-B-nocfg": _nocfg(0.90),
    "vcq-L-L": _table7(4, 1.25, True),
    "vcq-L-L-nocfg": _nocfg(0.90),
    "vcq-L-XL": _table7(3, 1.0, True),
    "vcq-L-XL-nocfg": _nocfg(0.95),
}
# Table 7's "VCQ-Cosine / VCQ B-B" row names one model; both names select it.
SAMPLING_PRESETS["vcq-B-B"] = SAMPLING_PRESETS["vcq-cosine"]
SAMPLING_PRESETS["vcq-B-B-nocfg"] = SAMPLING_PRESETS["vcq-cosine-nocfg"]
