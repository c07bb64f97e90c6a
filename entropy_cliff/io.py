"""Reading token corpora, sidecars and atomic writes.

A token dump is ``DIR/NAME.npy`` (N × L integers, the smallest unsigned dtype that fits) with a JSON
sidecar ``DIR/NAME.meta.json``::

    {"N": ..., "L": ..., "schedule": {"kind", "kmin", "kmax", "power"}, "K": [K_1..K_L],
     "source": {...}}

and, when there are labels, ``DIR/labels.npy``. Corpora are opened memory-mapped and never copied
whole, so dumps larger than RAM can be measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from entropy_cliff.errors import EntropyCliffError

SIDECAR_SUFFIX = ".meta.json"
_UMASK = os.umask(0)
os.umask(_UMASK)


def sidecar_path(tokens_path: str | os.PathLike) -> Path:
    """``DIR/NAME.npy`` -> ``DIR/NAME.meta.json``."""
    p = Path(tokens_path)
    return p.with_name(p.name[: -len(p.suffix)] + SIDECAR_SUFFIX if p.suffix else p.name + SIDECAR_SUFFIX)


def smallest_uint_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype holding ``0..max_value``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise EntropyCliffError(f"token value {max_value} does not fit in 64 bits")


def _as_integer_corpus(arr: np.ndarray, name: str) -> np.ndarray:
    """Check rank, size and dtype; integral floats are converted (a copy), anything else refused."""
    if arr.dtype == object:
        raise EntropyCliffError(f"{name}: object arrays are not token corpora (save integers)")
    if arr.dtype.kind in "US":
        raise EntropyCliffError(f"{name}: holds strings ({arr.dtype}), not integer tokens")
    if arr.ndim != 2:
        raise EntropyCliffError(f"{name}: expected a 2-D array (N sequences × L positions), got shape {arr.shape}")
    n, length = arr.shape
    if n == 0 or length == 0:
        raise EntropyCliffError(f"{name}: empty corpus (shape {arr.shape})")
    if n < 2:
        raise EntropyCliffError(f"{name}: need at least 2 sequences (N = {n})")
    if arr.dtype.kind == "b":
        return arr.view(np.uint8)
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind == "f":
        a = np.asarray(arr)
        if not np.all(np.isfinite(a)) or not np.all(a == np.floor(a)):
            raise EntropyCliffError(f"{name}: tokens must be integers; found non-integer values ({arr.dtype})")
        if a.min() < 0:
            raise EntropyCliffError(f"{name}: tokens must be non-negative; found {int(a.min())}")
        return a.astype(smallest_uint_dtype(int(a.max())))
    raise EntropyCliffError(f"{name}: tokens must be integers, got dtype {arr.dtype}")


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Open an array from ``.npy`` (memory-mapped, never copied) or ``.npz`` (``key``).

    Raises :class:`EntropyCliffError` for a missing, truncated, pickled or non-NumPy file.
    """
    p = Path(path)
    if not p.exists():
        raise EntropyCliffError(f"{p}: no such file")
    if p.is_dir():
        raise EntropyCliffError(f"{p}: is a directory, expected a .npy or .npz file")
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise EntropyCliffError(f"{p}: not a readable .npy/.npz array (no NumPy header: text or another format?)")
    try:
        if zipfile.is_zipfile(p):
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                if key is None:
                    if len(keys) != 1:
                        raise EntropyCliffError(f"{p}: .npz holds {keys}; choose one with --key")
                    key = keys[0]
                if key not in keys:
                    raise EntropyCliffError(f"{p}: no array {key!r} in .npz (has {keys})")
                arr = z[key]
        else:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except EntropyCliffError:
        raise
    except ValueError as e:
        msg = str(e)
        if "pickle" in msg.lower():
            raise EntropyCliffError(f"{p}: holds Python objects, not a numeric array") from None
        raise EntropyCliffError(f"{p}: not a readable .npy/.npz array ({msg.splitlines()[0]})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise EntropyCliffError(f"{p}: not a readable .npy/.npz array ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise EntropyCliffError(f"{p}: not a .npy/.npz array")
    return arr


def load_tokens(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Open an ``(N, L)`` integer corpus with :func:`load_array` and check it.

    Raises :class:`EntropyCliffError` for an unreadable file, a wrong rank, an empty corpus, N < 2
    or a non-integer dtype. Value checks (negative tokens, tokens >= K_t) need a pass over the data
    and are done by :func:`entropy_cliff.measure.measure`.
    """
    return _as_integer_corpus(load_array(path, key), str(path))


def read_sidecar(tokens_path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar of a token dump, or ``None`` when there is none."""
    sp = sidecar_path(tokens_path)
    if not sp.exists():
        return None
    try:
        meta = json.loads(sp.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EntropyCliffError(f"{sp}: unreadable sidecar ({e})") from None
    if not isinstance(meta, dict) or "K" not in meta:
        raise EntropyCliffError(f"{sp}: sidecar lacks the per-position codebook sizes 'K'")
    return meta


@contextlib.contextmanager
def atomic_paths(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths``; rename them all into place only if the block succeeds.

    After a failure nothing is left behind: no partial file, no temporary.
    """
    finals = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=final.parent)
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual mode
            os.close(fd)
            temps.append(Path(tmp))
        yield temps
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """One-file :func:`atomic_paths`."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def save_npy_atomic(path: str | os.PathLike, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def save_tokens(
    path: str | os.PathLike,
    tokens: np.ndarray,
    K: list[int] | np.ndarray,
    schedule: dict[str, Any],
    source: dict[str, Any] | None = None,
    labels: np.ndarray | None = None,
) -> Path:
    """Write a token dump: ``NAME.npy`` (smallest unsigned dtype), ``NAME.meta.json``, ``labels.npy``.

    ``K`` is the per-position codebook size; every token at position t must be < K_t.
    """
    tokens = np.asarray(tokens)
    K = [int(k) for k in K]
    if tokens.ndim != 2 or tokens.shape[1] != len(K):
        raise EntropyCliffError(f"tokens of shape {tokens.shape} do not match {len(K)} codebook sizes")
    if tokens.size and (tokens.min() < 0 or np.any(tokens.max(axis=0) >= np.asarray(K))):
        raise EntropyCliffError("tokens out of range for their position's codebook size")
    p = Path(path)
    if p.suffix != ".npy":
        raise EntropyCliffError(f"{p}: token dumps are written as .npy")
    save_npy_atomic(p, tokens.astype(smallest_uint_dtype(max(K) - 1)))
    meta = {"N": int(tokens.shape[0]), "L": int(tokens.shape[1]), "schedule": schedule, "K": K,
            "source": source or {}}
    write_json_atomic(sidecar_path(p), meta)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (tokens.shape[0],):
            raise EntropyCliffError(f"labels of shape {labels.shape} do not match N = {tokens.shape[0]}")
        save_npy_atomic(p.parent / "labels.npy", labels.astype(smallest_uint_dtype(int(labels.max(initial=0)))))
    return p


def labels_path(tokens_path: str | os.PathLike) -> Path:
    """The labels of dump ``DIR/NAME.npy``: ``DIR/NAME.labels.npy``, or the older shared
    ``DIR/labels.npy`` when only that exists."""
    p = Path(tokens_path)
    own = p.with_name(p.name[: -len(".npy")] + ".labels.npy" if p.name.endswith(".npy") else p.name + ".labels.npy")
    old = p.parent / "labels.npy"
    return old if not own.exists() and old.exists() else own


def prepare_output(path: str | os.PathLike, kind: str) -> Path:
    """Check before long work that ``path`` can be written: create it (``kind="dir"``) or its parent
    (``kind="file"``), parents included, and write and remove a probe file there (permission checks
    pass for root where a write then fails). Raises :class:`EntropyCliffError` naming the path."""
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    p = Path(path)
    folder = p if kind == "dir" else p.parent
    if kind == "file" and p.is_dir():
        raise EntropyCliffError(f"{p}: is a directory, expected a file path")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise EntropyCliffError(f"{p}: exists and is not a directory")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise EntropyCliffError(f"{p}: cannot write there ({e.strerror or e})") from None
    return p
