"""FID, IS and precision/recall through torch-fidelity's own ``calculate_metrics`` (the ``fid``
extra), from a local Inception weights file; :mod:`vcq.evaluate` uses it wherever torch-fidelity
imports and :mod:`vcq.metrics` otherwise, and names the one used (``metrics_backend``).

The call: ``calculate_metrics(input1=fake, input2=real, fid=, isc=, prc=,
feature_extractor="inception-v3-compat", feature_extractor_weights_path=PATH, isc_splits=S,
prc_neighborhood=k, cache=False, verbose=False)``, the images as Datasets of uint8 (3, H, W)
tensors (grey images repeated to RGB). Naming the extractor keeps precision/recall on the same
Inception features (torch-fidelity's default for them is a VGG16 it would download); torch-fidelity
treats ``input1`` as generated: precision = share of ``fake`` in the real manifold, IS of ``fake``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from vcq.features import rgb_uint8_nchw
from vcq.metrics import IS_SPLITS

BACKEND = "torch-fidelity calculate_metrics"
# torch-fidelity's result keys -> ours
KEYS = {"frechet_inception_distance": "FID", "precision": "precision", "recall": "recall",
        "inception_score_mean": "IS", "inception_score_std": "IS_std"}


class UInt8Images(torch.utils.data.Dataset):
    """uint8 images (N, H, W, C) as the (3, H, W) uint8 tensors torch-fidelity reads."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return rgb_uint8_nchw(self.images[i:i + 1])[0]


def fidelity_metrics(real: np.ndarray, fake: np.ndarray, weights_path: str | Path, *, fid: bool = True,
                     isc: bool = False, prc: bool = False, isc_splits: int = IS_SPLITS, k: int = 3,
                     device: str | torch.device = "cpu") -> dict[str, float]:
    """The requested metrics of ``fake`` against ``real`` under our names (``FID``, ``IS``,
    ``IS_std``, ``precision``, ``recall``), computed by torch-fidelity on ``device``."""
    import torch_fidelity

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    with torch.cuda.device(dev) if cuda else contextlib.nullcontext():  # torch-fidelity uses .cuda()
        res = torch_fidelity.calculate_metrics(
            input1=UInt8Images(fake), input2=UInt8Images(real), fid=fid, isc=isc, prc=prc, cuda=cuda,
            feature_extractor="inception-v3-compat", feature_extractor_weights_path=str(weights_path),
            isc_splits=isc_splits, prc_neighborhood=k, cache=False, verbose=False)
    return {ours: float(res[theirs]) for theirs, ours in KEYS.items() if theirs in res}
