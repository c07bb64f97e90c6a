"""Variable-codebook vector quantizer (VCQ, paper §3 "Shared codebook"; docs/formulas.md).

One codebook ``E`` of ``K_max`` vectors is shared by all L positions; position t may only use its
first ``K_t`` entries (nested prefixes, no extra parameters)::

    k_t = argmin_{k < K_t} ||z_t - e_k||^2

computed exactly (equal to a float64 brute force, ties to the smallest index) by
:func:`masked_nearest`: a float32 distance matrix on centred data against all K_max codes, entries
``k >= K_t`` masked to +inf, ``chunk_size`` rows at a time so memory stays bounded, and a float64
re-rank of the rows whose winner is not certain within a rounding-error bound.

Training signal (VQ-VAE): straight-through ``z_q = z + sg(e_k - z)``, codebook loss
``||sg(z) - e_k||^2`` and commitment loss ``beta ||z - sg(e_k)||^2`` (means over elements). With
``l2_norm`` both ``z`` and the codes are projected to the unit sphere first (ViT-VQGAN). A constant
schedule (K_t = K_max for all t) is exactly a standard VQ layer.

Dead-code restart (optional): an EMA of each code's share of assignments is kept; after an
optimiser step, codes whose share falls below ``dead_code_threshold`` times their share under
uniform use (which, with nested prefixes, depends on how many positions may use the code) are
moved onto random latents from the last batch at positions allowed to use them. A position with
K_t >= 2 whose whole batch took a single code (the small prefixes at the start of a VCQ schedule
collapse this way even when every code is in use elsewhere) gets the least-used other code of its
prefix moved onto its batch latent farthest from the code it took.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from entropy_cliff.errors import EntropyCliffError


@dataclass
class QuantizerOutput:
    """``z_q``: straight-through quantized latents (B, L, d); ``indices``: (B, L) int64;
    ``loss`` = codebook + commitment; the two terms separately for logging."""

    z_q: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor


_U32 = 2.0**-24  # float32 unit roundoff
_INPUT_ROUNDING = {"ieee": 0.0, "tf32": 2.0**-11, "bf16": 2.0**-8}


def _matmul_input_rounding(device_type: str) -> float:
    """Unit roundoff applied to the inputs of a float32 matmul on this device type: 0 for IEEE
    float32, 2^-11 / 2^-8 where ``torch.backends.{cuda,mkldnn}.matmul.fp32_precision`` (or
    ``torch.set_float32_matmul_precision``) allows TF32 / bf16; bf16's 2^-8 on device types without
    such a switch."""
    backend = {"cuda": torch.backends.cuda.matmul, "cpu": torch.backends.mkldnn.matmul}.get(device_type)
    if backend is None:
        return _INPUT_ROUNDING["bf16"]
    mode = backend.fp32_precision
    if mode == "none":
        mode = torch.backends.fp32_precision
    return _INPUT_ROUNDING.get("ieee" if mode == "none" else mode, _INPUT_ROUNDING["bf16"])


def masked_nearest(z: torch.Tensor, codebook: torch.Tensor, k_rows: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """``argmin_{k < k_rows[i]} ||z[i] - codebook[k]||^2`` for every row i, equal to a float64 brute
    force (lowest index on ties) at any offset of the data and under autocast (disabled inside).

    ``z``: (M, d); ``codebook``: (K_max, d); ``k_rows``: (M,) allowed prefix size per row (>= 1).

    Fast pass, float32, ``chunk_size`` rows at a time. With ``mu`` the codebook's mean (float64),
    ``x = z - mu`` and ``y_k = e_k - mu``::

        ||z - e_k||^2 = ||x||^2 + s_k,    s_k = ||y_k||^2 - 2 x . y_k

    so the argmin of ``s`` is the answer; centring keeps ``s`` at the scale of the data's spread,
    not of its offset. ``s~``, computed from the centred values rounded to float32 in one
    ``addmm``, obeys (Higham's dot-product bound, any summation order)::

        |s~_k - s_k| <= B = 1.25 (g + u) max||y||^2 + 1.25 (2g + 4u) ||x|| max||y||,
        g = (d + 1) u + 2v + v^2,   u = 2^-24,

    with ``v`` the rounding of the matmul's inputs under TF32 / bf16 fp32-matmul precision (0
    otherwise). A code with ``s~_k > min s~ + 2B`` is strictly farther than the float32 winner, so a
    row whose runner-up lies beyond ``2B`` is decided. The others (near-ties, ties,
    non-finite values) compare every allowed code within the margin (all allowed codes where the
    margin is not finite) by the float64 distance ``sum_j (z_j - e_kj)^2``, lowest index on ties.
    """
    with torch.autocast(z.device.type, enabled=False):
        z64, e64 = z.detach().double(), codebook.detach().double()
        mu = e64.mean(0)
        y = e64 - mu
        y_sq = y.square().sum(1)
        y32, y_sq32, y_max_sq = y.float(), y_sq.float(), float(y_sq.max())
        u, v = _U32, _matmul_input_rounding(z.device.type)
        g = (z.shape[1] + 1) * u + 2 * v + v * v
        b_const, b_lin = 1.25 * (g + u) * y_max_sq, 1.25 * (2 * g + 4 * u) * y_max_sq**0.5
        cols = torch.arange(codebook.shape[0], device=z.device)
        out = torch.empty(z.shape[0], dtype=torch.long, device=z.device)
        for s in range(0, z.shape[0], chunk_size):
            x, kr = z64[s : s + chunk_size] - mu, k_rows[s : s + chunk_size, None]
            approx = torch.addmm(y_sq32, x.float(), y32.T, alpha=-2.0).masked_fill_(cols >= kr, float("inf"))
            idx = approx.argmin(1)
            rows = torch.arange(len(idx), device=z.device)
            best = approx[rows, idx]
            approx[rows, idx] = float("inf")  # the runner-up decides whether the row is certain
            thr64 = best.double() + 2 * (b_const + b_lin * x.square().sum(1).sqrt())
            thr = thr64.float()  # rounded up, so the comparisons below never drop a code within 2B
            thr = torch.where(thr.double() < thr64, torch.nextafter(thr, torch.full_like(thr, float("inf"))), thr)
            open_ = ~torch.isfinite(thr)
            undecided = torch.nonzero((approx.amin(1) <= thr) | open_).squeeze(1)
            if undecided.numel():
                u_idx, u_thr, u_open = idx[undecided, None], thr[undecided, None], open_[undecided, None]
                near = (approx[undecided] <= u_thr) | (cols == u_idx) | u_open
                idx[undecided] = _exact_rerank(z64[s : s + chunk_size][undecided], e64, near & (cols < kr[undecided]))
            out[s : s + chunk_size] = idx
    return out


def _exact_rerank(z64: torch.Tensor, e64: torch.Tensor, cand: torch.Tensor, budget: int = 1 << 24) -> torch.Tensor:
    """Per row r of ``z64``, the lowest-index argmin of the float64 distance ``sum_j (z_rj - e_kj)^2``
    over the codes k with ``cand[r, k]`` (NaN counts as +inf); about ``budget / d`` pairs at a time."""
    n, d = z64.shape
    out = torch.empty(n, dtype=torch.long, device=z64.device)
    ends = cand.sum(1).cumsum(0)
    start = 0
    while start < n:
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, base + budget // max(d, 1), right=True)))
        r, k = torch.nonzero(cand[start:stop], as_tuple=True)
        dist = (z64[start + r] - e64[k]).square().sum(1).nan_to_num(nan=float("inf"))
        best = torch.full((stop - start,), float("inf"), dtype=dist.dtype, device=dist.device)
        best = best.scatter_reduce(0, r, dist, "amin")
        win = dist == best[r]
        first = torch.full((stop - start,), e64.shape[0], dtype=torch.long, device=dist.device)
        out[start:stop] = first.scatter_reduce(0, r[win], k[win], "amin")
        start = stop
    return out


class VariableCodebookQuantizer(nn.Module):
    """Nested-prefix VQ layer: position t picks among the first ``K[t]`` of ``max(K)`` codes.

    ``K``: the schedule K_1..K_L (e.g. ``entropy_cliff.schedules.Schedule(...).K``); ``dim``: code
    width. Input ``z`` is (B, L, dim); see :class:`QuantizerOutput` for the output.
    """

    def __init__(
        self,
        K: Sequence[int],
        dim: int,
        *,
        beta: float = 0.25,
        l2_norm: bool = False,
        dead_code_restart: bool = False,
        dead_code_threshold: float = 0.05,
        usage_decay: float = 0.95,
        chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        K = [int(k) for k in K]
        if not K or min(K) < 1:
            raise EntropyCliffError("codebook sizes K_t must be >= 1")
        self.length, self.kmax, self.dim = len(K), max(K), dim
        self.beta, self.l2_norm, self.chunk_size = beta, l2_norm, chunk_size
        self.dead_code_restart, self.dead_code_threshold, self.usage_decay = dead_code_restart, dead_code_threshold, usage_decay
        self.codebook = nn.Parameter(torch.empty(self.kmax, dim).uniform_(-1.0 / self.kmax, 1.0 / self.kmax))
        self.register_buffer("K", torch.tensor(K, dtype=torch.long))
        # share of all assignments each code would get if every position used its K_t codes uniformly
        k = torch.tensor(K, dtype=torch.float64)
        allowed = torch.arange(self.kmax)[None, :] < torch.tensor(K)[:, None]  # (L, K_max)
        uniform = (allowed.double() / k[:, None]).sum(0) / len(K)
        self.register_buffer("uniform_share", uniform.float(), persistent=False)
        self.register_buffer("ema_share", uniform.float().clone())
        self.counts: torch.Tensor | None = None  # (L, K_max) assignments since reset_usage()
        self._last_z: torch.Tensor | None = None
        self._last_idx: torch.Tensor | None = None

    def codes(self) -> torch.Tensor:
        """The codebook as used for distances and lookups (l2-normalised when ``l2_norm``)."""
        return F.normalize(self.codebook, dim=-1) if self.l2_norm else self.codebook

    @torch.no_grad()
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Token indices (B, L) for latents (B, L, dim), each < K_t at its position."""
        if z.ndim != 3 or z.shape[1] != self.length or z.shape[2] != self.dim:
            raise EntropyCliffError(f"latents of shape {tuple(z.shape)} do not match (B, {self.length}, {self.dim})")
        with torch.autocast(z.device.type, enabled=False):
            if self.l2_norm:
                z = F.normalize(z.float(), dim=-1)
            k_rows = self.K.expand(z.shape[0], -1).reshape(-1)
            return masked_nearest(z.reshape(-1, self.dim), self.codes(), k_rows, self.chunk_size).view(z.shape[:2])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, L, dim) for token indices (B, L)."""
        return F.embedding(indices, self.codes())

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(z.device.type, enabled=False):
            idx = self.nearest(z)
            z = F.normalize(z.float(), dim=-1) if self.l2_norm else z.float()
            e = self.lookup(idx)
            codebook_loss = F.mse_loss(e, z.detach())
            commit_loss = self.beta * F.mse_loss(z, e.detach())
            z_q = z + (e - z).detach()
        if self.training:
            self._update_usage(idx, z)
            self._count(idx)
        return QuantizerOutput(z_q, idx, codebook_loss + commit_loss, codebook_loss, commit_loss)

    @torch.no_grad()
    def _count(self, idx: torch.Tensor) -> None:
        if self.counts is None or self.counts.device != idx.device:
            self.counts = torch.zeros(self.length * self.kmax, dtype=torch.long, device=idx.device)
        flat = (torch.arange(self.length, device=idx.device) * self.kmax + idx).reshape(-1)
        self.counts.index_add_(0, flat, torch.ones_like(flat))  # unlike bincount, no host sync

    @torch.no_grad()
    def _update_usage(self, idx: torch.Tensor, z: torch.Tensor) -> None:
        """EMA of each code's share of this batch's assignments; under ``torch.distributed`` the
        share of the global batch (all-reduced), so every rank takes the same restart decisions.
        Only dead-code restarts read it: without them nothing is counted or exchanged."""
        if not self.dead_code_restart:
            return
        flat = idx.reshape(-1)
        share = torch.zeros(self.kmax, device=idx.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
        share /= idx.numel()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(share)
            share /= dist.get_world_size()
        self.ema_share.mul_(self.usage_decay).add_(share, alpha=1.0 - self.usage_decay)
        self._last_z, self._last_idx = z.detach(), idx

    @torch.no_grad()
    def all_reduce_usage(self) -> None:
        """Sum the assignment counts over the ranks of ``torch.distributed`` (every rank must call
        it), so :meth:`usage_stats` describes the global batch, not one rank's shard."""
        if self.counts is not None and dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)

    def reset_usage(self) -> None:
        """Forget the per-position assignment counts (kept in training mode only)."""
        self.counts = None

    def usage_stats(self) -> dict[str, np.ndarray]:
        """Per-position statistics of the assignments counted since :meth:`reset_usage`.

        ``codes_used[t]``: distinct codes; ``perplexity[t]`` = 2^{H(X_t)}; ``utilization[t]`` =
        H(X_t) / log2 K_t (docs/formulas.md; 0 where K_t = 1).
        """
        if self.counts is None:
            raise EntropyCliffError("no assignments counted yet")
        c = self.counts.view(self.length, self.kmax).double().cpu()
        p = c / c.sum(1, keepdim=True).clamp_min(1)
        h = -(p * torch.log2(p.where(p > 0, torch.ones_like(p)))).sum(1)
        logk = torch.log2(self.K.double().cpu())
        return {
            "codes_used": (c > 0).sum(1).numpy(),
            "perplexity": torch.exp2(h).numpy(),
            "utilization": torch.where(logk > 0, h / logk.clamp_min(1e-12), torch.zeros_like(h)).numpy(),
        }

    @torch.no_grad()
    def restart_dead_codes(self, generator: torch.Generator | None = None) -> int:
        """Move dead codes onto latents of the last training batch; returns how many moved.

        Under ``torch.distributed`` rank 0's codebook and usage EMA are broadcast afterwards so
        every rank keeps identical parameters. Call after the optimiser step.
        """
        if not self.dead_code_restart or self._last_z is None:
            return 0
        z = self._last_z
        dead = torch.nonzero(self.ema_share < self.dead_code_threshold * self.uniform_share).squeeze(1)
        n = int(dead.numel())
        if n:
            # positions allowed to use code k are the first n_k of the positions sorted by K_t desc
            order = torch.argsort(self.K, descending=True, stable=True)
            n_allowed = (self.K[None, :] > dead[:, None]).sum(1)
            u = torch.rand(n, generator=generator, device=z.device)
            t = order[(u * n_allowed).long().clamp_max(n_allowed - 1)]
            b = torch.randint(z.shape[0], (n,), generator=generator, device=z.device)
            self.codebook.data[dead] = z[b, t].to(self.codebook.dtype)
            self.ema_share[dead] = self.uniform_share[dead]
        n += self._split_collapsed_positions(z, self._last_idx)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(self.codebook.data, 0)
            dist.broadcast(self.ema_share, 0)
        self._last_z = self._last_idx = None
        return n

    def _split_collapsed_positions(self, z: torch.Tensor, idx: torch.Tensor) -> int:
        """Positions with K_t >= 2 whose whole batch took one code k_0 (the small-K_t positions of a
        VCQ schedule are prone to this): move the least-used other code of the prefix [0, K_t) onto
        the batch latent farthest from e_{k_0}, so the position is split again. Returns the count."""
        if z.shape[0] < 2:
            return 0
        collapsed = torch.nonzero((idx == idx[:1]).all(0) & (self.K >= 2)).squeeze(1).tolist()
        for t in collapsed:
            k0 = int(idx[0, t])
            far = int(((z[:, t] - self.codes()[k0]) ** 2).sum(-1).argmax())
            share = self.ema_share[: int(self.K[t])].clone()
            share[k0] = float("inf")
            k = int(share.argmin())
            self.codebook.data[k] = z[far, t].to(self.codebook.dtype)
            self.ema_share[k] = self.uniform_share[k]
        return len(collapsed)
