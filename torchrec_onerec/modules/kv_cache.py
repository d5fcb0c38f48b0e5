"""Key/value cache of the decoder's causal self-attention, for step-by-step decoding (docs/METHOD.md section 2).

Serving writes a session token by token; with the cache each step projects only the new tokens and attends to
the stored keys and values of every earlier token, instead of re-running the decoder over the whole prefix.
Layout: one preallocated tensor per role for all layers, ``[layers, B, H, T_max, D / H]``, filled left to right;
``length`` tokens are valid. Beam search reorders the batch axis when beams are reselected (``reorder``).
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

    def __init__(self, num_layers: int, batch_size: int, num_heads: int, max_length: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None) -> None:
        shape = (num_layers, batch_size, num_heads, max_length, head_dim)
        self.keys = torch.empty(shape, dtype=dtype, device=device)  # only written slots are ever read
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_length(self) -> int:
        """T_max."""
        return int(self.keys.shape[3])

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
            raise ValueError(f"KVCache holds at most max_length={self.max_length} tokens, {end} requested; "
                             "build it with a larger max_length")
        self.keys[layer, :, :, self.length:end] = keys
        self.values[layer, :, :, self.length:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Mark ``num_tokens`` more tokens as stored (after every layer has called ``update``)."""
        self.length += num_tokens

    def reorder(self, index: torch.Tensor) -> None:
        """Keep row ``index[b]`` as row b (beam reselection); ``index`` is [B] int64."""
        self.keys = self.keys.index_select(1, index)
        self.values = self.values.index_select(1, index)
