"""Target-aware attention of each session item over the user's history, for the session reward model.

The reward model's user vector u is one summary of the whole history (the mean of its item vectors, through an
MLP), so a user with two interests is scored against their average, and an item of either interest matches u
only halfway. With ``reward.history_attention`` each session item i also reads the history items most like it
(the target-aware attention of DIN, Zhou et al. 2018): a_i = sum_h softmax_h(q_i . v_h / sqrt(D)) v_h with
q_i = W v_i, and the item is fused with u + W_o a_i instead of u alone.

Shape legend: B sessions, M session slots, H history items (the longest in the batch), D width.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn


@torch.fx.wrap
def pad_history(values: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Jagged history vectors -> padded rows and the keys attention may read.

    Args:
        values (torch.Tensor): [sum H_b, D] every user's history item vectors, user by user.
        lengths (torch.Tensor): [B] history lengths.

    Returns:
        ([B, H, D] vectors, zero at padding; [B, H] bool keys: the real items, and slot 0 (a zero vector) of a
        user without history, so that no row of the attention is empty).

    Example:
        >>> rows, keys = pad_history(torch.ones(3, 2), torch.tensor([2, 0, 1]))
        >>> rows[:, :, 0].tolist(), keys.tolist()
        ([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]], [[True, True], [True, False], [True, False]])
    """
    B, D = lengths.numel(), values.shape[1]
    H = max(int(lengths.max()) if B else 0, 1)
    real = torch.arange(H, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, H)
    rows = values.new_zeros(B, H, D).masked_scatter(real.unsqueeze(-1), values)
    keys = real.clone()
    keys[:, 0] |= lengths == 0
    return rows, keys


class HistoryAttention(nn.Module):
    """W_o a_i, each session item's attention read of the user's history (module docstring).

    Args:
        dim (int): D, the width of the item vectors.
        device (torch.device | None): where the parameters live.

    Example:
        >>> attention = HistoryAttention(4)
        >>> out = attention(torch.randn(2, 3, 4), torch.randn(5, 4), torch.tensor([2, 3]))
        >>> tuple(out.shape)
        (2, 3, 4)
    """

    def __init__(self, dim: int, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim, bias=False, device=device)
        self.out = nn.Linear(dim, dim, device=device)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, items: torch.Tensor, history: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, M, D] session item vectors, [sum H_b, D] history item vectors and [B] lengths -> [B, M, D]."""
        rows, keys = pad_history(history, lengths)  # (B, H, D), (B, H)
        scores = torch.einsum("bmd,bhd->bmh", self.query(items), rows) * self.scale
        weights = scores.masked_fill(~keys.unsqueeze(1), float("-inf")).softmax(dim=-1)  # (B, M, H)
        return self.out(torch.einsum("bmh,bhd->bmd", weights, rows))
