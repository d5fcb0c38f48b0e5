"""Dense position-wise feed-forward layer (docs/METHOD.md section 2): the encoder's FFN, and the decoder's FFN when
the Mixture-of-Experts is switched off for ablation.

It returns the same ``FeedForwardOutput`` as ``MoEFeedForward`` (a zero balance loss and a single "expert"
carrying all the load), so transformer blocks treat both alike.
Shape legend: B batch, T tokens, D width, E experts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn


class FeedForwardOutput(NamedTuple):
    """What a feed-forward layer returns.

    Args:
        out (torch.Tensor): [B, T, D] the layer output.
        aux_loss (torch.Tensor): [] load-balancing loss (0 for a dense layer).
        expert_load (torch.Tensor): [E] share of token-expert assignments per expert, sums to 1 (E = 1 if dense).
    """

    out: torch.Tensor
    aux_loss: torch.Tensor
    expert_load: torch.Tensor


@dataclass
class FeedForwardConfig:
    """Sizes of a dense feed-forward layer.

    Args:
        d_model: D.
        hidden: inner width (4 D in the original transformer).
        dropout: dropout on the output (training only).
    """

    d_model: int
    hidden: int
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.d_model < 1 or self.hidden < 1:
            raise ValueError(f"d_model={self.d_model} and hidden={self.hidden} must both be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must lie in [0, 1)")


class FeedForward(nn.Module):
    """Linear(D, hidden) -> GELU -> Linear(hidden, D) -> dropout.

    Args:
        config (FeedForwardConfig): D, hidden, dropout.
        device (torch.device | None): where to build the parameters ("meta" for DMP).

    Example:
        >>> ffn = FeedForward(FeedForwardConfig(d_model=4, hidden=8))
        >>> out = ffn(torch.randn(2, 3, 4))
        >>> tuple(out.out.shape), out.aux_loss.item(), out.expert_load.tolist()
        ((2, 3, 4), 0.0, [1.0])
    """

    def __init__(self, config: FeedForwardConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.hidden, device=device)
        self.proj = nn.Linear(config.hidden, config.d_model, device=device)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> FeedForwardOutput:
        """Apply the FFN to every token.

        Args:
            x (torch.Tensor): [B, T, D].
            mask (torch.Tensor | None): [B, T] bool real tokens; unused (kept to match ``MoEFeedForward``).

        Returns:
            FeedForwardOutput: out [B, T, D], aux_loss 0, expert_load [1].
        """
        out = self.dropout(self.proj(F.gelu(self.fc(x))))
        return FeedForwardOutput(out, x.new_zeros(()), x.new_ones(1))
