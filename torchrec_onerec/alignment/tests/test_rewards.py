import numpy as np
import pytest

from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.alignment.rewards import (
    mixed_reward_fn,
    ranker_reward_fn,
    session_redundancy,
    standardise_per_user,
)
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.models.cascade import CascadeRecommender
from torchrec_onerec.models.testing import tiny_cascade


def _recommender(num_items: int = 8) -> CascadeRecommender:
    return tiny_cascade(num_users=3, num_items=num_items, tasks=["vtr", "swt"])


def _users() -> SampleSet:
    return SampleSet.from_samples(
        [Sample(u, np.array([u, 5]), np.array([1]), np.zeros((1, 0), np.float32)) for u in range(3)], []
    )


def test_ranker_reward_is_the_mean_item_score_over_m_slots():
    rec = _recommender()
    users = _users()
    sessions = np.array([[[0, 1, 2], [3, -1, -1], [-1, -1, -1]]] * 3)
    reward = ranker_reward_fn(rec)(users, sessions)
    _, combined = rec.rank(users, np.array([[0, 1, 2, 3]] * 3))
    assert reward.shape == (3, 3)
    np.testing.assert_allclose(reward[:, 0], combined[:, :3].sum(1) / 3, rtol=1e-6)
    np.testing.assert_allclose(reward[:, 1], combined[:, 3] / 3, rtol=1e-6)
    assert (reward[:, 2] == 0).all()


def test_redundancy_by_hand_ignores_order_after_and_padding():
    v = np.eye(3)[[0, 0, 1, 2]]  # items 0 and 1 identical, 2 and 3 orthogonal to them and to each other
    got = session_redundancy(np.array([[[0, 1, 2], [2, 0, 1], [0, -1, 1], [3, 2, 0]]]), v)
    assert got.tolist() == [[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]]


def test_ranker_diversity_scores_each_item_as_the_cascade_mmr_does():
    rec = _recommender()
    users = _users()
    sessions = np.array([[[0, 1, 2], [3, 4, -1]]] * 3)
    w = 0.3
    plain = ranker_reward_fn(rec)(users, sessions)
    diverse = ranker_reward_fn(rec, diversity_weight=w)(users, sessions)
    redundancy = session_redundancy(sessions, rec.item_vectors())
    np.testing.assert_allclose(diverse, (1 - w) * plain - w * redundancy.sum(axis=2) / 3, rtol=1e-6, atol=1e-9)
    assert (redundancy[:, :, 1:].sum() > 0) and (diverse < (1 - w) * plain).any()
    with pytest.raises(ValueError, match="diversity_weight=1.5"):
        ranker_reward_fn(rec, diversity_weight=1.5)
    with pytest.raises(ConfigError, match="align.ranker_diversity=-0.1"):
        AlignConfig(ranker_diversity=-0.1)


def test_standardise_ignores_fillers_and_constant_rows():
    out = standardise_per_user(
        np.array([[4.0, 6.0, 100.0], [1.0, 1.0, 1.0]]), np.array([[True, True, False], [True, True, True]])
    )
    np.testing.assert_allclose(out, [[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_mix_follows_the_weighted_reward_and_is_scale_free():
    first = lambda s, x: x[:, :, 0].astype(float)  # noqa: E731
    second = lambda s, x: -1000.0 * x[:, :, 0].astype(float)  # noqa: E731
    sessions = np.array([[[1, 0], [2, 0], [3, 0], [-1, -1]]])
    mostly_first = mixed_reward_fn([first, second], [0.9, 0.1])(None, sessions)
    assert mostly_first[0, :3].argmax() == 2 and mostly_first[0, 3] == 0.0
    mostly_second = mixed_reward_fn([first, second], [0.1, 0.9])(None, sessions)
    assert mostly_second[0, :3].argmax() == 0
    with pytest.raises(ValueError, match="one weight per reward function"):
        mixed_reward_fn([first], [0.5, 0.5])


def test_config_names_the_reward_sources():
    assert AlignConfig(reward_source="mix", ranker_weight=0.3).ranker_weight == 0.3
    with pytest.raises(ConfigError, match="align.reward_source='ranking'"):
        AlignConfig(reward_source="ranking")
    with pytest.raises(ConfigError, match="align.ranker_weight=1.5"):
        AlignConfig(ranker_weight=1.5)
