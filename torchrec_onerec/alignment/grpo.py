"""The group-relative policy loss of ``align.objective=grpo`` (Shao et al. 2024; sequence-level ratios as in GSPO,
Zheng et al. 2025).

For a candidate session S of a user with history H, its advantage A (``groups``: its reward standardised over
the user's candidates), the policy M_{t+1}, the reference M_t that wrote the candidates, and |S| the session's
codes:

    s(S)   = exp([log M_{t+1}(S | H) - log M_t(S | H)] / |S|)          (per-code importance ratio)
    L_GRPO = -mean over the candidates of min(s A, clip(s, 1 - eps, 1 + eps) A)

Where the policy equals the reference (the start of every iteration) s = 1 and the gradient is
-A / |S| * grad log M(S | H): sessions above the user's mean reward become more probable, those below less. The
clip stops a session's ratio from being pushed further once it has moved by eps in the advantage's direction,
which bounds how far the steps of one iteration move the policy from the reference that wrote the candidates
(PPO's trust region; no separate KL term: the L_NTP term of the same loss and the fresh reference of every
iteration keep the policy near the data). Tensor arithmetic only, so TorchRec's train pipeline can trace it.

Shape legend: G candidate rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class GRPOOutput(NamedTuple):
    """What ``grpo_loss`` returns.

    Args:
        loss (torch.Tensor): [] L_GRPO, mean over the rows (0 when there are none).
        ratio (torch.Tensor): [] mean per-code ratio s over the rows (0 when there are none).
        clipped (torch.Tensor): [] share of rows whose clipped term is the smaller one (no gradient flows).
    """

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor


def grpo_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    advantage: torch.Tensor,
    codes: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
) -> GRPOOutput:
    """L_GRPO over the rows where ``mask`` holds (module docstring).

    Args:
        policy (torch.Tensor): [G] log M_{t+1}(S | H), summed over the session's codes.
        reference (torch.Tensor): [G] log M_t(S | H) (no gradient flows).
        advantage (torch.Tensor): [G] A of each session.
        codes (torch.Tensor): [G] |S|, the real codes of each session (>= 1 where ``mask`` holds).
        mask (torch.Tensor): [G] bool, the rows that count.
        clip (float): eps in (0, 1).

    Returns:
        GRPOOutput: loss, mean ratio and clipped share over the masked rows.

    Example:
        >>> zero, one = torch.zeros(2), torch.ones(2, dtype=torch.bool)
        >>> out = grpo_loss(zero, zero, torch.tensor([1.0, -1.0]), torch.tensor([4.0, 4.0]), one, clip=0.2)
        >>> abs(float(out.loss)), float(out.ratio)  # policy = reference: -(1 - 1) / 2
        (0.0, 1.0)
        >>> # a session above the mean whose ratio already rose past 1 + eps gets no further push
        >>> out = grpo_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([4.0]),
        ...                 torch.tensor([True]), clip=0.2)
        >>> round(float(out.loss), 4), float(out.clipped)
        (-1.2, 1.0)
    """
    if not 0.0 < clip < 1.0:
        raise ValueError(f"clip={clip} must lie in (0, 1) (align.grpo_clip)")
    weight = mask.to(policy.dtype)
    ratio = torch.exp((policy - reference.detach()) / codes.clamp(min=1.0))
    unclipped = ratio * advantage
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantage
    surrogate = torch.minimum(unclipped, clipped)
    rows = weight.sum().clamp(min=1.0)
    return GRPOOutput(
        loss=-(surrogate * weight).sum() / rows,
        ratio=(ratio.detach() * weight).sum() / rows,
        clipped=((clipped < unclipped).to(policy.dtype) * weight).sum() / rows,
    )
