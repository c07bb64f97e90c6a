"""The Dask engine: exact per-position entropies of a corpus spread over a dask.distributed cluster.

Sums of ``c log2 c`` over prefix groups add across any split of the rows that keeps every group
whole. Rows are therefore exchanged (Dask's own shuffle: a ``dask.bag`` groupby) by a key of
their first tokens, and our exact Numba kernel runs on each partition:

1. **Scan** (one task per run of row blocks, as many as partitions): per-position min/max (value
   checks) and marginal counts, summed over blocks in the task and over tasks in a tree; K_t is
   inferred here when it is not given.
2. **Windows.** Positions are cut into windows whose tokens pack exactly into 64 bits
   (``b_t = bitlength(K_t - 1)`` bits each; tiny early codebooks put many positions in one key).
3. **Level j** (window ``[a, e)``; level 1 holds every row): each row's key is
   ``(p, k)``, ``p`` the id of its heavy group at level j-1 (0 at level 1) and ``k`` its packed
   window. The global count of keys (exchanged by a hash of the key) gives ``S_l = sum c log2 c``
   and ``G_l`` exactly for the prefix lengths ``a < l <= e`` (coarser prefixes by shifting k and
   re-counting). Keys holding more than ``heavy_rows`` rows are *heavy*: their rows go on to
   level j+1 (the next window), so no partition receives a heavy prefix whole. The row indices of
   the other non-singleton keys are exchanged by a hash of the key; each partition reads its rows
   (memory-mapped shards), runs the kernel and keeps ``S_l, G_l`` for ``l > e``; a key of one row
   adds 1 to ``G_l`` for every ``l > e``.
4. ``S_l`` and ``G_l`` add over levels and partitions; :func:`entropy_cliff.measure.measurement_from_sums`
   builds the result, identical to the single-machine engine (groups exactly, entropies to
   rounding).
5. **Bootstrap** (``bootstrap = B``): the population sums of :mod:`entropy_cliff.population`
   (``A_l = sum_g C_g G(C_g)`` per replicate, ``f1_l``, total weights ``W``) add the same way. Each
   key carries its rows' weights in every replicate (a row's weight is a function of the seed,
   the replicate and its global index), so the key tables give them for ``a < l <= e``, a key of
   one row adds its term to every ``l > e``, and the kernels add theirs for ``l > e``;
   :func:`entropy_cliff.population.estimate_from_sums` builds the estimate as the local engine does.

Workers read the shards themselves (by path): on a multi-node cluster the dump must sit on a
filesystem every worker sees.
"""

from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from entropy_cliff import estimators
from entropy_cliff import measure as M
from entropy_cliff import population as POP
from entropy_cliff.errors import EntropyCliffError

#: Seconds to wait for a scheduler to answer and to have at least one worker.
CONNECT_TIMEOUT = 10.0
#: Key tables up to this many keys are reduced on the client (coarser prefixes of a window).
LOCAL_KEYS = 1 << 22


@dataclass(frozen=True)
class _Corpus:
    """Shard files by path (workers open them) and the global index of each one's first row."""

    paths: tuple[str, ...]
    starts: tuple[int, ...]  # len(paths) + 1 entries
    L: int

    def open(self, i: int) -> np.ndarray:
        return np.load(self.paths[i], mmap_mode="r")

    def rows(self, g: np.ndarray) -> np.ndarray:
        """The rows with global indices ``g`` (sorted), as one contiguous array."""
        s = np.searchsorted(self.starts, g, side="right") - 1
        out = [np.asarray(self.open(i)[g[s == i] - self.starts[i]]) for i in np.unique(s)]
        return np.concatenate(out) if len(out) > 1 else out[0]


def _corpus(source) -> _Corpus:
    from entropy_cliff.shards import load_shards, shard_paths

    if Path(source).is_dir():  # load_shards checks L and the dtype kinds, load_tokens the one file
        paths, arrays = shard_paths(source), load_shards(source)
    else:
        from entropy_cliff.io import load_tokens

        paths, arrays = [Path(source)], [load_tokens(source)]
        if not isinstance(arrays[0], np.memmap):
            raise EntropyCliffError(f"{source}: the dask engine reads .npy files or shard directories")
    kept = [str(p) for p in paths if np.load(p, mmap_mode="r").shape[0] > 0]
    sizes = [a.shape[0] for a in arrays]
    return _Corpus(tuple(kept), tuple(np.concatenate(([0], np.cumsum(sizes))).tolist()), arrays[0].shape[1])


# ----------------------------------------------------------------------------- packed keys


def _bits(k_t) -> int:
    """``b_t = bitlength(K_t - 1)``: the bits one token of a codebook of K_t entries takes in a key."""
    return (int(k_t) - 1).bit_length()


def _windows(K: np.ndarray) -> list[tuple[int, int]]:
    """Cut positions 0..L-1 into windows ``[a, e)`` whose tokens (b_t bits each) fit 64 bits."""
    bits = [_bits(k) for k in K]
    out, a = [], 0
    while a < len(bits):
        e, used = a, 0
        while e < len(bits) and used + bits[e] <= 64:
            used += bits[e]
            e += 1
        out.append((a, e))
        a = e
    return out


def _pack(B: np.ndarray, K: np.ndarray, a: int, e: int) -> np.ndarray:
    """``k = sum_t x_t << (bits of positions t+1..e-1)``: the window's tokens as one exact uint64."""
    k = np.zeros(B.shape[0], np.uint64)
    for t in range(a, e):
        b = _bits(K[t])
        if b:
            k = (k << np.uint64(b)) | B[:, t].astype(np.uint64)
    return k


def _bucket(p: np.ndarray, k: np.ndarray, P: int) -> np.ndarray:
    """Partition of key (p, k): a splitmix64 hash modulo P."""
    with np.errstate(over="ignore"):
        z = k ^ (p.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(P)).astype(np.int64)


def _count(p: np.ndarray, k: np.ndarray, c: np.ndarray):
    """Merge (p, k, c) triples with equal keys, summing c; also returns each input's group index."""
    if p.size == 0:
        return p, k, c, np.zeros(0, np.int64)
    order = np.lexsort((k, p))
    ps, ks = p[order], k[order]
    new = np.ones(p.size, bool)
    new[1:] = (ps[1:] != ps[:-1]) | (ks[1:] != ks[:-1])
    starts = np.flatnonzero(new)
    inv = np.empty(p.size, np.int64)
    inv[order] = np.cumsum(new) - 1
    return ps[starts], ks[starts], np.add.reduceat(c[order], starts), inv


def _split(P: int, p, k, *cols):
    """Items ``(bucket, (p, k, *cols))`` for the exchange, one per non-empty bucket."""
    b = _bucket(p, k, P)
    return [(int(j), (p[b == j], k[b == j], *(c[b == j] for c in cols))) for j in np.unique(b)]


def _merge(group):
    """An exchanged bucket: concatenate the arrays of its items column by column."""
    _, items = group
    return tuple(np.concatenate([it[1][i] for it in items]) for i in range(len(items[0][1])))


# ----------------------------------------------------------------------------- tasks


def _by_dtype(corpus: _Corpus, blocks) -> list[list[np.ndarray]]:
    """A run of blocks grouped by dtype: the kernels read parts of one dtype together, and shards
    may differ in width or byte order."""
    groups: dict[str, list[np.ndarray]] = {}
    for i, r0, r1 in blocks:
        B = corpus.open(i)[r0:r1]
        groups.setdefault(B.dtype.str, []).append(B)
    return list(groups.values())


def _scan_task(corpus: _Corpus, blocks, K):
    """Min, max and (with K) marginal counts of a run of blocks: one result per task, not per block
    (the counts are ``sum K_t`` int64, 32 MiB at K = 16384 and L = 256)."""
    return functools.reduce(_combine_scans, (M._scan(parts, K, False) for parts in _by_dtype(corpus, blocks)))


def _histogram_task(corpus: _Corpus, blocks, K):
    """The marginal counts alone (int64), once K_t is known from a first scan."""
    return sum(M._histograms(parts, K, False).astype(np.int64) for parts in _by_dtype(corpus, blocks))


def _runs(blocks: list, n: int) -> list[list]:
    """``blocks`` cut into at most ``n`` runs of consecutive blocks, as even as possible."""
    n = max(1, min(n, len(blocks)))
    return [blocks[len(blocks) * k // n: len(blocks) * (k + 1) // n] for k in range(n)]


def _columns_task(corpus: _Corpus, block):
    """Per-position (values, counts) of a block: the marginals when dense histograms are too big."""
    i, r0, r1 = block
    B = np.asarray(corpus.open(i)[r0:r1])
    return [np.unique(B[:, t], return_counts=True) for t in range(B.shape[1])]


def _combine_columns(a, b):
    out = []
    for (va, ca), (vb, cb) in zip(a, b):
        v, inv = np.unique(np.concatenate([va, vb]), return_inverse=True)
        c = np.zeros(v.size, np.int64)
        np.add.at(c, inv, np.concatenate([ca, cb]))
        out.append((v, c))
    return out


def _combine_scans(a, b):
    lo = [min(x, y) for x, y in zip(a[0], b[0])]
    hi = [max(x, y) for x, y in zip(a[1], b[1])]
    return lo, hi, (None if a[2] is None else a[2] + b[2])


def _level_keys(corpus: _Corpus, block, K, wins, heavy, j):
    """Global row indices and level-j keys (p, k) of the block's rows that reach level j."""
    i, r0, r1 = block
    B = np.asarray(corpus.open(i)[r0:r1])
    g = corpus.starts[i] + np.arange(r0, r1, dtype=np.int64)
    p = np.zeros(B.shape[0], np.int64)
    for lvl in range(j):
        a, e = wins[lvl]
        k = _pack(B, K, a, e)
        if lvl == j - 1:
            return g, p, k
        up, uk, _, inv = _count(p, k, np.zeros(p.size, np.int64))
        ids = np.array([heavy[lvl].get((int(x), int(y)), -1) for x, y in zip(up.tolist(), uk.tolist())],
                       dtype=np.int64)[inv]
        keep = ids >= 0
        B, g, p = B[keep], g[keep], ids[keep]
    raise AssertionError("unreachable")


def _weights(g: np.ndarray, boot: tuple[int, int]) -> np.ndarray:
    """(rows, 1 + B): 1, then each row's weight in bootstrap replicate b (``boot = (B, seed)``;
    :func:`entropy_cliff.population.poisson_weights` of the global row index ``g``)."""
    B, seed = boot
    C = np.ones((g.size, 1 + B), np.int64)
    if B:
        C[:, 1:] = POP.poisson_weights(POP.as_seed(seed), B, g)
    return C


def _count_items(block, corpus, K, wins, heavy, j, P, boot):
    g, p, k = _level_keys(corpus, block, K, wins, heavy, j)
    up, uk, uc, _ = _count(p, k, _weights(g, boot))
    return _split(P, up, uk, uc)


def _coarser_items(table, shift, P):
    p, k, c = table
    up, uk, uc, _ = _count(p, k >> shift, c)
    return _split(P, up, uk, uc)


def _population_sums(C: np.ndarray):
    """Per column of a key table's weights ``C`` (keys, 1 + B): ``sum C G(C)`` over all keys and over
    the keys of one row, and the total weight (:mod:`entropy_cliff.population`)."""
    one = C[:, 0] == 1
    return POP.group_sums(C, POP.g_table()), POP.group_sums(C[one], POP.g_table()), C.sum(axis=0)


def _table_stats(table, heavy_rows, pop):
    """``sum c log2 c``, group count, singletons and heavy keys of one merged bucket table (c: its
    weights' column 0), with ``pop`` its :func:`_population_sums`."""
    p, k, C = table
    up, uk, uC, _ = _count(p, k, C)
    uc = uC[:, 0]
    big = uc > heavy_rows
    return (float(estimators.xlog2x(uc).sum()), int(uc.size), int((uc == 1).sum()),
            list(zip(up[big].tolist(), uk[big].tolist())), _population_sums(uC) if pop else None)


def _row_items(block, corpus, K, wins, heavy, j, P):
    g, p, k = _level_keys(corpus, block, K, wins, heavy, j)
    if heavy[j - 1]:
        up, uk, _, inv = _count(p, k, np.zeros(p.size, np.int64))
        hv = np.array([(x, y) in heavy[j - 1] for x, y in zip(up.tolist(), uk.tolist())], bool)[inv]
        g, p, k = g[~hv], p[~hv], k[~hv]
    return _split(P, p, k, g)


def _kernel_task(corpus: _Corpus, bucket, e, small_group, boot):
    """``S_l``, ``G_l`` for ``l > e`` over a bucket's non-singleton keys (rows read by index), and
    with a bootstrap (``boot = (B, seed)``, B > 0) the population sums ``A_l``, ``f1_l`` for ``l > e``."""
    p, k, g = bucket
    _, _, c, inv = _count(p, k, np.ones(p.size, np.int64))
    g = np.sort(g[c[inv] > 1])
    L = corpus.L
    if g.size == 0:
        return np.zeros(L - e), np.zeros(L - e, np.int64), 0, None
    X = M._integer_corpus(corpus.rows(g))
    S, G, _ = M._prefix_sums(X, None, small_group, False)
    pop = None
    if boot[0]:  # up to the first prefix length where these rows are all apart; constant after it
        apart = np.flatnonzero(G == g.size)
        T = int(apart[0]) if apart.size else L
        A, f1, _ = POP.prefix_group_sums(X, g, T, *boot)
        A = np.pad(A, ((0, 0), (0, L - T)), mode="edge")
        f1 = np.pad(f1, (0, L - T), mode="edge")
        pop = A[:, e + 1 :], f1[e + 1 :]
    return S[e + 1 :], G[e + 1 :], int(g.size), pop


# ----------------------------------------------------------------------------- the engine


def _client(scheduler: str | None, workers: int | None, timeout: float):
    """A Client on ``scheduler`` (waiting up to ``timeout`` s for a worker) or on a new LocalCluster."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as e:
            raise EntropyCliffError(f"cannot reach the dask scheduler at {scheduler} ({e})") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            client.close()
            raise EntropyCliffError(f"the dask scheduler at {scheduler} has no workers (waited {timeout:g} s)") from None
        return client, None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                           processes=True)
    return Client(cluster), cluster


def measure_distributed(
    source: str | os.PathLike,
    K=None,
    *,
    client=None,
    scheduler: str | None = None,
    workers: int | None = None,
    partitions: int | None = None,
    block_rows: int | None = None,
    heavy_rows: int | None = None,
    small_group: int = M.SMALL_GROUP,
    local_keys: int = LOCAL_KEYS,
    connect_timeout: float | None = None,
    bootstrap: int = 0,
    confidence: float = 0.95,
    seed: int = 0,
) -> M.Measurement:
    """Measure a token dump (``.npy`` file or shard directory) on a dask.distributed cluster.

    The result equals :func:`entropy_cliff.measure.measure` on the same corpus (``groups``
    exactly, entropies to rounding) and carries ``engine = {"name": "dask", "workers", "scheduler",
    "partitions", "blocks", "scan_tasks", "levels", "heavy_groups", "rows_in_kernels"}`` (levels: windows
    visited; rows_in_kernels: rows read by the partition kernels, the non-singleton keys). The cluster is ``client``
    (a ``distributed.Client``), or the scheduler at ``scheduler`` (an error after
    ``connect_timeout`` s, default :data:`CONNECT_TIMEOUT`, without a worker), or a new LocalCluster of ``workers`` processes.
    ``partitions`` (default 4 per worker), ``block_rows`` (default: 64 MiB blocks) and
    ``heavy_rows`` (default: a quarter of a partition's fair share, at least 65536) tune the work,
    never the result; so does ``local_keys``: a window's key table with at most that many keys
    is brought to this machine for its coarser prefixes instead of one exchange per position.
    ``bootstrap = B > 0`` adds the population estimate and intervals (``population``) exactly as the
    local engine does from the same ``seed``: a replicate's row weights depend only on the seed, the
    replicate and the global row index, and the sums over prefix groups add over keys and partitions.
    """
    POP.check_arguments(confidence, POP.MAX_SINGLETON_MASS, bootstrap)
    corpus = _corpus(source)
    N, L = corpus.starts[-1], corpus.L
    K = M._codebook_sizes(K, L)
    own = client is None
    cluster = None
    if own:
        if scheduler is None and not workers:
            raise EntropyCliffError("the dask engine needs a scheduler address or a number of workers")
        client, cluster = _client(scheduler, workers, CONNECT_TIMEOUT if connect_timeout is None else connect_timeout)
    try:
        n_workers = len(client.scheduler_info()["workers"])
        P = partitions or max(1, 4 * n_workers)
        item = np.load(corpus.paths[0], mmap_mode="r").dtype.itemsize
        step = block_rows or max(1, (1 << 26) // (L * item))
        blocks = [(i, r0, min(r0 + step, corpus.starts[i + 1] - corpus.starts[i]))
                  for i in range(len(corpus.paths)) for r0 in range(0, corpus.starts[i + 1] - corpus.starts[i], step)]
        cap = heavy_rows or max(1 << 16, N // (4 * P))
        engine = {"name": "dask", "workers": n_workers, "scheduler": client.scheduler_info()["address"], "partitions": P,
                  "blocks": len(blocks)}
        m = _run(client, corpus, blocks, K, P, cap, small_group, local_keys, engine, (bootstrap, seed),
                 confidence)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    return m


def _reduce(client, futures, combine):
    """Pairwise tree reduction of futures on the cluster."""
    while len(futures) > 1:
        nxt = [client.submit(combine, a, b, pure=False) for a, b in zip(futures[::2], futures[1::2])]
        futures = nxt + ([futures[-1]] if len(futures) % 2 else [])
    return futures[0].result()


def _run(client, corpus, blocks, K, P, cap, small_group, local_keys, engine, boot, confidence) -> M.Measurement:
    """The levels of the module docstring; with ``boot = (B, seed)``, B > 0, the population sums
    ``A`` (1 + B, L + 1), ``f1`` and the total weights ``W`` ride along: key tables carry each key's
    weight per replicate, singleton keys add their terms to every longer prefix, kernels add theirs."""
    import dask.bag as db

    N, L = corpus.starts[-1], corpus.L
    dense = K is not None and M._dense_histograms(K)
    runs = _runs(blocks, P)  # as many scan tasks as partitions: P histograms to sum, not one per block
    engine["scan_tasks"] = len(runs)
    lo, hi, counts = _reduce(client, client.map(_scan_task, [corpus] * len(runs), runs, K=K if dense else None,
                                                pure=False), _combine_scans)
    M._check_values(lo, hi, K)
    K_inferred = K is None
    if K_inferred:
        K = M.inferred_codebook(hi, L)
        dense = M._dense_histograms(K)
        if dense:
            counts = _reduce(client, client.map(_histogram_task, [corpus] * len(runs), runs, K=K, pure=False),
                             operator.add)
    if dense:
        H_marginal = M._marginal_from_counts(N, K, counts)
    else:
        cols = _reduce(client, client.map(_columns_task, [corpus] * len(blocks), blocks, pure=False), _combine_columns)
        H_marginal = np.array([estimators.plugin_entropy(c) for _, c in cols])

    wins = _windows(K)
    S = np.zeros(L + 1)
    G = np.zeros(L + 1, np.int64)
    G[0] = 1  # S[0] = N log2 N is set by M._exact_where_known
    pop = boot[0] > 0
    A = np.zeros((1 + boot[0], L + 1))
    f1 = np.zeros(L + 1, np.int64)
    W = np.zeros(1 + boot[0], np.int64)
    heavy: list[dict] = []
    src = db.from_sequence(blocks, npartitions=len(blocks))
    in_kernels = n_heavy = 0

    def add(stats: list, l: int) -> None:
        """Add the :func:`_table_stats` of every bucket at prefix length l."""
        S[l] += sum(s[0] for s in stats)
        G[l] += sum(s[1] for s in stats)
        if pop:
            A[:, l] += sum(s[4][0] for s in stats)
            f1[l] += sum(s[2] for s in stats)

    for j, (a, e) in enumerate(wins, start=1):
        def exchange(bag):
            return bag.groupby(lambda it: it[0], npartitions=P, shuffle="tasks").map(_merge)

        tables = client.persist(exchange(src.map(_count_items, corpus=corpus, K=K, wins=wins, heavy=heavy, j=j,
                                                 P=P, boot=boot).flatten()))
        stats = client.compute(tables.map(_table_stats, heavy_rows=cap, pop=pop)).result()
        add(stats, e)
        singles = sum(s[2] for s in stats)
        if pop:
            single_A = sum(s[4][1] for s in stats)
            if j == 1:
                W = sum(s[4][2] for s in stats)
        hv = [key for s in stats for key in s[3]]
        small = sum(s[1] for s in stats) <= local_keys
        if small and e - 1 > a:  # a small key table: the coarser prefixes on this machine
            p, k, c = (np.concatenate(x) for x in zip(*client.compute(tables).result()))
        for l in range(e - 1, a, -1):  # coarser prefixes inside the window
            if small:
                p, k, c, _ = _count(p, k >> np.uint64(_bits(K[l])), c)  # drop position l + 1
                S[l] += float(estimators.xlog2x(c[:, 0]).sum())
                G[l] += c.shape[0]
                if pop:
                    A[:, l] += _population_sums(c)[0]
                    f1[l] += int((c[:, 0] == 1).sum())
                continue
            tables = client.persist(exchange(tables.map(_coarser_items, shift=np.uint64(_bits(K[l])), P=P).flatten()))
            add(client.compute(tables.map(_table_stats, heavy_rows=cap, pop=pop)).result(), l)
        if e == L:
            break
        heavy.append({key: i for i, key in enumerate(hv)})
        n_heavy += len(hv)
        G[e + 1 :] += singles
        if pop:
            f1[e + 1 :] += singles
            A[:, e + 1 :] += np.asarray(single_A)[:, None]
        rows = exchange(src.map(_row_items, corpus=corpus, K=K, wins=wins, heavy=heavy, j=j, P=P).flatten())
        for S_k, G_k, n, pop_k in client.compute(rows.map(lambda b: _kernel_task(corpus, b, e, small_group,
                                                                                 boot))).result():
            S[e + 1 :] += S_k
            G[e + 1 :] += G_k
            in_kernels += n
            if pop_k is not None:
                A[:, e + 1 :] += pop_k[0]
                f1[e + 1 :] += pop_k[1]
        if not hv:
            break
    M._exact_where_known(S, G, N)
    engine |= {"levels": j, "heavy_groups": n_heavy, "rows_in_kernels": in_kernels}
    m = replace(M.measurement_from_sums(N, K, K_inferred, S, G, H_marginal), engine=engine)
    if not pop:
        return m
    A[:, 0] = POP.group_sums(W[None, :], POP.g_table())  # one group of every row: W G(W)
    f1[0] = int(N == 1)
    return replace(m, population=POP.estimate_from_sums(A, f1, W, m.H_cond, K, confidence=confidence))
