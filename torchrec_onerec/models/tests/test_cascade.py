"""The cascade recommender: candidates ranked by the combined score, written as sessions, scored like every arm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.eval.baselines import evaluate_popularity
from torchrec_onerec.eval.cascade import evaluate_cascade
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.models.cascade import CascadeRecommender, combined_weights, mmr_rerank, sessions_from_ranking
from torchrec_onerec.models.cascade_config import CascadeConfig, RankerConfig, RetrievalConfig
from torchrec_onerec.models.ranker import MultiTaskRanker, dense_width, item_dense_features
from torchrec_onerec.models.two_tower import TwoTowerRetrieval

NUM_USERS, NUM_ITEMS = 8, 30
TASKS = ["swt", "vtr", "ltr"]


def _recommender(num_candidates: int = 12, weights=None) -> CascadeRecommender:
    torch.manual_seed(0)
    config = CascadeConfig(
        RetrievalConfig(embedding_dim=8, num_candidates=num_candidates),
        RankerConfig(embedding_dim=8, score_weights=weights or {}),
    )
    content = torch.randn(NUM_ITEMS, 4, generator=torch.Generator().manual_seed(0))
    features = torch.as_tensor(item_dense_features(np.arange(NUM_ITEMS), content.numpy()))
    two_tower = TwoTowerRetrieval(config.retrieval, num_users=NUM_USERS, num_items=NUM_ITEMS, content_dim=4)
    ranker = MultiTaskRanker(
        config.ranker, num_users=NUM_USERS, num_items=NUM_ITEMS, tasks=TASKS, dense_features=dense_width(features)
    )
    return CascadeRecommender(two_tower, ranker, config, content, features)


def _users(num: int = 6, width: int = 3) -> SampleSet:
    rng = np.random.default_rng(0)
    samples = []
    for u in range(num):
        target = np.full(width, -1)
        target[: 1 + u % width] = rng.choice(NUM_ITEMS, size=1 + u % width, replace=False)
        samples.append(
            Sample(
                u % NUM_USERS, rng.choice(NUM_ITEMS, size=4, replace=False), target, np.zeros((width, 0), np.float32)
            )
        )
    samples.append(Sample(1, np.array([2]), np.full(width, -1), np.zeros((width, 0), np.float32)))  # no target
    return SampleSet.from_samples(samples, [])


def test_sessions_are_the_candidates_in_combined_score_order():
    rec, users = _recommender(weights={"vtr": 3.0, "ltr": 1.0}), _users()
    sessions, scores = rec.recommend(users, num_sessions=4, session_items=3)
    candidates, _ = rec.retrieve(users)
    probabilities, combined = rec.rank(users, candidates)
    assert sessions.shape == (len(users), 4, 3) and scores.shape == (len(users), 4)
    assert np.allclose(combined, probabilities @ np.array([0.0, 0.75, 0.25]))
    for u in range(len(users)):
        order = np.argsort(-combined[u], kind="stable")
        assert sessions[u].ravel().tolist() == candidates[u, order].tolist()
        assert np.allclose(scores[u], combined[u, order].reshape(4, 3).mean(axis=1))
        assert (np.diff(scores[u]) <= 0).all()


def test_history_items_are_excluded_on_request():
    rec, users = _recommender(num_candidates=NUM_ITEMS), _users()
    sessions, scores = rec.recommend(users, num_sessions=NUM_ITEMS // 2, session_items=2, exclude_history=True)
    for u in range(len(users)):
        recommended = [i for i in sessions[u].ravel().tolist() if i >= 0]
        assert not set(recommended) & set(users[u].history.tolist())
        assert len(recommended) == len(set(recommended)) == NUM_ITEMS - len(users[u].history)
        assert np.isneginf(scores[u]).sum() == len(users[u].history) // 2  # sessions left without items


def test_too_few_candidates_leave_filler_sessions():
    sessions, scores = sessions_from_ranking(
        np.array([[4, 1, 7]]), np.array([[0.5, 0.25, 0.125]]), num_sessions=3, session_items=2
    )
    assert sessions.tolist() == [[[4, 1], [7, -1], [-1, -1]]]
    assert scores[0, :2].tolist() == [0.375, 0.125] and np.isneginf(scores[0, 2])


def test_score_weights_must_name_ranker_tasks():
    with pytest.raises(ValueError, match="does not predict"):
        combined_weights(CascadeConfig(ranker=RankerConfig(score_weights={"click": 1.0})), TASKS)


@pytest.mark.parametrize("protocol", ["A", "B"])
def test_evaluation_scores_the_users_and_metrics_of_the_popularity_arm(protocol):
    rec, users = _recommender(), _users()
    config = EvalConfig(ks=[2, 5])
    result = evaluate_cascade(rec, users, config=config, protocol=protocol, num_items=NUM_ITEMS)
    floor = evaluate_popularity(
        users, pd.DataFrame({"item_id": np.arange(NUM_ITEMS)}), NUM_ITEMS, config=config, protocol=protocol
    )
    assert set(result.metrics) == set(floor.metrics)
    assert np.array_equal(result.per_user["sample"], floor.per_user["sample"])
    assert result.info["users_without_target"] == 1
    assert result.sessions.shape == floor.sessions.shape == ((6, 5, 1) if protocol == "A" else (6, 2, 3))
    assert result.metrics["legality"] == 1.0 and result.metrics["filler_rate"] == 0.0


def test_evaluation_refuses_fewer_candidates_than_the_ranked_list():
    with pytest.raises(ValueError, match="num_candidates"):
        evaluate_cascade(
            _recommender(num_candidates=4), _users(), config=EvalConfig(ks=[5, 10]), protocol="A", num_items=NUM_ITEMS
        )


def test_mmr_rerank_trades_relevance_for_dissimilar_items():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(20, 4))
    vectors[10:] = vectors[0] + 0.01 * rng.normal(size=(10, 4))  # items 10..19: near copies of item 0
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = np.array([[0] + list(range(10, 19)) + list(range(1, 10))])
    scores = np.linspace(1.0, 0.5, items.shape[1])[None]  # the near copies rank right after item 0
    plain, _ = mmr_rerank(items, scores, vectors, weight=0.0, take=5)
    assert plain.tolist() == [items[0, :5].tolist()]
    diverse, values = mmr_rerank(items, scores, vectors, weight=0.5, take=5)
    assert diverse[0, 0] == 0 and not set(diverse[0, 1:].tolist()) & set(range(10, 20))
    assert (np.diff(values[0]) <= 1e-12).all() and len(set(diverse[0].tolist())) == 5
    short, short_values = mmr_rerank(np.array([[3, -1]]), np.array([[1.0, 0.0]]), vectors, weight=0.3, take=2)
    assert short.tolist() == [[3, -1]] and np.isneginf(short_values[0, 1])
    with pytest.raises(ValueError, match="weight=1.5"):
        mmr_rerank(items, scores, vectors, weight=1.5, take=2)


def test_rerank_keeps_the_retrieved_candidates_and_scores_non_increasing():
    rec, users = _recommender(), _users()
    plain, _ = rec.recommend(users, num_sessions=3, session_items=3)
    diverse, scores = rec.recommend(users, num_sessions=3, session_items=3, diversity_weight=0.5)
    candidates, _ = rec.retrieve(users)
    for u in range(len(users)):
        assert set(diverse[u].ravel().tolist()) <= set(candidates[u].tolist())
        assert len(set(diverse[u].ravel().tolist())) == 9
        assert (np.diff(scores[u]) <= 1e-6).all()
    assert (plain != diverse).any()
    result = evaluate_cascade(
        rec, users, config=EvalConfig(ks=[3, 6]), protocol="B", num_items=NUM_ITEMS, diversity_weight=0.5
    )
    assert result.info["arm"] == "cascade_rerank" and result.info["diversity_weight"] == 0.5


def test_the_ranking_of_a_user_set_is_kept_for_the_next_calls(monkeypatch: pytest.MonkeyPatch):
    rec, users = _recommender(), _users()
    expected = {
        w: _recommender().recommend(users, num_sessions=2, session_items=3, diversity_weight=w) for w in (0, 0.5)
    }
    others = users.subset(np.arange(3))
    calls = []
    original = rec.rank
    monkeypatch.setattr(rec, "rank", lambda *a, **k: calls.append(1) or original(*a, **k))
    for weight in (0.0, 0.5, 0.0, 0.5):  # the same users, as the re-rank weights tried on validation are
        sessions, scores = rec.recommend(users, num_sessions=2, session_items=3, diversity_weight=weight)
        assert np.array_equal(sessions, expected[weight][0]) and np.array_equal(scores, expected[weight][1])
    assert len(calls) == 1
    rec.recommend(others, num_sessions=2, session_items=3)
    rec.recommend(users, num_sessions=2, session_items=3, exclude_history=True)  # another ranking
    assert len(calls) == 3
    rec.recommend(users, num_sessions=2, session_items=3)  # two newer rankings pushed it out
    assert len(calls) == 4
    items, _ = rec.ranking(users)
    with pytest.raises(ValueError, match="read-only"):
        items[0, 0] = -1
