"""Sampling from an :class:`vcq.ar.ARTransformer`: KV cache, temperature, top-k/top-p, and CFG.

Classifier-free guidance (paper Eq. 4, SPEC §5) mixes conditional and unconditional (null-class)
logits at position t as ``l_t = l_u + s_t (l_c - l_u)``; ``s_t = 1`` is no guidance. The
per-position scale comes from :func:`guidance_scales`:

- base schedule over positions t = 1..L with base scale w:

  - ``none``      s_t^base = 1
  - ``constant``  s_t^base = w
  - ``linear``    s_t^base = 1 + (w - 1) (t - 1) / L
  - ``cosine``    s_t^base = 1 + (w - 1) (1 - cos(pi ((t - 1) / L)^p)) / 2   (pow-cosine; p = 0 -> w)

- CodebookSize-Aware gating: ``s_t = 1 + r_t (s_t^base - 1)`` with the capacity ratio
  ``r_t = (log2 K_t - log2 K_min) / (log2 K_max - log2 K_min)`` (``ratio="log"``, the default:
  the excess information capacity of position t in bits, relative to the largest), or
  ``r_t = (K_t - K_min) / (K_max - K_min)`` (``ratio="linear"``); ``r_t = 1`` when
  ``K_min = K_max``, where K_min / K_max are the smallest / largest K_t of the model. K_t = K_min
  gives s_t = 1 (no guidance), K_t = K_max gives the base schedule, and a uniform codebook gives
  back standard CFG exactly. The paper states these end points, not the interpolation between
  them; the log ratio is our documented choice.

Sampling draws each token by the Gumbel-max trick, ``argmax(l_t / T + G)`` with ``G`` standard
Gumbel noise from a seeded generator, which is an exact draw from ``softmax(l_t / T)`` restricted to
the top-k / top-p set. Masked logits (-inf, indices >= K_t) can never win, so every sampled token is
< K_t, and the noise is the same whether or not the KV cache is used.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from tqdm import tqdm

from entropy_cliff.errors import EntropyCliffError
from vcq.ar import ARTransformer, KVCache
from vcq.presets import SamplingConfig

GUIDANCE_SCHEDULES = ("none", "constant", "linear", "cosine")
RATIOS = ("log", "linear")


def capacity_ratio(k_t: np.ndarray, ratio: str = "log") -> np.ndarray:
    """r_t of SPEC §5: 0 at K_min, 1 at K_max, in log2 K (default) or in K; all ones if uniform."""
    k = np.asarray(k_t, dtype=np.float64)
    if ratio not in RATIOS:
        raise EntropyCliffError(f"unknown capacity ratio {ratio!r} (choose from {', '.join(RATIOS)})")
    kmin, kmax = k.min(), k.max()
    if kmin == kmax:
        return np.ones_like(k)
    if ratio == "log":
        return (np.log2(k) - np.log2(kmin)) / (np.log2(kmax) - np.log2(kmin))
    return (k - kmin) / (kmax - kmin)


def guidance_scales(k_t: np.ndarray | list[int], scale: float, schedule: str = "constant", power: float = 1.0,
                    codebook_aware: bool = False, ratio: str = "log") -> np.ndarray:
    """Per-position guidance scales s_1..s_L (float64) for codebook sizes ``k_t`` (module docstring)."""
    k = np.asarray(k_t)
    if k.ndim != 1 or k.size == 0 or np.any(k < 1):
        raise EntropyCliffError("k_t must be a non-empty list of codebook sizes >= 1")
    if not (scale >= 0 and math.isfinite(scale)):
        raise EntropyCliffError(f"guidance scale must be a finite number >= 0, got {scale}")
    if not (power >= 0 and math.isfinite(power)):
        raise EntropyCliffError(f"guidance power must be a finite number >= 0, got {power}")
    length = k.size
    frac = np.arange(length, dtype=np.float64) / length  # (t - 1) / L
    if schedule == "none":
        base = np.ones(length)
    elif schedule == "constant":
        base = np.full(length, float(scale))
    elif schedule == "linear":
        base = 1.0 + (scale - 1.0) * frac
    elif schedule == "cosine":
        base = 1.0 + (scale - 1.0) * (1.0 - np.cos(np.pi * frac**power)) / 2.0
    else:
        raise EntropyCliffError(f"unknown guidance schedule {schedule!r} (choose from {', '.join(GUIDANCE_SCHEDULES)})")
    if not codebook_aware:
        return base
    r = capacity_ratio(k, ratio)
    # r_t = 1 returns the base scale itself, so uniform codebooks reproduce standard CFG bit for bit
    return np.where(r == 1.0, base, 1.0 + r * (base - 1.0))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k set and outside the smallest top-p nucleus to -inf.

    ``top_k = 0`` and ``top_p = 1`` keep everything. The most likely token always survives.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def check_sampling(cfg: SamplingConfig) -> None:
    """Raise :class:`EntropyCliffError` for settings no sampler accepts."""
    if not (cfg.temperature > 0 and math.isfinite(cfg.temperature)):
        raise EntropyCliffError(f"temperature must be > 0, got {cfg.temperature}")
    if cfg.scale < 0 or not math.isfinite(cfg.scale):
        raise EntropyCliffError(f"guidance scale must be >= 0, got {cfg.scale}")
    if not 0.0 < cfg.top_p <= 1.0:
        raise EntropyCliffError(f"top-p must lie in (0, 1], got {cfg.top_p}")
    if cfg.top_k < 0:
        raise EntropyCliffError(f"top-k must be >= 0 (0 = off), got {cfg.top_k}")
    if cfg.schedule not in GUIDANCE_SCHEDULES:
        raise EntropyCliffError(f"unknown guidance schedule {cfg.schedule!r} (choose from {', '.join(GUIDANCE_SCHEDULES)})")


def _gumbel(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_(1e-300, 1.0 - 1e-16)
    return (-torch.log(-torch.log(u))).to(device=device, dtype=torch.float32)


@torch.no_grad()
def sample(model: ARTransformer, labels: torch.Tensor | np.ndarray, cfg: SamplingConfig = SamplingConfig(),
           seed: int = 0, use_cache: bool = True, ratio: str = "log", progress: bool = False) -> torch.Tensor:
    """Sample token sequences (B, L) for class ``labels`` (B,) with the settings in ``cfg``.

    Guidance doubles the batch (conditional rows, then null-class rows) whenever some s_t != 1.
    ``use_cache=False`` recomputes the whole prefix at every step (the reference the cache is
    tested against). Noise comes from a CPU generator seeded with ``seed``, so results do not depend
    on the cache or the device placement of the model.
    """
    check_sampling(cfg)
    model.eval()
    device = model.K.device
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if labels.ndim != 1:
        raise EntropyCliffError(f"labels must be one class id per sample, got shape {tuple(labels.shape)}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= model.cfg.num_classes):
        raise EntropyCliffError(f"class ids must lie in [0, {model.cfg.num_classes}), "
                                f"got {int(labels.min())}..{int(labels.max())}")
    k_t = model.K.cpu().numpy()
    scales = guidance_scales(k_t, cfg.scale, cfg.schedule, cfg.power, cfg.codebook_aware, ratio)
    guided = bool(np.any(scales != 1.0))
    b, length, kmax = labels.shape[0], model.cfg.length, model.cfg.kmax
    run_labels = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
    gen = torch.Generator().manual_seed(seed)
    cache = KVCache.empty(model, run_labels.shape[0], device, model.rope_cos.dtype) if use_cache else None
    tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
    for t in tqdm(range(length), disable=not progress or not sys.stderr.isatty(), desc="sample", unit="token",
                  file=sys.stderr):
        prefix = torch.cat([tokens, tokens]) if guided else tokens
        logits = model(prefix, run_labels, cache)[:, -1]
        if guided:
            cond, uncond = logits[:b], logits[b:]
            valid = torch.isfinite(cond)
            mixed = uncond + float(scales[t]) * (cond - uncond)
            logits = torch.where(valid, mixed, torch.full_like(mixed, float("-inf")))
        logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
        nxt = torch.argmax(logits + _gumbel((b, kmax), gen, device), dim=-1)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    return tokens
