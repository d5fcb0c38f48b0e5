"""Tests of the synthetic short-video world (docs/EVAL.md protocol C's simulator and the default data set)."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd
import pytest

from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.synthetic import (
    IMPRESSION_GAP_MS,
    SESSION_GAP_MS,
    SyntheticWorld,
    load_synthetic,
)
from torchrec_onerec.datasets.synthetic_arrays import pair_noise
from torchrec_onerec.datasets.synthetic_config import SyntheticConfig

SMALL = dict(num_users=300, num_items=200, num_topics=10)


@pytest.fixture(scope="module")
def world_and_data() -> Tuple[SyntheticWorld, InteractionData]:
    data, world = load_synthetic(SyntheticConfig(**SMALL), seed=0)
    return world, data


def _items_of_distinct_topics(world: SyntheticWorld, count: int) -> np.ndarray:
    """One item from each of the first ``count`` topics."""
    return np.array([int(np.flatnonzero(world.item_topic == t)[0]) for t in range(count)])


def test_deterministic_per_seed(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, data = world_and_data
    again = SyntheticWorld(SyntheticConfig(**SMALL), seed=0)
    np.testing.assert_array_equal(world.item_content, again.item_content)
    np.testing.assert_array_equal(world.user_interest, again.user_interest)
    pd.testing.assert_frame_equal(data.interactions, again.log().interactions)
    pd.testing.assert_frame_equal(data.interactions, world.log().interactions)  # log() is repeatable


def test_different_seed_differs(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, data = world_and_data
    other_data, other = load_synthetic(SyntheticConfig(**SMALL), seed=1)
    assert not np.array_equal(world.item_topic, other.item_topic)
    assert not np.array_equal(world.item_content, other.item_content)
    assert len(data.interactions) != len(other_data.interactions) or not np.array_equal(
        data.interactions["item_id"], other_data.interactions["item_id"]
    )
    users, sessions = np.array([0, 1]), np.array([[0, 1, 2], [3, 4, 5]])
    clicks = [w.item_probabilities(users, sessions)["click"] for w in (world, other)]
    assert not np.allclose(*clicks)


def test_log_is_canonical(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, data = world_and_data
    inter = data.interactions
    assert data.validate() is data
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "date", "click", "long_view", "like", "is_rand"]
    assert data.feedback_columns == ["click", "long_view", "like", "is_rand"]
    assert (inter["is_rand"] == 0).all()  # random_session_rate defaults to 0
    for col in ("click", "long_view", "like"):
        assert set(np.unique(inter[col])) <= {0, 1}
    assert (inter["long_view"] <= inter["click"]).all() and (inter["like"] <= inter["long_view"]).all()
    np.testing.assert_array_equal(data.raw_user_ids, np.arange(300))
    np.testing.assert_array_equal(data.raw_item_ids, np.arange(200))
    assert data.item_embeddings is world.item_content and data.dropped == {}
    assert set(inter["user_id"]) == set(range(300))  # every user has traffic
    assert inter["date"].min() >= 20240101 and inter["date"].max() <= 20240114
    dates = pd.to_datetime(inter["timestamp"], unit="ms")
    np.testing.assert_array_equal(inter["date"], dates.dt.year * 10000 + dates.dt.month * 100 + dates.dt.day)
    assert list(data.items.columns) == ["item_id", "topic", "quality", "tags"]
    np.testing.assert_array_equal(data.items["topic"], world.item_topic)
    assert data.items["tags"][0].startswith(f"topic_{world.item_topic[0]} quality_")
    assert data.users is not None and list(data.users.columns) == ["user_id", "main_interest"]


def test_timestamps_ordered_within_sessions_and_users(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, data = world_and_data
    m = world.config.impressions_per_session
    inter = data.interactions
    ts = inter["timestamp"].to_numpy().reshape(-1, m)
    users = inter["user_id"].to_numpy().reshape(-1, m)
    assert (users == users[:, :1]).all()  # each block of m rows is one user's session
    inside = np.diff(ts, axis=1)
    assert inside.min() >= IMPRESSION_GAP_MS[0] and inside.max() <= IMPRESSION_GAP_MS[1]
    same_user_next = users[1:, 0] == users[:-1, 0]
    between = ts[1:, 0] - ts[:-1, -1]
    assert (between[same_user_next] >= SESSION_GAP_MS).all()


def test_position_effect(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, _ = world_and_data
    a, b = _items_of_distinct_topics(world, 2)
    users = np.array([0, 0])
    probs = world.item_probabilities(users, np.array([[a, b], [b, a]]))
    decay = np.exp(-world.config.position_decay)
    for signal in world.SIGNALS:
        p = probs[signal]
        assert p[0, 0] > p[1, 1] and p[1, 0] > p[0, 1]  # the same item, later, is less likely
        np.testing.assert_allclose(p[1, 1], decay * p[0, 0])
        np.testing.assert_allclose(p[0, 1], decay * p[1, 0])


def test_diversity_effect() -> None:
    diverse_world = SyntheticWorld(SyntheticConfig(**SMALL), seed=3)
    flat_world = SyntheticWorld(SyntheticConfig(**SMALL, diversity_weight=0.0), seed=3)  # same draws
    one_topic = np.flatnonzero(diverse_world.item_topic == 0)[:4]
    assert len(one_topic) == 4
    diverse = _items_of_distinct_topics(diverse_world, 4)
    users, sessions = np.array([5, 5]), np.stack([one_topic, diverse])
    penalised = diverse_world.item_probabilities(users, sessions)["click"]
    free = flat_world.item_probabilities(users, sessions)["click"]
    np.testing.assert_allclose(penalised[1], free[1])  # distinct topics: no penalty
    novelty = np.exp(-diverse_world.config.diversity_weight * np.arange(4))  # slot p follows p same-topic items
    np.testing.assert_allclose(penalised[0], free[0] * novelty)
    reward_penalised = diverse_world.session_reward(users, sessions)
    reward_free = flat_world.session_reward(users, sessions)
    assert reward_penalised[0] < reward_free[0] and reward_penalised[1] == pytest.approx(reward_free[1])


def test_diverse_session_beats_one_topic_session_of_equal_affinity() -> None:
    world = SyntheticWorld(SyntheticConfig(**SMALL, noise=0.0), seed=4)
    world.user_interest[2] = 1.0 / world.config.num_topics  # user 2 likes every topic equally ...
    world.item_quality[:] = 0.0  # ... and every item is equally good: all affinities are equal
    one_topic = np.flatnonzero(world.item_topic == 1)[:4]
    diverse = _items_of_distinct_topics(world, 4)
    users, sessions = np.array([2, 2]), np.stack([one_topic, diverse])
    alone = world.session_reward(np.full(8, 2), sessions.reshape(-1, 1))
    np.testing.assert_allclose(alone, alone[0])
    one_topic_reward, diverse_reward = world.session_reward(users, sessions)
    assert one_topic_reward < 0.8 * diverse_reward


def test_repeats_and_empty_slots(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, _ = world_and_data
    a, b = _items_of_distinct_topics(world, 2)
    probs = world.item_probabilities(np.array([1]), np.array([[a, a, -1, b]]))
    for signal in world.SIGNALS:
        assert probs[signal][0, 0] > 0 and probs[signal][0, 3] > 0
        assert probs[signal][0, 1] == 0 and probs[signal][0, 2] == 0
    users = np.array([1, 1])
    padded = world.session_reward(users, np.array([[a, b, -1, -1], [a, -1, -1, -1]]))
    np.testing.assert_allclose(padded, world.session_reward(users, np.array([[a, b], [a, -1]])))
    np.testing.assert_allclose(padded[1], world.session_reward(np.array([1]), np.array([[a]]))[0])


def test_probabilities_are_nested_and_rewards_weighted(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, _ = world_and_data
    rng = np.random.default_rng(0)
    users = rng.integers(world.num_users, size=50)
    sessions = rng.integers(-1, world.num_items, size=(50, 6))
    probs = world.item_probabilities(users, sessions)
    assert all(p.dtype == np.float64 and p.shape == (50, 6) for p in probs.values())
    assert (probs["like"] <= probs["long_view"]).all() and (probs["long_view"] <= probs["click"]).all()
    assert probs["click"].min() >= 0 and probs["click"].max() <= 1
    expected = probs["click"].sum(1) + probs["long_view"].sum(1) + 2 * probs["like"].sum(1)
    np.testing.assert_allclose(world.session_reward(users, sessions), expected)
    np.testing.assert_allclose(world.session_reward(users, sessions, {"like": 1.0}), probs["like"].sum(1))


def test_oracle_beats_random_sessions(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, _ = world_and_data
    users = np.arange(world.num_users)
    best = world.best_items(users, 5)
    assert best.shape == (world.num_users, 5) and all(len(set(row)) == 5 for row in best)
    rng = np.random.default_rng(0)
    random_sessions = np.argsort(rng.random((world.num_users, world.num_items)), axis=1)[:, :5]
    assert world.session_reward(users, best).mean() > 1.5 * world.session_reward(users, random_sessions).mean()
    # The block computation of best_items agrees with the pointwise one of session_reward.
    single = world.session_reward(np.full(world.num_items, 7), np.arange(world.num_items)[:, None])
    np.testing.assert_array_equal(best[7], np.argsort(-single, kind="stable")[:5])


def test_logged_rates_match_true_probabilities(world_and_data: Tuple[SyntheticWorld, InteractionData]) -> None:
    world, data = world_and_data
    m = world.config.impressions_per_session
    inter = data.interactions
    sessions = inter["item_id"].to_numpy().reshape(-1, m)
    users = inter["user_id"].to_numpy()[::m]
    assert all(len(set(row)) == m for row in sessions)  # the logging policy never repeats within a session
    probs = world.item_probabilities(users, sessions)
    assert 0.1 < inter["click"].mean() < 0.7
    assert 0 < inter["like"].mean() < inter["long_view"].mean() < inter["click"].mean()
    for signal in world.SIGNALS:
        p = probs[signal].ravel()
        stderr = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(inter[signal].mean() - p.mean()) < 4 * stderr, signal


def test_pair_noise_is_standard_normal_and_fixed() -> None:
    users, items = np.arange(400)[:, None], np.arange(500)[None, :]
    z = pair_noise(np.uint64(12345), users, items, 500)
    assert z.shape == (400, 500)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    np.testing.assert_array_equal(z[3, 4], pair_noise(np.uint64(12345), np.array([3]), np.array([4]), 500)[0])
    assert not np.allclose(z, pair_noise(np.uint64(54321), users, items, 500))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w: w.item_probabilities(np.array([[0]]), np.array([[1]])), "users must be a 1-D"),
        (lambda w: w.item_probabilities(np.array([300]), np.array([[1]])), "300 users"),
        (lambda w: w.item_probabilities(np.array([-1]), np.array([[1]])), "300 users"),
        (lambda w: w.item_probabilities(np.array([0.5]), np.array([[1]])), "integer"),
        (lambda w: w.item_probabilities(np.array([0]), np.array([1, 2])), "2-D"),
        (lambda w: w.item_probabilities(np.array([0]), np.array([[1.0, 2.0]])), "integer"),
        (lambda w: w.item_probabilities(np.array([0, 1]), np.array([[1, 2]])), "pass one per user"),
        (lambda w: w.item_probabilities(np.array([0]), np.array([[200]])), "0..199"),
        (lambda w: w.item_probabilities(np.array([0]), np.array([[-2]])), "-1 marks an empty slot"),
        (lambda w: w.session_reward(np.array([0]), np.array([[1]]), {"watch": 1.0}), "unknown signals"),
        (lambda w: w.session_reward(np.array([0]), np.array([[1]]), {"like": float("nan")}), "finite"),
        (lambda w: w.best_items(np.array([0]), 0), "k=0"),
        (lambda w: w.best_items(np.array([0]), 201), "num_items=200"),
    ],
)
def test_bad_calls_raise(world_and_data: Tuple[SyntheticWorld, InteractionData], call, match: str) -> None:
    world, _ = world_and_data
    with pytest.raises(ValueError, match=match):
        call(world)


def test_random_sessions_are_uniform_and_leave_the_other_sessions_as_they_were(
    world_and_data: Tuple[SyntheticWorld, InteractionData],
) -> None:
    world, plain = world_and_data
    data, _ = load_synthetic(SyntheticConfig(**SMALL, random_session_rate=0.3), seed=0)
    inter, base = data.interactions, plain.interactions
    m = world.config.impressions_per_session
    is_rand = inter["is_rand"].to_numpy().reshape(-1, m)
    assert (is_rand == is_rand[:, :1]).all()  # whole sessions are randomised
    chosen = is_rand[:, 0] == 1
    assert 0.25 < chosen.mean() < 0.35
    np.testing.assert_array_equal(inter[["user_id", "timestamp"]], base[["user_id", "timestamp"]])
    same, rand = inter["item_id"].to_numpy().reshape(-1, m), base["item_id"].to_numpy().reshape(-1, m)
    np.testing.assert_array_equal(same[~chosen], rand[~chosen])
    np.testing.assert_array_equal(
        inter["click"].to_numpy().reshape(-1, m)[~chosen], base["click"].to_numpy().reshape(-1, m)[~chosen]
    )
    shown = same[chosen]
    assert all(len(set(row)) == m for row in shown)  # distinct items
    # the logging policy shows each user their own topics; the random policy does not look at the user
    interest = world.user_interest[inter["user_id"].to_numpy().reshape(-1, m)[:, 0, None], world.item_topic[same]]
    assert interest[chosen].mean() < 0.5 * interest[~chosen].mean()
    assert (
        abs(
            np.bincount(shown.ravel(), minlength=world.num_items).std()
            / np.bincount(shown.ravel(), minlength=world.num_items).mean()
        )
        < 0.5
    )  # near uniform counts


@pytest.mark.parametrize(
    "overrides, seed, match",
    [
        ({}, -1, "seed=-1"),
        ({"random_session_rate": 1.5}, 0, "random_session_rate=1.5"),
        ({"impressions_per_session": 201}, 0, "impressions_per_session=201"),
        ({"start_date": "2024/01/01"}, 0, "YYYY-MM-DD"),
        ({"num_days": 1, "num_items": 1000, "impressions_per_session": 800}, 0, "raise num_days"),
    ],
)
def test_bad_worlds_raise(overrides: dict, seed: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticWorld(SyntheticConfig(**{**SMALL, **overrides}), seed=seed)
