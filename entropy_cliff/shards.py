"""Sharded token dumps: a directory of 2-D ``*.npy`` shards read as one corpus.

Multi-GPU tokenization writes one shard per rank::

    NAME/shard-00000.npy   (n_0 x L)      NAME/shard-00000.labels.npy   (labels, ignored here)
    NAME/shard-00001.npy   (n_1 x L)      ...
    NAME/meta.json         (the sidecar of a single dump, with N = sum n_i)

Shards are taken in name order; row counts may differ (an empty shard is skipped). Every shard is
memory-mapped and the corpus is never concatenated: :func:`entropy_cliff.measure.measure` takes the
list of arrays as one corpus of ``N = sum n_i`` rows. Shards of different L, or of signed and
unsigned dtypes mixed, are an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import LABELS_SUFFIX, load_array, load_tokens



def shard_paths(directory: str | os.PathLike) -> list[Path]:
    """The shards of a sharded dump: ``DIR/*.npy`` but ``*.labels.npy``, in name order."""
    d = Path(directory)
    if not d.is_dir():
        raise EntropyCliffError(f"{d}: not a directory of shards")
    paths = sorted(p for p in d.glob("*.npy") if not p.name.endswith(LABELS_SUFFIX))
    if not paths:
        raise EntropyCliffError(f"{d}: no .npy shards in this directory")
    return paths


def _check_shard(p: Path, arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 2:
        raise EntropyCliffError(f"{p}: a shard must be 2-D (rows x L positions), got shape {arr.shape}")
    if arr.dtype.kind == "b":
        return arr.view(np.uint8)
    if arr.dtype.kind not in "iu":
        raise EntropyCliffError(f"{p}: tokens must be integers, got dtype {arr.dtype}")
    return arr


def load_shards(directory: str | os.PathLike) -> list[np.ndarray]:
    """Memory-map every non-empty shard of ``directory`` (see :func:`shard_paths`).

    Raises :class:`EntropyCliffError` for an unreadable or non-2-D shard, shards of different L,
    signed and unsigned shards mixed, or fewer than 2 rows in all.
    """
    paths = shard_paths(directory)
    shards = [(p, _check_shard(p, load_array(p))) for p in paths]
    p0, a0 = shards[0]
    for p, a in shards[1:]:
        if a.shape[1] != a0.shape[1]:
            raise EntropyCliffError(f"{p}: L = {a.shape[1]} positions, but {p0.name} has L = {a0.shape[1]}")
        if a.dtype.kind != a0.dtype.kind:
            raise EntropyCliffError(f"{p}: {a.dtype} tokens, but {p0.name} holds {a0.dtype} (signed and unsigned mixed)")
    arrays = [a for _, a in shards if a.shape[0] > 0]
    n = sum(a.shape[0] for a in arrays)
    if n < 2 or a0.shape[1] == 0:
        raise EntropyCliffError(f"{directory}: need at least 2 sequences of at least 1 position (N = {n}, L = {a0.shape[1]})")
    return arrays


def load_corpus(path: str | os.PathLike, key: str | None = None) -> np.ndarray | list[np.ndarray]:
    """A token dump: a file (``.npy``/``.npz``) gives one array, a directory gives the list of its
    memory-mapped shards. Its sidecar (``NAME.meta.json`` or ``NAME/meta.json``) is
    :func:`entropy_cliff.io.read_sidecar`'s."""
    if Path(path).is_dir():
        return load_shards(path)
    return load_tokens(path, key)
