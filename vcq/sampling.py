"""Sampling from an :class:`vcq.ar.ARTransformer`: KV cache, temperature, top-k/top-p, and CFG.

Classifier-free guidance (paper Eq. 4; docs/formulas.md) mixes conditional and unconditional (null-class)
logits at position t as ``l_t = l_u + s_t (l_c - l_u)``; ``s_t = 1`` is no guidance. The
per-position scale comes from :func:`guidance_scales`:

- base schedule over positions t = 1..L with base scale w:

  - ``none``      s_t^base = 1
  - ``constant``  s_t^base = w
  - ``linear``    s_t^base = 1 + (w - 1) (t - 1) / L
  - ``cosine``    s_t^base = 1 + (w - 1) (1 - cos(pi ((t - 1) / L)^p)) / 2   (pow-cosine; p = 0 -> w)

- CodebookSize-Aware gating: ``s_t = 1 + r_t (s_t^base - 1)`` with the capacity ratio
  ``r_t = (log2 K_t - log2 K_min) / (log2 K_max - log2 K_min)`` (``ratio="log"``, the default:
  the excess information capacity of position t in bits, relative to the largest), or
  ``r_t = (K_t - K_min) / (K_max - K_min)`` (``ratio="linear"``); ``r_t = 1`` when
  ``K_min = K_max``, where K_min / K_max are the smallest / largest K_t of the model. K_t = K_min
  gives s_t = 1 (no guidance), K_t = K_max gives the base schedule, and a uniform codebook gives
  back standard CFG exactly. The paper states these end points, not the interpolation between
  them; the log ratio is our documented choice.

Sampling draws each token by the Gumbel-max trick, ``argmax(l_t / T + G)`` with ``G`` standard
Gumbel noise, which is an exact draw from ``softmax(l_t / T)`` restricted to the top-k / top-p set.
Masked logits (-inf, indices >= K_t) can never win, so every sampled token is < K_t. The noise of
sample i, token t, code k is a counter-based function of ``(seed, i, t, k)`` (:func:`gumbel_noise`,
SplitMix64 hashing), computed on the model's device: it does not depend on the KV cache, the
device, or how the n samples are cut into batches, so ``vcq sample --batch-size`` (and a resumed
run) gives the same tokens as one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from entropy_cliff.errors import EntropyCliffError
from vcq.ar import ARTransformer, KVCache
from vcq.presets import GUIDANCE_SCHEDULES, SamplingConfig
RATIOS = ("log", "linear")


def capacity_ratio(k_t: np.ndarray, ratio: str = "log") -> np.ndarray:
    """r_t of docs/formulas.md: 0 at K_min, 1 at K_max, in log2 K (default) or in K; all ones if uniform."""
    k = np.asarray(k_t, dtype=np.float64)
    if ratio not in RATIOS:
        raise EntropyCliffError(f"unknown capacity ratio {ratio!r} (choose from {', '.join(RATIOS)})")
    kmin, kmax = k.min(), k.max()
    if kmin == kmax:
        return np.ones_like(k)
    if ratio == "log":
        return (np.log2(k) - np.log2(kmin)) / (np.log2(kmax) - np.log2(kmin))
    return (k - kmin) / (kmax - kmin)


def guidance_scales(k_t: np.ndarray | list[int], scale: float, schedule: str = "constant", power: float = 1.0,
                    codebook_aware: bool = False, ratio: str = "log") -> np.ndarray:
    """Per-position guidance scales s_1..s_L (float64) for codebook sizes ``k_t`` (module docstring)."""
    k = np.asarray(k_t)
    if k.ndim != 1 or k.size == 0 or np.any(k < 1):
        raise EntropyCliffError("k_t must be a non-empty list of codebook sizes >= 1")
    if not (scale >= 0 and math.isfinite(scale)):
        raise EntropyCliffError(f"guidance scale must be a finite number >= 0, got {scale}")
    if not (power >= 0 and math.isfinite(power)):
        raise EntropyCliffError(f"guidance power must be a finite number >= 0, got {power}")
    length = k.size
    frac = np.arange(length, dtype=np.float64) / length  # (t - 1) / L
    if schedule == "none":
        base = np.ones(length)
    elif schedule == "constant":
        base = np.full(length, float(scale))
    elif schedule == "linear":
        base = 1.0 + (scale - 1.0) * frac
    elif schedule == "cosine":
        base = 1.0 + (scale - 1.0) * (1.0 - np.cos(np.pi * frac**power)) / 2.0
    else:
        raise EntropyCliffError(f"unknown guidance schedule {schedule!r} (choose from {', '.join(GUIDANCE_SCHEDULES)})")
    if not codebook_aware:
        return base
    r = capacity_ratio(k, ratio)
    # r_t = 1 returns the base scale itself, so uniform codebooks reproduce standard CFG bit for bit
    return np.where(r == 1.0, base, 1.0 + r * (base - 1.0))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k set and outside the smallest top-p nucleus to -inf.

    ``top_k = 0`` and ``top_p = 1`` keep everything. The most likely token always survives.
    """
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


_GOLDEN, _M1, _M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function of the state ``x + golden`` (int64 tensors, wrapping arithmetic):
    ``z ^= z >> 30; z *= M1; z ^= z >> 27; z *= M2; z ^= z >> 31``."""
    z = x + _i64(_GOLDEN)
    for shift, mul in ((30, _M1), (27, _M2), (31, None)):  # in place: one temporary at a time
        z ^= _shr(z, shift)
        if mul is not None:
            z *= _i64(mul)
    return z


def gumbel_noise(seed: int, rows: torch.Tensor, t: int, kmax: int) -> torch.Tensor:
    """Standard Gumbel noise (len(rows), kmax) float32 for token ``t`` of samples ``rows`` (int64,
    global sample indices), on ``rows``' device: ``G = -log(-log(u))`` with
    ``u = (h >> 11 + 1/2) 2^-53`` in (0, 1) and ``h = mix(mix(mix(seed) + i) + t) + k``, mix =
    :func:`splitmix64`. A pure function of (seed, i, t, k)."""
    dev = rows.device
    mixed_seed = int(splitmix64(torch.tensor(_i64(seed % (1 << 64)))))  # on the CPU: no wait on the device
    key = splitmix64(splitmix64(rows + mixed_seed) + t)
    h = splitmix64(key[:, None] + torch.arange(kmax, device=dev))
    u = _shr(h, 11).double().add_(0.5).mul_(2.0**-53)
    return u.log_().neg_().log_().neg_().float()


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``l_u + s (l_c - l_u)`` on the valid entries (finite conditional logits), -inf elsewhere."""
    mixed = uncond + float(scale) * (cond - uncond)
    return torch.where(torch.isfinite(cond), mixed, torch.full_like(mixed, float("-inf")))


def check_labels(labels: np.ndarray, num_classes: int) -> None:
    """One class id per sample, each in [0, num_classes)."""
    if labels.ndim != 1:
        raise EntropyCliffError(f"labels must be one class id per sample, got shape {tuple(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise EntropyCliffError(f"class ids must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")


def cache_dtype(model: ARTransformer, bf16: bool) -> torch.dtype:
    """The KV cache's dtype: bfloat16 under bf16 autocast, else the model's parameter dtype."""
    return torch.bfloat16 if bf16 else next(model.parameters()).dtype


def check_sampling_memory(model: ARTransformer, cfg: SamplingConfig, batch: int, ratio: str, bf16: bool) -> None:
    """Refuse sampling ``batch`` sequences at once when their KV cache (twice the rows under
    guidance, bf16 with ``bf16``) cannot fit the free memory of the model's device."""
    from vcq.resources import check_memory, sampling_bytes

    scales = guidance_scales(model.K.cpu().numpy(), cfg.scale, cfg.schedule, cfg.power, cfg.codebook_aware, ratio)
    m = model.cfg
    check_memory(sampling_bytes(m.depth, m.dim, m.length, m.kmax, batch, bool(np.any(scales != 1.0)),
                                cache_dtype(model, bf16).itemsize), model.K.device, f"sampling n = {batch} sequences at once")


@torch.no_grad()
def sample(model: ARTransformer, labels: torch.Tensor | np.ndarray, cfg: SamplingConfig = SamplingConfig(),
           seed: int = 0, use_cache: bool = True, ratio: str = "log", progress: bool = False,
           observe: Callable[[int, torch.Tensor], None] | None = None, first: int = 0,
           bf16: bool = False) -> torch.Tensor:
    """Sample token sequences (B, L) for class ``labels`` (B,) with the settings in ``cfg``.

    Guidance doubles the batch (conditional rows, then null-class rows) whenever some s_t != 1.
    ``use_cache=False`` recomputes the whole prefix at every step (the reference the cache is
    tested against). Row j is sample number ``first + j`` of the request: its noise is
    :func:`gumbel_noise` of that index, drawn on the model's device, so results do not depend on
    the cache, the device or the batching. ``bf16``: bf16 autocast with a bf16 KV cache (half the
    memory). ``observe(t, logits)``, when given, sees the logits each token t = 0..L-1 is drawn
    from (after guidance, temperature and filters). A request whose KV cache cannot fit the
    device's free memory is refused before sampling starts.
    """
    import contextlib

    from entropy_cliff.progress import Progress

    model.eval()
    device = model.K.device
    check_labels(np.asarray(labels), model.cfg.num_classes)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    k_t = model.K.cpu().numpy()
    scales = guidance_scales(k_t, cfg.scale, cfg.schedule, cfg.power, cfg.codebook_aware, ratio)
    guided = bool(np.any(scales != 1.0))
    b, length, kmax = labels.shape[0], model.cfg.length, model.cfg.kmax
    dtype = cache_dtype(model, bf16)
    check_sampling_memory(model, cfg, b, ratio, bf16)
    run_labels = torch.cat([labels, torch.full_like(labels, model.null_class)]) if guided else labels
    rows = torch.arange(first, first + b, device=device)
    cache = KVCache.empty(model, run_labels.shape[0], device, dtype) if use_cache else None
    tokens = torch.zeros(b, 0, dtype=torch.long, device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with Progress(length, desc="sample", unit="token", quiet=not progress) as bar, amp:
        try:
            for t in range(length):
                prefix = torch.cat([tokens, tokens]) if guided else tokens
                logits = model(prefix, run_labels, cache)[:, -1].float()
                if guided:
                    logits = guided_logits(logits[:b], logits[b:], scales[t])
                logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
                if observe is not None:
                    observe(t, logits)
                nxt = torch.argmax(logits + gumbel_noise(seed, rows, t, kmax), dim=-1)
                tokens = torch.cat([tokens, nxt[:, None]], dim=1)
                bar.update(1)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"sampling stopped at token {tokens.shape[1]} of {length}; nothing was "
                                    "written (sampling has no checkpoints: run it again)") from None
    return tokens


def resolve_sampling(preset: str | None = None, overrides: dict[str, Any] | None = None) -> SamplingConfig:
    """The sampling settings: preset ``preset`` (paper Table 7) or the defaults, with ``overrides``
    replacing fields (checked by :class:`SamplingConfig`)."""
    from vcq.presets import SAMPLING_PRESETS, lookup, override

    base = lookup(SAMPLING_PRESETS, preset, "sampling preset") if preset else SamplingConfig()
    return override(base, **(overrides or {}))


@dataclass
class SampleResult:
    out: Path
    tokens: np.ndarray
    labels: np.ndarray
    grid: Path | None


PARTIAL_DIR, REQUEST_FILE = "partial", "request.json"


def _resume_rows(partial: Path, request: dict[str, Any], resume: bool, out: Path) -> list[np.ndarray]:
    """The batches an interrupted request left in ``partial`` (``rows-<first>.npy``, contiguous
    from row 0), after checking that ``request`` is the same; refuses to start over them unless
    ``resume``, and to resume without a request."""
    req = partial / REQUEST_FILE
    if not resume:  # a request that kept no rows (killed in its first batch) is as good as none
        if req.exists() and any(partial.glob("rows-*.npy")):
            raise EntropyCliffError(f"{out}: holds an unfinished sampling request (resume it, or choose a new output directory)")
        return []
    if not req.is_file():
        raise EntropyCliffError(f"{out}: no unfinished sampling request to resume")
    import json

    saved = json.loads(req.read_text())
    diff = [k for k in sorted(set(saved) | set(request)) if saved.get(k) != request.get(k)]
    if diff:
        k = diff[0]
        raise EntropyCliffError(f"{out}: the unfinished request has {k} = {saved.get(k)!r}, not {request.get(k)!r}")
    parts, done = [], 0
    for f in sorted(partial.glob("rows-*.npy")):
        if int(f.stem.split("-")[1]) != done:
            break
        parts.append(np.load(f))
        done += len(parts[-1])
    return parts


def sample_run(ckpt: str | Path, out: str | Path, *, n: int = 16, classes: list[int] | None = None,
               cfg: SamplingConfig = SamplingConfig(), tokenizer: str | Path | None = None, seed: int = 0,
               ratio: str = "log", use_cache: bool = True, cols: int | None = None, device: str | None = None,
               progress: bool = False, batch_size: int | None = None, resume: bool = False,
               bf16: bool = False) -> SampleResult:
    """Sample ``n`` sequences from the AR run ``ckpt`` for class ids ``classes`` (cycled; default
    0..C-1) and write ``out/tokens.npy`` with its sidecar and labels, and with a ``tokenizer`` run
    (same K_t) ``out/grid.png``: the decoded images, each captioned with its class id.

    ``batch_size`` samples at a time (default: all ``n`` at once); every finished batch is kept as
    ``out/partial/rows-<first>.npy`` beside ``out/partial/request.json`` until the request is
    complete, and ``resume`` continues an interrupted request (same settings) from them. Samples do
    not depend on the batching (:func:`sample`), so the result is the same either way. ``bf16``:
    bf16 autocast and KV cache.
    """
    import shutil
    from contextlib import nullcontext

    from entropy_cliff.io import prepare_output, save_npy_atomic, save_tokens, write_json_atomic
    from vcq.images import image_grid, save_png
    from entropy_cliff.progress import Progress
    from vcq.resources import check_memory
    from vcq.runs import load_run
    from vcq.train import resolve_device

    if n < 1:
        raise EntropyCliffError(f"n must be >= 1, got {n}")
    if batch_size is not None and batch_size < 1:
        raise EntropyCliffError(f"batch_size must be >= 1, got {batch_size}")
    bs = n if batch_size is None else min(batch_size, n)
    dev = resolve_device(device)
    run = load_run(ckpt, dev, task="ar")
    model = run.model
    check_sampling_memory(model, cfg, bs, ratio, bf16)
    ids = list(range(model.cfg.num_classes)) if not classes else [int(c) for c in classes]
    check_labels(np.asarray(ids), model.cfg.num_classes)
    check_memory(16 * n * model.cfg.length, "cpu", f"keeping n = {n} sampled sequences")
    labels = np.resize(np.asarray(ids, dtype=np.int64), n)
    tok = None
    if tokenizer:
        tok = load_run(tokenizer, dev, task="tokenizer").model
        if tuple(tok.quantizer.K.tolist()) != model.cfg.K:
            raise EntropyCliffError(f"{tokenizer}: the tokenizer's K_t disagree with the AR model's")
    outp = prepare_output(out, "dir")
    partial = outp / PARTIAL_DIR
    request = {"ckpt": str(ckpt), "step": run.step, "n": n, "classes": ids, "sampling": asdict(cfg),
               "seed": seed, "ratio": ratio, "bf16": bf16}
    parts = _resume_rows(partial, request, resume, outp)
    done = sum(len(p) for p in parts)
    partial.mkdir(exist_ok=True)
    write_json_atomic(partial / REQUEST_FILE, request)
    batched = bs < n
    bar = Progress(n, initial=done, desc="sample", unit="sample", quiet=not (progress and batched))
    with bar if batched else nullcontext():
        for first in range(done, n, bs):
            try:
                rows = sample(model, labels[first:first + bs], cfg, seed=seed, use_cache=use_cache, ratio=ratio,
                              progress=progress and not batched, first=first, bf16=bf16).cpu().numpy()
            except KeyboardInterrupt:
                if not first:
                    shutil.rmtree(partial)
                kept = (f"{first} of {n} samples are kept in {partial}; --resume continues" if first else
                        "nothing was kept")
                raise KeyboardInterrupt(f"sampling stopped in the batch starting at sample {first}; {kept}") from None
            save_npy_atomic(partial / f"rows-{first:010d}.npy", rows)
            parts.append(rows)
            if batched:
                bar.update(len(rows))
    tokens = np.concatenate(parts)
    schedule = model.cfg.schedule or {"kind": "custom", "kmin": min(model.cfg.K), "kmax": model.cfg.kmax, "power": None}
    save_tokens(outp / "tokens.npy", tokens, list(model.cfg.K), schedule,
                {"ar": str(ckpt), "sampling": asdict(cfg), "seed": seed, "ratio": ratio, "bf16": bf16}, labels)
    shutil.rmtree(partial)
    grid = None
    if tok is not None:
        from vcq.tokenizer import decode_tokens

        grid = save_png(outp / "grid.png", image_grid(decode_tokens(tok, tokens), cols,
                                                      captions=[f"class {c}" for c in labels]))
    return SampleResult(outp, tokens, labels, grid)
