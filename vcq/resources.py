"""Refusing requests that cannot fit the machine, at once and with a reason.

Estimates are lower bounds from the sizes alone (float32 tensors of 4 bytes):

- training: ``4 × 4 × P`` bytes for P parameters (weights, gradients, AdamW's two moments),
  activations not counted;
- sampling: the KV cache, ``rows × depth × 2 × L × dim × 4`` bytes (× 2 under bf16) with
  ``rows = 2 n`` under guidance (conditional and null-class rows), plus the ``rows × K_max`` logits
  and Gumbel noise.

:func:`check_memory` compares an estimate with the memory free on the device (CUDA: free device
memory; CPU: available RAM) and refuses what exceeds :data:`HEADROOM` of it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from entropy_cliff.io import format_bytes

HEADROOM = 0.9  # the share of free memory a request may plan to use


def available_bytes(device: torch.device | str) -> int:
    """Free memory of ``device``: CUDA free device memory, else the available RAM."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(need: int, device: torch.device | str, what: str) -> None:
    """Raise :class:`EntropyCliffError` when ``need`` bytes exceed ``HEADROOM`` of the free memory."""
    free = available_bytes(device)
    if need > HEADROOM * free:
        raise EntropyCliffError(f"{what} needs about {format_bytes(need)} but {torch.device(device).type} has "
                                f"{format_bytes(free)} free; use a smaller request or a larger machine")


def training_bytes(models: Iterable[nn.Module]) -> int:
    """Weights, gradients and AdamW moments of every trainable parameter (float32)."""
    return 16 * sum(p.numel() for m in models for p in m.parameters() if p.requires_grad)


def sampling_bytes(depth: int, dim: int, length: int, kmax: int, n: int, guided: bool, cache_itemsize: int = 4) -> int:
    """KV cache (``cache_itemsize`` bytes per entry: 4 for float32, 2 under bf16) plus per-step
    float32 logits and noise of sampling ``n`` sequences at once."""
    rows = 2 * n if guided else n
    return rows * (cache_itemsize * depth * 2 * length * dim + 4 * 3 * kmax)
