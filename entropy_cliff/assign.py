"""Nested-prefix nearest-codebook assignment with FAISS (docs/formulas.md, paper §3).

Given continuous features ``z`` of shape (N, L, d) and one codebook ``E`` of K_max vectors, token
t of sequence n is

    x_{n,t} = argmin_{k < K_t} ||z_{n,t} - e_k||^2

so position t only sees the first K_t codes (the nested prefixes of a VCQ codebook). Positions are
grouped by their K_t, and each group is searched in an exact flat L2 index over the *slice*
``E[:K_t]``. Slicing, not an ID selector: FAISS GPU flat indexes silently ignore selectors such as
``IDSelectorRange``, so a selector would return codes >= K_t there. A GPU index is used when
faiss-gpu and a GPU are present (``use_gpu=None``), the CPU index otherwise.

Distances are float32, as in FAISS; the result equals a brute-force argmin except where two codes
are equidistant to within float32 rounding. This module never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from entropy_cliff.errors import EntropyCliffError

INSTALL_HINT = "FAISS is not installed: pip install faiss-cpu (or faiss-gpu-cu12 for a GPU index)"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise EntropyCliffError(INSTALL_HINT) from None
    return faiss


def gpu_available() -> bool:
    """Whether the installed FAISS has GPU support and sees at least one GPU."""
    faiss = _faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _check(features: np.ndarray, codebook: np.ndarray, K: Sequence[int]) -> np.ndarray:
    if features.ndim != 3:
        raise EntropyCliffError(f"features must be (N, L, d), got shape {features.shape}")
    if codebook.ndim != 2:
        raise EntropyCliffError(f"codebook must be (K_max, d), got shape {codebook.shape}")
    n, length, d = features.shape
    if codebook.shape[1] != d:
        raise EntropyCliffError(f"feature width {d} does not match codebook width {codebook.shape[1]}")
    if n == 0 or length == 0 or d == 0 or codebook.shape[0] == 0:
        raise EntropyCliffError(f"empty input: features {features.shape}, codebook {codebook.shape}")
    for name, a in (("features", features), ("codebook", codebook)):
        if a.dtype.kind not in "fiu":
            raise EntropyCliffError(f"{name} must be numeric, got {a.dtype}")
    k = np.asarray(K, dtype=np.int64)
    if k.shape != (length,):
        raise EntropyCliffError(f"{len(k)} codebook sizes K_t for L = {length} positions")
    if k.min() < 1 or k.max() > codebook.shape[0]:
        raise EntropyCliffError(f"every K_t must be in [1, {codebook.shape[0]}] (the codebook's size); "
                                f"got {k.min()}..{k.max()}")
    return k


def nested_assign(features: np.ndarray, codebook: np.ndarray, K: Sequence[int], *, use_gpu: bool | None = None,
                  batch_size: int = 1 << 18, threads: int | None = None) -> np.ndarray:
    """Tokens (N, L) int64: for each (n, t), the index of the nearest of the first K_t codes.

    ``features``: (N, L, d) floats (memory-mapped arrays are read ``batch_size`` vectors at a time);
    ``codebook``: (K_max, d); ``K``: K_1..K_L, each in [1, K_max]. ``use_gpu``: True requires a
    FAISS GPU index, False forces CPU, None picks the GPU when there is one. ``threads``: OpenMP
    threads of the CPU searches (None: FAISS's default; 1 avoids thread overhead on busy machines).
    """
    faiss = _faiss()
    if threads is None:
        return _assign(faiss, features, codebook, K, use_gpu, batch_size)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return _assign(faiss, features, codebook, K, use_gpu, batch_size)
    finally:
        faiss.omp_set_num_threads(before)


def _assign(faiss: Any, features: np.ndarray, codebook: np.ndarray, K: Sequence[int], use_gpu: bool | None,
            batch_size: int) -> np.ndarray:
    k = _check(features, codebook, K)
    if use_gpu is None:
        use_gpu = gpu_available()
    elif use_gpu and not gpu_available():
        raise EntropyCliffError("no FAISS GPU index available (install faiss-gpu-cu12 and run on a GPU)")
    code = np.ascontiguousarray(codebook, dtype=np.float32)
    if not np.all(np.isfinite(code)):
        raise EntropyCliffError("codebook holds NaN or infinite values")
    n, length, d = features.shape
    res = faiss.StandardGpuResources() if use_gpu else None
    indexes = {}
    for kt in np.unique(k):
        index = faiss.IndexFlatL2(d)
        index.add(code[:kt])
        indexes[int(kt)] = faiss.index_cpu_to_gpu(res, 0, index) if use_gpu else index
    groups = [(int(kt), np.flatnonzero(k == kt)) for kt in np.unique(k)]
    out = np.empty((n, length), dtype=np.int64)
    rows = max(1, batch_size // length)
    for s in range(0, n, rows):
        block = np.asarray(features[s : s + rows], dtype=np.float32)
        if not np.all(np.isfinite(block)):
            raise EntropyCliffError(f"features hold NaN or infinite values (sequences {s}..{s + len(block) - 1})")
        for kt, pos in groups:
            q = np.ascontiguousarray(block[:, pos].reshape(-1, d))
            _, idx = indexes[kt].search(q, 1)
            out[s : s + len(block), pos] = idx.reshape(len(block), len(pos))
    return out


def brute_force_assign(features: np.ndarray, codebook: np.ndarray, K: Sequence[int]) -> np.ndarray:
    """Reference implementation in float64 numpy: the full distance matrix per position, masked at
    k >= K_t, argmin (ties to the smallest index). Memory O(N K_max) per position."""
    k = _check(features, codebook, K)
    f = np.asarray(features, dtype=np.float64)
    e = np.asarray(codebook, dtype=np.float64)
    out = np.empty(f.shape[:2], dtype=np.int64)
    for t in range(f.shape[1]):
        dist = ((f[:, t, None, :] - e[None, : k[t], :]) ** 2).sum(-1)
        out[:, t] = dist.argmin(1)
    return out
