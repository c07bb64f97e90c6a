"""Nested-prefix nearest-codebook assignment with FAISS (docs/formulas.md, paper §3).

Given continuous features ``z`` of shape (N, L, d) and one codebook ``E`` of K_max vectors, token
t of sequence n is

    x_{n,t} = argmin_{k < K_t} ||z_{n,t} - e_k||^2

so position t only sees the first K_t codes (the nested prefixes of a VCQ codebook). Positions are
grouped by their K_t, and each group is searched in an exact flat L2 index over the *slice*
``E[:K_t]``. Slicing, not an ID selector: FAISS GPU flat indexes silently ignore selectors such as
``IDSelectorRange``, so a selector would return codes >= K_t there. A GPU index is used when
faiss-gpu and a GPU are present (``use_gpu=None``), the CPU index otherwise.

The result equals the float64 brute force :func:`brute_force_assign` (lowest index on ties) at any
offset of the data. FAISS computes float32 distances by the expansion |x|^2 - 2 x.y + |y|^2, whose
rounding error grows with the norms, so features and codes are first centred on the codebook's
mean ``mu`` in float64 (``x = z - mu``, ``y_k = e_k - mu``: the error then scales with the data's
spread, not its offset). FAISS returns the ``candidates`` smallest float32 distances ``D~``;
:func:`distance_error_bound` gives ``B`` with ``|D~_k - D64_k| <= B`` for every code of the row
(``D64`` the float64 brute-force distance). A row whose runner-up lies beyond ``D~_1 + 2B`` is
decided; otherwise its candidates are re-ranked exactly in float64, unless even its last candidate
lies within ``2B`` (ties among many codes, duplicated codes): then the row is brute-forced over
all K_t codes in float64. :func:`assign_file` does it from files to a token dump. This module never
imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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


_U32 = 2.0**-24  # float32 unit roundoff
_U64 = 2.0**-53  # float64 unit roundoff
_TF32 = 2.0**-11  # input rounding of a float32 GEMM on TF32 tensor cores (assumed for FAISS GPU)
_BUDGET = 1 << 22  # float64 elements per exact-distance chunk (32 MiB)


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): bound on the relative error of an n-term dot product."""
    return n * u / (1 - n * u)


def distance_error_bound(d: int, input_rounding: float = 0.0) -> float:
    """Coefficient c with ``|D~ - D64| <= c (||x|| + ||y||)^2`` for one (query, code) pair.

    ``D~``: FAISS's float32 squared distance between ``x = fl32(z - mu)`` and ``y = fl32(e - mu)``
    computed by the expansion ``fl(|x|^2) + fl(|y|^2) - 2 fl(x.y)`` in any order, clamped at 0, or
    directly as ``sum_j (x_j - y_j)^2``; ``D64``: the float64 ``sum_j (z_j - e_j)^2`` of the brute
    force; ``||x||, ||y||`` the exact centred norms times (1 + 4u). With u = 2^-24, ``u_in = u +
    2^-52`` (float64 centring, then float32), ``v`` = ``input_rounding`` of the GEMM (TF32: 2^-11)::

        c = (2 u_in + u_in^2)                                   inputs rounded to float32
          + (gamma_d (1 + v)^2 + 2v + v^2)(1 + gamma_2) + gamma_2   norms, dot product, two sums
          + gamma_{d+2}(2^-53)                                  the float64 reference itself
    """
    u_in, v, g2 = _U32 + 2 * _U64, input_rounding, _gamma(2, _U32)
    faiss_part = (_gamma(d, _U32) * (1 + v) ** 2 + 2 * v + v * v) * (1 + g2) + g2
    return 2 * u_in + u_in * u_in + faiss_part + _gamma(d + 2, _U64)


def _sq_dist64(z: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``sum_j (z_j - e_j)^2`` in float64 over the last axis (broadcasting): the one formula of the
    brute force and of every exact re-rank, so both round identically."""
    return ((z - e) ** 2).sum(-1)


def _exact_argmin(z: np.ndarray, codebook: np.ndarray, cand: np.ndarray | int) -> np.ndarray:
    """Per row of ``z`` (m, d) float64: the lowest-index float64 argmin over the codes ``cand[r]``
    ((m, c) indexes into ``codebook``) or, for an int, over ``codebook[:cand]``; bounded memory."""
    m, d = z.shape
    width = cand if isinstance(cand, int) else cand.shape[1]
    step = max(1, _BUDGET // max(1, width * d))
    out = np.empty(m, dtype=np.int64)
    for s in range(0, m, step):
        zs = z[s : s + step, None, :]
        if isinstance(cand, int):
            out[s : s + step] = _sq_dist64(zs, codebook[None, :cand]).argmin(1)
        else:
            idx = cand[s : s + step]
            dist = _sq_dist64(zs, codebook[idx])
            tie = dist == dist.min(1, keepdims=True)
            out[s : s + step] = np.where(tie, idx, np.iinfo(np.int64).max).min(1)
    return out


def nested_assign(features: np.ndarray, codebook: np.ndarray, K: Sequence[int], *, use_gpu: bool | None = None,
                  batch_size: int = 1 << 18, threads: int | None = None, candidates: int = 4) -> np.ndarray:
    """Tokens (N, L) int64: for each (n, t), the index of the nearest of the first K_t codes, equal
    to :func:`brute_force_assign` (float64, lowest index on ties).

    ``features``: (N, L, d) numbers (memory-mapped arrays are read ``batch_size`` vectors at a
    time); ``codebook``: (K_max, d); ``K``: K_1..K_L, each in [1, K_max]. ``use_gpu``: True
    requires a FAISS GPU index, False forces CPU, None picks the GPU when there is one.
    ``threads``: OpenMP threads of the CPU searches (None: FAISS's default; 1 avoids thread
    overhead on busy machines). ``candidates``: codes FAISS returns per query for the exact
    float64 re-rank (>= 2).
    """
    if candidates < 2:
        raise EntropyCliffError(f"candidates must be >= 2, got {candidates}")
    faiss = _faiss()
    if threads is None:
        return _assign(faiss, features, codebook, K, use_gpu, batch_size, candidates)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return _assign(faiss, features, codebook, K, use_gpu, batch_size, candidates)
    finally:
        faiss.omp_set_num_threads(before)


def _assign(faiss: Any, features: np.ndarray, codebook: np.ndarray, K: Sequence[int], use_gpu: bool | None,
            batch_size: int, candidates: int) -> np.ndarray:
    k = _check(features, codebook, K)
    if use_gpu is None:
        use_gpu = gpu_available()
    elif use_gpu and not gpu_available():
        raise EntropyCliffError("no FAISS GPU index available (install faiss-gpu-cu12 and run on a GPU)")
    e64 = np.asarray(codebook, dtype=np.float64)
    if not np.all(np.isfinite(e64)):
        raise EntropyCliffError("codebook holds NaN or infinite values")
    mu = e64.mean(0)
    y32 = np.ascontiguousarray(e64 - mu, dtype=np.float32)
    # largest centred code norm within each prefix E[:K_t]
    y_max = np.maximum.accumulate(np.sqrt(np.einsum("kd,kd->k", e64 - mu, e64 - mu)))
    n, length, d = features.shape
    coef = distance_error_bound(d, _TF32 if use_gpu else 0.0)
    res = faiss.StandardGpuResources() if use_gpu else None
    indexes = {}
    for kt in np.unique(k[k > 1]):
        index = faiss.IndexFlatL2(d)
        index.add(y32[:kt])
        indexes[int(kt)] = faiss.index_cpu_to_gpu(res, 0, index) if use_gpu else index
    groups = [(int(kt), np.flatnonzero(k == kt)) for kt in np.unique(k)]
    out = np.empty((n, length), dtype=np.int64)
    rows = max(1, batch_size // length)
    for s in range(0, n, rows):
        block = np.asarray(features[s : s + rows])
        if not np.all(np.isfinite(block)):
            raise EntropyCliffError(f"features hold NaN or infinite values (sequences {s}..{s + len(block) - 1})")
        for kt, pos in groups:
            if kt == 1:
                out[s : s + len(block), pos] = 0
                continue
            z = block[:, pos].reshape(-1, d).astype(np.float64)
            x = z - mu
            x_norm = np.sqrt(np.einsum("md,md->m", x, x))
            bound = coef * ((x_norm + y_max[kt - 1]) * (1 + 4 * _U32)) ** 2
            dist, labels = indexes[kt].search(np.ascontiguousarray(x, dtype=np.float32), min(candidates, kt))
            out[s : s + len(block), pos] = _certify(z, e64, kt, dist, labels, bound).reshape(len(block), len(pos))
    return out


def _certify(z: np.ndarray, e64: np.ndarray, kt: int, dist: np.ndarray, labels: np.ndarray,
             bound: np.ndarray) -> np.ndarray:
    """Exact tokens for the queries ``z`` (m, d) float64 from FAISS's float32 top-c ``dist`` /
    ``labels`` over ``E[:kt]`` and the per-row error bound ``bound`` (|D~ - D64| <= bound).

    A code j with ``D~_j - D~_1 > 2B`` has ``D64_j >= D~_j - B > D~_1 + B >= D64_1``: it cannot win.
    So the FAISS winner stands where the runner-up is beyond 2B, the top c are re-ranked in float64
    where the c-th is beyond 2B, and the rest (and rows with a missing label or a non-finite
    distance or bound) take all kt codes.
    Differences of float32 values in float64 are exact to 2^-53 relative; ``2B (1 + 2^-30)`` covers
    that and the rounding of ``B`` itself. NaN gaps count as undecided."""
    dist = dist.astype(np.float64)
    margin = 2 * bound * (1 + 2.0**-30)
    out = labels[:, 0].copy()
    undecided = ~(dist[:, 1] - dist[:, 0] > margin)
    broken = (labels.min(1) < 0) | ~np.isfinite(dist).all(1) | ~np.isfinite(margin)  # overflow, NaN
    full = broken | (undecided & (labels.shape[1] < kt) & ~(dist[:, -1] - dist[:, 0] > margin))
    rerank = undecided & ~full
    if rerank.any():
        out[rerank] = _exact_argmin(z[rerank], e64, labels[rerank])
    if full.any():
        out[full] = _exact_argmin(z[full], e64, kt)
    return out


def brute_force_assign(features: np.ndarray, codebook: np.ndarray, K: Sequence[int]) -> np.ndarray:
    """Reference implementation in float64 numpy: the full distance matrix per position, masked at
    k >= K_t, argmin (ties to the smallest index). Memory O(N K_max d) per position."""
    k = _check(features, codebook, K)
    f = np.asarray(features, dtype=np.float64)
    e = np.asarray(codebook, dtype=np.float64)
    out = np.empty(f.shape[:2], dtype=np.int64)
    for t in range(f.shape[1]):
        out[:, t] = _sq_dist64(f[:, t, None, :], e[None, : k[t], :]).argmin(1)
    return out


def assign_file(features_path: str | os.PathLike, codebook_path: str | os.PathLike, out: str | os.PathLike, *,
                schedule: Mapping[str, Any], use_gpu: bool | None = None, threads: int | None = None,
                candidates: int = 4) -> dict[str, Any]:
    """Assign the features in ``features_path`` ((N, L, d), .npy memory-mapped or .npz) to the nested
    prefixes of the codebook in ``codebook_path`` ((K_max, d)) with :func:`nested_assign`, and write
    the token dump ``out`` (``.npy`` + ``NAME.meta.json``, :func:`entropy_cliff.io.save_tokens`).

    ``schedule``: the keyword arguments of :func:`entropy_cliff.schedules.schedule_from_options`
    without ``length`` (``kind``, ``kmin``, ``kmax`` (None: the codebook's size), ``power``,
    ``schedule_file``). ``out`` is probed before anything is read; a failure leaves no file behind.
    Returns ``{"out", "N", "L", "schedule", "label", "K"}``.
    """
    from entropy_cliff.io import check_dump_path, load_array, prepare_output, save_tokens
    from entropy_cliff.schedules import schedule_from_options

    out = check_dump_path(out)
    prepare_output(out, "file", keep=False)
    feats, cb = load_array(features_path), load_array(codebook_path)
    if feats.ndim != 3 or cb.ndim != 2:
        raise EntropyCliffError(f"expected features (N, L, d) and codebook (K_max, d), got {feats.shape} and {cb.shape}")
    opts = dict(schedule)
    if opts.get("kmax") is None:
        opts["kmax"] = cb.shape[0]
    sched = schedule_from_options(length=feats.shape[1], **opts)
    if sched is None:
        raise EntropyCliffError("no schedule: give a schedule kind (with kmax, default: the codebook size) "
                                "or a schedule_file")
    if sched.kmax > cb.shape[0]:
        raise EntropyCliffError(f"K_max = {sched.kmax} exceeds the codebook's {cb.shape[0]} entries")
    tokens = nested_assign(feats, cb, sched.K, use_gpu=use_gpu, threads=threads, candidates=candidates)
    save_tokens(out, tokens, sched.K, sched.to_dict(),
                source={"features": str(features_path), "codebook": str(codebook_path)})
    return {"out": str(out), "N": int(tokens.shape[0]), "L": int(tokens.shape[1]), "schedule": sched.to_dict(),
            "label": sched.label, "K": [int(k) for k in sched.K]}
