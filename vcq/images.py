"""Images between their three forms, and pictures of them.

- uint8 arrays (N, H, W, C) in [0, 255]: datasets, reconstructions, what the metrics read;
- float tensors (N, C, H, W) in [-1, 1]: what the tokenizer reads and writes
  (:func:`to_tensor`, :func:`to_unit_range`, :func:`to_uint8`: ``u = round((x + 1) × 127.5)``);
- PNG pictures: :func:`image_grid` (cells upscaled to at least ``min_cell`` pixels, an optional
  caption above each cell, e.g. its class id), :func:`rows_grid` (captioned rows, e.g. originals
  over reconstructions) and :func:`save_png` (atomic write).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from entropy_cliff.io import atomic_path

MIN_CELL = 96  # pixels: the smallest side a grid cell is drawn at, so a reader can judge it
CAPTION = 12  # pixels of caption band above a captioned cell


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 tensor (B, H, W, C) -> float (B, C, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_tensor(images: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 array (B, H, W, C) -> float tensor (B, C, H, W) in [-1, 1] on ``device``."""
    return to_unit_range(torch.from_numpy(np.ascontiguousarray(images)).to(device))


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """float (B, C, H, W) in [-1, 1] -> uint8 tensor (B, H, W, C) on the same device (values outside
    [-1, 1] are clipped)."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(0, 2, 3, 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (B, C, H, W) in [-1, 1] -> uint8 numpy (B, H, W, C) (:func:`quantize_uint8`)."""
    return quantize_uint8(x).cpu().numpy()


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 images (..., H, W, C), C = 1 or 3, with grey repeated to 3 channels."""
    x = np.asarray(images)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def upscale_factor(side: int, min_cell: int = MIN_CELL) -> int:
    """The integer factor that draws a ``side``-pixel image at least ``min_cell`` pixels wide."""
    return max(1, math.ceil(min_cell / max(side, 1)))


def image_grid(images: np.ndarray, cols: int | None = None, captions: list[str] | None = None,
               min_cell: int = MIN_CELL, pad: int = 2) -> np.ndarray:
    """uint8 (H', W', 3) grid of images (N, H, W, C), ``cols`` per row (default ~sqrt N), each cell
    upscaled by an integer factor to at least ``min_cell`` pixels (nearest neighbour, so pixels stay
    visible), with ``captions[i]`` written above cell i when given."""
    imgs = to_rgb(images)
    n, h, w, _ = imgs.shape
    if captions is not None and len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} images")
    s = upscale_factor(min(h, w), min_cell)
    imgs = np.repeat(np.repeat(imgs, s, 1), s, 2)
    h, w = h * s, w * s
    top = CAPTION if captions is not None else 0
    cols = max(1, min(cols or math.ceil(math.sqrt(n)), max(n, 1)))
    rows = max(1, math.ceil(n / cols))
    ch = top + h + pad
    grid = np.full((rows * ch + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        y, x = pad + r * ch + top, pad + c * (w + pad)
        grid[y:y + h, x:x + w] = im
    if captions is None:
        return grid
    from PIL import Image, ImageDraw

    pic = Image.fromarray(grid)
    draw = ImageDraw.Draw(pic)
    for i, text in enumerate(captions):
        r, c = divmod(i, cols)
        draw.text((pad + c * (w + pad) + 1, pad + r * ch), str(text), fill=(0, 0, 0))
    return np.asarray(pic)


def rows_grid(rows: list[tuple[str, np.ndarray]], min_cell: int = MIN_CELL, pad: int = 2) -> np.ndarray:
    """Rows of images, one (name, images (N, H, W, C)) per row, all rows of one length, each row
    named in a caption band above it (e.g. ``[("original", x), ("reconstruction", y)]``)."""
    from PIL import Image, ImageDraw

    parts = []
    for name, imgs in rows:
        body = image_grid(imgs, cols=len(imgs), min_cell=min_cell, pad=pad)
        band = Image.new("RGB", (body.shape[1], CAPTION + 2), (255, 255, 255))
        ImageDraw.Draw(band).text((pad + 1, 1), name, fill=(0, 0, 0))
        parts += [np.asarray(band), body]
    return np.concatenate(parts, 0)


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) or (H, W) picture as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image)).save(tmp, format="PNG")
    return Path(path)
