"""Evaluation: reconstruction, generation quality, token semantics and memorization.

Metrics (each a function from arrays to numbers; :mod:`vcq.cli` formats them):

- :func:`psnr`: ``10 log10(range^2 / MSE)`` per image.
- :func:`frechet_distance` / :func:`fid`: ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``
  between Gaussians fitted to two feature sets (Heusel et al. 2017), matrix square root by
  ``scipy.linalg.sqrtm``.
- :func:`precision_recall`: improved precision/recall (Kynkäänniemi et al. 2019) with k = 3: each
  set's manifold is the union of balls around its points with radius the distance to the k-th
  nearest neighbour in the same set; precision is the share of generated points inside the real
  manifold, recall the share of real points inside the generated manifold.
- :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016), from class
  probabilities.
- :func:`linear_probe`: top-1/top-5 accuracy of a multinomial logistic regression (scikit-learn) on
  token features of the first k positions (paper Table 6).
- :func:`memorization`: for m = 1..L, the share of generated sequences whose first m tokens are
  the first m tokens of some training sequence, and the exact-copy rate (m = L). This is what the
  entropy cliff predicts directly: past t*, a model that learned the training set's conditionals
  can only continue prefixes it has seen.

Features for FID / precision / recall / IS come from a pluggable :class:`FeatureExtractor`:

- :class:`InceptionExtractor`: the FID Inception-v3 with weights from a local ``pt_inception``
  file (pytorch-fid's port of TensorFlow's ``inception-2015-12-05``). Nothing is ever downloaded.
  Metrics are then named ``FID`` / ``IS``.
- :class:`DatasetClassifier`: a small CNN trained on the dataset's train split and cached on disk;
  its penultimate layer gives the features and its softmax the class probabilities. Metrics are
  then named ``dFID`` / ``dIS`` so nobody mistakes them for ImageNet FID.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.special
import torch
import torch.nn.functional as F
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import atomic_path, write_json_atomic


# --------------------------------------------------------------------------------------------
# reconstruction


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """PSNR in dB of each image pair (first axis = image); identical images give +inf.

    Reports average these per-image values (the usual convention of tokenizer papers); the
    training logs' :func:`vcq.tokenizer.psnr` pools the MSE over the batch instead and reads lower.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise EntropyCliffError(f"PSNR needs two image batches of one shape, got {a.shape} and {b.shape}")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


# --------------------------------------------------------------------------------------------
# distribution metrics on features


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features (N, D), N >= 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise EntropyCliffError(f"need at least 2 feature vectors (N, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b).

    A singular product gets ``1e-6 I`` added to both covariances (as in the reference FID code);
    the tiny imaginary part sqrtm returns for numerical reasons is dropped.
    """
    cov_a, cov_b = np.atleast_2d(cov_a), np.atleast_2d(cov_b)
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.all(np.isfinite(covmean)):
        eps = 1e-6 * np.eye(len(cov_a))
        covmean = scipy.linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean), 0.0))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_stats(features_a), *gaussian_stats(features_b))


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(x) <= k:
        raise EntropyCliffError(f"precision/recall with k = {k} needs more than {k} points per set, got {len(x)}")
    return torch.cat([torch.cdist(x[i:i + 2048], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), 2048)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds, k = 3 by default)."""
    r = torch.as_tensor(np.asarray(real), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float64)
    r_rad, f_rad = _kth_radius(r, k), _kth_radius(f, k)
    fake_inside = torch.zeros(len(f), dtype=torch.bool)
    real_inside = torch.zeros(len(r), dtype=torch.bool)
    for i in range(0, len(f), 1024):  # (chunk of fake) x (all real) distances
        d = torch.cdist(f[i:i + 1024], r)
        fake_inside[i:i + 1024] = (d <= r_rad[None, :]).any(dim=1)
        real_inside |= (d <= f_rad[i:i + 1024, None]).any(dim=0)
    return fake_inside.double().mean().item(), real_inside.double().mean().item()


def inception_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` of ``exp(E KL(p(y|x) || p(y)))``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise EntropyCliffError(f"inception score needs class probabilities (N, C) with N >= {splits}")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))), axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# --------------------------------------------------------------------------------------------
# token semantics and memorization


def token_features(tokens: np.ndarray, K: np.ndarray | list[int], first: int,
                   codebook: np.ndarray | None = None) -> np.ndarray | scipy.sparse.csr_matrix:
    """Probe features of the first ``first`` positions.

    With a ``codebook`` (K_max, D): the concatenated code vectors ``[e_{x_1}, ..., e_{x_k}]``
    (k D dims). Without one: a sparse one-hot encoding, one block of K_t columns per position.
    """
    x = np.asarray(tokens)[:, :first].astype(np.int64)
    if codebook is not None:
        return np.asarray(codebook)[x].reshape(len(x), -1)
    K = np.asarray(K, dtype=np.int64)[:first]
    offsets = np.concatenate([[0], np.cumsum(K)[:-1]])
    cols = (x + offsets[None, :]).ravel()
    rows = np.repeat(np.arange(len(x)), x.shape[1])
    return scipy.sparse.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(x), int(K.sum())))


def linear_probe(train_x, train_y: np.ndarray, test_x, test_y: np.ndarray, C: float = 1.0,
                 max_iter: int = 300) -> dict[str, float]:
    """Top-1 / top-5 test accuracy of an L2-regularised multinomial logistic regression.

    Dense features are standardised with the training set's mean and standard deviation.
    ``converged`` says whether L-BFGS met its tolerance within ``max_iter`` iterations.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not scipy.sparse.issparse(train_x):
        scaler = StandardScaler().fit(train_x)
        train_x, test_x = scaler.transform(train_x), scaler.transform(test_x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(train_x, train_y)
    proba = clf.predict_proba(test_x)
    ranked = clf.classes_[np.argsort(-proba, axis=1)]
    test_y = np.asarray(test_y)
    return {"top1": float(np.mean(ranked[:, 0] == test_y)),
            "top5": float(np.mean((ranked[:, :5] == test_y[:, None]).any(axis=1))),
            "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught)}


def _lex_cmp(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise lexicographic comparison sign(a - b) and the common prefix length of a and b."""
    neq = a != b
    has = neq.any(axis=1)
    first = np.where(has, neq.argmax(axis=1), a.shape[1])
    rows = np.arange(len(a))
    idx = np.minimum(first, a.shape[1] - 1)
    sign = np.where(has, np.sign(a[rows, idx] - b[rows, idx]), 0)
    return sign, first


def longest_training_prefix(generated: np.ndarray, train: np.ndarray) -> np.ndarray:
    """For each generated row, the largest m such that its first m tokens start a training row.

    Exact: the training rows are sorted lexicographically, each generated row is located by a
    vectorised binary search, and the longest common prefix with any training row is the larger
    of the common prefixes with its two sorted neighbours.
    """
    g = np.asarray(generated).astype(np.int64)
    tr = np.asarray(train).astype(np.int64)
    if g.ndim != 2 or tr.ndim != 2 or g.shape[1] != tr.shape[1]:
        raise EntropyCliffError(f"generated {g.shape} and training {tr.shape} token arrays must share L")
    tr = tr[np.lexsort(tr.T[::-1])]
    lo, hi = np.zeros(len(g), np.int64), np.full(len(g), len(tr), np.int64)
    while np.any(lo < hi):  # first training row >= g
        active = lo < hi
        mid = (lo + hi) // 2
        sign, _ = _lex_cmp(tr[np.minimum(mid, len(tr) - 1)], g)
        go_right = active & (sign < 0)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    best = np.zeros(len(g), np.int64)
    for nb in (lo - 1, lo):
        ok = (nb >= 0) & (nb < len(tr))
        _, lcp = _lex_cmp(tr[np.clip(nb, 0, len(tr) - 1)], g)
        best = np.maximum(best, np.where(ok, lcp, 0))
    return best


def memorization(generated: np.ndarray, train: np.ndarray) -> dict[str, object]:
    """``prefix_share[m-1]``: share of generated rows whose first m tokens prefix a training row.

    Also ``exact_copy`` (= ``prefix_share[L-1]``) and ``mean_prefix``, the mean longest seen prefix.
    """
    lcp = longest_training_prefix(generated, train)
    length = np.asarray(generated).shape[1]
    share = [(lcp >= m).mean() for m in range(1, length + 1)]
    return {"prefix_share": [float(s) for s in share], "exact_copy": float(share[-1]),
            "mean_prefix": float(lcp.mean())}


# --------------------------------------------------------------------------------------------
# feature extractors


class FeatureExtractor(Protocol):
    """Maps uint8 images (N, H, W, C) to features (N, D) and class probabilities (N, C) or None."""

    fid_name: str
    is_name: str

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


class InceptionExtractor:
    """FID Inception-v3 (:mod:`vcq.fid_inception`) from a local ``pt_inception`` weights file:
    2048-d pool features and softmax class probabilities over its 1008 outputs."""

    fid_name = "FID"
    is_name = "IS"

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 50) -> None:
        from vcq.fid_inception import load_fid_inception

        self.net = load_fid_inception(path, device)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        feats, probs = [], []
        for s in range(0, len(images), self.batch_size):
            x = torch.from_numpy(_rgb(images[s:s + self.batch_size])).permute(0, 3, 1, 2).float().div(255.0)
            f, logits = self.net(x.to(self.device))
            feats.append(f.double().cpu().numpy())
            probs.append(torch.softmax(logits.double(), -1).cpu().numpy())
        return np.concatenate(feats), np.concatenate(probs)


def _rgb(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


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


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class DatasetClassifier:
    """A :class:`SmallCNN` trained on a dataset's train split and cached in ``cache_dir``.

    The cache holds ``<key>.safetensors`` and ``<key>.json`` (the spec plus train/val accuracy);
    the key hashes the spec, so a different dataset or recipe trains a new classifier.
    """

    fid_name = "dFID"
    is_name = "dIS"

    def __init__(self, net: SmallCNN, info: dict, batch_size: int = 256) -> None:
        self.net, self.info, self.batch_size = net.eval(), info, batch_size

    @classmethod
    def load_or_train(cls, spec: ClassifierSpec, train_images: np.ndarray, train_labels: np.ndarray,
                      val_images: np.ndarray, val_labels: np.ndarray, cache_dir: str | Path,
                      progress: bool = False) -> DatasetClassifier:
        from safetensors.torch import load_file, save_file

        cache = Path(cache_dir)
        weights, meta = cache / f"{spec.key()}.safetensors", cache / f"{spec.key()}.json"
        net = SmallCNN(spec.channels, spec.num_classes, spec.width)
        if weights.is_file() and meta.is_file():
            net.load_state_dict(load_file(str(weights)))
            return cls(net, json.loads(meta.read_text()))
        fit_classifier(net, train_images, train_labels, spec, progress)
        out = cls(net, {})
        out.info = {"spec": asdict(spec), "train_accuracy": out.accuracy(train_images[:2000], train_labels[:2000]),
                    "val_accuracy": out.accuracy(val_images, val_labels)}
        with atomic_path(weights) as tmp:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
        write_json_atomic(meta, out.info)
        return out

    @torch.no_grad()
    def logits_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats, logits = [], []
        for s in range(0, len(images), self.batch_size):
            f = self.net.features(_images_to_tensor(images[s:s + self.batch_size]))
            feats.append(f.double().numpy())
            logits.append(self.net.fc(f).double().numpy())
        return np.concatenate(logits), np.concatenate(feats)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        logits, _ = self.logits_and_features(images)
        return float(np.mean(logits.argmax(1) == np.asarray(labels)))

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        logits, feats = self.logits_and_features(images)
        return feats, scipy.special.softmax(logits, axis=1)


def fit_classifier(net: SmallCNN, images: np.ndarray, labels: np.ndarray, spec: ClassifierSpec,
                   progress: bool = False) -> None:
    """Adam with a cosine learning-rate decay, random horizontal flips, cross-entropy."""
    from tqdm import tqdm

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, spec.steps)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    net.train()
    bar = tqdm(range(spec.steps), disable=not progress or not sys.stderr.isatty(), desc="dFID classifier",
               unit="step", file=sys.stderr)
    for _ in bar:
        idx = rng.integers(0, len(images), spec.batch_size)
        x = _images_to_tensor(images[idx])
        x = torch.where(torch.from_numpy(rng.random(len(idx)) < 0.5)[:, None, None, None], x.flip(3), x)
        loss = F.cross_entropy(net(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    net.eval()


# --------------------------------------------------------------------------------------------
# generation quality


def generation_metrics(extractor: FeatureExtractor, real_images: np.ndarray, fake_images: np.ndarray,
                       k: int = 3) -> dict[str, float]:
    """FID (or dFID), precision/recall (k-NN, k = 3) and IS (or dIS) of ``fake`` against ``real``."""
    real_f, _ = extractor(real_images)
    fake_f, fake_p = extractor(fake_images)
    precision, recall = precision_recall(real_f, fake_f, k)
    out = {extractor.fid_name: fid(real_f, fake_f), "precision": precision, "recall": recall}
    if fake_p is not None:
        out[extractor.is_name] = inception_score(fake_p)[0]
    return out


# --------------------------------------------------------------------------------------------
# token-level summaries


def probe_table(tokens: np.ndarray, labels: np.ndarray, K: np.ndarray | list[int], firsts: list[int],
                codebook: np.ndarray | None = None, test_fraction: float = 0.2, seed: int = 0) -> list[dict]:
    """Paper Table 6 form: linear-probe top-1/top-5 on the first k tokens, for each k in ``firsts``.

    Rows are split train/test by a seeded permutation (``test_fraction`` held out).
    """
    n, length = np.asarray(tokens).shape
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(test_fraction * n)))
    te, tr = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    x, y = np.asarray(tokens), np.asarray(labels)
    out = []
    for k in sorted({min(max(int(f), 1), length) for f in firsts}):
        acc = linear_probe(token_features(x[tr], K, k, codebook), y[tr], token_features(x[te], K, k, codebook), y[te])
        out.append({"tokens": k, **acc})
    return out


# --------------------------------------------------------------------------------------------
# images


def image_grid(images: np.ndarray, cols: int | None = None, scale: int = 2, pad: int = 2) -> np.ndarray:
    """uint8 (H', W', 3) grid of images (N, H, W, C), ``cols`` per row (default ~sqrt N), upscaled."""
    imgs = np.asarray(images)
    if imgs.shape[-1] == 1:
        imgs = np.repeat(imgs, 3, -1)
    imgs = np.repeat(np.repeat(imgs, scale, 1), scale, 2)
    n, h, w, _ = imgs.shape
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(imgs):
        r, c = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return grid


def decode_tokens(tokenizer, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 images (N, H, W, C) decoded from tokens (N, L) by a :class:`vcq.tokenizer.Tokenizer1D`."""
    from vcq.tokenizer import to_uint8

    device = next(tokenizer.parameters()).device
    out = [to_uint8(tokenizer.decode(torch.as_tensor(np.asarray(tokens[s:s + batch_size], dtype=np.int64),
                                                     device=device)))
           for s in range(0, len(tokens), batch_size)]
    return np.concatenate(out)


def reconstruction_metrics(tokenizer, images: np.ndarray, extractor: FeatureExtractor | None = None) -> dict[str, float]:
    """PSNR (dB, mean over images) of encode -> decode, and rFID (or rdFID) when an extractor is given."""
    from vcq.tokenizer import reconstruct

    recon = reconstruct(tokenizer, images)
    out = {"psnr": float(np.mean(psnr(images, recon))), "images": int(len(images))}
    if extractor is not None:
        out["r" + extractor.fid_name] = fid(extractor(images)[0], extractor(recon)[0])
    return out


# --------------------------------------------------------------------------------------------
# a whole evaluation (what ``vcq evaluate`` prints)


def load_samples(samples_dir: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``tokens.npy`` (+ sidecar K_t) and ``labels.npy`` written by ``vcq sample``."""
    from vcq.train_ar import load_token_dump

    d = load_token_dump(Path(samples_dir) / "tokens.npy")
    return np.asarray(d.tokens), d.labels, d.K


def evaluate_run(samples_dir: str | Path | None, ar_dir: str | Path | None, tokenizer_dir: str | Path | None, *,
                 inception_path: str | Path | None = None, cache_dir: str | Path = "runs/dfid-cache",
                 n_real: int = 2000, n_recon: int = 500, probe_firsts: tuple[int, ...] = (1, 10, 0),
                 seed: int = 0, progress: bool = False) -> dict:
    """Every metric the given inputs allow, as one JSON-ready dict.

    - tokenizer: reconstruction PSNR and rFID/rdFID on the dataset's validation split;
    - samples + tokenizer: FID/dFID, precision/recall (k = 3), IS/dIS of the decoded samples against
      ``n_real`` training images, with the same metrics between ``len(samples)`` validation images
      and the training images as the finite-sample reference;
    - AR run: per-position NLL from its ``nll.json``, a linear probe (Table 6 form; code vectors
      when a tokenizer is given, one-hot tokens otherwise; k = 0 means all L tokens) on its training
      dump, and with samples, memorization against the rows the AR was trained on, next to the same
      statistic for its held-out rows (real sequences it never saw).
    """
    from vcq.train_ar import check_dump_matches, load_token_dump, model_config, split_rows
    from vcq.train import read_config

    out: dict = {}
    samples = load_samples(samples_dir) if samples_dir is not None else None
    tok = ds = None
    if tokenizer_dir is not None:
        from vcq.presets import TokenizerConfig, from_dict
        from vcq.tokenizer import DataSpec, load_tokenizer

        tok = load_tokenizer(tokenizer_dir)
        tok_cfg = read_config(tokenizer_dir)
        spec, tcfg = DataSpec(**tok_cfg["data"]), from_dict(TokenizerConfig, tok_cfg["model"])
        ds = {s: spec.load(s, tcfg, augment=False) for s in ("train", "val")}
        tok_K = tuple(int(k) for k in tok.quantizer.K.tolist())
        if samples is not None and samples[2] != tok_K:
            raise EntropyCliffError(f"{samples_dir}: sample K_t disagree with the tokenizer's")
    extractor: FeatureExtractor | None = None
    if ds is not None:
        if inception_path is not None:
            extractor = InceptionExtractor(inception_path)
            out["features"] = {"kind": "inception", "path": str(inception_path)}
        else:
            tr_imgs, va_imgs = ds["train"].images(np.arange(len(ds["train"]))), ds["val"].images(np.arange(len(ds["val"])))
            cspec = ClassifierSpec(dataset={**tok_cfg["data"], "image_size": tcfg.image_size},
                                   channels=tcfg.channels, num_classes=len(ds["train"].class_names), seed=seed)
            extractor = DatasetClassifier.load_or_train(cspec, tr_imgs, ds["train"].label_array(), va_imgs,
                                                        ds["val"].label_array(), cache_dir, progress)
            out["features"] = {"kind": "dataset classifier (dFID, not ImageNet FID)", **extractor.info}
        rng = np.random.default_rng(seed)
        val = ds["val"].images(np.sort(rng.permutation(len(ds["val"]))[:n_recon]))
        out["reconstruction"] = reconstruction_metrics(tok, val, extractor)
    if samples is not None and tok is not None:
        rng = np.random.default_rng(seed + 1)
        real = ds["train"].images(np.sort(rng.permutation(len(ds["train"]))[:n_real]))
        fake = decode_tokens(tok, samples[0])
        ref = ds["val"].images(np.sort(rng.permutation(len(ds["val"]))[:len(fake)]))
        out["generation"] = {"samples": int(len(fake)), "real_images": int(len(real)),
                             **generation_metrics(extractor, real, fake),
                             "reference_heldout_real": generation_metrics(extractor, real, ref)}
    if ar_dir is not None:
        cfg = read_config(ar_dir)
        model_cfg = model_config(cfg)
        nll_path = Path(ar_dir) / "nll.json"
        if nll_path.is_file():
            out["nll"] = json.loads(nll_path.read_text())
        data = cfg["data"]
        dump = load_token_dump(data["tokens"], data["labels"])
        check_dump_matches(dump, model_cfg)
        tokens = np.asarray(dump.tokens)
        codebook = tok.quantizer.codes().detach().cpu().numpy() if tok is not None else None
        firsts = [f if f > 0 else tokens.shape[1] for f in probe_firsts]
        out["linear_probe"] = {"features": "code vectors" if codebook is not None else "one-hot tokens",
                               "rows": int(len(tokens)),
                               "table": probe_table(tokens, dump.labels, dump.K, firsts, codebook, seed=seed)}
        if samples is not None:
            if samples[2] != model_cfg.K:
                raise EntropyCliffError(f"{samples_dir}: sample K_t disagree with the AR model's")
            if data.get("val_tokens"):
                train_rows, held = tokens, np.asarray(load_token_dump(data["val_tokens"], data.get("val_labels")).tokens)
            else:
                tr_idx, va_idx = split_rows(len(tokens), data.get("val_fraction", 0.0), int(cfg["train"]["seed"]))
                train_rows, held = tokens[tr_idx], tokens[va_idx]
            out["memorization"] = {"generated": memorization(samples[0], train_rows), "training_rows": int(len(train_rows))}
            if len(held):
                out["memorization"]["heldout_real"] = memorization(held, train_rows)
    return out
