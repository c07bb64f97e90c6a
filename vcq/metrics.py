"""Metrics: functions from arrays to numbers (orchestration in :mod:`vcq.evaluate`, networks that
turn images into features in :mod:`vcq.features`).

- :func:`psnr`: THE PSNR of this project, used by the training logs, ``vcq evaluate`` and the
  analysis scripts: images are mapped to [0, 1] (uint8 / 255), each image gets
  ``10 log10(1 / MSE_i)`` with ``MSE_i`` its mean squared error over pixels and channels, and a
  set is summarised by the mean of these per-image values (:func:`mean_psnr`; the tokenizer papers'
  convention). Identical images give +inf.
- :func:`frechet_distance` / :func:`fid`: ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``
  between Gaussians fitted to two feature sets (Heusel et al. 2017), matrix square root by
  ``scipy.linalg.sqrtm``.
- :func:`precision_recall`: improved precision/recall (Kynkäänniemi et al. 2019) with k = 3: each
  set's manifold is the union of balls around its points with radius the distance to the k-th
  nearest neighbour in the same set; precision is the share of generated points inside the real
  manifold, recall the share of real points inside the generated manifold.
- :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016), mean and
  standard deviation over the usual 10 splits.
- :func:`linear_probe` / :func:`probe_table`: top-1/top-5 accuracy of a multinomial logistic
  regression (scikit-learn) on token features of the first k positions (paper Table 6).
- :func:`memorization`: for m = 1..L, the share of generated sequences whose first m tokens are
  the first m tokens of some training sequence, and the exact-copy rate (m = L). This is what the
  entropy cliff predicts directly: past t*, a model that learned the training set's conditionals
  can only continue prefixes it has seen.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.sparse
import torch

from entropy_cliff.errors import EntropyCliffError

IS_SPLITS = 10  # the usual number of inception-score splits


# --------------------------------------------------------------------------------------------
# reconstruction


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """PSNR in dB of each image pair (first axis = image) after mapping both to [0, 1] (divide by
    ``data_range``): ``10 log10(1 / MSE_i)``; identical images give +inf."""
    a, b = np.asarray(a, dtype=np.float64) / data_range, np.asarray(b, dtype=np.float64) / data_range
    if a.shape != b.shape or a.ndim < 2:
        raise EntropyCliffError(f"PSNR needs two image batches of one shape, got {a.shape} and {b.shape}")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(1.0 / mse)


def mean_psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """The mean over images of :func:`psnr` (the number every report of this project prints)."""
    return float(np.mean(psnr(a, b, data_range)))


def mean_psnr_tensor(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """:func:`mean_psnr` of two uint8 image tensors, computed on their device (float64) and
    returned as a 0-d tensor, so a training step need not wait for the device."""
    a, b = a.double() / data_range, b.double() / data_range
    mse = (a - b).square().reshape(len(a), -1).mean(1)
    return (10.0 * torch.log10(1.0 / mse)).mean()


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


def inception_score(probs: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """Mean and standard deviation over ``splits`` equal parts of ``exp(E KL(p(y|x) || p(y)))``."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise EntropyCliffError(f"inception score over {splits} splits needs class probabilities (N, C) with "
                                f"N >= {splits}, got shape {p.shape}")
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


