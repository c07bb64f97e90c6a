"""Exact per-position conditional entropy of a token corpus (paper §2.1, Fig. 2a).

For a corpus ``X`` of N sequences × L positions, with ``G_t`` distinct length-t prefixes of
multiplicities ``c_1..c_{G_t}`` (docs/formulas.md):

    H(X_{<=t}) = log2 N - (1/N) sum_g c_g log2 c_g               (plug-in prefix entropy)
    H_t        = H(X_{<=t}) - H(X_{<=t-1})                        (conditional entropy, Fig. 2a)
    H_t^MM     = H_t + (G_t - G_{t-1}) / (2 N ln 2),  G_0 = 1     (Miller–Madow)
    M_t = H(X_t),  U_t = M_t / log2 K_t                           (marginal entropy, utilization)

**Algorithm** (exact: no result depends on a hash collision). Prefix groups are refined one
column at a time: the rows of each active group are split by their token at column t through an
open-addressing table whose keys are the full token values (compared exactly, so the hash only
decides where to look). A group of one row contributes ``1 log2 1 = 0`` for ever and leaves the
active set. A group of at most ``small_group`` rows is finished at once on contiguous row memory:
its rows are sorted lexicographically on the remaining columns, the first-mismatch column ``p`` of
each sorted neighbour pair is found, and merging neighbour pairs by decreasing ``p`` gives every
later split; each merge of parts of weight ``a`` and ``b`` adds
``(a+b) log2(a+b) - a log2 a - b log2 b`` to ``sum_g c_g log2 c_g`` and removes one group for the
prefix lengths ``<= p``, accumulated in per-position difference arrays. The loop stops as soon as
no group is active, so a corpus whose prefixes become distinct at t = 2 costs little more than two
columns. Row weights (integer multiplicities) make the same kernel compute the bootstrap.

The value checks are two NumPy reductions (per-position minimum and maximum); the marginal
histograms take one pass over the corpus in row blocks (threads keep private counts); the corpus,
memory-mapped or not, is never copied whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numba as nb
import numpy as np

from entropy_cliff import estimators
from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.theory import MAX_CODEBOOK, t_star_sustained, t_star_threshold

if TYPE_CHECKING:
    from entropy_cliff.population import PopulationEstimate

#: Groups with at most this many rows are finished on contiguous rows instead of column by column.
SMALL_GROUP = 16
#: Largest dense marginal histogram (entries summed over positions) before a per-column fallback.
MAX_DENSE_BINS = 1 << 25
#: Corpora with at least this many tokens show a progress bar when stderr is a terminal.
PROGRESS_MIN_TOKENS = 1 << 26
_BLOCK_BYTES = 1 << 26
_TILE_BYTES = 1 << 25
_MAX_TILE_ROWS = (1 << 16) - 1  # 16-bit tile histograms
_MIN_THREAD_ROWS = 1 << 14  # fewer rows per thread are not worth a thread
_MARGINAL_CHUNK = 1 << 20  # histogram bins turned into c log2 c terms at a time
_PAD = 32
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Measurement:
    """Per-position entropies of a corpus; arrays have one entry per position t = 1..L (bits).

    ``utilization`` is NaN where ``K_t = 1`` (``log2 K_t = 0``). ``population`` (with bootstrap) is
    the population estimate of H_t and its intervals, :class:`entropy_cliff.population.PopulationEstimate`;
    the plug-in columns describe the corpus itself exactly and carry no interval.
    """

    N: int
    L: int
    K: np.ndarray
    K_inferred: bool
    H_prefix: np.ndarray
    H_cond: np.ndarray
    H_cond_mm: np.ndarray
    groups: np.ndarray
    H_marginal: np.ndarray
    utilization: np.ndarray
    population: PopulationEstimate | None = None
    #: How it was computed: ``{"name": "local", "workers": 1, "threads": T}`` or the Dask engine's
    #: ``{"name": "dask", "workers": n, ...}`` (see :func:`entropy_cliff.distributed.measure_distributed`).
    engine: dict | None = None

    @property
    def ci(self) -> np.ndarray | None:
        """Population intervals of H_t, (L, 2) with NaN rows where not identifiable, or None."""
        return None if self.population is None else self.population.ci

    @property
    def log2_N(self) -> float:
        return math.log2(self.N)

    def t_star_budget(self, delta: float = 0.5) -> int | None:
        """Smallest t (1-based) with ``log2 N - H(X_{<=t}) <= delta``; None if never reached."""
        hit = np.flatnonzero(self.log2_N - self.H_prefix <= delta)
        return int(hit[0]) + 1 if hit.size else None

    def t_star_threshold(self, epsilon: float = 0.5) -> int | None:
        """:func:`t_star_threshold` of this corpus's H_t."""
        return t_star_threshold(self.H_cond, epsilon)

    def t_star_sustained(self, epsilon: float = 0.5) -> int | None:
        """:func:`t_star_sustained` of this corpus's H_t."""
        return t_star_sustained(self.H_cond, epsilon)


# ----------------------------------------------------------------------------- numba kernels


@nb.njit(cache=True, nogil=True)
def _xlog2x(c):
    """``c log2 c`` for an integer weight ``c >= 0``."""
    return c * math.log2(c) if c > 1 else 0.0


# The prefix kernels see the corpus as a flat buffer ``F`` and ``geo = (base, s0, s1, L)``: token
# (r, c) is ``F[base + r s0 + c s1]``. C order, Fortran order and strided views then share one
# compiled kernel per token width.


@nb.njit(cache=True, nogil=True)
def _mismatch(F, geo, ra, rb, c0):
    """First column ``>= c0`` where rows ``ra`` and ``rb`` differ, or L when they agree."""
    base, s0, s1, L = geo
    pa = base + ra * s0
    pb = base + rb * s0
    c = c0
    if s1 == 1:  # contiguous rows: compare 16 tokens per branch (vectorisable, overlapping loads)
        while c + 16 <= L:
            diff = F[pa + c] ^ F[pb + c]
            for k in range(1, 16):
                diff |= F[pa + c + k] ^ F[pb + c + k]
            if diff != 0:
                break
            c += 16
    for k in range(c, L):
        if F[pa + k * s1] != F[pb + k * s1]:
            return k
    return L


@nb.njit(cache=True, nogil=True)
def _row_less(F, geo, ra, rb, c0):
    """Row ``ra`` before row ``rb`` on columns ``c0..L-1``, comparing tokens' bit patterns (any
    total order of tokens serves: equal prefixes end up adjacent)."""
    base, s0, s1, L = geo
    c = _mismatch(F, geo, ra, rb, c0)
    return c < L and F[base + ra * s0 + c * s1] < F[base + rb * s0 + c * s1]


@nb.njit(cache=True, nogil=True)
def _lexsort_rows(F, geo, r, c0):
    """Permutation sorting rows ``r`` lexicographically on columns ``c0..L-1`` (merge sort)."""
    m = r.shape[0]
    perm = np.arange(m)
    buf = np.empty(m, np.int64)
    width = 1
    while width < m:
        for lo in range(0, m, 2 * width):
            mid = min(lo + width, m)
            hi = min(lo + 2 * width, m)
            i, k, o = lo, mid, lo
            while i < mid and k < hi:
                if _row_less(F, geo, r[perm[k]], r[perm[i]], c0):
                    buf[o] = perm[k]
                    k += 1
                else:
                    buf[o] = perm[i]
                    i += 1
                o += 1
            while i < mid:
                buf[o] = perm[i]
                i += 1
                o += 1
            while k < hi:
                buf[o] = perm[k]
                k += 1
                o += 1
        perm, buf = buf, perm
        width *= 2
    return perm


@nb.njit(cache=True, nogil=True)
def _finish_group(F, geo, r, w, ell, S_diff, G_diff):
    """Add all future contributions of one group (rows ``r``, weights ``w``, equal on ``ell`` columns).

    With the rows sorted lexicographically and ``p_k`` the first mismatch of neighbours k, k+1, the
    group at prefix length ``l >= ell`` splits into the runs of neighbours with ``p_k >= l``. Start
    from single rows (``sum_i w_i log2 w_i``, ``m`` groups, for every l >= ell) and merge neighbour
    pairs by decreasing ``p_k``: merging parts of weight a and b changes ``sum c log2 c`` by
    ``f(a+b) - f(a) - f(b)`` and the group count by -1 for ``l`` in ``[ell, p_k]`` (the sum of
    these changes does not depend on how ties in ``p`` are ordered).
    """
    m = r.shape[0]
    if m == 2:  # the common case, without allocations: one contiguous compare
        p = _mismatch(F, geo, r[0], r[1], ell)
        fa = _xlog2x(w[0])
        fb = _xlog2x(w[1])
        d = _xlog2x(w[0] + w[1]) - fa - fb
        S_diff[ell] += fa + fb + d
        S_diff[p + 1] -= d
        G_diff[ell] += 1
        G_diff[p + 1] += 1
        return
    if m > 2:
        perm = _lexsort_rows(F, geo, r, ell)
        r[:] = r[perm]
        w[:] = w[perm]
    base = 0.0
    for i in range(m):
        base += _xlog2x(w[i])
    S_diff[ell] += base
    G_diff[ell] += m
    if m == 1:
        return
    e = m - 1
    p = np.empty(e, np.int64)
    for k in range(e):
        p[k] = _mismatch(F, geo, r[k], r[k + 1], ell)
    # Merge order: decreasing p, ties by decreasing k. When edge k merges, its left part is rows
    # lb+1..k (lb: nearest edge to the left with p <= p_k) and its right part rows k+1..rb (rb:
    # nearest edge to the right with p < p_k); monotone stacks find both in O(m).
    cw = np.zeros(m + 1, np.int64)
    for i in range(m):
        cw[i + 1] = cw[i] + w[i]
    lb = np.empty(e, np.int64)
    rb = np.empty(e, np.int64)
    stack = np.empty(e, np.int64)
    top = 0
    for k in range(e):
        while top > 0 and p[stack[top - 1]] > p[k]:
            top -= 1
        lb[k] = stack[top - 1] if top > 0 else -1
        stack[top] = k
        top += 1
    top = 0
    for k in range(e - 1, -1, -1):
        while top > 0 and p[stack[top - 1]] >= p[k]:
            top -= 1
        rb[k] = stack[top - 1] if top > 0 else e
        stack[top] = k
        top += 1
    for k in range(e):
        wa = cw[k + 1] - cw[lb[k] + 1]
        wb = cw[rb[k] + 1] - cw[k + 1]
        d = _xlog2x(wa + wb) - _xlog2x(wa) - _xlog2x(wb)
        S_diff[ell] += d
        S_diff[p[k] + 1] -= d
        G_diff[ell] -= 1
        G_diff[p[k] + 1] += 1


@nb.njit(cache=True, nogil=True)
def _refine(F, geo, j, rows, w, seg, small, S_diff, G_diff):
    """Split every active group (``rows[seg[s]:seg[s+1]]``) by its token in column ``j``.

    Parts of one row and parts of at most ``small`` rows are finished (``S_diff``/``G_diff``);
    larger parts stay active. Returns the new active ``rows, w, seg`` and, at prefix length j+1,
    the active parts' ``sum c log2 c`` and count.
    """
    base, s0, s1, L = geo
    col = base + j * s1
    n = rows.shape[0]
    nseg = seg.shape[0] - 1
    ell = j + 1
    maxm = 0
    for s in range(nseg):
        maxm = max(maxm, seg[s + 1] - seg[s])
    tcap = 8
    while tcap < 2 * maxm:
        tcap *= 2
    ids = np.empty(tcap, np.int64)  # open-addressing table: slot -> local part id, -1 empty
    keys = np.empty(maxm, np.uint64)  # local part id -> its token (the exact key)
    cnt = np.empty(maxm + 1, np.int64)
    lid = np.empty(maxm, np.int64)
    tr = np.empty(maxm, np.int64)
    tw = np.empty(maxm, np.int64)
    tok = np.empty(n, np.uint64)
    for i in range(n):  # gather column j first: independent loads overlap their cache misses
        tok[i] = F[col + rows[i] * s0]
    new_rows = np.empty(n, np.int64)
    new_w = np.empty(n, np.int64)
    new_seg = np.empty(n + 1, np.int64)
    new_seg[0] = 0
    ns = 0
    pos = 0
    S_act = 0.0
    G_act = 0
    for s in range(nseg):
        a = seg[s]
        m = seg[s + 1] - a
        cap = 8
        while cap < 2 * m and cap < 1024:
            cap *= 2
        ids[:cap] = -1
        shift = np.uint64(64 - _log2_int(cap))
        d = 0
        for i in range(m):
            v = tok[a + i]
            h = np.int64((v * _GOLDEN) >> shift)
            while True:
                q = ids[h]
                if q < 0:
                    q = d
                    ids[h] = q
                    keys[q] = v
                    cnt[q] = 0
                    d += 1
                    if 2 * d > cap:
                        cap *= 2
                        shift = np.uint64(64 - _log2_int(cap))
                        _rehash(ids, keys, d, cap)
                    break
                if keys[q] == v:
                    break
                h = (h + 1) & (cap - 1)
            lid[i] = q
            cnt[q] += 1
        # counting-sort the rows of the group by part id
        start = 0
        for q in range(d):
            c = cnt[q]
            cnt[q] = start
            start += c
        cnt[d] = m
        for i in range(m):
            q = lid[i]
            tr[cnt[q]] = rows[a + i]
            tw[cnt[q]] = w[a + i]
            cnt[q] += 1
        lo = 0
        for q in range(d):
            hi = cnt[q]
            c = hi - lo
            if c == 1:
                S_diff[ell] += _xlog2x(tw[lo])
                G_diff[ell] += 1
            elif c <= small:
                _finish_group(F, geo, tr[lo:hi], tw[lo:hi], ell, S_diff, G_diff)
            else:
                W = 0
                for i in range(lo, hi):
                    new_rows[pos] = tr[i]
                    new_w[pos] = tw[i]
                    W += tw[i]
                    pos += 1
                ns += 1
                new_seg[ns] = pos
                S_act += _xlog2x(W)
                G_act += 1
            lo = hi
    return new_rows[:pos], new_w[:pos], new_seg[: ns + 1], S_act, G_act


@nb.njit(cache=True, nogil=True)
def _log2_int(cap):
    b = 0
    while (1 << b) < cap:
        b += 1
    return b


@nb.njit(cache=True, nogil=True)
def _rehash(ids, keys, d, cap):
    """Re-insert the ``d`` distinct keys into a table of ``cap`` slots."""
    ids[:cap] = -1
    shift = np.uint64(64 - _log2_int(cap))
    for q in range(d):
        h = np.int64((keys[q] * _GOLDEN) >> shift)
        while ids[h] >= 0:
            h = (h + 1) & (cap - 1)
        ids[h] = q


@nb.njit(cache=True, nogil=True)
def _count_rows(B, flip, offsets, K_u, cn, tb, loc):
    """Marginal histograms of the rows of ``B``, added to ``cn``.

    ``B`` holds the tokens' bits as unsigned integers, ``flip`` is the sign bit for a signed dtype
    (else 0), so that ``u = (bits ^ flip) - flip`` (64-bit, wrapping) is the token for a token
    >= 0 and >= 2^63 for a negative one. Token u at position t goes to bin ``offsets[t] + u`` of
    ``cn`` when ``u < K_t``: exactly the valid tokens are counted (so a position whose counts sum
    to fewer than its rows holds an invalid token), and nothing is written outside a position's
    bins. Rows are transposed a
    tile of ``R`` rows at a time into ``tb`` (rows padded by ``_PAD`` so that its columns do not
    share cache sets); each position's tokens are then counted from contiguous memory, into the
    16-bit histogram ``loc`` (``R < 2^16`` rows: no overflow; half the cache of 32-bit counts)
    that is added to ``cn`` once per tile, or straight into ``cn`` when ``K_t > R``.
    """
    n, L = B.shape
    R = tb.shape[1] - _PAD
    f = np.uint64(flip)
    for i0 in range(0, n, R):
        r = min(R, n - i0)
        for i in range(r):
            row = B[i0 + i]
            for t in range(L):
                tb[t, i] = row[t]
        for t in range(L):
            off = offsets[t]
            kt = K_u[t]
            k = np.int64(kt)
            col = tb[t]
            if k <= r:
                loc[:k] = 0
                for i in range(r):
                    u = np.uint64(col[i] ^ flip) - f
                    if u < kt:
                        loc[np.int64(u)] += 1
                for x in range(k):
                    cn[off + x] += loc[x]
            else:
                for i in range(r):
                    u = np.uint64(col[i] ^ flip) - f
                    if u < kt:
                        cn[off + np.int64(u)] += 1


# ----------------------------------------------------------------------------- Python API


class _RefuseImport:
    """A ``sys.meta_path`` finder refusing some modules (Python's documented import protocol)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name in self.names:
            raise ImportError(f"{name} is not loaded while the entropy kernels load")
        return None


@contextlib.contextmanager
def without_scipy_linalg():
    """Within the block, ``import scipy.linalg`` fails unless SciPy's linalg is already loaded.

    Numba's first kernel dispatch imports ``scipy.linalg.cython_blas`` (about 0.3 s) only to learn
    whether ``np.dot`` may call BLAS; our kernels call no BLAS, so a command that only measures
    runs its first dispatch inside this block (the probe then finds no BLAS, for this process).
    It relies on Python's import protocol only; a process that needs SciPy loads it outside.
    """
    if "scipy.linalg" in sys.modules:
        yield
        return
    finder = _RefuseImport(("scipy.linalg",))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)



def _integer_corpus(X) -> list[np.ndarray]:
    """``X`` as a list of (n_i, L) integer ndarrays (its parts, read as one corpus in order).

    ``X`` is one array or a sequence of arrays (the shards of a sharded dump). Memory maps stay
    memory maps. Parts must share L and the dtype kind (signed or unsigned); a part of a narrower
    dtype is widened to the widest one (a copy of that part only). Else EntropyCliffError.
    """
    many = isinstance(X, (list, tuple))
    parts = [p if isinstance(p, np.ndarray) else np.asarray(p) for p in (X if many else [X])]
    if not parts:
        raise EntropyCliffError("expected a non-empty (N, L) integer token array, got no arrays")
    for i, P in enumerate(parts):
        if P.ndim != 2 or P.dtype.kind not in "iu" or P.size == 0:
            where = f"part {i}: " if many else ""
            raise EntropyCliffError(f"{where}expected a non-empty (N, L) integer token array, got {P.dtype} {P.shape}")
    L, kind = parts[0].shape[1], parts[0].dtype.kind
    for i, P in enumerate(parts[1:], start=1):
        if P.shape[1] != L:
            raise EntropyCliffError(f"part {i} has L = {P.shape[1]} positions, part 0 has L = {L}")
        if P.dtype.kind != kind:
            raise EntropyCliffError(f"part {i} holds {P.dtype} tokens, part 0 holds {parts[0].dtype} (signed and unsigned mixed)")
    width = max(P.dtype.itemsize for P in parts)
    dt = np.dtype(f"={kind}{width}")
    return [P if P.dtype.itemsize == width else P.astype(dt) for P in parts]


def _flat_geometry(X: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``X`` as a flat buffer of native unsigned integers of the same width, and ``geo``.

    No copy: a 1-D view spanning X's memory, reinterpreted bit for bit. Prefix entropy only
    compares tokens for equality, which any bit-preserving view keeps (signedness, byte order);
    four token widths then cover every integer dtype.
    """
    X = np.asarray(X)
    item = X.dtype.itemsize
    if any(st % item for st in X.strides):  # not addressable in whole tokens (exotic views only)
        X = np.ascontiguousarray(X)
    N, L = X.shape
    s0, s1 = (st // item for st in X.strides)
    low = min(0, (N - 1) * s0) + min(0, (L - 1) * s1)  # offset of the lowest-addressed token
    span = 1 + abs((N - 1) * s0) + abs((L - 1) * s1)
    i0, j0 = (N - 1 if s0 < 0 else 0), (L - 1 if s1 < 0 else 0)
    corner = X[i0 : i0 + 1, j0 : j0 + 1]
    F = np.lib.stride_tricks.as_strided(corner, shape=(span,), strides=(item,), writeable=False)
    return F.view(np.dtype(f"=u{item}")), (-low, s0, s1, L)


def _row_space(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """One flat token buffer ``F``, the offset in ``F`` of every row's first token, and ``geo``.

    The kernels address token (row r, column c) as ``F[off[r] + c s1]`` (``geo = (0, 1, s1, L)``,
    rows given by their offsets), so the rows of several arrays form one corpus without
    concatenation. One array: ``F`` spans its memory. Several: each part is made row-contiguous
    (``s1 = 1``; a copy only of a part that is not) and ``F`` is a view that starts at the
    lowest-addressed part and ends after the highest one; the kernels read only the parts' own
    tokens through it, never the address gaps between them. ``parts`` must stay alive while ``F``
    is used.
    """
    if len(parts) == 1:
        F, (base, s0, s1, L) = _flat_geometry(parts[0])
        return F, base + s0 * np.arange(parts[0].shape[0], dtype=np.int64), (0, 1, s1, L)
    item = parts[0].dtype.itemsize
    rows = []
    for i, P in enumerate(parts):
        if P.strides[1] != item or P.strides[0] % item or P.ctypes.data % item:
            parts[i] = np.ascontiguousarray(P)
    addr = [P.ctypes.data for P in parts]  # address of token (0, 0)
    lows = [a + min(0, (P.shape[0] - 1) * P.strides[0]) for a, P in zip(addr, parts)]
    highs = [a + max(0, (P.shape[0] - 1) * P.strides[0]) + P.shape[1] * item for a, P in zip(addr, parts)]
    first = int(np.argmin(lows))
    base = lows[first]
    for a, P in zip(addr, parts):
        rows.append((a - base) // item + (P.strides[0] // item) * np.arange(P.shape[0], dtype=np.int64))
    P0 = parts[first]
    corner = P0[(P0.shape[0] - 1 if P0.strides[0] < 0 else 0):][:1, :1]
    F = np.lib.stride_tricks.as_strided(corner, shape=((max(highs) - base) // item,), strides=(item,),
                                        writeable=False)
    return F.view(np.dtype(f"=u{item}")), np.concatenate(rows), (0, 1, 1, parts[0].shape[1])


def _want_progress(progress: bool | None, size: int) -> bool:
    if progress is None:
        return size >= PROGRESS_MIN_TOKENS and sys.stderr.isatty()
    return progress


def _bar(enabled: bool, total: int, desc: str, unit: str):
    """A :class:`entropy_cliff.progress.Progress` when enabled, else None."""
    if not enabled:
        return None
    from entropy_cliff.progress import Progress

    return Progress(total, desc=desc, unit=unit)


def _prefix_sums(parts: list[np.ndarray], weights: np.ndarray | None, small_group: int, progress: bool):
    """``S_l = sum_g c_g log2 c_g`` and ``G_l`` for prefix lengths l = 0..L, plus the total weight.

    ``parts`` (see :func:`_integer_corpus`) are one corpus; ``weights`` follow their rows in order.
    """
    N, L = sum(P.shape[0] for P in parts), parts[0].shape[1]
    F, offsets, geo = _row_space(parts)
    if weights is None:
        rows = offsets
        w = np.ones(N, dtype=np.int64)
    else:
        weights = np.asarray(weights)
        if weights.shape != (N,) or weights.dtype.kind not in "iub":
            raise EntropyCliffError(f"weights must be {N} non-negative integers, got {weights.dtype} {weights.shape}")
        if weights.size and weights.min() < 0:
            raise EntropyCliffError("weights must be non-negative")
        keep = np.flatnonzero(weights)
        rows = offsets[keep]
        w = weights[keep].astype(np.int64)
    W = int(w.sum())
    if W == 0:
        raise EntropyCliffError("all weights are zero")
    n_rows = rows.size
    # sum c log2 c once every row is its own prefix (0 for unit weights)
    all_apart = 0.0 if weights is None else float(estimators.xlog2x(w).sum())
    S_act = np.zeros(L + 1)
    G_act = np.zeros(L + 1, np.int64)
    S_diff = np.zeros(L + 2)
    G_diff = np.zeros(L + 2, np.int64)
    if rows.size <= max(small_group, 1):
        _finish_group(F, geo, rows, w, 0, S_diff, G_diff)
        rows = rows[:0]
    else:
        S_act[0] = W * math.log2(W) if W > 1 else 0.0
        G_act[0] = 1
    seg = np.array([0, rows.size], dtype=np.int64)
    bar = _bar(progress, L, "prefix entropy", "pos")
    for j in range(L):
        if rows.size == 0:
            break
        rows, w, seg, S_act[j + 1], G_act[j + 1] = _refine(F, geo, j, rows, w, seg, small_group, S_diff, G_diff)
        if bar is not None:
            bar.postfix(active=rows.size)
            bar.update(1)
    if bar is not None:
        bar.close()
    S = S_act + np.cumsum(S_diff)[: L + 1]
    G = G_act + np.cumsum(G_diff)[: L + 1]
    _exact_where_known(S, G, n_rows, all_apart, W)
    return S, G, W


def _exact_where_known(S: np.ndarray, G: np.ndarray, n_rows: int, all_apart: float = 0.0, W: int | None = None) -> None:
    """Set ``S`` exactly where the partition is known, in place: equal group counts mean an
    unchanged partition (refinement), so S is unchanged; ``G = n_rows`` (rows of positive weight)
    means all rows are apart (``S = all_apart``, 0 for unit weights). ``W`` defaults to n_rows."""
    W = n_rows if W is None else W
    S[G == n_rows] = all_apart
    S[0] = W * math.log2(W) if W > 1 else 0.0
    for t in range(1, len(S)):
        if G[t] == G[t - 1]:
            S[t] = S[t - 1]


def prefix_entropy(
    X: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    small_group: int = SMALL_GROUP,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact plug-in prefix entropies ``H(X_{<=t})`` (bits) and distinct-prefix counts ``G_t``.

    ``X`` is an (N, L) integer array or a sequence of (n_i, L) arrays read as one corpus.

    ``H(X_{<=t}) = log2 W - (1/W) sum_g C_g log2 C_g`` where ``C_g`` is the total weight of the rows
    whose length-t prefix is g and ``W`` the total weight (``weights=None``: every row weighs 1,
    W = N). ``G_t`` counts the distinct prefixes among rows of positive weight. Both arrays have
    shape (L,), entry t-1 for prefix length t. ``small_group`` is the group size below which groups
    are finished on contiguous rows (0: column by column only; >= N: contiguous only); the result
    does not depend on it.
    """
    parts = _integer_corpus(X)
    N, L = sum(P.shape[0] for P in parts), parts[0].shape[1]
    S, G, W = _prefix_sums(parts, weights, small_group, _want_progress(progress, N * L))
    H = math.log2(W) - S / W
    return H[1:], G[1:]


def column_maxima(parts: list[np.ndarray]) -> list[int]:
    """Per-position maximum token over every part, as Python ints (one streaming NumPy read, no copy)."""
    return np.max([P.max(axis=0) for P in parts], axis=0).tolist()


def column_extremes(parts: list[np.ndarray]) -> tuple[list[int], list[int]]:
    """Per-position minimum and maximum token over every part, as Python ints (NumPy reductions:
    one streaming read per extreme, no copy)."""
    return np.min([P.min(axis=0) for P in parts], axis=0).tolist(), column_maxima(parts)


def _histograms(parts: list[np.ndarray], K: np.ndarray, progress: bool) -> np.ndarray:
    """Marginal counts (int32 below 2^31 rows, else int64; positions concatenated: ``sum K_t``
    bins) in one pass: T threads
    (``NUMBA_NUM_THREADS``) each take a contiguous share of the rows, in blocks, into private
    counts (:func:`_count_rows`). Exactly the tokens in ``[0, K_t)`` are counted."""
    N, L = sum(P.shape[0] for P in parts), parts[0].shape[1]
    dt = parts[0].dtype.newbyteorder("=")
    ut = np.dtype(f"=u{dt.itemsize}")
    flip = ut.type(1 << (8 * dt.itemsize - 1) if dt.kind == "i" else 0)
    bins = sum(K.tolist())  # Python ints: no overflow before the size check
    if bins > MAX_DENSE_BINS:
        raise EntropyCliffError(f"{bins} marginal histogram bins exceed {MAX_DENSE_BINS}")
    offsets = _bin_offsets(K)
    K_u = K.astype(np.uint64)
    row_bytes = L * dt.itemsize
    T = max(1, min(nb.config.NUMBA_NUM_THREADS, N // _MIN_THREAD_ROWS))
    tile = min(_MAX_TILE_ROWS, max(1, _TILE_BYTES // row_bytes), -(-N // T))
    step = tile * max(1, _BLOCK_BYTES // (row_bytes * tile))
    counts = np.zeros((T, bins), dtype=np.int32 if N < 2**31 else np.int64)
    starts = np.cumsum([0] + [P.shape[0] for P in parts])
    bar = _bar(progress, N, "scan", "row")
    lock = threading.Lock()

    def work(k: int) -> None:
        tb = np.empty((L, tile + _PAD), dtype=ut)
        loc = np.empty(tile, dtype=np.uint16)
        g0, g1 = N * k // T, N * (k + 1) // T  # this thread's rows, in corpus order
        for X, s in zip(parts, starts):
            for r0 in range(max(g0, s), min(g1, s + X.shape[0]), step):
                r1 = min(r0 + step, g1, s + X.shape[0])
                B = np.ascontiguousarray(X[r0 - s : r1 - s], dtype=dt).view(ut)  # a copy only if strided
                B.flags.writeable = False  # one compiled kernel for memory maps and in-memory arrays alike
                _count_rows(B, flip, offsets, K_u, counts[k], tb, loc)
                if bar is not None:
                    with lock:
                        bar.update(B.shape[0])

    with ThreadPoolExecutor(T) as pool:
        list(pool.map(work, range(T)))
    if bar is not None:
        bar.close()
    for k in range(1, T):  # in place: no new array of sum K_t bins
        np.add(counts[0], counts[k], out=counts[0])
    return counts[0]


def _scan(parts: list[np.ndarray], K: np.ndarray | None, progress: bool):
    """Per-position min and max (as Python ints) and marginal counts (:func:`_histograms`, int64:
    they may be summed over blocks) when ``K`` is given."""
    lo, hi = column_extremes(parts)
    return lo, hi, (_histograms(parts, K, progress).astype(np.int64) if K is not None else None)


def _check_values(mins: list[int], maxs: list[int], K: np.ndarray | None) -> None:
    """Raise for the first position holding a negative token or a token >= K_t."""
    for t, (lo, hi) in enumerate(zip(mins, maxs)):
        k = f"K_t = {int(K[t])}" if K is not None else "K inferred"
        if lo < 0:
            raise EntropyCliffError(f"position {t + 1}: negative token {lo} ({k}); tokens must be >= 0")
        if K is not None and hi >= int(K[t]):
            raise EntropyCliffError(f"position {t + 1}: token {hi} >= K_t = {int(K[t])}; tokens must lie in [0, K_t)")


def _codebook_sizes(K, L: int) -> np.ndarray | None:
    """``K`` (None or L positive integers <= :data:`~entropy_cliff.theory.MAX_CODEBOOK`) as int64."""
    if K is None:
        return None
    K = np.asarray(K)
    if K.ndim != 1 or K.shape[0] != L:
        raise EntropyCliffError(f"K lists {K.size} codebook sizes but the corpus has L = {L} positions")
    if K.dtype.kind not in "iuO" or (K.dtype.kind == "O" and not all(isinstance(k, int) for k in K.tolist())):
        raise EntropyCliffError(f"codebook sizes K_t must be positive integers, got {K.dtype}")
    ks = [int(k) for k in K.tolist()]
    bad = next((t for t, k in enumerate(ks) if not 1 <= k <= MAX_CODEBOOK), None)
    if bad is not None:
        raise EntropyCliffError(f"K_{bad + 1} = {ks[bad]}: codebook sizes must be positive integers no larger than 2^62")
    return np.array(ks, dtype=np.int64)


def inferred_codebook(maxs: list[int], L: int) -> np.ndarray:
    """K_t = the global maximum token + 1 at every position."""
    top = max(maxs) + 1
    if top > MAX_CODEBOOK:
        raise EntropyCliffError(f"largest token {top - 1} needs a codebook of {top} > 2^62 entries (the supported maximum)")
    return np.full(L, top, dtype=np.int64)


def _bin_offsets(K: np.ndarray) -> np.ndarray:
    """Where each position's bins start in histograms concatenated by position."""
    return np.concatenate(([0], np.cumsum(K)[:-1])).astype(np.int64)


def _dense_histograms(K: np.ndarray) -> bool:
    return sum(K.tolist()) <= MAX_DENSE_BINS


def _marginal_from_counts(N: int, K: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``M_t = log2 N - (1/N) sum_x c_{t,x} log2 c_{t,x}`` from histograms concatenated by position."""
    offsets = _bin_offsets(K)
    top = int(counts.max())
    # Counts repeat (sum K_t bins, few distinct values): look c log2 c up instead of computing it,
    # a run of positions at a time (no float array of all the bins).
    table = estimators.xlog2x(np.arange(top + 1)) if top < counts.size else None
    s = np.empty(len(K))
    t0 = 0
    while t0 < len(K):
        t1 = int(np.searchsorted(offsets, offsets[t0] + _MARGINAL_CHUNK, side="right"))
        t1 = max(t1, t0 + 1)
        a, b = offsets[t0], offsets[t1 - 1] + K[t1 - 1]
        terms = table[counts[a:b]] if table is not None else estimators.xlog2x(counts[a:b])
        s[t0:t1] = np.add.reduceat(terms, offsets[t0:t1] - a)
        t0 = t1
    return math.log2(N) - s / N


def _marginal_entropy(parts: list[np.ndarray], K: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """``M_t = H(X_t)`` from the dense histograms, or column by column when those are too large."""
    N = sum(P.shape[0] for P in parts)
    if counts is not None:
        return _marginal_from_counts(N, K, counts)
    return np.array([estimators.plugin_entropy(np.unique(np.concatenate([np.asarray(P[:, t]) for P in parts]),
                                                         return_counts=True)[1])
                     for t in range(parts[0].shape[1])])


def measurement_from_sums(N: int, K: np.ndarray, K_inferred: bool, S: np.ndarray, G: np.ndarray,
                          H_marginal: np.ndarray) -> Measurement:
    """A :class:`Measurement` from ``S_l = sum_g c_g log2 c_g`` and ``G_l`` (l = 0..L) of N rows.

    ``H(X_{<=t}) = log2 N - S_t / N``, ``H_t`` its differences, Miller–Madow from ``G_t``,
    ``U_t = M_t / log2 K_t`` (NaN where K_t = 1). Every engine ends here.
    """
    H_prefix = math.log2(N) - np.asarray(S, dtype=np.float64)[1:] / N
    groups = np.asarray(G, dtype=np.int64)[1:]
    H_cond = np.diff(H_prefix, prepend=0.0)
    H_cond_mm = np.diff(estimators.miller_madow(H_prefix, groups, N), prepend=0.0)
    utilization = np.where(K > 1, H_marginal / np.log2(np.maximum(K, 2).astype(np.float64)), np.nan)
    return Measurement(N=N, L=len(K), K=K, K_inferred=K_inferred, H_prefix=H_prefix, H_cond=H_cond,
                       H_cond_mm=H_cond_mm, groups=groups, H_marginal=H_marginal,
                       utilization=utilization)


def measure(
    X,
    K=None,
    *,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool | None = None,
    small_group: int = SMALL_GROUP,
) -> Measurement:
    """Measure an (N, L) integer corpus: prefix, conditional, Miller–Madow and marginal entropies.

    ``X`` is one (N, L) array or a sequence of (n_i, L) arrays (the shards of a sharded dump,
    see :mod:`entropy_cliff.shards`) measured as one corpus of N = sum n_i rows, never concatenated.
    ``K`` gives the codebook size per position (length L, each in [1, 2^62]); when None it is
    inferred as the global maximum token + 1. Raises :class:`EntropyCliffError` for a negative
    token or a token >= K_t.
    ``bootstrap = B > 0`` adds the population estimate of H_t and intervals at level ``confidence``
    from B row resamples (``seed``), NaN where the sample cannot identify them
    (:func:`entropy_cliff.population.population_entropy`).
    ``small_group`` tunes the kernel (see :func:`prefix_entropy`) and never changes the result.
    """
    parts = _integer_corpus(X)
    N, L = sum(P.shape[0] for P in parts), parts[0].shape[1]
    show = _want_progress(progress, N * L)
    K = _codebook_sizes(K, L)
    if bootstrap:  # checked before the long pass (a negative B is refused there too)
        from entropy_cliff.population import MAX_SINGLETON_MASS, check_arguments

        check_arguments(confidence, MAX_SINGLETON_MASS, bootstrap)
    K_inferred = K is None
    if K_inferred:
        mins, maxs = column_extremes(parts)
        _check_values(mins, maxs, None)
        K = inferred_codebook(maxs, L)
    dense = _dense_histograms(K)
    if not K_inferred and not dense:
        _check_values(*column_extremes(parts), K)
    # The histograms and the prefix kernel run at the same time (the kernels release the GIL). The
    # histograms count exactly the valid tokens: with fewer than N at some position, the value
    # check finds and reports the first invalid token.
    with ThreadPoolExecutor(1) as pool:
        histograms = pool.submit(_histograms, parts, K, show) if dense else None
        S, G, _ = _prefix_sums(parts, None, small_group, show)
        counts = None if histograms is None else histograms.result()
    if counts is not None and not K_inferred and (np.add.reduceat(counts, _bin_offsets(K)) != N).any():
        _check_values(*column_extremes(parts), K)
    H_marginal = _marginal_entropy(parts, K, counts)
    m = measurement_from_sums(N, K, K_inferred, S, G, H_marginal)
    population = None
    if bootstrap:
        from entropy_cliff.population import population_entropy  # only with --bootstrap: start-up

        population = population_entropy(parts, m.H_cond, m.groups, K, bootstrap=bootstrap, confidence=confidence,
                                        seed=seed)
    return dataclasses.replace(m, population=population,
                               engine={"name": "local", "workers": 1, "threads": nb.config.NUMBA_NUM_THREADS})
