"""JPEG at a tokenizer's bit rate: an outside anchor for reconstruction PSNR.

A tokenizer with codebook sizes K_1..K_L spends ``bpp = sum_t log2 K_t / (H W)`` bits per pixel
(fixed-length codes, no entropy coding). :func:`jpeg_at_bpp` compresses the same images with
Pillow's JPEG at the highest quality whose rate does not exceed that budget.

Per-file JPEG headers (~600 bytes) dwarf a 32×32 crop's budget (320 bits at K = 1024, L = 32), so
the crops are tiled into one mosaic of ``cols`` columns and compressed together; the rate is the
mosaic's file size over its pixels (header included, amortized). With 4:2:0 chroma subsampling a
JPEG block covers at most 16×16 pixels, so crops whose side is a multiple of 16 never share a DCT
block: each crop is coded on its own, only the entropy-coder state and the header are shared.
PSNR is :func:`vcq.metrics.mean_psnr` over the crops: the validation images ``vcq evaluate``
reconstructs (:func:`tokenizer_val_crops`), so the two PSNRs are of the same images.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.schedules import bpp as code_bpp


def _mosaic(images: np.ndarray, cols: int) -> np.ndarray:
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.zeros((rows * h, cols * w, c), np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    return out


def _tiles(mosaic: np.ndarray, n: int, h: int, w: int, cols: int) -> np.ndarray:
    return np.stack([mosaic[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] for i in range(n)])


def jpeg_roundtrip(images: np.ndarray, quality: int, cols: int = 16) -> tuple[np.ndarray, float]:
    """(decoded crops, bits per pixel) of the crops' mosaic saved as JPEG at ``quality`` (1..95)."""
    from PIL import Image

    n, h, w, c = images.shape
    mosaic = _mosaic(images, cols)
    buf = io.BytesIO()
    img = Image.fromarray(mosaic[..., 0] if c == 1 else mosaic)
    img.save(buf, format="JPEG", quality=int(quality), subsampling=2 if c == 3 else 0, optimize=True)
    bpp = 8 * buf.tell() / (n * h * w)  # rate of the crops: empty mosaic cells cost (almost) nothing
    buf.seek(0)
    dec = np.asarray(Image.open(buf).convert("RGB" if c == 3 else "L"))
    dec = dec.reshape(mosaic.shape)
    return _tiles(dec, n, h, w, cols), bpp


def jpeg_at_bpp(images: np.ndarray, K: Sequence[int], cols: int = 16) -> dict:
    """JPEG of ``images`` (N, H, W, C uint8) at the highest quality within the tokenizer's bits per pixel.

    Returns ``{"bpp_target", "quality", "bpp", "psnr", "within_budget", "images"}``; when even
    quality 1 exceeds the budget it is reported with ``within_budget = False``.
    """
    from vcq.metrics import mean_psnr

    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise EntropyCliffError(f"images must be a non-empty (N, H, W, C) uint8 array, got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    target = code_bpp(K, h, w)
    best = None
    for q in range(1, 96):
        dec, bpp = jpeg_roundtrip(images, q, cols)
        if bpp > target and best is not None:
            break
        best = (q, bpp, dec)
        if bpp > target:
            break
    q, bpp, dec = best
    return {"bpp_target": target, "quality": q, "bpp": bpp, "psnr": mean_psnr(images, dec),
            "within_budget": bool(bpp <= target), "images": int(n)}


def tokenizer_val_crops(run_dir: str | Path, n: int, seed: int) -> np.ndarray:
    """The validation images of a tokenizer run that ``vcq evaluate --n-recon n --seed seed``
    reconstructs (:func:`vcq.evaluate.reconstruction_images`)."""
    from vcq.data import DataSpec
    from vcq.evaluate import reconstruction_images
    from vcq.presets import TokenizerConfig, from_dict
    from vcq.train import read_config

    cfg = read_config(run_dir)
    val = from_dict(DataSpec, cfg["data"]).load("val", from_dict(TokenizerConfig, cfg["model"]), augment=False)
    return reconstruction_images(val, n, seed)
