"""The DPO loss of OneRec's preference alignment (docs/METHOD.md section 4, step 3; Rafailov et al. 2023).

For a pair (chosen session S^w, rejected session S^l) of a user with history H, the policy M_{t+1} and the frozen
reference M_t, with log-probabilities summed over every code of the session:

    r^w = beta * (log M_{t+1}(S^w | H) - log M_t(S^w | H))        (implicit reward of the chosen session)
    r^l = beta * (log M_{t+1}(S^l | H) - log M_t(S^l | H))
    L_DPO = -log sigmoid(r^w - r^l), averaged over the pairs

The loss is log 2 where the policy equals the reference, and falls as the policy raises the chosen session's
probability relative to the rejected one's, measured against the reference. Everything is tensor arithmetic
with no data-dependent Python, so it runs inside a forward that TorchRec's train pipeline traces with torch.fx.

Shape legend: P pairs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class DPOOutput(NamedTuple):
    """What ``dpo_loss`` returns.

    Args:
        loss (torch.Tensor): [] mean of ``losses`` over the pairs (0 when there are none).
        accuracy (torch.Tensor): [] share of pairs whose chosen implicit reward is above the rejected one's
            (0 when there are none).
        margin (torch.Tensor): [] mean of ``chosen_rewards - rejected_rewards`` (0 when there are none).
        losses (torch.Tensor): [P] per-pair -log sigmoid(r^w - r^l).
        chosen_rewards (torch.Tensor): [P] r^w = beta * (log pi(S^w) - log pi_ref(S^w)).
        rejected_rewards (torch.Tensor): [P] r^l = beta * (log pi(S^l) - log pi_ref(S^l)).
    """

    loss: torch.Tensor
    accuracy: torch.Tensor
    margin: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
) -> DPOOutput:
    """DPO loss ``-log sigmoid(beta * [(pi_w - ref_w) - (pi_l - ref_l)])``, mean over pairs (module docstring).

    Args:
        policy_chosen (torch.Tensor): [P] log M_{t+1}(S^w | H), summed over the session's codes.
        policy_rejected (torch.Tensor): [P] log M_{t+1}(S^l | H).
        reference_chosen (torch.Tensor): [P] log M_t(S^w | H) of the frozen reference (no gradient flows).
        reference_rejected (torch.Tensor): [P] log M_t(S^l | H).
        beta (float): the temperature beta > 0.

    Returns:
        DPOOutput: loss, accuracy and margin (scalars), per-pair losses and implicit rewards [P].

    Example:
        >>> out = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        ...                beta=0.5)
        >>> round(float(out.loss), 4), float(out.accuracy), float(out.margin)  # -log sigmoid(0.5 * (1 + 1))
        (0.3133, 1.0, 1.0)
        >>> round(float(dpo_loss(*[torch.zeros(3)] * 4, beta=0.1).loss), 4)  # policy = reference: log 2
        0.6931
    """
    if beta <= 0:
        raise ValueError(f"beta={beta} must be > 0 (align.beta)")
    chosen_rewards = beta * (policy_chosen - reference_chosen.detach())
    rejected_rewards = beta * (policy_rejected - reference_rejected.detach())
    margins = chosen_rewards - rejected_rewards
    losses = -F.logsigmoid(margins)
    pairs = torch.ones_like(margins).sum().clamp(min=1.0)  # a tensor, not len(): fx-traceable, and 0 pairs give 0
    return DPOOutput(
        loss=losses.sum() / pairs,
        accuracy=(margins > 0).to(margins.dtype).sum() / pairs,
        margin=margins.sum() / pairs,
        losses=losses,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
    )
