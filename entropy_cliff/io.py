"""Reading token corpora, sidecars and atomic writes.

A token dump is ``DIR/NAME.npy`` (N × L integers, the smallest unsigned dtype that fits) with a JSON
sidecar ``DIR/NAME.meta.json``::

    {"N": ..., "L": ..., "schedule": {"kind", "kmin", "kmax", "power"}, "K": [K_1..K_L],
     "source": {...}}

and, when there are labels, ``DIR/NAME.labels.npy`` (older dumps: ``DIR/labels.npy``, still read
through :func:`labels_path`). The sidecar is the authority on K_t: :func:`read_sidecar` refuses one
whose N or L disagree with the array, whose K entries are not integers >= 1, or whose ``schedule``
disagrees with its own K list. Corpora are opened memory-mapped and never copied
whole, so dumps larger than RAM can be measured.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from entropy_cliff.errors import EntropyCliffError

SHARDS_META = "meta.json"
SIDECAR_SUFFIX = ".meta.json"
LABELS_SUFFIX = ".labels.npy"
_UMASK = os.umask(0)
os.umask(_UMASK)


def sidecar_path(tokens_path: str | os.PathLike) -> Path:
    """``DIR/NAME.npy`` -> ``DIR/NAME.meta.json``; a sharded dump's directory ``NAME/`` -> ``NAME/meta.json``."""
    p = Path(tokens_path)
    if p.is_dir():
        return p / SHARDS_META
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def labels_path(tokens_path: str | os.PathLike) -> Path:
    """The labels of a dump: ``DIR/NAME.npy`` -> ``DIR/NAME.labels.npy``.

    Falls back to the old shared name ``DIR/labels.npy`` when only that exists (dumps written before
    labels followed their dump); otherwise returns the new name, existing or not.
    """
    p = Path(tokens_path)
    new = p.with_name(p.stem + LABELS_SUFFIX)
    old = p.with_name("labels.npy")
    return old if not new.exists() and old.exists() else new


def prepare_output(path: str | os.PathLike, kind: str = "file", *, keep: bool = True) -> Path:
    """Check, before long work starts, that ``path`` can be written: create its parents (and, for
    ``kind = "dir"``, the directory), then write and remove a probe file there.

    A permission check is not enough (root passes it, then the write fails on a read-only mount).
    With ``keep = False`` the directories created here are removed again, so a later failure leaves
    nothing behind. Raises :class:`EntropyCliffError` naming the path.
    """
    if kind not in ("file", "dir"):
        raise EntropyCliffError(f"prepare_output: kind must be 'file' or 'dir', got {kind!r}")
    p = Path(path)
    where = p if kind == "dir" else p.parent
    if kind == "file" and p.is_dir():
        raise EntropyCliffError(f"{p}: is a directory, expected a file path")
    if kind == "dir" and p.exists() and not p.is_dir():
        raise EntropyCliffError(f"{p}: exists and is not a directory")
    created = [d for d in (where, *where.parents) if not d.exists()]
    try:
        where.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=where)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise EntropyCliffError(f"{p}: cannot write here ({e.strerror or e})") from None
    finally:
        if not keep:
            for d in created:  # deepest first
                with contextlib.suppress(OSError):
                    d.rmdir()
    return p


def smallest_uint_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype holding ``0..max_value``."""
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise EntropyCliffError(f"token value {max_value} does not fit in 64 bits")


def as_corpus(arr: np.ndarray, name: str) -> np.ndarray:
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
    return as_corpus(load_array(path, key), str(path))


def read_sidecar(tokens_path: str | os.PathLike, shape: tuple[int, int] | None = None) -> dict[str, Any] | None:
    """The sidecar of a token dump, checked, or ``None`` when there is none.

    Its ``K`` must list integers >= 1; a ``schedule`` of a named kind (not custom) must give back
    exactly that ``K``; with ``shape = (N, L)`` of the array, its ``N`` and ``L`` (and ``len(K)``)
    must match. Any disagreement raises :class:`EntropyCliffError` naming the file, field and value.
    """
    sp = sidecar_path(tokens_path)
    if not sp.exists():
        return None
    try:
        meta = json.loads(sp.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EntropyCliffError(f"{sp}: unreadable sidecar ({e})") from None
    if not isinstance(meta, dict) or "K" not in meta:
        raise EntropyCliffError(f"{sp}: sidecar lacks the per-position codebook sizes 'K'")
    check_sidecar(meta, sp, shape)
    return meta


def check_sidecar(meta: dict[str, Any], where: str | os.PathLike, shape: tuple[int, int] | None = None) -> None:
    """Raise :class:`EntropyCliffError` if a sidecar contradicts itself or the array (see :func:`read_sidecar`)."""
    from entropy_cliff.schedules import KINDS, Schedule

    K = meta["K"]
    if not isinstance(K, list) or not K:
        raise EntropyCliffError(f"{where}: field 'K' must be a non-empty list of codebook sizes, got {K!r}")
    for t, k in enumerate(K, start=1):
        if isinstance(k, bool) or not isinstance(k, (int, float)) or k != k or (isinstance(k, float) and not k.is_integer()):
            raise EntropyCliffError(f"{where}: field 'K' position {t}: {k!r} is not an integer codebook size")
        if k < 1:
            raise EntropyCliffError(f"{where}: field 'K' position {t}: {k!r} is below 1")
    if shape is not None:
        for field, value in (("N", shape[0]), ("L", shape[1])):
            if field in meta and meta[field] != value:
                raise EntropyCliffError(f"{where}: field '{field}' = {meta[field]!r} but the array has {field} = {value}")
        if len(K) != shape[1]:
            raise EntropyCliffError(f"{where}: field 'K' lists {len(K)} codebook sizes but the array has L = {shape[1]}")
    sd = meta.get("schedule")
    if isinstance(sd, dict) and sd.get("kind") in KINDS[:-1]:
        expect = Schedule.from_dict(sd, len(K)).K.tolist()
        if expect != [int(k) for k in K]:
            t = next(i for i, (a, b) in enumerate(zip(expect, K)) if a != b)
            raise EntropyCliffError(f"{where}: field 'schedule' = {json.dumps(sd)} gives K_{t + 1} = {expect[t]}, "
                                    f"but field 'K' lists {K[t]!r}")


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


def jsonable(x: Any) -> Any:
    """JSON-safe values: numpy scalars/arrays to Python, NaN/inf to null (recursively)."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON (through :func:`jsonable`), without a trailing newline."""
    return json.dumps(jsonable(obj), indent=2)


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV: a header from the rows' keys (in first-seen order; a row without a key leaves its
    cell empty), ``\n`` line ends, no trailing blank line."""
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(jsonable(rows))
    return buf.getvalue()


def format_bytes(n: float) -> str:
    """A size for people: ``46.6 TiB``, ``512 B`` (three significant digits, binary units up to PiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path``, or None when there is no such file."""
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as :func:`json_text` (NaN/inf as null, so the file stays valid JSON), written atomically."""
    write_text_atomic(path, json_text(obj) + "\n")


def save_npy_atomic(path: str | os.PathLike, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def check_dump_path(path: str | os.PathLike) -> Path:
    """A token dump's path, ``NAME.npy`` (its sidecar and labels are written beside it)."""
    p = Path(path)
    if p.suffix != ".npy":
        raise EntropyCliffError(f"{p}: token dumps are written as .npy")
    return p


def save_tokens(
    path: str | os.PathLike,
    tokens: np.ndarray,
    K: list[int] | np.ndarray,
    schedule: dict[str, Any],
    source: dict[str, Any] | None = None,
    labels: np.ndarray | None = None,
) -> Path:
    """Write a token dump: ``NAME.npy`` (smallest unsigned dtype), ``NAME.meta.json``, ``NAME.labels.npy``.

    ``K`` is the per-position codebook size; every token at position t must be < K_t; ``labels``
    (optional) are N non-negative integers. Everything is checked before anything is written, and
    the files appear together or not at all.
    """
    tokens = np.asarray(tokens)
    K = [int(k) for k in K]
    if tokens.ndim != 2 or tokens.shape[1] != len(K):
        raise EntropyCliffError(f"tokens of shape {tokens.shape} do not match {len(K)} codebook sizes")
    if tokens.size and (tokens.min() < 0 or np.any(tokens.max(axis=0) >= np.asarray(K))):
        raise EntropyCliffError("tokens out of range for their position's codebook size")
    p = check_dump_path(path)
    files = {p: tokens.astype(smallest_uint_dtype(max(K) - 1))}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (tokens.shape[0],):
            raise EntropyCliffError(f"labels of shape {labels.shape} do not match N = {tokens.shape[0]}")
        if labels.dtype.kind not in "iub" or (labels.size and labels.min() < 0):
            raise EntropyCliffError(f"labels must be non-negative integers, got {labels.dtype}"
                                    + (f" with minimum {labels.min()}" if labels.dtype.kind in "iu" else ""))
        files[p.with_name(p.stem + LABELS_SUFFIX)] = labels.astype(smallest_uint_dtype(int(labels.max(initial=0))))
    meta = {"N": int(tokens.shape[0]), "L": int(tokens.shape[1]), "schedule": schedule, "K": K,
            "source": source or {}}
    with atomic_paths(*files, sidecar_path(p)) as temps:
        for tmp, arr in zip(temps, files.values()):
            with open(tmp, "wb") as f:
                np.save(f, arr)
        temps[-1].write_text(json_text(meta) + "\n")
    if labels is None:  # a previous dump's labels would no longer match
        p.with_name(p.stem + LABELS_SUFFIX).unlink(missing_ok=True)
    return p
