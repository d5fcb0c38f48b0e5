"""GRPO's candidate groups and loss: groups keep the best and worst halves with rewards standardised over all
real candidates, skip what cannot be standardised, come back as training rows; the loss is 0 with a gradient
towards the above-average sessions where the policy equals the reference, and the clip stops the push."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
import torch

from torchrec_onerec.alignment.groups import CandidateGroups, build_candidate_groups, empty_groups, select_groups
from torchrec_onerec.alignment.grpo import grpo_loss
from torchrec_onerec.alignment.pairs import ROLE_GROUP, ROLE_NTP
from torchrec_onerec.alignment.train_step import PreferenceTrainStep, preference_batch
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.semantic_batch import SemanticIdTransform, to_semantic_batch
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.testing import random_samples

CODES, SIZES = random_codes(15, [3, 3], seed=0)
SAMPLES = random_samples(6, 15, max_history=5, session_items=2, seed=0, full_sessions=False)


def _model_and_groups() -> Tuple[OneRecModel, CandidateGroups]:
    """A tiny model and the groups of 4 of its 6 candidates for training rows 1 and 4 (reward: sum of item ids)."""
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny"), SIZES).eval()
    groups = build_candidate_groups(
        model,
        SAMPLES,
        np.array([1, 4]),
        lambda users, s: s.sum(axis=2).astype(float),
        codes=CODES,
        prefix_index=PrefixIndex(CODES, vocab_sizes=SIZES),
        num_candidates=6,
        group_size=4,
        batch_size=2,
    )
    return model, groups


def test_groups_keep_the_extremes_with_advantages_over_every_real_candidate() -> None:
    rewards = np.array(
        [
            [0.0, 5.0, 1.0, 4.0, 2.0, 3.0],
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all tie: no group
            [3.0, 0.0, 9.0, 1.0, 7.0, -5.0],  # two fillers: 4 real candidates are enough
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        ]
    )  # three fillers: fewer than G
    real = np.ones_like(rewards, dtype=bool)
    real[2, [2, 4]] = False
    real[3, :3] = False
    s = select_groups(rewards, real, 4)
    assert s.users.tolist() == [0, 2] and (s.ties, s.fillers) == (1, 1)
    assert s.members.tolist() == [[1, 3, 2, 0], [0, 3, 1, 5]]  # best, second best, second worst, worst
    for row, user in enumerate(s.users):
        kept = rewards[user][real[user]]
        expected = (rewards[user, s.members[row]] - kept.mean()) / kept.std()
        np.testing.assert_allclose(s.advantages[row], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="align.group_size"):
        select_groups(rewards, real, 3)


def test_groups_come_back_as_training_rows_with_their_advantages() -> None:
    model, groups = _model_and_groups()
    assert groups.sample_rows.tolist() == [1, 4] and groups.items.shape == (2, 4, 2)
    assert (groups.advantages[:, :2] > 0).all() and (groups.advantages[:, 2:] < 0).all()
    # the reference log-probabilities are the model's own log-probabilities of the kept sessions
    batch = to_semantic_batch(collate_samples(SAMPLES, groups.sample_rows), CODES)
    expected = model.log_prob(batch, torch.from_numpy(groups.codes)).detach()
    torch.testing.assert_close(torch.from_numpy(groups.reference), expected, atol=1e-5, rtol=1e-5)
    b = preference_batch(SAMPLES, np.array([0, 1]), groups, np.array([1]), SemanticIdTransform(CODES))
    assert b.role.tolist() == [ROLE_NTP] * 2 + [ROLE_GROUP] * 4
    assert b.target.tolist()[2:] == groups.items[1].tolist()
    torch.testing.assert_close(b.advantage[2:], torch.from_numpy(groups.advantages[1]))
    torch.testing.assert_close(b.reference_log_prob[2:], torch.from_numpy(groups.reference[1]))
    both = CandidateGroups.concat([groups, empty_groups(4, 2, CODES.shape[1])])
    assert len(both) == 2 and both.summary()["top_half_reward"] > both.summary()["bottom_half_reward"]


def test_grpo_loss_pushes_by_the_advantage_until_the_clip() -> None:
    policy = torch.zeros(3, requires_grad=True)
    out = grpo_loss(
        policy,
        torch.zeros(3),
        torch.tensor([1.0, -1.0, 2.0]),
        torch.tensor([2.0, 2.0, 4.0]),
        torch.tensor([True, True, False]),
        clip=0.2,
    )
    out.loss.backward()
    assert float(out.loss.detach()) == pytest.approx(0.0) and float(out.ratio) == pytest.approx(1.0)
    # d/d log pi of -mean(A exp(log-ratio / |S|)) at the reference: -A / (|S| rows); the masked row gets nothing
    assert policy.grad.tolist() == pytest.approx([-0.25, 0.25, 0.0])
    moved = torch.tensor([1.0, -1.0], requires_grad=True)  # ratios e^0.5 and e^-0.5: both past the clip
    out = grpo_loss(
        moved, torch.zeros(2), torch.tensor([1.0, -1.0]), torch.tensor([2.0, 2.0]), torch.tensor([True, True]), clip=0.2
    )
    out.loss.backward()
    assert float(out.clipped) == 1.0 and moved.grad.tolist() == [0.0, 0.0]


def test_the_train_step_raises_the_sessions_above_the_mean() -> None:
    model, groups = _model_and_groups()
    step = PreferenceTrainStep(model, beta=0.1, dpo_weight=1.0)
    batch = preference_batch(SAMPLES, np.zeros(0), groups, np.arange(2), SemanticIdTransform(CODES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        loss, metrics = step(batch)
        loss.backward()
        optimizer.step()
    assert float(metrics.group_rows) == 8 and float(metrics.pairs) == 0
    after = (
        model.log_prob(
            to_semantic_batch(collate_samples(SAMPLES, groups.sample_rows), CODES), torch.from_numpy(groups.codes)
        )
        .detach()
        .numpy()
    )
    change = after - groups.reference
    assert (change[:, :2].mean(axis=1) > change[:, 2:].mean(axis=1)).all()
