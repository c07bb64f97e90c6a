"""Training the AR model on a token dump, through the shared loop of :mod:`vcq.train`.

- :func:`load_token_dump` reads ``tokens.npy`` + sidecar + labels and checks them against each
  other (K_t from the sidecar, every token < K_t, one label per row, class ids in range).
- :class:`TokenData` serves batches ``{"tokens", "labels"}`` to the loop; :class:`ARTask` computes
  the next-token cross-entropy (the paper's three dropouts, Appendix A, live in the model).
- :func:`nll_per_position` gives the per-position NLL in bits, the model's counterpart of the
  data's conditional entropy H_t from ``entropy-cliff measure``: on the training rows it can fall
  to H_t (and below, for a model that memorises), on held-out rows it shows what generalises.
- :func:`train_ar` runs it all and writes ``nll.json`` (train and validation NLL per position, and
  the training rows' exact class-conditional entropy ``H(X_t | X_<t, c)`` beside them) next to the
  loop's checkpoint files; :func:`load_ar` rebuilds a trained model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import labels_path, read_sidecar, write_json_atomic
from vcq.ar import ARTransformer, next_token_loss
from vcq.data import VAL_FRACTION, check_val_fraction
from vcq.presets import ARConfig, TrainConfig, from_dict, to_dict
from vcq.train import MAIN, Task, TrainResult, is_main_process, load_weights, read_config, train

NLL_FILE = "nll.json"


@dataclass(frozen=True)
class TokenDump:
    """A token corpus with its per-position codebook sizes and class labels."""

    tokens: np.ndarray  # (N, L) unsigned ints
    labels: np.ndarray  # (N,) int64
    K: tuple[int, ...]
    schedule: dict[str, Any] | None
    path: str


def load_labels(path: str | Path, n: int) -> np.ndarray:
    """One integer label per row; refuses a wrong length, a non-integer dtype or negative ids."""
    p = Path(path)
    if not p.is_file():
        raise EntropyCliffError(f"{p}: no such labels file")
    try:
        y = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise EntropyCliffError(f"{p}: not a readable .npy array ({str(e).splitlines()[0]})") from None
    return check_label_array(y, n, p)


def check_label_array(y: np.ndarray, n: int, p: str | Path) -> np.ndarray:
    """``y`` as int64 labels of ``n`` rows (``p`` names their source in errors)."""
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise EntropyCliffError(f"{p}: labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if len(y) != n:
        raise EntropyCliffError(f"{p}: {len(y)} labels for {n} token sequences")
    if len(y) and y.min() < 0:
        raise EntropyCliffError(f"{p}: class ids must be >= 0, found {int(y.min())}")
    return y.astype(np.int64)


def load_token_dump(tokens_path: str | Path, labels: str | Path | None = None) -> TokenDump:
    """Read and cross-check a dump written by ``vcq dump-tokens`` (or ``entropy-cliff convert``): a file
    ``NAME.npy`` or a sharded directory ``NAME/`` (:func:`entropy_cliff.formats.read_corpus`), its sidecar
    (``NAME.meta.json`` / ``NAME/meta.json``) and its labels (``labels``, else ``NAME.labels.npy``, the
    older ``DIR/labels.npy``, or the shards' ``shard-*.labels.npy``)."""
    from entropy_cliff.formats import read_corpus

    corpus = read_corpus(tokens_path, progress=False)
    if corpus.info["format"] not in ("npy", "shards"):
        raise EntropyCliffError(f"{tokens_path}: a {corpus.info['format']} input; write a dump first "
                                "(vcq dump-tokens, or entropy-cliff convert)")
    tokens = np.concatenate(corpus.tokens) if isinstance(corpus.tokens, list) else np.asarray(corpus.tokens)
    meta = read_sidecar(tokens_path, tokens.shape)
    if meta is None:
        raise EntropyCliffError(f"{tokens_path}: no sidecar with the codebook sizes K_t (write dumps with vcq dump-tokens)")
    K = tuple(int(k) for k in meta["K"])
    check_tokens_fit(tokens, K, str(tokens_path))
    if labels is not None:
        y = load_labels(labels, len(tokens))
    elif corpus.labels is None:
        raise EntropyCliffError(f"{tokens_path}: no labels ({labels_path(tokens_path).name} or shard-*.labels.npy); "
                                "give the labels file")
    else:
        y = check_label_array(corpus.labels, len(tokens), tokens_path)
    return TokenDump(tokens, y, K, meta.get("schedule"), str(tokens_path))


def check_tokens_fit(tokens: np.ndarray, K: tuple[int, ...] | list[int], name: str) -> None:
    """Every token at position t must lie in [0, K_t)."""
    col_max = np.asarray(tokens).max(axis=0).astype(np.int64)
    bad = np.flatnonzero(col_max >= np.asarray(K))
    if bad.size:
        t = int(bad[0])
        raise EntropyCliffError(f"{name}: token {int(col_max[t])} at position t = {t + 1} is >= K_t = {K[t]}")


def check_dump_matches(dump: TokenDump, cfg: ARConfig) -> None:
    """A dump fits a model when its K_t equal the model's and its labels are valid class ids."""
    if tuple(dump.K) != tuple(cfg.K):
        first = next((i for i, (a, b) in enumerate(zip(dump.K, cfg.K)) if a != b), min(len(dump.K), len(cfg.K)))
        raise EntropyCliffError(f"{dump.path}: sidecar K_t disagree with the model's (L {len(dump.K)} vs {len(cfg.K)}, "
                                f"first difference at t = {first + 1})")
    if len(dump.labels) and dump.labels.max() >= cfg.num_classes:
        raise EntropyCliffError(f"{dump.path}: class id {int(dump.labels.max())} out of range for "
                                f"{cfg.num_classes} classes")


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train / validation row indices from a seeded permutation (validation first)."""
    check_val_fraction(val_fraction)
    perm = np.random.default_rng([seed, 7]).permutation(n)
    n_val = int(round(val_fraction * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


class TokenData:
    """Rows of a token corpus as training batches ``{"tokens": int64 (B, L), "labels": int64 (B,)}``."""

    def __init__(self, tokens: np.ndarray, labels: np.ndarray) -> None:
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.tokens)

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"tokens": np.asarray(self.tokens[idx], dtype=np.int64), "labels": self.labels[idx]}


@dataclass(frozen=True)
class TokenDataSpec:
    """Which token rows an AR run reads (saved as ``config.json["data"]``): the dump ``tokens``
    with its ``labels`` (default: :func:`entropy_cliff.io.labels_path`), and either a separate
    held-out dump ``val_tokens`` (+ ``val_labels``) or ``val_fraction`` of the dump's rows held out
    by the training seed. ``nll_rows``: rows per split for the final per-position NLL."""

    tokens: str
    labels: str | None = None
    val_tokens: str | None = None
    val_labels: str | None = None
    val_fraction: float = VAL_FRACTION
    nll_rows: int = 4096

    def load(self, seed: int, dump: TokenDump | None = None) -> tuple[TokenDump, TokenData, TokenData]:
        """The whole dump, its training rows and its validation rows (``dump``: the dump at
        ``tokens``, when the caller has read it already)."""
        dump = load_token_dump(self.tokens, self.labels) if dump is None else dump
        if self.val_tokens:
            val_dump = load_token_dump(self.val_tokens, self.val_labels)
            if tuple(val_dump.K) != tuple(dump.K):
                raise EntropyCliffError(f"{self.val_tokens}: sidecar K_t disagree with {self.tokens}'s")
            return dump, TokenData(dump.tokens, dump.labels), TokenData(val_dump.tokens, val_dump.labels)
        tr_idx, va_idx = split_rows(len(dump.tokens), self.val_fraction, seed)
        return (dump, TokenData(dump.tokens[tr_idx], dump.labels[tr_idx]),
                TokenData(dump.tokens[va_idx], dump.labels[va_idx]))


class ARTask(Task):
    """Next-token prediction for :func:`vcq.train.train`; logs the mean validation NLL in bits."""

    def __init__(self, model: ARTransformer, val: TokenData | None = None, val_rows: int = 512) -> None:
        self.model = model
        self.models = {MAIN: model}
        self.val = val if val is not None and len(val) else None
        self.val_rows = val_rows

    def step(self, models: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        tokens, labels = batch["tokens"], batch["labels"]
        logits = models[MAIN](tokens[:, :-1], labels)
        loss = next_token_loss(logits, tokens)
        return loss, {"train_bits_per_token": loss.detach() / math.log(2)}

    def log_metrics(self) -> dict[str, float]:
        if self.val is None:
            return {}
        n = min(len(self.val), self.val_rows)
        nll = nll_per_position(self.model, self.val.tokens[:n], self.val.labels[:n])
        return {"val_bits_per_token": float(nll.mean())}


@torch.no_grad()
def nll_per_position(model: ARTransformer, tokens: np.ndarray, labels: np.ndarray,
                     batch_size: int = 256) -> np.ndarray:
    """Mean NLL in bits of each position t = 1..L (model in eval mode: no dropout, true labels)."""
    was = model.training
    model.eval()
    device = model.K.device
    total = torch.zeros(model.cfg.length, dtype=torch.float64)
    for s in range(0, len(tokens), batch_size):
        x = torch.as_tensor(np.asarray(tokens[s:s + batch_size], dtype=np.int64), device=device)
        y = torch.as_tensor(np.asarray(labels[s:s + batch_size], dtype=np.int64), device=device)
        total += model.nll_bits_per_position(x, y).double().cpu()
    model.train(was)
    return (total / max(len(tokens), 1)).numpy()


def class_conditional_entropy(data: TokenData, cfg: ARConfig) -> np.ndarray:
    """Exact ``H(X_t | X_<t, c)`` (bits, t = 1..L) of the rows, by :func:`entropy_cliff.measure.measure`
    on the corpus with the class prepended as position 0: the training NLL a model reaches by
    learning (or memorising) the training set's conditionals, and 0 past the entropy cliff."""
    from entropy_cliff.measure import measure

    with_class = np.column_stack([data.labels, np.asarray(data.tokens, dtype=np.int64)])
    return measure(with_class, K=np.array([cfg.num_classes, *cfg.K]), progress=False).H_cond[1:]


def ar_config_for_dump(preset_model: ARConfig, dump: TokenDump, num_classes: int | None = None) -> ARConfig:
    """The preset's architecture with the dump's K_t, schedule and class count filled in."""
    n_cls = int(dump.labels.max()) + 1 if num_classes is None else num_classes
    if n_cls < 1:
        raise EntropyCliffError(f"num_classes must be >= 1, got {n_cls}")
    cfg = ARConfig(**{**to_dict(preset_model), "K": tuple(dump.K), "num_classes": n_cls, "schedule": dump.schedule})
    check_dump_matches(dump, cfg)
    return cfg


def run_config(model: ARConfig, train_cfg: TrainConfig, data: dict[str, Any], preset: str) -> dict[str, Any]:
    """The resolved configuration an AR run saves as ``config.json``."""
    return {"task": "ar", "preset": preset, "model": {**to_dict(model), "K": list(model.K)},
            "train": to_dict(train_cfg), "data": data}


def model_config(config: dict[str, Any]) -> ARConfig:
    """The :class:`ARConfig` stored in a run config (JSON lists back to tuples)."""
    if config.get("task") != "ar" or "model" not in config:
        raise EntropyCliffError("not an AR run config (config.json has no AR model)")
    m = dict(config["model"])
    try:
        return ARConfig(**{**m, "K": tuple(int(k) for k in m["K"])})
    except (TypeError, KeyError) as e:
        raise EntropyCliffError(f"config does not describe an AR model ({e})") from None


def train_ar(config: dict[str, Any], out_dir: str | Path, *, resume: bool = False, stop_at: int | None = None,
             quiet: bool = False, device: str | None = None, log: Callable[[str], None] | None = None,
             dump: TokenDump | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """Train the AR model described by :func:`run_config` output; returns the loop's result and
    the per-position NLL summary written to ``nll.json`` (under ``torchrun`` only rank 0 computes
    it; the other ranks return an empty dict).

    ``config["data"]`` is a :class:`TokenDataSpec`; ``dump``, when given, is its ``tokens`` dump
    already read (by :func:`vcq.runs.train_run`), so it is not read again.
    """
    from vcq.train import seed_everything

    cfg = model_config(config)
    train_cfg = from_dict(TrainConfig, config["train"])
    spec = from_dict(TokenDataSpec, config["data"])
    dump, tr, va = spec.load(train_cfg.seed, dump)
    check_dump_matches(dump, cfg)
    if len(va) and va.labels.max() >= cfg.num_classes:
        raise EntropyCliffError(f"{spec.val_tokens or spec.tokens}: validation class id {int(va.labels.max())} "
                                f"out of range for {cfg.num_classes} classes")
    seed_everything(train_cfg.seed)
    model = ARTransformer(cfg)
    task = ARTask(model, va)
    result = train(task, tr, train_cfg, out_dir, config=config, resume=resume, stop_at=stop_at, quiet=quiet,
                   device=device, log=log)
    if not is_main_process():  # rank 0 alone measures H_t and the NLL and writes nll.json
        return result, {}
    limit = spec.nll_rows
    train_nll = nll_per_position(model, tr.tokens[:limit], tr.labels[:limit])
    summary: dict[str, Any] = {"step": result.step, "train_rows": min(limit, len(tr)),
                               "train_bits_per_token": float(train_nll.mean()),
                               "train_nll_bits": [float(v) for v in train_nll],
                               "data_H_cond_bits": [float(v) for v in class_conditional_entropy(tr, cfg)]}
    if len(va):
        val_nll = nll_per_position(model, va.tokens[:limit], va.labels[:limit])
        summary.update(val_rows=min(limit, len(va)), val_bits_per_token=float(val_nll.mean()),
                       val_nll_bits=[float(v) for v in val_nll])
    write_json_atomic(Path(out_dir) / NLL_FILE, summary)
    return result, summary


def load_ar(run_dir: str | Path, device: str | torch.device = "cpu") -> ARTransformer:
    """Rebuild a trained AR model from a run directory (``config.json`` + ``model.safetensors``)."""
    return load_weights(ARTransformer(model_config(read_config(run_dir))), run_dir, device)
