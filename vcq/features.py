"""Feature extractors: networks that map uint8 images (N, H, W, C) to features (N, D) and class
probabilities (N, C), for FID, precision/recall and IS (formulas in :mod:`vcq.metrics`).

Every extractor carries a ``name`` that ``vcq evaluate`` writes into its output, so a number is
never read without knowing which network produced it:

- ``"torch-fidelity inception-v3-compat"``: torch-fidelity's reference port of TensorFlow's
  ``inception-2015-12-05`` (the standard FID network), from a local weights file. Chosen whenever
  torch-fidelity (and so torchvision) imports; the metrics on it are then computed by
  torch-fidelity's ``calculate_metrics`` itself (:mod:`vcq.fidelity`).
- ``"entropy-cliff port (pt_inception weights)"``: :mod:`vcq.fid_inception`, our port of the same
  network, loading the same file (pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``; torch-
  fidelity's weights file has the same hash). The fallback where torchvision does not import.
- ``"dataset classifier (dFID; not comparable to FID)"``: :class:`DatasetClassifier`, a small CNN
  trained on the dataset's train split and cached on disk; metrics are then named ``dFID`` /
  ``dIS``. Its features are ``4 × width``-dimensional; :func:`small_sample_warning` says when a
  sample is too small for the Fréchet distance of such features to mean anything.

Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import atomic_path, write_json_atomic
from vcq.images import to_rgb, to_tensor

TORCH_FIDELITY = "torch-fidelity inception-v3-compat"
PORT = "entropy-cliff port (pt_inception weights)"
CLASSIFIER = "dataset classifier (dFID; not comparable to FID)"
MIN_SAMPLES = 1000  # fewer samples than this (or than 10 × the feature dimension) make dFID noise


class FeatureExtractor(Protocol):
    """Maps uint8 images (N, H, W, C) to features (N, D) and class probabilities (N, C) or None."""

    name: str
    fid_name: str
    is_name: str
    dim: int

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


def torch_fidelity_status() -> tuple[bool, str]:
    """Whether torch-fidelity imports here, and why not: torchvision missing or built for another
    torch (e.g. "operator torchvision::nms does not exist"), or torch-fidelity itself missing."""
    from vcq.optional import import_status

    return import_status("torchvision", "torch_fidelity")


def rgb_uint8_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C), C = 1 or 3, as a uint8 (N, 3, H, W) tensor (grey repeated)."""
    return torch.from_numpy(np.ascontiguousarray(to_rgb(images))).permute(0, 3, 1, 2)


class PortInception:
    """FID Inception-v3 (:mod:`vcq.fid_inception`) from a local ``pt_inception`` weights file:
    2048-d pool features and softmax class probabilities over its 1008 outputs."""

    name, fid_name, is_name, dim = PORT, "FID", "IS", 2048

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 50) -> None:
        from vcq.fid_inception import load_fid_inception

        self.net = load_fid_inception(path, device)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feats, probs = [], []
        for s in range(0, len(images), self.batch_size):
            x = rgb_uint8_nchw(images[s:s + self.batch_size]).float().div(255.0)
            f, logits = self.net(x.to(self.device))
            feats.append(f.double().cpu().numpy())
            probs.append(torch.softmax(logits.double(), -1).cpu().numpy())
        return np.concatenate(feats), np.concatenate(probs)


class TorchFidelityInception:
    """torch-fidelity's ``inception-v3-compat`` (features ``2048``, IS from ``logits_unbiased``,
    as torch-fidelity computes it) with weights from the local file ``path``. :mod:`vcq.evaluate`
    hands ``path`` to torch-fidelity's own ``calculate_metrics`` (:mod:`vcq.fidelity`); calling
    the extractor (features for other uses) builds the network on first use."""

    name, fid_name, is_name, dim = TORCH_FIDELITY, "FID", "IS", 2048

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 50) -> None:
        if not Path(path).is_file():
            raise EntropyCliffError(f"{path}: no Inception weights file (nothing is downloaded; pass a local path)")
        self.path, self.device, self.batch_size, self.net = Path(path), device, batch_size, None

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.net is None:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=str(self.path)).to(self.device).eval()
        feats, probs = [], []
        for s in range(0, len(images), self.batch_size):
            f, logits = self.net(rgb_uint8_nchw(images[s:s + self.batch_size]).to(self.device))
            feats.append(f.double().cpu().numpy())
            probs.append(torch.softmax(logits.double(), -1).cpu().numpy())
        return np.concatenate(feats), np.concatenate(probs)


def inception_extractor(path: str | Path, device: str = "cpu") -> FeatureExtractor:
    """torch-fidelity's Inception when it imports, else our port; both load the local file ``path``."""
    ok, _ = torch_fidelity_status()
    return TorchFidelityInception(path, device) if ok else PortInception(path, device)


class SmallCNN(nn.Module):
    """Three stride-2 conv stages (w, 2w, 4w channels, GroupNorm, SiLU), global average pooling to
    the 4w-d penultimate feature, then a linear classifier."""

    def __init__(self, channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        layers, c = [], channels
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, out, 3, stride=2, padding=1), nn.GroupNorm(4, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.GroupNorm(4, out), nn.SiLU()]
            c = out
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@dataclass(frozen=True)
class ClassifierSpec:
    """What identifies a cached dataset classifier: the dataset description and the recipe."""

    dataset: dict
    channels: int
    num_classes: int
    width: int = 16
    steps: int = 400
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


class DatasetClassifier:
    """A :class:`SmallCNN` trained on a dataset's train split and cached in ``cache_dir``.

    The cache holds ``<key>.safetensors`` and ``<key>.json`` (the spec plus train/val accuracy);
    the key hashes the spec, so a different dataset or recipe trains a new classifier.
    """

    name, fid_name, is_name = CLASSIFIER, "dFID", "dIS"

    def __init__(self, net: SmallCNN, info: dict, batch_size: int = 256, device: str | torch.device = "cpu") -> None:
        self.net, self.info, self.batch_size, self.device = net.to(device).eval(), info, batch_size, torch.device(device)
        self.dim = net.fc.in_features

    @classmethod
    def load_or_train(cls, spec: ClassifierSpec, train_images: np.ndarray, train_labels: np.ndarray,
                      val_images: np.ndarray, val_labels: np.ndarray, cache_dir: str | Path,
                      progress: bool = False, device: str | torch.device = "cpu") -> DatasetClassifier:
        """The cached classifier of ``spec``, or a new one trained (on ``device``) and cached."""
        from safetensors.torch import load_file, save_file

        cache = Path(cache_dir)
        weights, meta = cache / f"{spec.key()}.safetensors", cache / f"{spec.key()}.json"
        net = SmallCNN(spec.channels, spec.num_classes, spec.width)
        if weights.is_file() and meta.is_file():
            net.load_state_dict(load_file(str(weights)))
            return cls(net, json.loads(meta.read_text()), device=device)
        fit_classifier(net.to(device), train_images, train_labels, spec, progress)
        out = cls(net, {}, device=device)
        out.info = {"spec": asdict(spec), "train_accuracy": out.accuracy(train_images[:2000], train_labels[:2000]),
                    "val_accuracy": out.accuracy(val_images, val_labels)}
        with atomic_path(weights) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp))
        write_json_atomic(meta, out.info)
        return out

    @torch.no_grad()
    def logits_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = [], []
        for s in range(0, len(images), self.batch_size):
            f = self.net.features(to_tensor(images[s:s + self.batch_size], self.device))
            feats.append(f.double().cpu().numpy())
            logits.append(self.net.fc(f).double().cpu().numpy())
        return np.concatenate(logits), np.concatenate(feats)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        logits, _ = self.logits_and_features(images)
        return float(np.mean(logits.argmax(1) == np.asarray(labels)))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        logits, feats = self.logits_and_features(images)
        return feats, scipy.special.softmax(logits, axis=1)


def fit_classifier(net: SmallCNN, images: np.ndarray, labels: np.ndarray, spec: ClassifierSpec,
                   progress: bool = False) -> None:
    """Adam with a cosine learning-rate decay, random horizontal flips, cross-entropy (on the
    device of ``net``)."""
    from entropy_cliff.progress import Progress

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.steps)
    dev = next(net.parameters()).device
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=dev)
    net.train()
    with Progress(spec.steps, desc="dFID classifier", unit="step", quiet=not progress) as bar:
        for _ in range(spec.steps):
            idx = rng.integers(0, len(images), spec.batch_size)
            x = to_tensor(images[idx], dev)
            x = torch.where(torch.from_numpy(rng.random(len(idx)) < 0.5).to(dev)[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(net(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    net.eval()


def small_sample_warning(extractor: FeatureExtractor, n: int) -> str | None:
    """A warning when ``n`` images are too few for a Fréchet distance on this extractor's features:
    fewer than :data:`MIN_SAMPLES` or than 10 × the feature dimension (the covariance estimate of
    D-dimensional features needs many more than D samples; the FID literature uses >= 10k)."""
    need = max(MIN_SAMPLES, 10 * extractor.dim)
    if n >= need:
        return None
    return (f"{extractor.fid_name} from {n} samples is not meaningful: use at least {need} "
            f"(>= {MIN_SAMPLES} and >= 10 x the {extractor.dim}-d features of the {extractor.name})")
