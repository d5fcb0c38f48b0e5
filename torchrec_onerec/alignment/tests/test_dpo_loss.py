"""``dpo_loss`` against hand-computed values and gradients, its invariants, and the ``align`` config checks."""

from __future__ import annotations

import math

import pytest
import torch

from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.alignment.dpo import dpo_loss
from torchrec_onerec.errors import ConfigError


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_loss_accuracy_margin_and_gradient_match_a_hand_computation() -> None:
    # pair 1: log-ratios +1 (chosen) and -1 (rejected): z = 0.5 * (1 - (-1)) = 1
    # pair 2: log-ratios 0 and +1: z = 0.5 * (0 - 1) = -0.5 (the policy prefers the rejected session)
    policy_chosen = torch.tensor([-1.0, -2.0], requires_grad=True)
    policy_rejected = torch.tensor([-3.0, -1.0], requires_grad=True)
    reference_chosen = torch.tensor([-2.0, -2.0], requires_grad=True)
    reference_rejected = torch.tensor([-2.0, -2.0], requires_grad=True)
    out = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    z = [1.0, -0.5]
    expected_losses = [math.log(1.0 + math.exp(-v)) for v in z]  # -log sigmoid(z)
    assert out.losses.detach().tolist() == pytest.approx(expected_losses, abs=1e-6)
    assert float(out.loss.detach()) == pytest.approx(sum(expected_losses) / 2, abs=1e-6)
    assert float(out.accuracy) == 0.5 and float(out.margin.detach()) == pytest.approx(0.25)
    assert out.chosen_rewards.detach().tolist() == pytest.approx([0.5, 0.0])
    assert out.rejected_rewards.detach().tolist() == pytest.approx([-0.5, 0.5])
    out.loss.backward()
    # dL/dpi_w = -(1/P) * beta * sigmoid(-z); dL/dpi_l = +(1/P) * beta * sigmoid(-z)
    expected_grad = [-0.5 * 0.5 * _sigmoid(-v) for v in z]
    assert policy_chosen.grad.tolist() == pytest.approx(expected_grad, abs=1e-6)
    assert policy_rejected.grad.tolist() == pytest.approx([-g for g in expected_grad], abs=1e-6)
    assert reference_chosen.grad is None and reference_rejected.grad is None  # the reference is frozen


def test_policy_equal_to_reference_gives_log_2_and_no_accuracy() -> None:
    log_probs = torch.tensor([-4.0, -7.5, -1.0])
    out = dpo_loss(log_probs, log_probs - 2.0, log_probs, log_probs - 2.0, beta=0.3)
    assert float(out.loss) == pytest.approx(math.log(2.0)) and float(out.accuracy) == 0.0
    assert float(out.margin) == 0.0


def test_no_pairs_give_zero_loss_and_bad_beta_is_refused() -> None:
    empty = torch.zeros(0, requires_grad=True)
    out = dpo_loss(empty, empty, empty, empty, beta=0.1)
    assert (float(out.loss.detach()), float(out.accuracy), float(out.margin.detach())) == (0.0, 0.0, 0.0)
    out.loss.backward()  # still differentiable: a batch without pairs trains on L_NTP alone
    with pytest.raises(ValueError, match="beta=0"):
        dpo_loss(empty, empty, empty, empty, beta=0.0)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"sample_fraction": 0.0}, "align.sample_fraction"),
        ({"train_fraction": 1.5}, "align.train_fraction"),
        ({"sample_fraction": 1.5}, "align.sample_fraction"),
        ({"num_candidates": 1}, "align.num_candidates"),
        ({"beta": -0.1}, "align.beta"),
        ({"dpo_weight": -1.0}, "align.dpo_weight"),
        ({"iterations": 0}, "align.iterations"),
        ({"batch_size": 0}, "align.batch_size"),
    ],
)
def test_config_names_the_bad_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        AlignConfig(**overrides)
