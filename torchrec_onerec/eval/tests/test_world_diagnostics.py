import itertools

import numpy as np
import pytest

from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.datasets.synthetic import SyntheticWorld, load_synthetic
from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.world_diagnostics import (
    CEILING,
    REFERENCES,
    diagnostics_markdown,
    history_interest,
    reference_sessions,
    session_profile,
    world_diagnostics,
)


def _world(**kw) -> SyntheticWorld:
    return SyntheticWorld(SyntheticConfig(num_users=40, num_items=60, num_topics=5, **kw), seed=3)


def test_greedy_session_is_the_best_by_slot_and_beats_exhaustive_search_of_two_slots():
    world = _world()
    users = np.arange(40)
    greedy = world.greedy_sessions(users, 2)
    # slot 0 alone: nothing before it, so greedy's first item is the best single item
    assert (greedy[:, 0] == world.best_items(users, 1)[:, 0]).all()
    # two slots: the second slot's reward depends only on the first, so greedy is optimal here
    pairs = np.array(list(itertools.permutations(range(world.num_items), 2)))
    for u in range(0, 40, 8):
        best = world.session_reward(np.full(len(pairs), u), pairs).max()
        assert world.session_reward(np.array([u]), greedy[u : u + 1])[0] == pytest.approx(best)


def test_greedy_session_spreads_topics_when_repeats_are_penalised():
    users = np.arange(40)
    diverse = _world(diversity_weight=3.0).greedy_sessions(users, 4)
    plain = _world(diversity_weight=0.0).greedy_sessions(users, 4)
    topics = lambda w, s: np.mean([len(set(w.item_topic[row].tolist())) for row in s])  # noqa: E731
    assert topics(_world(diversity_weight=3.0), diverse) > topics(_world(diversity_weight=0.0), plain)
    assert all(len(set(row)) == 4 for row in diverse.tolist())


def test_logging_sessions_follow_the_logging_policy_and_the_seed():
    world = _world()
    users = np.zeros(4000, np.int64)
    a = world.logging_sessions(users, 3, seed=0)
    assert (a == world.logging_sessions(users, 3, seed=0)).all()
    assert (a != world.logging_sessions(users, 3, seed=1)).any()
    first = np.bincount(a[:, 0], minlength=world.num_items) / len(users)
    policy = world._logging_policy(np.array([0]))[0]
    assert np.abs(first - policy).max() < 0.03
    with pytest.raises(ValueError, match="m=0"):
        world.logging_sessions(users, 0, seed=0)


def test_reference_sessions_order_by_how_much_the_world_knows():
    world = _world()
    users = np.arange(40)
    histories = [world.logging_sessions(users[i : i + 1], 3, seed=i)[0] for i in range(len(users))]
    refs = reference_sessions(world, users, 4, seed=0, histories=histories)
    assert list(refs) == list(REFERENCES)
    reward = {k: world.session_reward(users, v).mean() for k, v in refs.items()}
    assert reward[CEILING] >= reward["top items"] > reward["logging policy"] > reward["uniform random"]
    assert reward[CEILING] >= reward["ceiling without z"] > reward["ceiling from history"] > reward["uniform random"]
    with pytest.raises(ValueError, match="1 histories for 40 users"):
        reference_sessions(world, users, 4, seed=0, histories=histories[:1])


def test_a_ceiling_that_knows_less_uses_only_what_it_is_given():
    world = _world()
    users = np.arange(20)
    # with every user's interests all on topic 0 and no pair term, the greedy session is the best of topic 0 first
    only_topic_0 = np.zeros((20, world.config.num_topics))
    only_topic_0[:, 0] = 1.0
    sessions = world.greedy_sessions(users, 2, interest=only_topic_0, pair_term=False)
    topic_0 = np.flatnonzero(world.item_topic == 0)
    best = topic_0[np.argmax(world.item_quality[topic_0])]
    assert (sessions[:, 0] == best).all()
    # dropping the pair term changes what the greedy rule picks
    assert not np.array_equal(world.greedy_sessions(users, 2), world.greedy_sessions(users, 2, pair_term=False))
    # the users' own interests given explicitly, with the pair term: the ceiling itself
    own = world.greedy_sessions(users, 2, interest=world.user_interest[users])
    np.testing.assert_array_equal(own, world.greedy_sessions(users, 2))
    with pytest.raises(ValueError, match=r"interest has shape \(20, 1\)"):
        world.greedy_sessions(users, 2, interest=np.ones((20, 1)))


def test_history_interest_is_the_dirichlet_posterior_mean_of_the_history_topics():
    world = _world()
    items = np.flatnonzero(world.item_topic == 1)[:2]
    est = history_interest(world, [np.concatenate([items, [-1]])])
    T, alpha = world.config.num_topics, world.config.interest_concentration
    expected = np.full(T, alpha / (2 + T * alpha))
    expected[1] = (2 + alpha) / (2 + T * alpha)
    np.testing.assert_allclose(est[0], expected)


def test_session_profile_counts_topics_history_and_empty_slots():
    world = _world()
    t0 = np.flatnonzero(world.item_topic == 0)
    t1 = np.flatnonzero(world.item_topic == 1)
    sessions = np.array([[t0[0], t1[0], t0[1]], [t0[0], -1, -1]])
    p = session_profile(world, np.array([0, 1]), sessions, [np.array([t1[0]]), np.array([], np.int64)])
    assert p["topics"] == 1.5 and p["in_history"] == 0.5 and p["empty_slots"] == pytest.approx(2 / 6)
    assert p["coverage"] == pytest.approx(3 / world.num_items)
    expected_interest = np.mean([world.user_interest[0, [0, 1, 0]].mean(), world.user_interest[1, 0]])
    assert p["interest"] == pytest.approx(expected_interest)
    assert p["true_reward"] == pytest.approx(world.session_reward(np.array([0, 1]), sessions).mean())


def _arm(users: np.ndarray, sessions: np.ndarray) -> EvalResult:
    U, M = sessions.shape
    per_user = {"user": users, "sample": np.arange(U)}
    return EvalResult({}, per_user, sessions[:, None, :], np.zeros((U, 1), np.float32))


def test_world_diagnostics_puts_arms_between_floor_and_ceiling():
    data, world = load_synthetic(SyntheticConfig(num_users=30, num_items=50, num_topics=5), seed=0)
    users = np.arange(30)
    samples = SampleSet.from_samples(
        [Sample(int(u), np.array([1, 2]), np.array([3]), np.zeros((1, 0), np.float32)) for u in users], []
    )
    ceiling = world.greedy_sessions(users, 3)
    rows = world_diagnostics(
        world,
        data,
        {"oracle": _arm(users, ceiling), "first items": _arm(users, np.tile([0, 1, 2], (30, 1)))},
        samples,
        seed=0,
    )
    assert list(rows)[: len(REFERENCES)] == list(REFERENCES)
    assert rows["oracle"]["share_of_ceiling"] == pytest.approx(1.0) and rows["oracle"]["kind"] == 0.0
    assert rows["first items"]["coverage"] == pytest.approx(3 / 50)
    assert rows["uniform random"]["share_of_ceiling"] < 1.0
    text = diagnostics_markdown(rows)
    assert "| *ceiling* | " in text and "| oracle | " in text
    mixed = _arm(users[::-1].copy(), ceiling)
    mixed.per_user["sample"] = np.arange(30)[::-1].copy()
    with pytest.raises(ValueError, match="same users"):
        world_diagnostics(world, data, {"a": _arm(users, ceiling), "b": mixed}, samples, seed=0)
