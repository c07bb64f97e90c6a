"""Llama-style class-conditional AR transformer over a variable-codebook token corpus.

Sequence layout (LlamaGen convention): input position 0 holds the class embedding, input position
``i >= 1`` the embedding of token ``x_i`` (1-based t = i); the output at input position ``i``
predicts ``x_{i+1}``. So the logits for token position t (1-based) come from input position t - 1
and the model sees ``[c, x_1, ..., x_{L-1}]`` to predict ``[x_1, ..., x_L]``.

Blocks are pre-norm: ``h += Attn(RMSNorm(h))``, ``h += SwiGLU(RMSNorm(h))`` with rotary position
embeddings (RoPE) on queries and keys and no biases anywhere. The head is a ``K_max``-way linear
layer shared by all positions; position t's logits at indices ``>= K_t`` are set to ``-inf``
(docs/formulas.md, nested-prefix quantization), so softmax gives them exactly zero probability and the next-token cross-entropy is
unchanged in form (it normalises over the K_t valid codes only).

Class id ``num_classes`` is the null class of classifier-free guidance; during training each label
is replaced by it with probability ``class_dropout`` (paper Appendix A: 0.1).

Incremental decoding uses :class:`KVCache`: ``forward(prefix, labels, cache)`` only runs the
positions of ``prefix`` the cache has not seen yet, so sampling with a cache and sampling with full
recomputation see the same logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from entropy_cliff.errors import EntropyCliffError
from vcq.presets import ARConfig


def ffn_hidden(dim: int, multiple_of: int) -> int:
    """SwiGLU hidden width: 2/3 of 4 dim (same parameter count as a 4x GELU MLP), rounded up."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * g`` (Zhang & Sennrich 2019), no bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (length, head_dim/2): angle ``pos * base^(-2i/head_dim)``."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x_{2i}, x_{2i+1}) of ``x`` (B, H, T, D) by the position angles."""
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2).type_as(x)


@dataclass
class KVCache:
    """Keys and values of every layer for positions ``0..pos-1`` (preallocated to the full length)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    pos: int = 0

    @classmethod
    def empty(cls, model: ARTransformer, batch: int, device: torch.device | str, dtype: torch.dtype) -> KVCache:
        cfg = model.cfg
        shape = (batch, cfg.heads, cfg.length, cfg.dim // cfg.heads)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)])


class Attention(nn.Module):
    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.attn_dropout if self.training else 0.0)
        else:
            start = cache.pos
            cache.keys[layer][:, :, start:start + t] = k
            cache.values[layer][:, :, start:start + t] = v
            keys, values = cache.keys[layer][:, :, :start + t], cache.values[layer][:, :, :start + t]
            # query i (absolute position start + i) may attend keys 0..start + i
            allowed = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(b, t, d)))


class SwiGLU(nn.Module):
    """``W2 (silu(W1 x) * W3 x)`` (Shazeer 2020), no biases."""

    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        hidden = ffn_hidden(cfg.dim, cfg.ffn_multiple_of)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        h = h + self.attn(self.attn_norm(h), cos, sin, cache, layer)
        return h + self.ffn(self.ffn_norm(h))


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of ``tokens`` (B, L) under masked logits (B, L, K_max).

    Masked entries are -inf, so each position's softmax runs over its K_t valid codes only.
    """
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten().long())


def validate_config(cfg: ARConfig) -> None:
    """Raise :class:`EntropyCliffError` for a configuration no model can be built from."""
    if not cfg.K:
        raise EntropyCliffError("AR config has no codebook sizes K (fill them in from the token dump)")
    if min(cfg.K) < 1:
        raise EntropyCliffError(f"codebook sizes must be >= 1, got min K_t = {min(cfg.K)}")
    if cfg.num_classes < 1:
        raise EntropyCliffError(f"num_classes must be >= 1, got {cfg.num_classes}")
    if cfg.dim % cfg.heads or (cfg.dim // cfg.heads) % 2:
        raise EntropyCliffError(f"dim {cfg.dim} must split into {cfg.heads} heads of even width")
    for name in ("dropout", "token_dropout", "class_dropout"):
        p = getattr(cfg, name)
        if not 0.0 <= p < 1.0:
            raise EntropyCliffError(f"{name} must lie in [0, 1), got {p}")


class ARTransformer(nn.Module):
    """Class-conditional decoder-only transformer with a K_t-masked ``K_max``-way head."""

    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        validate_config(cfg)
        self.cfg = cfg
        self.null_class = cfg.num_classes
        self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)
        self.tok_emb = nn.Embedding(cfg.kmax, cfg.dim)
        self.token_dropout = nn.Dropout(cfg.token_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.kmax, bias=False)
        cos, sin = rope_tables(cfg.length, cfg.dim // cfg.heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        k = torch.tensor(cfg.K, dtype=torch.long)
        self.register_buffer("K", k, persistent=False)
        self.register_buffer("invalid", torch.arange(cfg.kmax)[None, :] >= k[:, None], persistent=False)
        self.apply(self._init_weights)
        # GPT-2 / LlamaGen: scale the residual output projections by 1/sqrt(2 depth)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "ffn.w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def drop_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """In training, replace each label by the null class with probability ``class_dropout``."""
        if not self.training or self.cfg.class_dropout == 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.cfg.class_dropout
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    def forward(self, prefix: torch.Tensor, labels: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Masked logits for token positions ``cache.pos + 1 .. T + 1`` (1-based) given ``x_1..x_T``.

        ``prefix`` (B, T) holds tokens x_1..x_T (T may be 0, at most L - 1), ``labels`` (B,) class
        ids in ``[0, num_classes]`` (``num_classes`` = null). Without a cache the result is
        (B, T + 1, K_max): the logits of positions 1..T+1. With a cache only the input positions
        the cache has not processed yet are run and appended to it. Entries ``>= K_t`` are -inf.
        """
        b, t_len = prefix.shape
        start = 0 if cache is None else cache.pos
        if t_len + 1 > self.cfg.length:
            raise EntropyCliffError(f"prefix of length {t_len} exceeds the model's L - 1 = {self.cfg.length - 1}")
        if start > t_len:
            raise EntropyCliffError(f"cache holds {start} positions but the prefix has only {t_len} tokens")
        parts = []
        if start == 0:
            parts.append(self.class_emb(self.drop_labels(labels))[:, None, :])
        first_token = max(start - 1, 0)
        parts.append(self.tok_emb(prefix[:, first_token:]))
        h = self.token_dropout(torch.cat(parts, dim=1))
        end = t_len + 1
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        for i, block in enumerate(self.blocks):
            h = block(h, cos, sin, cache, i)
        if cache is not None:
            cache.pos = end
        logits = self.head(self.norm(h)).float()
        return logits.masked_fill(self.invalid[start:end], float("-inf"))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy (nats) of ``tokens`` (B, L) under teacher forcing."""
        return next_token_loss(self(tokens[:, :-1], labels), tokens)

    @torch.no_grad()
    def nll_bits_per_position(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed NLL in bits per position (L,) over the batch: divide by the count for the mean."""
        logits = self(tokens[:, :-1], labels)
        nll = F.cross_entropy(logits.transpose(1, 2), tokens.long(), reduction="none")
        return nll.sum(0) / math.log(2)
