"""Reading the token dumps other code bases write: LlamaGen code folders, TiTok/RAR JSONL, Parquet.

Every reader returns a :class:`Corpus`: the ``(N, L)`` tokens (unsigned integers, the narrowest of
uint16/uint32/uint64 that holds them), the per-row labels or ``None``, and an ``info`` dict for reports
(``format``, ``path``, ``view``, ``view_index``, ``views_per_image``, ``augmentation``, ``images``,
``rows``, ``padded_rows``, ``labels`` and format-specific counts).

Layouts, as the public writers produce them:

- **LlamaGen** (``autoregressive/train/extract_codes_c2i.py``): a folder ``{dataset}{size}_codes/``
  with one file ``{i}.npy`` of shape ``(1, A, L)`` per image, ``i = 0..T-1``, and beside it
  ``{dataset}{size}_labels/{i}.npy`` of shape ``(1,)``. Rank r of R writes the images
  ``r, r + R, r + 2R, ...`` of a DistributedSampler that pads the dataset to ``T = R ceil(N/R)``
  images by repeating its first ``T - N``, so the last ``T - N`` files repeat files ``0..T-N-1``.
- **TiTok / RAR** (``scripts/pretokenization.py``): one JSONL line ``{"class_id", "tokens"}`` per view.
  Each rank takes ``M = ceil(N/R)`` images (padded as above) in batches of B (the last one smaller)
  and, per batch of b images, writes the b originals and then their b horizontal flips; with
  ten-crop, the 10 crops of each image on consecutive lines. Rank 0 concatenates the R lists, so in
  flip mode line j of the file belongs to rank block ``j // 2M``, batch ``q // 2B`` with
  ``q = j mod 2M``, and is an original exactly when ``q - 2B (q // 2B) < min(B, M - B (q // 2B))``.
- **Parquet**: one row per sequence, a column of fixed-length integer lists (``list`` or ``array``),
  optionally an integer label column.

Views (``A`` per image): flip mode has A = 2 (0 = original, 1 = flip); ten-crop has A = 10 in
torchvision's ``TenCrop`` order (top-left, top-right, bottom-left, bottom-right, centre, then the
same five of the flipped image), so its un-augmented view is the centre crop, index 4.
``view="original"`` keeps that one view per image, ``view=INDEX`` another one, ``view="all"`` every
view as its own row (image-major for LlamaGen, file order for JSONL): augmented views of one image
are not independent samples, and reports say so. Rows a writer padded in are kept (they are in the
user's training data); where the world size is known their count is reported as ``padded_rows``.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import LABELS_SUFFIX, smallest_uint_dtype

#: Input formats; this module imports little at load time (the CLI reads this tuple for its options).
FORMATS = ("npy", "npz", "shards", "llamagen", "titok-jsonl", "parquet")
#: Our own dumps: their K_t may come from a sidecar (``NAME.meta.json`` or ``NAME/meta.json``).
OUR_FORMATS = ("npy", "npz", "shards")
TEN_CROP_CENTRE = 4
LABEL_COLUMNS = ("label", "labels", "class_id", "class", "target")
TOKEN_COLUMNS = ("tokens", "input_ids", "codes", "ids")
DEFAULT_THREADS = 8
#: Inputs with at least this many files / lines / rows show progress (bar on a terminal, lines off it).
PROGRESS_MIN_UNITS = 50_000
_FILES_PER_TASK = 1024
_JSONL_CHUNK_BYTES = 32 << 20
_PARQUET_CHUNK_ROWS = 1 << 16
_NUMBERED_NPY = re.compile(r"(\d+)\.npy")
_WIDTHS = (np.dtype(np.uint16), np.dtype(np.uint32), np.dtype(np.uint64))


class Corpus(NamedTuple):
    tokens: np.ndarray | list[np.ndarray]  # a list: the memory-mapped shards of a sharded dump
    labels: np.ndarray | None
    info: dict[str, Any]


# ---------------------------------------------------------------------------- views and progress

def parse_view(value: str | int) -> str | int:
    """``"original"``, ``"all"`` or a non-negative view index."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    if value in ("original", "all"):
        return value
    raise EntropyCliffError(f"view must be 'original', 'all' or a view index (0, 1, ...), got {value!r}")


def _augmentation(views: int) -> str:
    return {1: "none", 2: "flip", 10: "ten-crop"}.get(views, f"{views} views")


def _view_index(view: str | int, views: int, where: str) -> int | None:
    """The kept view's index (None for all): original is the centre crop in ten-crop mode, else 0."""
    if view == "all":
        return None
    if view == "original":
        return TEN_CROP_CENTRE if views == 10 else 0
    if not 0 <= view < views:
        raise EntropyCliffError(f"{where}: view {view} does not exist ({views} views per image: 0..{views - 1})")
    return view


def _view_info(view: str | int, index: int | None, views: int) -> dict[str, Any]:
    return {"view": view, "view_index": index, "views_per_image": views, "augmentation": _augmentation(views),
            "independent_rows": index is not None or views == 1}


def _progress(total: int, desc: str, unit: str, progress: bool | None):
    """:class:`entropy_cliff.progress.Progress`, shown when asked, or by default for large inputs."""
    from entropy_cliff.progress import Progress

    show = progress if progress is not None else total >= PROGRESS_MIN_UNITS
    return Progress(total, desc=desc, unit=unit, quiet=not show)


def _check_values(block: np.ndarray, where: Callable[[int], str]) -> int:
    """Check a block of tokens (first axis = items) is non-negative integers; return its maximum."""
    if block.size == 0:
        return 0
    rows = block.reshape(len(block), -1)
    if block.dtype.kind == "f":
        bad = ~np.isfinite(rows) | (rows != np.floor(rows))
        if bad.any():
            i = int(np.flatnonzero(bad.any(axis=1))[0])
            raise EntropyCliffError(f"{where(i)}: tokens must be integers, found {rows[i][bad[i]][0].item()!r}")
    elif block.dtype.kind not in "iub":
        raise EntropyCliffError(f"{where(0)}: tokens must be integers, got dtype {block.dtype}")
    if block.dtype.kind in "if" and block.min() < 0:
        i = int(np.flatnonzero((rows < 0).any(axis=1))[0])
        raise EntropyCliffError(f"{where(i)}: tokens must be non-negative, found {rows[i].min()}")
    return int(block.max())


def _width(max_value: int) -> np.dtype:
    """The narrowest of :data:`_WIDTHS` (uint16 and wider) holding ``0..max_value``."""
    return smallest_uint_dtype(max(max_value, 256))


def _room_for(out: np.ndarray | None, rows: int, L: int, top: int) -> np.ndarray:
    """The (rows, L) array chunks are read into: made at the first chunk in the narrowest dtype
    for its largest token ``top``, widened when a later chunk's ``top`` needs it."""
    if out is None:
        return np.empty((rows, L), dtype=_width(top))
    return out.astype(_width(top)) if top > np.iinfo(out.dtype).max else out


# ---------------------------------------------------------------------------- detection

def _npy_shape(path: str | os.PathLike) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, header_length)`` from a .npy header, without reading data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            return shape, fortran, dtype, f.tell()
    except (ValueError, OSError, EOFError) as e:
        raise EntropyCliffError(f"{path}: not a readable .npy file ({e})") from None


def _scan_names(folder: Path) -> Iterator[str]:
    with os.scandir(folder) as it:
        for entry in it:
            yield entry.name


def detect_format(path: str | os.PathLike, input_format: str | None = None) -> str:
    """One of :data:`FORMATS` for ``path``, or ``input_format`` when given (it settles any doubt).

    A folder is ``shards`` when it holds ``meta.json`` or ``shard-*.npy`` (or other 2-D ``.npy``),
    ``llamagen`` when its numbered ``{i}.npy`` files are 3-D (or it holds one ``*_codes`` folder),
    ``parquet`` when it holds ``.parquet`` files. A file goes by its suffix, then by its first bytes.
    """
    p = Path(path)
    if input_format is not None:
        if input_format not in FORMATS:
            raise EntropyCliffError(f"input format {input_format!r} is not one of {', '.join(FORMATS)}")
        if not p.exists():
            raise EntropyCliffError(f"{p}: no such file or folder")
        return input_format
    if not p.exists():
        raise EntropyCliffError(f"{p}: no such file or folder")
    if p.is_dir():
        plain_npy = None
        for name in _scan_names(p):
            if name == "meta.json" or (name.startswith("shard-") and name.endswith(".npy")):
                return "shards"
            if name.endswith(".parquet"):
                return "parquet"
            if name.endswith("_codes") and (p / name).is_dir():
                return "llamagen"
            if _NUMBERED_NPY.fullmatch(name):
                ndim = len(_npy_shape(p / name)[0])
                if ndim == 3:
                    return "llamagen"
                if ndim == 2:
                    return "shards"
                raise EntropyCliffError(f"{p / name}: a {ndim}-D array; LlamaGen files are (1, views, L), shards (rows, L)")
            if name.endswith(".npy") and not name.endswith(".labels.npy"):
                plain_npy = name
        if plain_npy is not None:
            return "shards"
        raise EntropyCliffError(f"{p}: a folder without token files (LlamaGen {{i}}.npy files, shard-*.npy or .parquet)")
    suffix = p.suffix.lower()
    by_suffix = {".npy": "npy", ".npz": "npz", ".jsonl": "titok-jsonl", ".ndjson": "titok-jsonl",
                 ".parquet": "parquet", ".pq": "parquet"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    with open(p, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK"):
        return "npz"
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.lstrip()[:1] == b"{":
        return "titok-jsonl"
    raise EntropyCliffError(f"{p}: unknown token format (not .npy, .npz, JSONL or Parquet); name it with input_format")


# ---------------------------------------------------------------------------- LlamaGen

def _llamagen_dirs(path: Path) -> tuple[Path, Path | None]:
    """The codes folder (``path`` or its one ``*_codes`` subfolder) and its ``*_labels`` sibling."""
    codes = path
    subs = sorted(d for d in path.iterdir() if d.name.endswith("_codes") and d.is_dir())
    if subs and not (path / "0.npy").exists():
        if len(subs) > 1:
            raise EntropyCliffError(f"{path}: holds several code folders ({', '.join(d.name for d in subs)}); give one")
        codes = subs[0]
    labels = codes.with_name(codes.name[: -len("_codes")] + "_labels") if codes.name.endswith("_codes") else None
    return codes, labels if labels is not None and labels.is_dir() else None


def _numbered_files(folder: Path) -> int:
    """The count T of files ``0.npy .. {T-1}.npy``; raises when an index is missing."""
    idx = np.fromiter((int(m[1]) for n in _scan_names(folder) if (m := _NUMBERED_NPY.fullmatch(n))), dtype=np.int64)
    if idx.size == 0:
        raise EntropyCliffError(f"{folder}: no numbered .npy files (LlamaGen writes 0.npy, 1.npy, ...)")
    idx.sort()
    if idx[-1] != idx.size - 1 or idx[0] != 0:
        missing = np.setdiff1d(np.arange(idx[-1] + 1), idx)
        shown = ", ".join(f"{i}.npy" for i in missing[:5]) + (", ..." if missing.size > 5 else "")
        raise EntropyCliffError(f"{folder}: {missing.size} of files 0.npy..{idx[-1]}.npy are missing ({shown})")
    return int(idx.size)


class _FileLayout(NamedTuple):
    header: bytes
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    size: int


def _layout(path: Path) -> _FileLayout:
    shape, fortran, dtype, hlen = _npy_shape(path)
    with open(path, "rb") as f:
        header = f.read(hlen)
    return _FileLayout(header, dtype, shape, fortran, hlen + int(np.prod(shape)) * dtype.itemsize)


def _read_same_layout(prefix: str, lo: int, hi: int, lay: _FileLayout) -> np.ndarray:
    """Files ``{prefix}{lo..hi-1}.npy``, each checked to have ``lay``'s header: ``(hi - lo, *shape)``."""
    nbytes = lay.size - len(lay.header)
    buf = bytearray(nbytes * (hi - lo))
    hlen = len(lay.header)
    for k, i in enumerate(range(lo, hi)):
        name = f"{prefix}{i}.npy"
        fd = os.open(name, os.O_RDONLY)
        try:
            data = os.read(fd, lay.size + 1)
        finally:
            os.close(fd)
        if len(data) != lay.size or data[:hlen] != lay.header:
            other = _npy_shape(name)
            raise EntropyCliffError(f"{name}: shape {other[0]} {other[2]}, but {prefix}0.npy has shape {lay.shape} "
                                    f"{lay.dtype} (every file must have the same shape)"
                                    if (other[0], other[2]) != (lay.shape, lay.dtype) else f"{name}: truncated file")
        buf[k * nbytes:(k + 1) * nbytes] = data[hlen:]
    arr = np.frombuffer(buf, dtype=lay.dtype)
    if lay.fortran:
        return arr.reshape((hi - lo, *lay.shape[::-1])).transpose(0, *range(len(lay.shape), 0, -1))
    return arr.reshape((hi - lo, *lay.shape))


def _padding(per_image: np.ndarray, world_size: int | None, where: str) -> int | None:
    """LlamaGen: the largest p < R with the last p images equal to the first p (the sampler's repeats)."""
    if world_size is None:
        return None
    T = len(per_image)
    if T % world_size:
        raise EntropyCliffError(f"{where}: {T} files is not a multiple of world_size {world_size} "
                                "(every rank writes the same number of images)")
    for p in range(min(world_size - 1, T - 1), 0, -1):
        if np.array_equal(per_image[T - p:], per_image[:p]):
            return p
    return 0


def read_llamagen(path: str | os.PathLike, *, view: str | int = "original", world_size: int | None = None,
                  threads: int | None = None, progress: bool | None = None, labels: bool = True) -> Corpus:
    """Read a LlamaGen codes folder (``{i}.npy`` of shape ``(1, A, L)``) and its labels, in parallel.

    ``labels = False`` opens no label file (``info["labels"]`` says whether the labels folder exists).
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    codes, labels_dir = _llamagen_dirs(Path(path))
    has_labels = labels_dir is not None
    T = _numbered_files(codes)
    lay = _layout(codes / "0.npy")
    if len(lay.shape) != 3 or lay.shape[0] != 1 or 0 in lay.shape:
        raise EntropyCliffError(f"{codes / '0.npy'}: shape {lay.shape}, LlamaGen files are (1, views, L)")
    _, A, L = lay.shape
    vi = _view_index(view, A, str(codes))
    per = A if vi is None else 1
    lab_lay = None
    if has_labels and labels:
        if (n_labels := _numbered_files(labels_dir)) != T:
            raise EntropyCliffError(f"{labels_dir}: {n_labels} label files for {T} code files")
        lab_lay = _layout(labels_dir / "0.npy")
        if lab_lay.shape not in ((1,), ()) or lab_lay.dtype.kind not in "iu":
            raise EntropyCliffError(f"{labels_dir / '0.npy'}: labels must be one integer per file, "
                                    f"got shape {lab_lay.shape} {lab_lay.dtype}")
    threads = threads or DEFAULT_THREADS
    prefix, lab_prefix = str(codes) + os.sep, str(labels_dir) + os.sep
    y = np.empty(T, dtype=np.int64) if lab_lay is not None else None

    def task(lo: int, hi: int, out: np.ndarray) -> int:
        block = _read_same_layout(prefix, lo, hi, lay)[:, 0]  # (n, A, L)
        top = _check_values(block, lambda k: f"{prefix}{lo + k}.npy")
        if top <= np.iinfo(out.dtype).max:
            out[lo * per:hi * per] = (block if vi is None else block[:, vi]).reshape(-1, L)
        if y is not None:
            y[lo:hi] = _read_same_layout(lab_prefix, lo, hi, lab_lay).reshape(hi - lo)
        return top

    for dtype in _WIDTHS:  # uint16 first; re-read wider only if a token does not fit
        out = np.empty((T * per, L), dtype=dtype)
        bar = _progress(T, f"reading {codes.name}", "files", progress)
        top = 0
        with ThreadPoolExecutor(max_workers=threads) as ex:
            futures = {ex.submit(task, lo, min(lo + _FILES_PER_TASK, T), out): min(_FILES_PER_TASK, T - lo)
                       for lo in range(0, T, _FILES_PER_TASK)}
            try:
                for fut in as_completed(futures):
                    top = max(top, fut.result())
                    bar.update(futures[fut])
            except BaseException:
                ex.shutdown(cancel_futures=True)
                raise
            finally:
                bar.close()
        if top <= np.iinfo(dtype).max:
            break
    padded = _padding(out.reshape(T, -1), world_size, str(codes))
    info = {"format": "llamagen", "path": str(codes), **_view_info(view, vi, A), "files": T, "images": T,
            "rows": T * per, "padded_rows": None if padded is None else padded * per, "world_size": world_size,
            "labels": has_labels, "threads": threads}
    return Corpus(out, None if y is None else np.repeat(y, per), info)


# ---------------------------------------------------------------------------- TiTok / RAR JSONL

def _jsonl_chunks(path: Path) -> list[tuple[int, int, int]]:
    """``(start, end, lines)`` byte ranges of about 32 MB that end at a newline."""
    chunks, start, pos, carry = [], 0, 0, b""
    with open(path, "rb") as f:
        while block := f.read(_JSONL_CHUNK_BYTES):
            pos += len(block)
            data = carry + block
            cut = data.rfind(b"\n") + 1
            if cut:
                chunks.append((start, start + cut, data.count(b"\n", 0, cut)))
                start += cut
            carry = data[cut:]
    if carry.strip():
        chunks.append((start, pos, 1))
    return chunks


def _bad_line(data: bytes, first_line: int, length: int | None, where: str) -> EntropyCliffError:
    """Find the first line of ``data`` that is not ``{"tokens": [L non-negative ints], ...}`` and say why."""
    for k, line in enumerate(data.split(b"\n")):
        n = first_line + k
        if not line.strip():
            if k < data.count(b"\n"):
                return EntropyCliffError(f"{where}: line {n} is empty")
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            return EntropyCliffError(f"{where}: line {n} is not JSON ({e})")
        if not isinstance(obj, dict) or obj.get("tokens") is None:
            return EntropyCliffError(f"{where}: line {n} has no 'tokens'")
        tok = obj["tokens"]
        if not isinstance(tok, list):
            return EntropyCliffError(f"{where}: line {n}: 'tokens' is {type(tok).__name__}, not a list of integers")
        for v in tok:
            if not isinstance(v, int) or isinstance(v, bool):
                return EntropyCliffError(f"{where}: line {n}: tokens must be integers, found {v!r}")
        cid = obj.get("class_id")
        if cid is not None and (not isinstance(cid, int) or isinstance(cid, bool)):
            return EntropyCliffError(f"{where}: line {n}: class_id must be an integer, found {cid!r}")
        if length is not None and len(tok) != length:
            return EntropyCliffError(f"{where}: line {n} has {len(tok)} tokens, line 1 has {length}")
    last = first_line + data.count(b"\n")
    return EntropyCliffError(f"{where}: unreadable JSONL between lines {first_line} and {last}")


def _flip_views(T: int, batch_size: int, world_size: int, where: str) -> np.ndarray:
    """View (0 original, 1 flip) of each of T lines written by R ranks in batches of B (see module doc)."""
    if T % (2 * world_size):
        raise EntropyCliffError(f"{where}: {T} lines cannot come from world_size {world_size} in flip mode "
                                f"(each rank writes 2 lines per image, the same count on every rank)")
    M = T // (2 * world_size)
    q = np.arange(T, dtype=np.int64) % (2 * M)
    b = q // (2 * batch_size)
    nb = np.minimum(batch_size, M - b * batch_size)
    return (q - 2 * batch_size * b >= nb).astype(np.int8)


def _first_last_lines(T: int, views: int, vi: int, batch_size: int | None, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Line of view ``vi`` of the first and of the last image of every rank block."""
    M = T // (views * world_size)
    base = np.arange(world_size, dtype=np.int64) * views * M
    if views == 10:
        return base + vi, base + 10 * (M - 1) + vi
    b = (M - 1) // batch_size
    nb = min(batch_size, M - b * batch_size)
    return base + vi * min(batch_size, M), base + 2 * batch_size * b + vi * nb + (M - 1 - b * batch_size)


def _jsonl_padding(rows: np.ndarray, row_of_line: np.ndarray, firsts: np.ndarray, lasts: np.ndarray) -> int:
    """Rank blocks whose last image repeats another block's first image (the sampler's padding)."""
    first = rows[row_of_line[firsts]]
    last = rows[row_of_line[lasts]]
    eq = (last[:, None, :] == first[None, :, :]).all(axis=2)
    np.fill_diagonal(eq, False)
    return int(eq.any(axis=1).sum())


def read_titok_jsonl(path: str | os.PathLike, *, view: str | int = "original", ten_crop: bool = False,
                     batch_size: int | None = None, world_size: int | None = None,
                     progress: bool | None = None) -> Corpus:
    """Read a TiTok/RAR pretokenized JSONL, streamed in chunks parsed by polars (see module doc)."""
    import polars as pl

    p = Path(path)
    where = str(p)
    for name, v in (("batch_size", batch_size), ("world_size", world_size)):
        if v is not None and v < 1:
            raise EntropyCliffError(f"{name} must be at least 1, got {v}")
    chunks = _jsonl_chunks(p)
    T = sum(c[2] for c in chunks)
    if T == 0:
        raise EntropyCliffError(f"{where}: empty JSONL")
    A = 10 if ten_crop else 2
    vi = _view_index(view, A, where)
    if ten_crop:
        if T % 10:
            raise EntropyCliffError(f"{where}: {T} lines is not a multiple of 10 (ten-crop writes 10 lines per image)")
        if world_size is not None and T % (10 * world_size):
            raise EntropyCliffError(f"{where}: {T} lines cannot come from world_size {world_size} "
                                    "(every rank writes the same number of images)")
        line_view = np.tile(np.arange(10, dtype=np.int8), T // 10)
    elif batch_size is not None and world_size is not None:
        line_view = _flip_views(T, batch_size, world_size, where)
    elif vi is not None:
        raise EntropyCliffError(
            f"{where}: in flip mode the originals and flips of each batch interleave, so view {view!r} needs the "
            f"writer's batch_size and world_size (got {batch_size} and {world_size}); give both, or view 'all'")
    else:
        line_view = None
    keep = np.ones(T, dtype=bool) if vi is None else line_view == vi
    row_of_line = np.cumsum(keep) - 1
    n_rows = int(keep.sum())
    schema = {"class_id": pl.Int64, "tokens": pl.List(pl.Int64)}
    out = labels = None
    L = None
    has_labels = None
    line0 = 0
    bar = _progress(T, f"reading {p.name}", "lines", progress)
    try:
        with open(p, "rb") as f:
            for start, end, n in chunks:
                f.seek(start)
                data = f.read(end - start)
                try:
                    df = pl.read_ndjson(io.BytesIO(data), schema=schema)
                except Exception:  # polars says "cannot parse"; find and name the line
                    raise _bad_line(data, line0 + 1, L, where) from None
                if df.height != n or df["tokens"].null_count():
                    raise _bad_line(data, line0 + 1, L, where)
                lens = df["tokens"].list.len().to_numpy()
                if L is None:
                    L = int(lens[0])
                    if L == 0:
                        raise EntropyCliffError(f"{where}: line 1 has no tokens")
                if (lens != L).any():
                    k = int(np.flatnonzero(lens != L)[0])
                    raise EntropyCliffError(f"{where}: line {line0 + k + 1} has {lens[k]} tokens, line 1 has {L}")
                tok = df["tokens"].explode().to_numpy().reshape(n, L)
                top = _check_values(tok, lambda k: f"{where}: line {line0 + k + 1}")
                cid = df["class_id"]
                has_labels = cid.null_count() == 0 and has_labels is not False
                if out is None:
                    labels = np.empty(n_rows, dtype=np.int64)
                out = _room_for(out, n_rows, L, top)
                sel = keep[line0:line0 + n]
                r0 = int(row_of_line[line0]) + (0 if keep[line0] else 1)
                r1 = r0 + int(sel.sum())
                out[r0:r1] = tok[sel]
                if has_labels:
                    labels[r0:r1] = cid.to_numpy()[sel]
                line0 += n
                bar.update(n)
    finally:
        bar.close()
    padded = None
    if world_size is not None and line_view is not None:
        ref = vi if vi is not None else (TEN_CROP_CENTRE if ten_crop else 0)
        firsts, lasts = _first_last_lines(T, A, ref, batch_size, world_size)
        padded = _jsonl_padding(out, row_of_line, firsts, lasts) * (1 if vi is not None else A)
    labels = labels if has_labels else None  # labels only when every line has a class_id
    info = {"format": "titok-jsonl", "path": where, **_view_info(view, vi, A), "lines": T, "images": T // A,
            "rows": n_rows, "padded_rows": padded, "batch_size": batch_size, "world_size": world_size,
            "labels": labels is not None}
    return Corpus(out, labels, info)


# ---------------------------------------------------------------------------- Parquet

def _parquet_files(p: Path) -> list[Path]:
    files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
    if not files:
        raise EntropyCliffError(f"{p}: no .parquet files")
    return files


def _token_column(schema: dict[str, Any], column: str | None, where: str) -> str:
    import polars as pl

    def is_int_list(dt) -> bool:
        return isinstance(dt, (pl.List, pl.Array)) and dt.inner.is_integer()

    if column is not None:
        if column not in schema:
            raise EntropyCliffError(f"{where}: no column {column!r} (has {', '.join(schema)})")
        if not is_int_list(schema[column]):
            raise EntropyCliffError(f"{where}: column {column!r} is {schema[column]}, not a list of integers")
        return column
    lists = [c for c, dt in schema.items() if is_int_list(dt)]
    named = [c for c in TOKEN_COLUMNS if c in lists]
    if named:
        return named[0]
    if len(lists) == 1:
        return lists[0]
    raise EntropyCliffError(f"{where}: {'several' if lists else 'no'} integer-list columns "
                            f"({', '.join(lists) or ', '.join(f'{c}: {dt}' for c, dt in schema.items())}); name the token column")


def read_parquet(path: str | os.PathLike, *, column: str | None = None, view: str | int = "original",
                 progress: bool | None = None) -> Corpus:
    """Read a Parquet file or folder (files in name order): a column of fixed-length integer lists."""
    import polars as pl

    p = Path(path)
    where = str(p)
    if view not in ("original", "all", 0):
        raise EntropyCliffError(f"{where}: Parquet rows are single views; view {view!r} does not exist")
    try:
        scan = pl.scan_parquet(_parquet_files(p))
        schema = dict(scan.collect_schema())
        col = _token_column(schema, column, where)
        lab = next((c for c in LABEL_COLUMNS if c in schema and c != col and schema[c].is_integer()), None)
        scan = scan.select([col] + ([lab] if lab else []))
        N = int(scan.select(pl.len()).collect().item())
        if N == 0:
            raise EntropyCliffError(f"{where}: no rows")
        out = labels = None
        L = None
        bar = _progress(N, f"reading {p.name}", "rows", progress)
        try:
            for r0 in range(0, N, _PARQUET_CHUNK_ROWS):
                df = scan.slice(r0, _PARQUET_CHUNK_ROWS).collect()
                s = df[col]
                n = df.height
                if s.null_count():
                    k = int(np.flatnonzero(s.is_null().to_numpy())[0])
                    raise EntropyCliffError(f"{where}: row {r0 + k} of column {col!r} is null")
                lens = s.list.len().to_numpy() if isinstance(s.dtype, pl.List) else np.full(n, s.dtype.size)
                if L is None:
                    L = int(lens[0])
                if (lens != L).any() or L == 0:
                    k = int(np.flatnonzero(lens != L)[0]) if L else 0
                    raise EntropyCliffError(f"{where}: row {r0 + k} of column {col!r} has {lens[k]} tokens, "
                                            f"row 0 has {L}")
                flat = s.explode() if isinstance(s.dtype, pl.List) else s.arr.explode()
                if flat.null_count():
                    raise EntropyCliffError(f"{where}: column {col!r} holds null tokens")
                tok = flat.to_numpy().reshape(n, L)
                top = _check_values(tok, lambda k: f"{where}: row {r0 + k} of column {col!r}")
                if out is None and lab:
                    labels = np.empty(N, dtype=np.int64)
                out = _room_for(out, N, L, top)
                out[r0:r0 + n] = tok
                if labels is not None:
                    if df[lab].null_count():
                        raise EntropyCliffError(f"{where}: label column {lab!r} has nulls")
                    labels[r0:r0 + n] = df[lab].to_numpy()
                bar.update(n)
        finally:
            bar.close()
    except pl.exceptions.PolarsError as e:
        raise EntropyCliffError(f"{where}: not a readable Parquet table ({str(e).splitlines()[0]})") from None
    info = {"format": "parquet", "path": where, **_view_info(view, None if view == "all" else 0, 1), "images": N,
            "rows": N, "padded_rows": None, "column": col, "label_column": lab, "labels": labels is not None}
    return Corpus(out, labels, info)


# ---------------------------------------------------------------------------- dispatch and convert

def _label_count(lp: Path) -> int:
    """The number of labels in ``lp`` from its .npy header (no data read); they must be 1-D."""
    shape = _npy_shape(lp)[0]
    if len(shape) != 1:
        raise EntropyCliffError(f"{lp}: labels must be 1-D (one per row), got shape {shape}")
    return shape[0]


def _shard_labels(path: str | os.PathLike, read: bool) -> tuple[np.ndarray | None, bool]:
    """``(labels or None, whether every non-empty shard has them)`` of a sharded dump: each shard's
    ``NAME.labels.npy`` must hold as many labels as the shard has rows."""
    from entropy_cliff.io import load_array
    from entropy_cliff.shards import shard_paths

    own = [(p, p.with_name(p.stem + LABELS_SUFFIX), n) for p in shard_paths(path) if (n := _npy_shape(p)[0][0]) > 0]
    have = [lp.exists() for _, lp, _ in own]
    if any(have) and not all(have):
        raise EntropyCliffError(f"{own[have.index(False)][1]}: missing (other shards have labels)")
    if not all(have):
        return None, False
    for p, lp, n in own:
        if (m := _label_count(lp)) != n:
            raise EntropyCliffError(f"{lp}: {m:,} labels, but its shard {p.name} has {n:,} rows")
    return (np.concatenate([load_array(lp) for _, lp, _ in own]) if read else None), True


def _npy_labels(path: str | os.PathLike, N: int, read: bool) -> tuple[np.ndarray | None, bool, str | None]:
    """``(labels or None, whether there are labels, why labels were ignored or None)`` of a .npy dump.

    ``NAME.labels.npy`` must hold N labels. The old shared ``DIR/labels.npy`` (see
    :func:`entropy_cliff.io.labels_path`) may belong to another dump: with another length it is
    refused when the labels are read, ignored (and the reason returned) when they are not.
    """
    from entropy_cliff.io import labels_path, load_array

    p, lp = Path(path), labels_path(path)
    if not lp.exists() or lp == p:
        return None, False, None
    m = _label_count(lp)
    if m != N:
        msg = f"{lp}: {m:,} labels for the {N:,} rows of {p.name}"
        if lp.name == p.stem + LABELS_SUFFIX:
            raise EntropyCliffError(msg)
        msg += f" (the shared labels.npy of another dump? this dump's own would be {p.stem + LABELS_SUFFIX})"
        if read:
            raise EntropyCliffError(msg)
        return None, False, msg
    return (np.asarray(load_array(lp)) if read else None), True, None


def read_corpus(path: str | os.PathLike, input_format: str | None = None, *, view: str | int = "original",
                column: str | None = None, ten_crop: bool = False, batch_size: int | None = None,
                world_size: int | None = None, threads: int | None = None, key: str | None = None,
                progress: bool | None = None, labels: bool = True) -> Corpus:
    """Read any supported token input (see :data:`FORMATS`) as an ``(N, L)`` :class:`Corpus`.

    ``.npy`` is memory-mapped as is (with ``NAME.labels.npy`` when present); view options apply to
    formats that store several views per image. Labels must count one per row (a shard's
    ``NAME.labels.npy`` its shard's rows). ``labels = False`` leaves ``Corpus.labels`` None and reads
    no label data (LlamaGen: opens no label file); ``info["labels"]`` still says whether there are
    labels, and a legacy ``DIR/labels.npy`` of the wrong length is then ignored with the reason in
    ``info["labels_ignored"]`` instead of refused.
    """
    from entropy_cliff.io import load_tokens

    fmt = detect_format(path, input_format)
    view = parse_view(view)
    if fmt == "llamagen":
        return read_llamagen(path, view=view, world_size=world_size, threads=threads, progress=progress, labels=labels)
    if fmt in ("titok-jsonl", "parquet"):  # labels come with the tokens in one parse
        c = (read_titok_jsonl(path, view=view, ten_crop=ten_crop, batch_size=batch_size, world_size=world_size,
                              progress=progress) if fmt == "titok-jsonl" else
             read_parquet(path, column=column, view=view, progress=progress))
        return c if labels else c._replace(labels=None)
    if view not in ("original", "all", 0):
        raise EntropyCliffError(f"{path}: a {fmt} dump has one view per row; view {view!r} does not exist")
    ignored = None
    if fmt == "shards":  # a list of memory-mapped shards, never concatenated here
        from entropy_cliff.shards import load_shards

        X = load_shards(path)
        y, has = _shard_labels(path, labels)
        rows = sum(x.shape[0] for x in X)
    else:
        X = load_tokens(path, key)
        rows = X.shape[0]
        y, has, ignored = _npy_labels(path, rows, labels) if fmt == "npy" else (None, False, None)
    info = {"format": fmt, "path": str(path), **_view_info(view, 0, 1), "images": rows, "rows": rows,
            "padded_rows": None, "labels": has}
    if ignored is not None:
        info["labels_ignored"] = ignored
    return Corpus(X, y, info)


def describe(info: dict[str, Any]) -> str:
    """One line about an input: format, view, rows, padding."""
    parts = [f"{info['format']}", f"{info['rows']:,} rows"]
    if info["views_per_image"] > 1:
        parts.append(f"{info['augmentation']}: all {info['views_per_image']} views per image as rows "
                     "(not independent samples)" if info["view_index"] is None else
                     f"{info['augmentation']}: view {info['view_index']} ({info['view']}) of {info['views_per_image']}")
    if info.get("padded_rows"):
        parts.append(f"{info['padded_rows']:,} rows the writer padded in (kept)")
    elif info.get("padded_rows") is None and info["format"] in ("llamagen", "titok-jsonl"):
        parts.append("padding unknown (give the world size)")
    return "input: " + "; ".join(parts)


def convert(path: str | os.PathLike, out: str | os.PathLike, *, schedule: Any = None, K: int | None = None,
            **read_options: Any) -> dict[str, Any]:
    """Read ``path`` with :func:`read_corpus` and write our token dump ``out`` (``.npy`` + sidecar + labels).

    K_t as for ``measure`` (:func:`entropy_cliff.report.resolve_K`): ``schedule`` or uniform ``K``,
    else the input's own sidecar (our dumps), else the largest token + 1 at every position
    (``K_source`` inferred). The sidecar's ``source`` holds the reader's info (format, view, rows,
    padded rows, ...) and where K_t came from. ``out`` is probed (:func:`entropy_cliff.io.prepare_output`)
    before the input is read; a failure leaves no file behind.
    """
    from entropy_cliff.io import check_dump_path, prepare_output, save_tokens
    from entropy_cliff.report import resolve_K
    from entropy_cliff.schedules import Schedule

    if Path(out).resolve() == Path(path).resolve():
        raise EntropyCliffError(f"{out}: the output would overwrite the input")
    prepare_output(check_dump_path(out), "file", keep=False)
    corpus = read_corpus(path, **read_options)
    tokens = np.concatenate(corpus.tokens) if isinstance(corpus.tokens, list) else corpus.tokens
    N, L = tokens.shape
    own = corpus.info["format"] in OUR_FORMATS
    Kt, k_source, sched = resolve_K(path if own else None, (N, L), schedule=schedule, K=K)
    if Kt is None:
        k = int(tokens.max()) + 1
        sched = Schedule("constant", k, k, L)
    source = dict(corpus.info, K_source=k_source.to_dict())
    save_tokens(out, tokens, sched.K, sched.to_dict(), source=source, labels=corpus.labels)
    return {"out": str(out), "N": N, "L": L, "schedule": sched.to_dict(), "K_source": k_source.to_dict(),
            "input": corpus.info}
