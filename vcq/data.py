"""Image datasets for tokenizer training and token dumps.

Every dataset is an :class:`ImageSet`: ``N`` uint8 images (H, W, C) fetched by index, one integer
label per image, and a deterministic train/val split from a seed (a seeded permutation; the first
``round(val_fraction * N)`` indices are val, the rest train).

- ``digits``  — ``sklearn.datasets.load_digits`` (1797 8×8 digits), upsampled; label = digit.
- ``patches`` — random square crops (side between the image size and 4× it, resized down) of the
  natural images bundled with ``skimage.data``; label = source image. ``n`` crops (default 20000).
- ``shapes``  — procedural coloured shapes on coloured backgrounds, any ``n``; label = shape.
- ``folder``  — ``path/<class>/<image>``; PIL, centre-cropped to a square and resized.
- ``npy``     — a uint8 array (N, H, W, C) of the exact size; labels from ``labels_path`` if given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from entropy_cliff.errors import EntropyCliffError

DATASETS = ("digits", "patches", "shapes", "folder", "npy")
SHAPES = ("circle", "square", "triangle", "cross", "ring", "stripes")
VAL_FRACTION = 0.1  # share of a dataset (images or token rows) held out as validation, unless a run says otherwise
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PATCH_SOURCES = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "motorcycle", "camera", "grass", "gravel", "brick", "moon", "coins", "clock")


@dataclass
class ImageSet:
    """``len(self)`` images fetched by index; ``batch`` adds optional horizontal flips."""

    name: str
    fetch: Callable[[np.ndarray], np.ndarray]  # indices -> uint8 (B, H, W, C)
    labels: np.ndarray
    class_names: list[str]
    image_size: int
    channels: int
    hflip: bool = False
    index: np.ndarray | None = None  # rows of the full set this (split) set holds; None: all

    def __post_init__(self) -> None:
        if self.index is None:
            self.index = np.arange(len(self.labels))

    def __len__(self) -> int:
        return len(self.index)

    def images(self, idx: np.ndarray | slice) -> np.ndarray:
        """uint8 (B, H, W, C) for positions ``idx`` of this (possibly split) set."""
        return self.fetch(self.index[idx])

    def label_array(self) -> np.ndarray:
        return self.labels[self.index]

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``{"image": uint8 (B, H, W, C), "label": int64 (B,)}``, flipped at random if ``hflip``."""
        x = self.images(idx)
        if self.hflip:
            flip = rng.random(len(idx)) < 0.5
            x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        return {"image": np.ascontiguousarray(x), "label": self.labels[self.index[idx]].astype(np.int64)}

    def subset(self, positions: np.ndarray, hflip: bool) -> ImageSet:
        return ImageSet(self.name, self.fetch, self.labels, self.class_names, self.image_size, self.channels,
                        hflip, self.index[positions])


def check_val_fraction(val_fraction: float) -> None:
    """Refuse a validation fraction outside [0, 1) (tokenizer and AR data alike)."""
    if not 0.0 <= val_fraction < 1.0:
        raise EntropyCliffError(f"val_fraction must lie in [0, 1), got {val_fraction}")


def split_indices(n: int, split: str, seed: int, val_fraction: float) -> np.ndarray:
    """Sorted positions of ``split`` (train / val / all) in a set of n, from a seeded permutation."""
    if split == "all":
        return np.arange(n)
    if split not in ("train", "val"):
        raise EntropyCliffError(f"unknown split {split!r} (choose train, val or all)")
    check_val_fraction(val_fraction)
    perm = np.random.default_rng([seed, 0x5EED]).permutation(n)
    n_val = int(round(val_fraction * n))
    return np.sort(perm[:n_val] if split == "val" else perm[n_val:])


def load_dataset(name: str, *, split: str = "train", image_size: int = 32, channels: int = 3,
                 n: int | None = None, path: str | Path | None = None, labels_path: str | Path | None = None,
                 seed: int = 0, val_fraction: float = VAL_FRACTION, augment: bool | None = None) -> ImageSet:
    """Load dataset ``name`` at ``image_size`` × ``image_size`` × ``channels`` and take ``split``.

    ``augment`` (random horizontal flips) defaults to on for the train split.
    """
    if channels not in (1, 3):
        raise EntropyCliffError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise EntropyCliffError(f"image size must be positive, got {image_size}")
    if name == "digits":
        full = _digits(image_size, channels)
    elif name == "patches":
        full = _patches(image_size, channels, 20000 if n is None else n, seed)
    elif name == "shapes":
        full = _shapes(image_size, channels, 6000 if n is None else n, seed)
    elif name == "folder":
        full = _folder(_need(path, name), image_size, channels)
    elif name == "npy":
        full = _npy(_need(path, name), labels_path, image_size, channels)
    else:
        raise EntropyCliffError(f"unknown dataset {name!r} (choose from {', '.join(DATASETS)})")
    if len(full) == 0:
        raise EntropyCliffError(f"dataset {name!r} is empty")
    if n is not None and name in ("digits", "folder", "npy"):
        if n < 1:
            raise EntropyCliffError(f"n must be positive, got {n}")
        full = full.subset(np.arange(min(n, len(full))), False)
    pos = split_indices(len(full), split, seed, val_fraction)
    if len(pos) == 0:
        raise EntropyCliffError(f"split {split!r} of dataset {name!r} is empty")
    return full.subset(pos, split == "train" if augment is None else augment)


@dataclass(frozen=True)
class DataSpec:
    """Which images a tokenizer run reads (saved as ``config.json["data"]``)."""

    name: str = "digits"
    path: str | None = None
    labels_path: str | None = None
    n: int | None = None
    seed: int = 0
    val_fraction: float = VAL_FRACTION

    def load(self, split: str, cfg, augment: bool | None = None) -> ImageSet:
        """Split ``split`` at the image size and channels of tokenizer config ``cfg``."""
        return load_dataset(self.name, split=split, image_size=cfg.image_size, channels=cfg.channels, n=self.n,
                            path=self.path, labels_path=self.labels_path, seed=self.seed,
                            val_fraction=self.val_fraction, augment=augment)


def _need(path: str | Path | None, name: str) -> Path:
    if path is None:
        raise EntropyCliffError(f"dataset {name!r} needs a path (--data-path)")
    return Path(path)


def _to_channels(gray_or_rgb: np.ndarray, channels: int) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, channels)."""
    if gray_or_rgb.ndim == 3 and gray_or_rgb.shape[-1] == 1:
        gray_or_rgb = gray_or_rgb[..., 0]
    if gray_or_rgb.ndim == 2:
        g = gray_or_rgb[..., None]
        return np.repeat(g, 3, axis=-1) if channels == 3 else g
    rgb = gray_or_rgb[..., :3]
    if channels == 3:
        return rgb
    return np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, C) -> (size, size, C), antialiased."""
    mode = "L" if img.shape[2] == 1 else "RGB"
    im = Image.fromarray(img[..., 0] if mode == "L" else img, mode)
    out = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC if size > min(img.shape[:2]) else Image.Resampling.BOX))
    return out.reshape(size, size, img.shape[2])


def _array_set(name: str, x: np.ndarray, labels: np.ndarray, class_names: list[str]) -> ImageSet:
    return ImageSet(name, lambda idx: x[idx], np.asarray(labels, np.int64), class_names, x.shape[1], x.shape[3])


def _digits(size: int, channels: int) -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    x = np.stack([_resize(_to_channels(im, channels), size) for im in imgs])
    return _array_set("digits", x, d.target, [str(i) for i in range(10)])


@cache
def _source_images() -> tuple[np.ndarray, ...]:
    """The natural images bundled with scikit-image, as RGB uint8."""
    import skimage.data as skd

    out = []
    for s in PATCH_SOURCES:
        img = skd.stereo_motorcycle()[0] if s == "motorcycle" else getattr(skd, s)()
        out.append(_to_channels(np.asarray(img), 3))
    return tuple(out)


def _patches(size: int, channels: int, n: int, seed: int) -> ImageSet:
    """n crops: source chosen uniformly, side uniform in [size, 4 size] (capped by the image)."""
    if n < 1:
        raise EntropyCliffError(f"n must be positive, got {n}")
    src = _source_images()
    rng = np.random.default_rng([seed, 0xC0FFEE])
    labels = rng.integers(len(src), size=n)
    hw = np.array([s.shape[:2] for s in src])[labels]
    side = np.minimum(rng.integers(size, 4 * size + 1, size=n), hw.min(1))
    y0 = (rng.random(n) * (hw[:, 0] - side + 1)).astype(np.int64)
    x0 = (rng.random(n) * (hw[:, 1] - side + 1)).astype(np.int64)

    def fetch(idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), size, size, channels), np.uint8)
        for j, i in enumerate(np.asarray(idx)):
            crop = src[labels[i]][y0[i] : y0[i] + side[i], x0[i] : x0[i] + side[i]]
            out[j] = _resize(_to_channels(crop, channels), size)
        return out

    return ImageSet("patches", fetch, labels.astype(np.int64), list(PATCH_SOURCES), size, channels)


def _shape_image(i: int, seed: int, size: int) -> tuple[np.ndarray, int]:
    """Image i of the procedural set (drawn at 4× and downsampled) and its shape label."""
    rng = np.random.default_rng([seed, 0x5A, i])
    label = int(rng.integers(len(SHAPES)))
    s = 4 * size
    bg, fg = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    im = Image.new("RGB", (s, s), bg)
    dr = ImageDraw.Draw(im)
    r = rng.uniform(0.18, 0.4) * s
    cx, cy = rng.uniform(r, s - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    kind = SHAPES[label]
    if kind == "circle":
        dr.ellipse(box, fill=fg)
    elif kind == "square":
        dr.regular_polygon((cx, cy, r), 4, rotation=float(rng.uniform(0, 90)), fill=fg)
    elif kind == "triangle":
        dr.regular_polygon((cx, cy, r), 3, rotation=float(rng.uniform(0, 120)), fill=fg)
    elif kind == "cross":
        w = r / 3
        dr.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fg)
        dr.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fg)
    elif kind == "ring":
        dr.ellipse(box, outline=fg, width=max(2, int(r / 3)))
    else:  # stripes
        period = max(4, int(rng.uniform(0.1, 0.25) * s))
        for x in range(0, s, period):
            dr.rectangle([x, 0, x + period // 2 - 1, s], fill=fg)
    return np.asarray(im.resize((size, size), Image.Resampling.BOX)), label


def _shapes(size: int, channels: int, n: int, seed: int) -> ImageSet:
    if n < 1:
        raise EntropyCliffError(f"n must be positive, got {n}")
    labels = np.array([int(np.random.default_rng([seed, 0x5A, i]).integers(len(SHAPES))) for i in range(n)])

    def fetch(idx: np.ndarray) -> np.ndarray:
        return np.stack([_to_channels(_shape_image(int(i), seed, size)[0], channels) for i in np.asarray(idx)])

    return ImageSet("shapes", fetch, labels, list(SHAPES), size, channels)


def _folder(root: Path, size: int, channels: int) -> ImageSet:
    if not root.is_dir():
        raise EntropyCliffError(f"{root}: no such directory")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files, labels = [], []
    for c, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
                labels.append(c)
    if not files:
        raise EntropyCliffError(f"{root}: no images found (expected {root}/<class>/<image>.png|jpg)")

    def load(f: Path) -> np.ndarray:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if channels == 1 else "RGB")
                w, h = im.size
                m = min(w, h)
                im = im.crop(((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m))
                return np.asarray(im).reshape(m, m, channels)
        except OSError as e:
            raise EntropyCliffError(f"{f}: unreadable image ({e})") from None

    def fetch(idx: np.ndarray) -> np.ndarray:
        return np.stack([_resize(load(files[i]), size) for i in np.asarray(idx)])

    return ImageSet("folder", fetch, np.asarray(labels, np.int64), classes, size, channels)


def _npy(path: Path, labels_path: str | Path | None, size: int, channels: int) -> ImageSet:
    if not path.is_file():
        raise EntropyCliffError(f"{path}: no such file")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise EntropyCliffError(f"{path}: not a readable .npy array ({str(e).splitlines()[0]})") from None
    if x.dtype != np.uint8 or x.ndim != 4:
        raise EntropyCliffError(f"{path}: expected uint8 images N×H×W×C, got {x.dtype} of shape {x.shape}")
    if x.shape[1:] != (size, size, channels):
        raise EntropyCliffError(f"{path}: images are {x.shape[1]}×{x.shape[2]}×{x.shape[3]}, "
                                f"this tokenizer needs {size}×{size}×{channels}")
    if labels_path is None:
        labels = np.zeros(len(x), np.int64)
    else:
        try:
            labels = np.asarray(np.load(labels_path, allow_pickle=False))
        except (ValueError, OSError, EOFError) as e:
            raise EntropyCliffError(f"{labels_path}: not a readable .npy array ({e})") from None
        if labels.shape != (len(x),) or labels.dtype.kind not in "iu":
            raise EntropyCliffError(f"{labels_path}: expected {len(x)} integer labels, got {labels.dtype} {labels.shape}")
    n_cls = int(labels.max(initial=0)) + 1
    return _array_set("npy", x, labels, [str(i) for i in range(n_cls)])
