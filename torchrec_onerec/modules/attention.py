"""Multi-head attention of the OneRec encoder-decoder (docs/METHOD.md section 2), on ``scaled_dot_product_attention``.

- ``SelfAttention``: the encoder's fully visible self-attention over the history tokens (with a padding mask),
  or, with ``causal=True``, the decoder's causal self-attention, optionally through a ``KVCache``.
- ``CrossAttention``: decoder queries against the encoder output; the memory's keys/values are projected once
  (``project_memory``) and reused for every decoder step. When the queries come from G beams per user
  ([B * G, T, D], beams of one user adjacent) the G beams ride on the query axis of their user's memory row,
  so the memory keys/values are never copied per beam.
- ``reference_attention``: softmax(Q K^T / sqrt(d) + mask) V spelled out, to test the fast path against.

Masks are boolean, True where attention is allowed.
Shape legend: B batch, T query tokens, S key tokens, D width, H heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from torchrec_onerec.modules.kv_cache import KVCache


@dataclass
class AttentionConfig:
    """Sizes of one attention layer.

    Args:
        d_model: D, the model width.
        num_heads: H; must divide D.
        dropout: dropout on the output projection (training only). The attention weights themselves get none:
            on CPU, SDPA with ``dropout_p > 0`` falls back to its math kernel, about 5x slower fwd+bwd.
        causal: each query sees only keys at its own position and before (decoder self-attention).
    """

    d_model: int
    num_heads: int
    dropout: float = 0.0
    causal: bool = False

    def __post_init__(self) -> None:
        if self.num_heads < 1 or self.d_model % self.num_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be >= 1 and divide d_model={self.d_model}; "
                "pick a head count that divides the width"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1)")


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) masked) V, written out; the test oracle of ``attend``.

    Args:
        q (torch.Tensor): [B, H, T, d].
        k (torch.Tensor): [B, H, S, d].
        v (torch.Tensor): [B, H, S, d].
        mask (torch.Tensor | None): bool, broadcastable to [B, H, T, S], True = may attend.

    Returns:
        torch.Tensor: [B, H, T, d].

    Example:
        >>> q = k = v = torch.eye(2).view(1, 1, 2, 2)
        >>> reference_attention(q, k, v, torch.tensor([[True, False], [True, True]])).squeeze().tolist()[0]
        [1.0, 0.0]
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None, *, causal: bool = False
) -> torch.Tensor:
    """``scaled_dot_product_attention`` with a boolean mask or a causal flag (the fast path).

    Args:
        q (torch.Tensor): [B, H, T, d].
        k (torch.Tensor): [B, H, S, d].
        v (torch.Tensor): [B, H, S, d].
        mask (torch.Tensor | None): bool, broadcastable to [B, H, T, S], True = may attend; not with ``causal``.
        causal (bool): top-left causal mask (query t sees keys 0..t).

    Returns:
        torch.Tensor: [B, H, T, d].
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)


def causal_mask(num_queries: int, num_keys: int, *, device: Optional[torch.device] = None) -> torch.Tensor:
    """[T, S] bool mask for T new queries after S - T cached tokens: query t sees keys 0 .. S - T + t.

    Example:
        >>> causal_mask(1, 3).tolist(), causal_mask(2, 3).tolist()
        ([[True, True, True]], [[True, True, False], [True, True, True]])
    """
    past = num_keys - num_queries
    rows = torch.arange(num_queries, device=device).unsqueeze(1) + past
    return rows >= torch.arange(num_keys, device=device).unsqueeze(0)


class SelfAttention(nn.Module):
    """Multi-head self-attention, fully visible with a key padding mask, or causal with an optional KV cache.

    Args:
        config (AttentionConfig): D, H, dropout, causal.
        device (torch.device | None): where to build the parameters ("meta" for DMP).

    Example:
        >>> attn = SelfAttention(AttentionConfig(d_model=8, num_heads=2))
        >>> attn(torch.randn(3, 5, 8), key_mask=torch.ones(3, 5, dtype=torch.bool)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(self, config: AttentionConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.config = config
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, device=device)
        self.proj = nn.Linear(config.d_model, config.d_model, device=device)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, key_mask: Optional[torch.Tensor] = None, cache: Optional[KVCache] = None, layer: int = 0
    ) -> torch.Tensor:
        """Attend over ``x`` (and the cached tokens).

        Args:
            x (torch.Tensor): [B, T, D] the new tokens.
            key_mask (torch.Tensor | None): [B, T] bool, False at padding tokens (no query attends to them).
            cache (KVCache | None): causal decoding only; the T tokens follow the ``cache.length`` cached ones.
                The caller advances the cache after all layers.
            layer (int): this layer's index in ``cache``.

        Returns:
            torch.Tensor: [B, T, D].
        """
        B, T, D = x.shape
        H = self.config.num_heads
        q, k, v = self.qkv(x).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # each (B, H, T, D/H)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, H, S, D/H), S = cached + T
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
        causal = self.config.causal and cache is None and mask is None
        # cached tokens or padding: spell the causal mask out, unless one new token is all there is (it sees every
        # key, and SDPA runs faster without a mask)
        if self.config.causal and not causal and T > 1:
            steps = causal_mask(T, k.shape[2], device=x.device)
            mask = steps if mask is None else mask & steps
        y = attend(q, k, v, mask, causal=causal)  # (B, H, T, D/H)
        y = y.transpose(1, 2).reshape(B, T, D)
        return self.resid_dropout(self.proj(y))


class CrossAttention(nn.Module):
    """Multi-head attention of decoder queries over the encoder output (the memory).

    Args:
        config (AttentionConfig): D, H, dropout (``causal`` must be False).
        device (torch.device | None): where to build the parameters.

    Example:
        >>> attn = CrossAttention(AttentionConfig(d_model=8, num_heads=2))
        >>> kv = attn.project_memory(torch.randn(2, 4, 8))     # 2 users, 4 memory tokens
        >>> attn(torch.randn(6, 1, 8), kv, torch.ones(2, 4, dtype=torch.bool)).shape  # 3 beams per user
        torch.Size([6, 1, 8])
    """

    def __init__(self, config: AttentionConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        if config.causal:
            raise ValueError(
                "CrossAttention got config.causal=True; cross-attention sees the whole memory, set causal=False"
            )
        self.config = config
        self.q = nn.Linear(config.d_model, config.d_model, device=device)
        self.kv = nn.Linear(config.d_model, 2 * config.d_model, device=device)
        self.proj = nn.Linear(config.d_model, config.d_model, device=device)
        self.resid_dropout = nn.Dropout(config.dropout)

    def project_memory(
        self, memory: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the memory, computed once per encoder output.

        Args:
            memory (torch.Tensor): [B, S, D] encoder output.
            mask (torch.Tensor | None): [B, S] bool, False at padding: only the real tokens are projected (padding
                gets zeros, which attention masks out anyway); None: every token.

        Returns:
            (keys, values): each [B, H, S, D / H].
        """
        B, S, D = memory.shape
        H = self.config.num_heads
        if mask is None:
            projected = self.kv(memory)
        else:
            real = self.kv(memory[mask])  # (N, 2D); autocast may change the dtype
            projected = real.new_zeros(B, S, 2 * D)
            projected[mask] = real
        k, v = projected.view(B, S, 2, H, D // H).permute(2, 0, 3, 1, 4)  # each (B, H, S, D/H)
        return k, v

    def forward(
        self, x: torch.Tensor, memory_kv: Tuple[torch.Tensor, torch.Tensor], memory_mask: torch.Tensor
    ) -> torch.Tensor:
        """Attend from ``x`` to the memory.

        Args:
            x (torch.Tensor): [B * G, T, D] queries, G >= 1 consecutive rows per memory row (beams of one user).
            memory_kv (Tuple[torch.Tensor, torch.Tensor]): ``project_memory`` output, each [B, H, S, D / H].
            memory_mask (torch.Tensor): [B, S] bool, False at padding memory tokens.

        Returns:
            torch.Tensor: [B * G, T, D].
        """
        BG, T, D = x.shape
        k, v = memory_kv
        B, H = k.shape[0], self.config.num_heads
        q = self.q(x).view(B, -1, H, D // H).transpose(1, 2)  # (B, H, G*T, D/H): a user's beams share its K/V
        y = attend(q, k, v, memory_mask[:, None, None, :])  # (B, H, G*T, D/H)
        y = y.transpose(1, 2).reshape(BG, T, D)
        return self.resid_dropout(self.proj(y))
