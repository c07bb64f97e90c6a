"""The run layer: one way to resolve a run's configuration, train (or resume) it, and load it back.

A run directory (:mod:`vcq.train`) holds ``config.json`` = ``{"task", "preset", "model", "train",
"data"}``; ``task`` is ``"tokenizer"`` or ``"ar"``.

- :func:`resolve_config`: a preset (default ``tiny``) with ``overrides`` ``{section: {field:
  value}}`` replacing fields; on resume the saved config takes the preset's place, and the
  training loop refuses any override that would change the result. AR runs take K_t and the class
  count from their token dump. Every value is checked here (messages name the field).
- :func:`train_run`: resolve and train in one call (what ``vcq train-tokenizer`` / ``train-ar`` do).
- :func:`load_run`: a trained run as :class:`Run` (config, model, data spec, step).

Sampling settings resolve the same way through :func:`vcq.sampling.resolve_sampling`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from vcq.presets import from_dict, lookup, override
from vcq.train import CONFIG_FILE, WEIGHTS_FILE, TrainResult, check_train_config, read_config

TASKS = ("tokenizer", "ar")


@dataclass
class Run:
    """A trained run: its directory, resolved config, model (eval mode), data spec
    (:class:`vcq.data.DataSpec` for a tokenizer, :class:`vcq.train_ar.TokenDataSpec` for an AR
    model) and the step its weights were saved at (None when unknown)."""

    path: Path
    task: str
    config: dict[str, Any]
    model: nn.Module
    data: Any
    step: int | None


def run_task(config: dict[str, Any], where: str | Path = "config") -> str:
    task = config.get("task")
    if task not in TASKS:
        raise EntropyCliffError(f"{where}: task = {task!r} is not a vcq run (choose from {', '.join(TASKS)})")
    return task


def resolve_config(task: str, *, preset: str | None = None, overrides: dict[str, dict[str, Any]] | None = None,
                   data: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The configuration a run saves, from a preset or a saved config ``base`` (resume).

    ``overrides``: ``{"model" | "train" | "data": {field: value}}``; ``None`` values are skipped.
    ``data`` (AR runs): the :class:`vcq.train_ar.TokenDataSpec` fields given (``tokens`` at least,
    for a new run); a tokenizer's data fields go in ``overrides["data"]``.
    """
    return _resolve(task, preset, overrides, data, base)[0]


def _resolve(task: str, preset: str | None, overrides: dict[str, dict[str, Any]] | None, data: dict[str, Any] | None,
             base: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    """:func:`resolve_config`'s config and, for a new AR run, the token dump it read to size the
    model (:class:`vcq.train_ar.TokenDump`; else None): :func:`train_run` hands it on, so the dump
    is read once."""
    given = {k: {f: v for f, v in d.items() if v is not None} for k, d in (overrides or {}).items()}
    if task == "tokenizer":
        return _resolve_tokenizer(preset, given, base), None
    if task == "ar":
        return _resolve_ar(preset, given, {k: v for k, v in (data or {}).items() if v is not None}, base)
    raise EntropyCliffError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")


def _resolve_tokenizer(preset: str | None, given: dict[str, dict[str, Any]], base: dict[str, Any] | None) -> dict[str, Any]:
    from vcq.data import DataSpec, check_val_fraction
    from vcq.presets import TOKENIZER_PRESETS, TokenizerConfig, TrainConfig
    from vcq.tokenizer import schedule_of
    from vcq.train_tokenizer import run_config

    if base is None or preset is not None:
        p = lookup(TOKENIZER_PRESETS, preset or "tiny", "tokenizer preset")
        name, model, train_cfg, data = preset or "tiny", p.model, p.train, DataSpec()
    else:
        run_task(base)
        name = base.get("preset", "custom")
        model = from_dict(TokenizerConfig, base["model"])
        train_cfg = from_dict(TrainConfig, base["train"])
        data = from_dict(DataSpec, base["data"])
    model = override(model, **given.get("model", {}))
    train_cfg = override(train_cfg, **given.get("train", {}))
    data = override(data, **given.get("data", {}))
    schedule_of(model)
    check_train_config(train_cfg)
    check_val_fraction(data.val_fraction)
    return run_config(model, train_cfg, data, name)


def _resolve_ar(preset: str | None, given: dict[str, dict[str, Any]], data: dict[str, Any],
                base: dict[str, Any] | None) -> tuple[dict[str, Any], Any]:
    from entropy_cliff.io import labels_path
    from vcq.data import VAL_FRACTION, check_val_fraction
    from vcq.presets import AR_PRESETS, TrainConfig
    from vcq.train_ar import TokenDataSpec, ar_config_for_dump, load_token_dump, run_config

    if "val_fraction" in data:
        check_val_fraction(data["val_fraction"])
    if base is not None:  # the saved config with what was given; the loop refuses any change that matters
        run_task(base)
        config = {**base, "data": {**base.get("data", {}), **data},
                  **{sec: {**base.get(sec, {}), **vals} for sec, vals in given.items()}}
        check_train_config(from_dict(TrainConfig, config["train"]))
        return config, None
    if "tokens" not in data:
        raise EntropyCliffError("an AR run needs data.tokens (a token dump NAME.npy)")
    data = {"val_fraction": VAL_FRACTION, **data}
    for tok, lab in (("tokens", "labels"), ("val_tokens", "val_labels")):  # a shard directory finds its own
        if data.get(tok) and not Path(data[tok]).is_dir():
            data.setdefault(lab, str(labels_path(data[tok])))
    spec = from_dict(TokenDataSpec, data)
    p = lookup(AR_PRESETS, preset or "tiny", "AR preset")
    model_given = dict(given.get("model", {}))
    num_classes = model_given.pop("num_classes", None)
    dump = load_token_dump(spec.tokens, spec.labels)
    model = ar_config_for_dump(override(p.model, **model_given), dump, num_classes)
    train_cfg = override(p.train, **given.get("train", {}))
    check_train_config(train_cfg)
    return run_config(model, train_cfg, data, preset or "tiny"), dump


@dataclass
class TrainOutcome:
    """What :func:`train_run` returns: the resolved config, the loop's result and, for AR runs,
    the per-position NLL summary (``nll.json``)."""

    config: dict[str, Any]
    result: TrainResult
    nll: dict[str, Any] | None = None


def train_run(task: str, out: str | Path, *, preset: str | None = None,
              overrides: dict[str, dict[str, Any]] | None = None, data: dict[str, Any] | None = None,
              resume: bool = False, stop_at: int | None = None, device: str | None = None, quiet: bool = False,
              log: Callable[[str], None] | None = None) -> TrainOutcome:
    """Resolve a run's config (:func:`resolve_config`; on ``resume`` from ``out``'s saved config)
    and train it into ``out``; under ``torchrun`` the process group is left at the end."""
    from entropy_cliff.io import prepare_output

    if stop_at is not None and stop_at < 0:
        raise EntropyCliffError(f"stop_at must be >= 0, got {stop_at}")
    base = read_config(out) if resume else None
    config, dump = _resolve(task, preset, overrides, data, base)
    from vcq.train import finish_distributed

    prepare_output(out, "dir")
    try:
        if task == "tokenizer":
            from vcq.train_tokenizer import train_tokenizer

            return TrainOutcome(config, train_tokenizer(config, out, resume=resume, stop_at=stop_at, quiet=quiet,
                                                        device=device, log=log))
        from vcq.train_ar import train_ar

        res, nll = train_ar(config, out, resume=resume, stop_at=stop_at, quiet=quiet, device=device, log=log,
                            dump=dump)
        return TrainOutcome(config, res, nll)
    finally:
        finish_distributed()


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", task: str | None = None) -> Run:
    """A trained run (tokenizer or AR) from its directory, model in eval mode on ``device``.

    ``task``, when given, is the kind of run the caller needs (an error names the directory if it
    is another). Works for every run directory written by ``vcq train-tokenizer`` / ``train-ar``.
    """
    from vcq.presets import TrainConfig

    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file():
        raise EntropyCliffError(f"{run}: not a run directory (no {CONFIG_FILE})")
    config = read_config(run)
    kind = run_task(config, run / CONFIG_FILE)
    if task is not None and kind != task:
        raise EntropyCliffError(f"{run}: is a {kind} run, not a {task} run")
    from_dict(TrainConfig, config.get("train", {}))
    if kind == "tokenizer":
        from vcq.data import DataSpec
        from vcq.tokenizer import load_tokenizer

        model, data = load_tokenizer(run, device), from_dict(DataSpec, config["data"])
    else:
        from vcq.train_ar import TokenDataSpec, load_ar

        model, data = load_ar(run, device), from_dict(TokenDataSpec, config["data"])
    return Run(run, kind, config, model, data, weights_step(run))


def weights_step(run_dir: str | Path) -> int | None:
    """The training step stored in a run's ``model.safetensors`` metadata."""
    from safetensors import safe_open

    with safe_open(str(Path(run_dir) / WEIGHTS_FILE), "pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None
