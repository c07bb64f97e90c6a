"""One training loop for every vcq model (the tokenizer here, the AR model in :mod:`vcq.ar`).

A model family plugs in through a :class:`Task`: its modules (``models``; each gets its own AdamW
optimizer, e.g. a tokenizer and its discriminator) and a ``step(models, batch, step) -> (loss,
metrics)``. The loop does everything else:

- data order: a pure function of the step (:func:`batch_indices`): epoch ``e`` visits a seeded
  permutation of the dataset (``np.random.default_rng([seed, e])``), cut into global batches of
  ``batch_size × world_size`` (the ragged tail is dropped); rank r takes the r-th slice. Per-step
  augmentation draws come from ``np.random.default_rng([seed, step, rank])``. So the data position
  *is* the step and resuming replays the same batches.
- AdamW with weight decay on weight matrices only (``ndim < 2`` — biases, norm gains — and the
  names a task lists in ``no_decay`` are excluded); learning rate ``lr × lr_factor(step)``: linear
  warmup over ``warmup_steps`` then linear decay to ``min_lr`` at ``steps`` (:func:`lr_at`).
- batches come from a :class:`torch.utils.data.DataLoader` over steps (:func:`step_loader`;
  ``workers`` processes, pinned memory on CUDA); ``grad_accum`` micro-batches of ``batch_size``
  make one optimizer step (gradients of the mean loss over the step's rows; DDP synchronises on the
  last micro-batch only). The loop synchronises with the device only at logging and checkpoint
  steps (metrics stay tensors until then; a non-finite loss is caught there, before any checkpoint).
- optional gradient clipping (global norm per optimizer), bf16 autocast on CUDA, DDP under
  ``torchrun`` (NCCL on GPUs, gloo on CPU), rank 0 alone writes files.
- randomness: the models are built from the same seed on every rank; then each rank reseeds with
  :func:`rank_seed` (so dropout and label-dropout masks differ across ranks) and its RNG states go
  into ``train_state.pt``. Logged metrics are means over all ranks (:func:`all_reduce_mean`).
- run directory: ``config.json`` (the resolved config), ``model.safetensors`` (the task's main
  module, ``models["model"]``), ``train_state.pt`` (every module, optimizer states, RNG states of
  every rank, step, world size), ``metrics.jsonl`` (one JSON object per logged step) and
  ``preview_<step>.png``. Every file is written under a temporary name and renamed into place;
  ``train_state.pt`` is complete on its own, so an interruption loses at most the steps since the
  last checkpoint and ``resume=True`` continues bit-for-bit (same world size).

Gradient contract for tasks with several modules: ``loss`` is the sum of every module's objective
and the loop calls ``loss.backward()`` once, so each term must only reach its own module's
parameters (e.g. the discriminator loss sees ``recon.detach()``; the generator's adversarial term
goes through the discriminator with its parameters frozen, see :func:`frozen`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import atomic_path, write_json_atomic, write_text_atomic
from vcq.images import save_png
from vcq.metrics_log import METRICS_FILE, log_rows
from vcq.presets import TrainConfig, to_dict

MAIN = "model"
STATE_FILE, WEIGHTS_FILE, CONFIG_FILE = "train_state.pt", "model.safetensors", "config.json"
# settings that may change between a run and its resumption without changing the result (the LPIPS
# implementation: the lpips package and our port agree to 1e-5, see vcq.losses)
RESUME_FREE = ("ckpt_every", "log_every", "preview_every", "workers", "lpips_implementation")
# fields added after runs were saved without them: a saved config lacking one means this value
ADDED_DEFAULTS = {"grad_accum": 1, "deterministic": False, "workers": 0}
# seconds a collective may wait (default NCCL: 10 min): rank 0 alone writes checkpoints (an XL
# train_state.pt is about 11 GB) while the others wait at the checkpoint barrier
DIST_TIMEOUT_S = int(os.environ.get("VCQ_DIST_TIMEOUT_S", "7200"))


class TrainData(Protocol):
    """What the loop needs from a dataset: its size and a batch of given positions.

    ``batch`` returns a dict of numpy arrays (or tensors); the loop moves them to the device.
    ``rng`` is the step's augmentation generator.
    """

    def __len__(self) -> int: ...

    def batch(self, idx: np.ndarray, rng: np.random.Generator) -> dict[str, Any]: ...


class Task:
    """A model family's side of the training loop. Subclass and override ``step``.

    ``models``: named modules, ``"model"`` first (the one exported to ``model.safetensors``);
    every module with trainable parameters gets its own AdamW optimizer.
    ``aux``: modules the task uses but never trains or saves (e.g. a frozen LPIPS network); they
    move to the training device with ``models`` (:func:`task_modules`). A task must reach every
    module it calls through one of the two, or it stays behind on the CPU.
    ``no_decay``: substrings of parameter names excluded from weight decay (besides ``ndim < 2``).
    """

    models: dict[str, nn.Module]
    aux: dict[str, nn.Module] = {}
    no_decay: tuple[str, ...] = ()

    def lr_scale(self, name: str) -> float:
        """Learning-rate multiplier of module ``name``'s optimizer."""
        return 1.0

    def step(self, models: dict[str, nn.Module], batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """One (micro-)batch's total loss (a mean over its rows) and scalar metrics: 0-d tensors
        (no host synchronisation; the loop reads them at logging steps only) or floats. ``models``
        are the (possibly DDP-wrapped) modules to call for anything that must be
        gradient-synchronised."""
        raise NotImplementedError

    def after_step(self, step: int) -> dict[str, float]:
        """Called on every rank after the optimizer step (e.g. dead-code restarts)."""
        return {}

    def log_metrics(self) -> dict[str, float]:
        """Extra metrics at logging steps, e.g. codebook usage; called on every rank (it may use
        collectives) and averaged over them."""
        return {}

    def preview(self, batch: dict[str, torch.Tensor]) -> np.ndarray | None:
        """A uint8 (H, W, 3) picture for ``preview_<step>.png``, or None."""
        return None


def task_modules(task: Task) -> dict[str, nn.Module]:
    """Every module of ``task`` the loop moves to the device: ``models`` and ``aux``."""
    clash = set(task.models) & set(task.aux)
    if clash:
        raise EntropyCliffError(f"module name {sorted(clash)[0]!r} is both in a task's models and its aux")
    return {**task.models, **task.aux}


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    steps_per_s: float


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (call before building models so every rank starts equal)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s training randomness (dropout, token and class dropout masks):
    ``SeedSequence([seed, rank, 1])``, so ranks draw different masks and no rank repeats the
    model-initialisation stream of ``seed``."""
    return int(np.random.SeedSequence([seed, rank, 1]).generate_state(1, np.uint64)[0] >> 1)


def all_reduce_mean(values: dict[str, Any], world: int) -> dict[str, float]:
    """Scalar metrics (floats or 0-d tensors) as floats: averaged over the ``world`` ranks when
    ``world > 1`` (one all-reduce, every rank must call it with the same keys), in one host sync."""
    if not values:
        return {}
    keys = sorted(values)
    dev = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    vec = torch.stack([torch.as_tensor(values[k], dtype=torch.float64, device=dev).detach().reshape(()) for k in keys])
    if world > 1:
        if dist.get_backend() == "nccl" and vec.device.type != "cuda":
            vec = vec.cuda()
        dist.all_reduce(vec)
        vec /= world
    return dict(zip(keys, vec.tolist()))


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """``device`` checked (``cuda`` alone means ``cuda:local_rank``), or by default
    ``cuda:local_rank`` when CUDA is present, else the CPU."""
    if device is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise EntropyCliffError(f"device = {device!r} is not a device (cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EntropyCliffError(f"device = {device!r} requested but no CUDA device is available")
    return torch.device(f"cuda:{local_rank}") if dev.type == "cuda" and dev.index is None else dev


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK), if any.

    Device: ``device`` when given, else ``cuda:LOCAL_RANK`` when CUDA is present, else CPU.
    Backend: NCCL on CUDA, gloo on CPU; collectives time out after :data:`DIST_TIMEOUT_S` seconds
    (environment ``VCQ_DIST_TIMEOUT_S``, default 2 h) so the checkpoint barrier outlasts rank 0
    writing a large checkpoint.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        import datetime

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    return DistInfo(rank, world, local, dev)


POSITIVE_FIELDS = ("steps", "batch_size", "grad_accum", "ckpt_every", "log_every", "preview_every")


def is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` job (``RANK``), or a single process; true before and after the
    process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def finish_distributed() -> None:
    """Leave the process group (``destroy_process_group``) when one was joined.

    Garbage is collected first: DDP wrappers sit in reference cycles (their hooks refer back to
    them), and a reducer freed after its group is destroyed aborts the process ("terminate called
    without an active exception"), which a rank that raised would otherwise risk at exit."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@contextlib.contextmanager
def deterministic_algorithms(on: bool) -> Iterator[None]:
    """With ``on``: ``torch.use_deterministic_algorithms(True)``, cuDNN autotuning off, and
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless set; cuBLAS reads it when CUDA starts, so set it in
    the environment for jobs that touch CUDA earlier). Restores the previous settings on exit."""
    if not on:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.backends.cudnn.benchmark = prev[1]


def check_train_config(cfg: TrainConfig) -> None:
    """Refuse settings the loop cannot run with; the message names the field and its value."""
    for k in POSITIVE_FIELDS:
        if not getattr(cfg, k) >= 1:
            raise EntropyCliffError(f"{k} must be >= 1, got {getattr(cfg, k)}")
    for k in ("lr", "min_lr", "weight_decay"):
        if not math.isfinite(getattr(cfg, k)):
            raise EntropyCliffError(f"{k} must be a finite number, got {getattr(cfg, k)}")
    if not cfg.lr > 0:
        raise EntropyCliffError(f"lr must be > 0, got {cfg.lr}")
    for k in ("min_lr", "warmup_steps", "weight_decay", "workers"):
        if getattr(cfg, k) < 0:
            raise EntropyCliffError(f"{k} must be >= 0, got {getattr(cfg, k)}")
    if cfg.grad_clip is not None and not cfg.grad_clip >= 0:
        raise EntropyCliffError(f"grad_clip must be >= 0 (0: off), got {cfg.grad_clip}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate before optimizer step ``step`` (0-based): linear warmup from lr/warmup to lr,
    then linear decay to ``min_lr`` at ``cfg.steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr + (cfg.min_lr - cfg.lr) * frac


def batch_indices(step: int, n: int, batch_size: int, world: int, rank: int, seed: int) -> np.ndarray:
    """Dataset positions of rank ``rank``'s batch at ``step`` (see the module docstring)."""
    per_epoch = n // (batch_size * world)
    if per_epoch < 1:
        raise EntropyCliffError(f"dataset of {n} items is smaller than one global batch ({batch_size} × {world})")
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    start = (j * world + rank) * batch_size
    return perm[start : start + batch_size]


def param_groups(model: nn.Module, weight_decay: float, no_decay: tuple[str, ...]) -> list[dict[str, Any]]:
    """AdamW groups: decay on parameters with ndim >= 2 whose name has none of ``no_decay``."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (keep if p.ndim < 2 or any(s in name for s in no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily stop gradients into ``module``'s parameters (inputs still get gradients)."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``bf16``; full precision otherwise."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
    return out


def _rng_state(device: torch.device) -> dict[str, Any]:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _config_diff(saved: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(saved) | set(new))
    out = []
    for k in keys:
        a, b = saved.get(k, ADDED_DEFAULTS.get(k)), new.get(k, ADDED_DEFAULTS.get(k))
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b and k not in RESUME_FREE:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run directory."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise EntropyCliffError(f"{run_dir}: no {CONFIG_FILE} (not a run directory)")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EntropyCliffError(f"{p}: unreadable config ({e})") from None
    if not isinstance(cfg, dict):
        raise EntropyCliffError(f"{p}: not a run config")
    return cfg


def check_run_dir(out_dir: str | Path, config: dict[str, Any], resume: bool) -> None:
    """Refuse to start over an existing run, or to resume one with a different configuration."""
    out = Path(out_dir)
    if resume:
        diff = _config_diff(read_config(out), config)
        if diff:
            raise EntropyCliffError(f"{out}: checkpoint config differs from this run ({'; '.join(diff[:3])})")
    elif (out / STATE_FILE).exists():
        raise EntropyCliffError(f"{out}: already holds a run (use --resume, or a new --out)")


def _load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EntropyCliffError(f"{path.parent}: no {STATE_FILE} to resume from")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a damaged file
        raise EntropyCliffError(f"{path}: corrupt training state ({type(e).__name__})") from None
    if not isinstance(st, dict) or not {"step", "models", "optimizers", "rng", "world"} <= set(st):
        raise EntropyCliffError(f"{path}: not a training state file")
    return st


class StepBatches(torch.utils.data.Dataset):
    """Item i: the per-process batch of optimizer step ``first + i`` (``rows`` dataset positions from
    :func:`batch_indices`, augmentation generator ``default_rng([seed, step, rank])``) as tensors,
    so a :class:`torch.utils.data.DataLoader` with workers prepares the batches of the steps ahead."""

    def __init__(self, data: TrainData, rows: int, world: int, rank: int, seed: int, first: int, last: int) -> None:
        self.data, self.rows, self.world, self.rank, self.seed = data, rows, world, rank, seed
        self.first, self.last, self.n = first, last, len(data)

    def __len__(self) -> int:
        return max(0, self.last - self.first)

    def __getitem__(self, i: int) -> dict[str, Any]:
        step = self.first + i
        idx = batch_indices(step, self.n, self.rows, self.world, self.rank, self.seed)
        batch = self.data.batch(idx, np.random.default_rng([self.seed, step, self.rank]))
        return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def step_loader(data: TrainData, cfg: TrainConfig, info: DistInfo, first: int, last: int) -> torch.utils.data.DataLoader:
    """The batches of steps ``first..last-1`` in order: ``cfg.workers`` worker processes (0: in this
    process), pinned host memory when training on CUDA."""
    ds = StepBatches(data, cfg.batch_size * cfg.grad_accum, info.world, info.rank, cfg.seed, first, last)
    # its own generator: a DataLoader draws its worker base seed from the global torch RNG otherwise,
    # which would shift the dropout stream of a resumed run (batches never use torch's RNG)
    return torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=cfg.workers,
                                       pin_memory=info.device.type == "cuda",
                                       prefetch_factor=4 if cfg.workers else None,
                                       generator=torch.Generator().manual_seed(cfg.seed))


def micro_batches(batch: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """``batch`` cut into consecutive micro-batches of ``size`` rows (tensors; other values are
    shared)."""
    rows = next(len(v) for v in batch.values() if isinstance(v, torch.Tensor))
    return [{k: v[s:s + size] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for s in range(0, rows, size)]


def no_sync(models: dict[str, nn.Module], skip: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` on every wrapped module when ``skip`` (an accumulation micro-batch)."""
    stack = contextlib.ExitStack()
    if skip:
        for m in models.values():
            if isinstance(m, nn.parallel.DistributedDataParallel):
                stack.enter_context(m.no_sync())
    return stack


def save_weights(path: Path, model: nn.Module, step: int) -> None:
    """``model``'s state dict as safetensors, atomically (metadata: step)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"step": str(step)})


def load_weights(model: nn.Module, run_dir: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """``model`` with the weights of ``run_dir/model.safetensors`` (written by :func:`save_weights`),
    in eval mode on ``device``.

    A missing or unreadable file, a tensor whose shape differs from the model's, and missing or
    unexpected tensors are each one :class:`EntropyCliffError` naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    w = Path(run_dir) / WEIGHTS_FILE
    if not w.is_file():
        raise EntropyCliffError(f"{w}: no such weights file (has the run saved a checkpoint yet?)")
    try:
        state = load_file(str(w))
    except (SafetensorError, OSError, ValueError) as e:
        raise EntropyCliffError(f"{w}: corrupt weights file ({str(e).splitlines()[0]})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches; their lines follow torch's header line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise EntropyCliffError(f"{w}: weights do not match config.json ({lines[min(1, len(lines) - 1)]})") from None
    if missing or unexpected:
        raise EntropyCliffError(f"{w}: weights do not match config.json "
                                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model.to(device).eval()


def train(
    task: Task,
    data: TrainData,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    config: dict[str, Any],
    resume: bool = False,
    stop_at: int | None = None,
    quiet: bool = False,
    device: str | None = None,
    log: Callable[[str], None] | None = None,
    preview_data: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``task`` on ``data`` for ``cfg.steps`` steps (or until ``stop_at``), writing ``out_dir``.

    ``config`` is the full resolved configuration saved as ``config.json`` (its ``"train"`` entry
    should be ``to_dict(cfg)``); with ``resume`` it must equal the saved one (up to
    :data:`RESUME_FREE`) and training continues from ``train_state.pt``. ``preview_data``: a fixed
    batch (as from ``data.batch``) for the PNG previews. Returns the final step and metrics.
    """
    from entropy_cliff.io import prepare_output
    from entropy_cliff.progress import Progress
    from vcq.resources import check_memory, training_bytes

    check_train_config(cfg)
    info = init_distributed(device)
    say = log if log is not None else (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))
    out = Path(out_dir)
    state_path = out / STATE_FILE
    if MAIN not in task.models:
        raise EntropyCliffError(f"a task needs a module named {MAIN!r}")
    check_run_dir(out, config, resume)
    check_memory(training_bytes(task.models.values()), info.device, "training (weights, gradients, AdamW state)")
    if info.main:
        prepare_output(out, "dir")
    if resume:
        saved = _load_state(state_path)
        if saved["world"] != info.world:
            raise EntropyCliffError(f"{out}: trained on {saved['world']} processes, resuming on {info.world} "
                                    "would change the data order")
    n = len(data)
    batch_indices(0, n, cfg.batch_size * cfg.grad_accum, info.world, info.rank, cfg.seed)  # fails early if too small

    for m in task_modules(task).values():
        m.to(info.device)
    raw = dict(task.models)
    trainable = [k for k, m in raw.items() if any(p.requires_grad for p in m.parameters())]
    opts = {
        k: torch.optim.AdamW(param_groups(raw[k], cfg.weight_decay, task.no_decay), lr=cfg.lr * task.lr_scale(k),
                             betas=(cfg.beta1, cfg.beta2))
        for k in trainable
    }
    for k, o in opts.items():
        for g in o.param_groups:
            g["base_lr"] = cfg.lr * task.lr_scale(k)
    step = 0
    if resume:
        for k, m in raw.items():
            m.load_state_dict(saved["models"][k])
        for k, o in opts.items():
            o.load_state_dict(saved["optimizers"][k])
        step = int(saved["step"])
        _set_rng_state(saved["rng"][info.rank], info.device)
        if info.main:
            _truncate_metrics(out / METRICS_FILE, step)
    elif info.main:
        write_json_atomic(out / CONFIG_FILE, config)
        (out / METRICS_FILE).unlink(missing_ok=True)  # rows of an earlier run that never checkpointed
    models: dict[str, nn.Module] = dict(raw)
    if info.world > 1:
        # buffers are constants (K, RoPE tables) or kept equal by the tasks (all-reduced usage EMA)
        models = {k: nn.parallel.DistributedDataParallel(m, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                                         broadcast_buffers=False)
                  if k in trainable else m for k, m in raw.items()}
    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    preview = _to_device(preview_data, info.device) if preview_data is not None else None

    def checkpoint() -> None:
        nonlocal saved_step
        rngs = [None] * info.world
        if info.world > 1:
            dist.all_gather_object(rngs, _rng_state(info.device))
        else:
            rngs = [_rng_state(info.device)]
        if info.main:
            st = {"step": step, "world": info.world, "models": {k: m.state_dict() for k, m in raw.items()},
                  "optimizers": {k: o.state_dict() for k, o in opts.items()}, "rng": rngs,
                  "train": to_dict(cfg)}
            with atomic_path(state_path) as tmp:
                torch.save(st, tmp)
            save_weights(out / WEIGHTS_FILE, raw[MAIN], step)
        if info.world > 1:
            dist.barrier()
        saved_step = step

    if not resume:
        seed_everything(rank_seed(cfg.seed, info.rank))
    for m in raw.values():
        m.train()
    metrics: dict[str, float] = {}
    t0, s0, rate = time.perf_counter(), step, float("nan")
    saved_step = step if resume else None  # the step a --resume would continue from
    checked = step  # losses are finite up to here
    nonfinite = torch.zeros((), dtype=torch.bool, device=info.device)
    with (open(out / METRICS_FILE, "a") if info.main else contextlib.nullcontext()) as mfile, \
            Progress(cfg.steps, initial=step, desc="train", unit="step", quiet=quiet or not info.main) as bar, \
            deterministic_algorithms(cfg.deterministic):
        try:
            for batch in step_loader(data, cfg, info, step, end):
                batch = _to_device(batch, info.device)
                lr_f = lr_at(step, cfg) / cfg.lr
                for o in opts.values():
                    for g in o.param_groups:
                        g["lr"] = g["base_lr"] * lr_f
                    o.zero_grad(set_to_none=True)
                step_metrics: dict[str, Any] = {}
                micro = micro_batches(batch, cfg.batch_size)
                for i, mb in enumerate(micro):
                    with no_sync(models, i < len(micro) - 1):
                        with autocast(info.device, cfg.bf16):
                            loss, m = task.step(models, mb, step)
                        (loss / len(micro)).backward()
                    for k, v in {"loss": loss, **m}.items():
                        v = v.detach() if isinstance(v, torch.Tensor) else v
                        step_metrics[k] = step_metrics.get(k, 0.0) + v / len(micro)
                nonfinite |= ~torch.isfinite(step_metrics["loss"])
                for k, o in opts.items():
                    if cfg.grad_clip:
                        step_metrics[f"grad_norm_{k}"] = nn.utils.clip_grad_norm_(raw[k].parameters(), cfg.grad_clip)
                    o.step()
                step_metrics.update(task.after_step(step))
                step += 1
                bar.update(1)
                logging, saving = step % cfg.log_every == 0 or step == end, step % cfg.ckpt_every == 0 or step == end
                if logging or saving:  # the only host synchronisations of the loop
                    if info.world > 1:  # every rank stops together, none waits in a collective for one that raised
                        flag = nonfinite.to(torch.int32)
                        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                        nonfinite = flag.bool()
                    if bool(nonfinite):
                        raise EntropyCliffError(f"loss became non-finite between steps {checked + 1} and {step}; "
                                                "lower the learning rate")
                    checked = step
                if logging:
                    metrics = all_reduce_mean({**step_metrics, **task.log_metrics()}, info.world)
                    rate = (step - s0) / max(time.perf_counter() - t0, 1e-9)
                    if info.main:
                        mfile.write(json.dumps({"step": step, "lr": lr_at(step - 1, cfg), **metrics,
                                                "steps_per_s": rate}) + "\n")
                        mfile.flush()
                        bar.postfix(loss=f"{metrics['loss']:.4f}")
                if saving:
                    checkpoint()
                if info.main and preview is not None and (step % cfg.preview_every == 0 or step == end):
                    img = task.preview(preview)
                    if img is not None:
                        save_png(out / f"preview_{step:07d}.png", img)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupt_message(out, step, saved_step)) from None
    if info.main and step == cfg.steps:
        say(f"trained {step} steps -> {out}")
    return TrainResult(step, metrics if s0 < end else {}, rate)


def interrupt_message(out: Path, step: int, saved_step: int | None) -> str:
    """What an interrupted run tells the user: where it stopped and where ``--resume`` continues."""
    if saved_step is None:
        return f"training stopped at step {step} before the first checkpoint of {out}; nothing to resume"
    return f"training stopped at step {step}; --resume continues {out} from step {saved_step}"


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows logged after the checkpoint being resumed (they will be logged again) and
    any row an interruption left half-written."""
    if not path.exists():
        return
    keep = [ln for ln, row in log_rows(path) if row.get("step", 0) <= step]
    write_text_atomic(path, "".join(ln + "\n" for ln in keep))
