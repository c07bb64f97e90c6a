"""A text corpus at image-dump scale: per-position entropy of BPE windows (paper Fig. 2a's text curve).

- :func:`stdlib_paragraphs`: English every Python installation carries -- the docstrings of the
  standard library's source files, read with :mod:`ast` (nothing is imported);
- :func:`text_paragraphs`: the paragraphs of every ``.txt`` file under a folder;
- :func:`dedupe`: paragraphs split on blank lines, whitespace normalised, exact duplicates dropped
  (first occurrence kept, order preserved);
- :func:`train_bpe` / :func:`load_bpe`: a byte-level BPE tokenizer (``tokenizers`` library);
- :func:`windows`: the paragraphs' ids concatenated into one stream, cut into windows of L tokens
  every ``stride`` tokens (stride = L: disjoint windows), N of them drawn without replacement.

The windows are an (N, L) corpus with K_t = vocabulary size at every position, measured by
:func:`entropy_cliff.report.measure_corpus` like any token dump (:func:`entropy_record`).
"""

from __future__ import annotations

import ast
import re
import sysconfig
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from entropy_cliff.errors import EntropyCliffError

_WS = re.compile(r"\s+")


def dedupe(texts: Iterable[str], min_chars: int = 40) -> list[str]:
    """Paragraphs (blank-line separated) of ``texts`` with whitespace collapsed, each kept once,
    in first-seen order; paragraphs shorter than ``min_chars`` are dropped."""
    seen: set[str] = set()
    out = []
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            p = _WS.sub(" ", para).strip()
            if len(p) >= min_chars and p not in seen:
                seen.add(p)
                out.append(p)
    return out


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return [d for d in (ast.get_docstring(n, clean=True) for n in nodes) if d]


def stdlib_paragraphs(root: str | Path | None = None, min_chars: int = 40) -> list[str]:
    """De-duplicated docstring paragraphs of the ``.py`` files under the standard library
    (``sysconfig``'s ``stdlib`` path, tests included, ``site-packages`` excluded), sorted by file path."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise EntropyCliffError(f"standard library folder {root} does not exist")
    files = sorted(p for p in root.rglob("*.py")
                   if "site-packages" not in p.relative_to(root).parts)
    return dedupe((d for f in files for d in _docstrings(f.read_text(encoding="utf-8", errors="replace"))), min_chars)


def text_paragraphs(folder: str | Path, min_chars: int = 40) -> list[str]:
    """De-duplicated paragraphs of every ``.txt`` file under ``folder`` (sorted by path)."""
    folder = Path(folder)
    files = sorted(folder.rglob("*.txt")) if folder.is_dir() else []
    if not files:
        raise EntropyCliffError(f"text folder {folder} holds no .txt files")
    return dedupe((f.read_text(encoding="utf-8", errors="replace") for f in files), min_chars)


def train_bpe(paragraphs: Sequence[str], vocab: int = 32000) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``vocab`` entries trained on ``paragraphs``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab < 257:
        raise EntropyCliffError(f"vocab must be at least 257 (the byte alphabet + 1), got {vocab}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(paragraphs, trainer=trainer)
    return tok


def load_bpe(path: str | Path) -> Any:
    """A user's ``tokenizer.json``."""
    from tokenizers import Tokenizer

    p = Path(path)
    if not p.is_file():
        raise EntropyCliffError(f"tokenizer file {p} does not exist")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises its own exception type
        raise EntropyCliffError(f"tokenizer file {p} could not be read ({e})") from None


def windows(paragraphs: Sequence[str], tokenizer: Any, L: int = 256, stride: int | None = None,
            N: int | None = None, seed: int = 0) -> np.ndarray:
    """(N, L) windows of the token stream of ``paragraphs`` (joined with a blank line), starting every
    ``stride`` tokens (default L, disjoint); N of them drawn without replacement (all when None),
    kept in stream order."""
    stride = L if stride is None else stride
    if L < 1 or stride < 1:
        raise EntropyCliffError(f"window length and stride must be positive, got L = {L}, stride = {stride}")
    ids = np.concatenate([np.asarray(e.ids, dtype=np.int64)
                          for e in tokenizer.encode_batch([p + "\n\n" for p in paragraphs])])
    starts = np.arange(0, len(ids) - L + 1, stride)
    if N is not None:
        if N > len(starts):
            raise EntropyCliffError(f"the text gives {len(starts)} windows of {L} tokens (stride {stride}), fewer than N = {N}")
        starts = np.sort(np.random.default_rng(seed).choice(starts, size=N, replace=False))
    return ids[starts[:, None] + np.arange(L)]


def entropy_record(source: np.ndarray | str | Path, K: int | None = None, epsilon: float = 0.5) -> dict[str, Any]:
    """``{"N", "L", "vocab", "H_cond", "t_star_sustained", "t_star_theory"}`` of an (N, L) corpus or a
    token dump measured by :func:`entropy_cliff.report.measure_corpus` (K_t: the uniform ``K`` when
    given, else the dump's sidecar, else inferred); ``vocab`` = max K_t; H_cond in bits, positions
    1..L in list order; sustained t* at ``epsilon``."""
    from entropy_cliff.report import measure_corpus

    r = measure_corpus(source, K=K, epsilon=epsilon, progress=False)
    return {"N": r.N, "L": r.L, "vocab": int(r.K.max()), "H_cond": [float(h) for h in r.measurement.H_cond],
            "t_star_sustained": r.t_star_sustained, "t_star_theory": r.t_star_theory}
