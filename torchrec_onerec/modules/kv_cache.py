"""Key/value cache of the decoder's causal self-attention, for step-by-step decoding (docs/METHOD.md section 2).

Serving writes a session token by token; with the cache each step projects only the new tokens and attends to
the stored keys and values of every earlier token, instead of re-running the decoder over the whole prefix.
Layout: one preallocated tensor per role for all layers, token-major, ``[T_max, layers, B, H, D / H]``, filled
from the front; ``length`` tokens are valid. Beam search reorders the batch axis after every step when beams
are reselected (``reorder``); token-major, the valid part is one contiguous block, so a reorder copies only it,
into a second buffer that then takes the first one's place, instead of the whole preallocated cache. Attention
reads ``[B, H, length, D / H]`` views of it, which scaled dot-product attention takes as they are. Measured with
``benchmarks/generation.py --item-leaf --items 2000 --codebook 32 --session-items 5 --beam 20 --users 256
--threads 1`` (the synthetic config's shape): 92.6 users/s against 70.9 with the batch-major cache (1.31x), the
same sessions and scores.
Cross-attention keys/values are not cached here: they depend only on the encoder output and are projected once
per search (``TransformerDecoder.project_memory``).

Shape legend: B batch (users x beams in beam search), H heads, T tokens, D width.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


class KVCache:
    """Preallocated self-attention keys and values of every decoder layer.

    Args:
        num_layers (int): decoder layers.
        batch_size (int): B rows (users x beams).
        num_heads (int): H.
        max_length (int): T_max, the most tokens the cache will hold.
        head_dim (int): D / H.
        dtype (torch.dtype): storage dtype (that of the projected keys).
        device (torch.device | None): storage device.

    Example:
        >>> cache = KVCache(1, batch_size=2, num_heads=1, max_length=3, head_dim=1)
        >>> k, v = cache.update(0, torch.ones(2, 1, 2, 1), torch.ones(2, 1, 2, 1))
        >>> cache.advance(2); tuple(k.shape), cache.length
        ((2, 1, 2, 1), 2)
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
    ) -> None:
        shape = (max_length, num_layers, batch_size, num_heads, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)  # only written slots are ever read
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self._spare: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # reorder's target, made on first use
        self.length = 0

    @property
    def max_length(self) -> int:
        """T_max."""
        return int(self.keys.shape[0])

    def update(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys/values of ``layer`` after the cached ones and return all of them.

        Args:
            layer (int): the decoder layer.
            keys (torch.Tensor): [B, H, T, D / H] of the T new tokens (values likewise).
            values (torch.Tensor): [B, H, T, D / H].

        Returns:
            (keys, values): [B, H, length + T, D / H] views of the cache.
        """
        end = self.length + keys.shape[2]
        if end > self.max_length:
            raise ValueError(
                f"KVCache holds at most max_length={self.max_length} tokens, {end} requested; "
                "build it with a larger max_length"
            )
        self.keys[self.length : end, layer] = keys.permute(2, 0, 1, 3)
        self.values[self.length : end, layer] = values.permute(2, 0, 1, 3)
        return self.keys[:end, layer].permute(1, 2, 0, 3), self.values[:end, layer].permute(1, 2, 0, 3)

    def advance(self, num_tokens: int) -> None:
        """Mark ``num_tokens`` more tokens as stored (after every layer has called ``update``)."""
        self.length += num_tokens

    def reorder(self, index: torch.Tensor) -> None:
        """Keep row ``index[b]`` as row b (beam reselection); ``index`` is [B] int64.

        Example:
            >>> cache = KVCache(1, batch_size=2, num_heads=1, max_length=3, head_dim=1)
            >>> _ = cache.update(0, torch.tensor([[[[1.0]]], [[[2.0]]]]), torch.zeros(2, 1, 1, 1)); cache.advance(1)
            >>> cache.reorder(torch.tensor([1, 1]))
            >>> cache.update(0, torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))[0][:, 0, :, 0].tolist()
            [[2.0, 0.0], [2.0, 0.0]]
        """
        if self._spare is None:
            self._spare = (torch.empty_like(self.keys), torch.empty_like(self.values))
        keys, values = self._spare
        n = self.length
        torch.index_select(self.keys[:n], 2, index, out=keys[:n])
        torch.index_select(self.values[:n], 2, index, out=values[:n])
        self._spare = (self.keys, self.values)
        self.keys, self.values = keys, values

    def select_rows(self, index: torch.Tensor) -> "KVCache":
        """A new cache whose row r holds this cache's row ``index[r]``; ``index`` is [B'] int64, B' any size.

        ``reorder`` keeps the batch size; this grows or shrinks it, for decoding a tree of prefixes: the children of
        a node read the node's keys and values (``generation.slate``).

        Example:
            >>> cache = KVCache(1, batch_size=2, num_heads=1, max_length=3, head_dim=1)
            >>> _ = cache.update(0, torch.tensor([[[[1.0]]], [[[2.0]]]]), torch.zeros(2, 1, 1, 1)); cache.advance(1)
            >>> wide = cache.select_rows(torch.tensor([0, 1, 1]))
            >>> wide.length, wide.update(0, torch.zeros(3, 1, 1, 1), torch.zeros(3, 1, 1, 1))[0][:, 0, :, 0].tolist()
            (1, [[1.0, 0.0], [2.0, 0.0], [2.0, 0.0]])
        """
        T, layers, _, H, d = self.keys.shape
        out = KVCache(layers, index.numel(), H, T, d, dtype=self.keys.dtype, device=self.keys.device)
        n = self.length
        torch.index_select(self.keys[:n], 2, index, out=out.keys[:n])
        torch.index_select(self.values[:n], 2, index, out=out.values[:n])
        out.length = n
        return out
