"""The alignment train step: session log-probs from the one forward equal ``OneRecModel.log_prob``, and the loss is
L_NTP over the NTP rows only plus lambda * L_DPO over the pairs plus mu * L_chosen (plus the MoE balance term)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from torchrec_onerec.alignment.pairs import empty_pairs
from torchrec_onerec.alignment.train_step import (
    ROLE_CHOSEN,
    ROLE_REJECTED,
    PreferenceTrainStep,
    code_log_probs,
    preference_batch,
)
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.semantic_batch import SemanticIdTransform, to_semantic_batch
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.train.testing import random_samples

CODES, SIZES = random_codes(15, [3, 3], seed=0)
SAMPLES = random_samples(6, 15, max_history=5, session_items=2, seed=0, full_sessions=False)
TRANSFORM = SemanticIdTransform(CODES)
PAIR_ROWS = np.array([1, 4])
CHOSEN = np.array([[3, 7], [0, 1]])
REJECTED = np.array([[9, 2], [5, 6]])


def _pairs(reference_chosen: np.ndarray, reference_rejected: np.ndarray):
    return replace(
        empty_pairs(2, 3),
        sample_rows=PAIR_ROWS,
        chosen=CHOSEN,
        rejected=REJECTED,
        reference_chosen=reference_chosen.astype(np.float32),
        reference_rejected=reference_rejected.astype(np.float32),
    )


def _model() -> OneRecModel:
    torch.manual_seed(0)
    return OneRecModel(model_size("tiny"), SIZES).eval()


def _policy_log_probs(model: OneRecModel) -> torch.Tensor:
    """[2, 2] log M(chosen), log M(rejected) of the two pairs, by ``OneRecModel.log_prob``."""
    batch = to_semantic_batch(collate_samples(SAMPLES, PAIR_ROWS), CODES)
    sessions = CODES[torch.from_numpy(np.stack([CHOSEN, REJECTED], axis=1))]  # (2, 2, M, L')
    return model.log_prob(batch, sessions).detach()


def test_forward_session_log_probs_equal_log_prob() -> None:
    model = _model()
    batch = preference_batch(SAMPLES, np.arange(6), _pairs(np.zeros(2), np.zeros(2)), np.arange(2), TRANSFORM)
    out = model(batch)
    session = code_log_probs(out.logits, out.labels).sum(dim=(1, 2)).detach()
    expected = _policy_log_probs(model)
    assert torch.allclose(session[batch.role == ROLE_CHOSEN], expected[:, 0], atol=1e-5)
    assert torch.allclose(session[batch.role == ROLE_REJECTED], expected[:, 1], atol=1e-5)


@pytest.mark.parametrize("dpo_weight", [0.0, 2.0])
def test_loss_is_ntp_on_ntp_rows_plus_lambda_dpo(dpo_weight: float) -> None:
    model = _model()
    policy = _policy_log_probs(model).numpy()
    step = PreferenceTrainStep(model, beta=0.5, dpo_weight=dpo_weight)
    # reference = policy: L_DPO = log 2 exactly, accuracy 0
    batch = preference_batch(SAMPLES, np.arange(6), _pairs(policy[:, 0], policy[:, 1]), np.arange(2), TRANSFORM)
    loss, metrics = step(batch)
    ntp_only = model(to_semantic_batch(collate_samples(SAMPLES), CODES)).ntp_loss.detach()
    assert float(metrics.ntp_loss) == pytest.approx(float(ntp_only), abs=1e-5)
    assert float(metrics.dpo_loss) == pytest.approx(math.log(2.0), abs=1e-5) and float(metrics.pairs) == 2
    assert float(metrics.dpo_accuracy) == 0.0
    aux = model.config.moe_aux_weight * float(metrics.aux_loss)
    assert float(loss.detach()) == pytest.approx(float(ntp_only) + dpo_weight * math.log(2.0) + aux, abs=1e-5)
    # a reference that makes the chosen sessions look relatively better under the policy lowers L_DPO
    easier = preference_batch(
        SAMPLES, np.arange(6), _pairs(policy[:, 0] - 1.0, policy[:, 1] + 1.0), np.arange(2), TRANSFORM
    )
    _, better = step(easier)
    assert float(better.dpo_loss) == pytest.approx(math.log1p(math.exp(-0.5 * 2.0)), abs=1e-5)
    assert float(better.dpo_accuracy) == 1.0 and float(better.reward_margin) == pytest.approx(1.0, abs=1e-5)


def test_dpo_gradient_raises_the_chosen_session() -> None:
    model = _model()
    policy = _policy_log_probs(model).numpy()
    step = PreferenceTrainStep(model, beta=1.0, dpo_weight=1.0)
    # pair rows only: L = L_DPO (+ the MoE balance term), L_NTP has no codes and is 0
    batch = preference_batch(SAMPLES, np.zeros(0), _pairs(policy[:, 0], policy[:, 1]), np.arange(2), TRANSFORM)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        loss, metrics = step(batch)
        loss.backward()
        optimizer.step()
        assert float(metrics.ntp_loss) == 0.0
    after = _policy_log_probs(model)
    margin_before = policy[:, 0] - policy[:, 1]
    assert ((after[:, 0] - after[:, 1]).numpy() > margin_before).all()


def test_chosen_nll_adds_mu_times_the_chosen_rows_cross_entropy() -> None:
    model = _model()
    policy = _policy_log_probs(model).numpy()
    batch = preference_batch(SAMPLES, np.arange(6), _pairs(policy[:, 0], policy[:, 1]), np.arange(2), TRANSFORM)
    plain_loss, plain = PreferenceTrainStep(model, beta=0.5, dpo_weight=1.0)(batch)
    loss, metrics = PreferenceTrainStep(model, beta=0.5, dpo_weight=1.0, chosen_nll_weight=2.0)(batch)
    # the chosen rows' mean cross-entropy per code, from the teacher-forced log-probabilities of those sessions
    codes_per_session = CHOSEN.shape[1] * CODES.shape[1]  # M items x L' codes, none padded
    expected = -float(policy[:, 0].sum()) / (len(policy) * codes_per_session)
    assert float(metrics.chosen_nll) == pytest.approx(expected, abs=1e-5)
    assert float(plain.chosen_nll) == pytest.approx(expected, abs=1e-5)
    assert float(loss.detach()) == pytest.approx(float(plain_loss.detach()) + 2.0 * expected, abs=1e-5)


def test_chosen_nll_raises_the_chosen_session_itself() -> None:
    model = _model()
    policy = _policy_log_probs(model)
    step = PreferenceTrainStep(model, beta=1.0, dpo_weight=0.0, chosen_nll_weight=1.0)
    batch = preference_batch(
        SAMPLES, np.zeros(0), _pairs(policy[:, 0].numpy(), policy[:, 1].numpy()), np.arange(2), TRANSFORM
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        step(batch)[0].backward()
        optimizer.step()
    assert (_policy_log_probs(model)[:, 0] > policy[:, 0]).all()


def test_a_negative_chosen_nll_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="chosen_nll_weight"):
        PreferenceTrainStep(_model(), beta=1.0, dpo_weight=1.0, chosen_nll_weight=-1.0)
