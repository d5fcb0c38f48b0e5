"""Tests of protocol scoring (ranked lists from sessions, filler, metric names) and the popularity floor."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.eval.baselines import evaluate_popularity, popularity_ranking
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.protocols import beam_ranking, evaluation_users, first_item_ranking, score_sessions


def _samples(histories, targets) -> SampleSet:
    width = max(len(t) for t in targets)
    return SampleSet.from_samples(
        [
            Sample(
                u,
                np.array(h, dtype=np.int64),
                np.array(list(t) + [-1] * (width - len(t)), dtype=np.int64),
                np.zeros((width, 0), np.float32),
            )
            for u, (h, t) in enumerate(zip(histories, targets))
        ],
        [],
    )


def test_first_item_ranking_orders_by_score_and_drops_filler() -> None:
    items = np.array([[[4, 0], [7, 1], [4, 2], [9, 3]]])
    scores = np.array([[-3.0, -1.0, -2.0, -np.inf]])  # the -inf session is filler
    assert first_item_ranking(items, scores).tolist() == [[7, 4, -1, -1]]  # 4 kept at its best score
    assert beam_ranking(items, scores).tolist() == [[7, 1, 4, 2, 0, -1, -1, -1]]


def test_protocol_b_hand_checked() -> None:
    items = np.array([[[1, 2], [3, 1]], [[5, 6], [6, 7]]])
    scores = np.array([[-1.0, -2.0], [-1.0, -1.5]])
    target = np.array([[2, 3], [7, -1]])
    metrics, per_user = score_sessions("B", items, scores, target, ks=[3], num_items=10, legality=np.ones(2))
    assert per_user["recall@m"].tolist() == [0.5, 0.0]  # top sessions [1, 2] and [5, 6]
    assert per_user["ndcg@m"][0] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert per_user["recall@3"].tolist() == [1.0, 1.0]  # beam lists [1, 2, 3] and [5, 6, 7]
    assert per_user["list_length"].tolist() == [3.0, 3.0]
    assert metrics["coverage@m"] == 0.4 and metrics["coverage@3"] == 0.6 and metrics["num_users"] == 2.0
    assert metrics["repeat_rate"] == 0.0 and metrics["filler_rate"] == 0.0


def test_protocol_a_reads_slot_zero_and_pads_short_lists() -> None:
    items = np.array([[[2], [3]], [[2], [5]]])
    scores = np.array([[-1.0, -np.inf], [-1.0, -2.0]])
    metrics, per_user = score_sessions(
        "A", items, scores, np.array([[3, 2], [5, -1]]), ks=[2], num_items=6, legality=np.ones(2)
    )
    assert per_user["recall@2"].tolist() == [0.0, 1.0]  # user 0's only real item is 2; slot 1 is ignored
    assert per_user["list_length"].tolist() == [1.0, 2.0] and per_user["filler_rate"].tolist() == [0.5, 0.0]
    with pytest.raises(ValueError, match="protocol='C'"):
        score_sessions("C", items, scores, np.array([[3], [5]]), ks=[2], num_items=6, legality=np.ones(2))


def test_users_without_target_are_counted() -> None:
    samples = _samples([[1], [2], [3]], [[4], [-1], [5]])
    rows, skipped = evaluation_users(samples)
    assert rows.tolist() == [0, 2] and skipped == 1
    with pytest.raises(ValueError, match="none of the 1 samples has a target item"):
        evaluation_users(samples.subset([1]))


def test_popularity_ranking_ties_and_errors() -> None:
    train = pd.DataFrame({"item_id": [3, 1, 3, 1, 0]})
    assert popularity_ranking(train, 5, 5).tolist() == [1, 3, 0, 2, 4]
    with pytest.raises(ValueError, match="cannot exceed the catalogue"):
        popularity_ranking(train, 5, 6)
    with pytest.raises(ValueError, match="outside the catalogue"):
        popularity_ranking(train, 3, 2)


def test_popularity_protocols_and_history_exclusion() -> None:
    train = pd.DataFrame({"item_id": [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]})  # popularity order 0, 1, 2, 3, 4
    samples = _samples([[0], [5]], [[1, 2], [0, -1]])
    config = EvalConfig(ks=[1, 3])
    a = evaluate_popularity(samples, train, 6, config=config, protocol="A")
    assert a.sessions[:, :, 0].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert a.per_user["recall@1"].tolist() == [0.0, 1.0] and a.per_user["recall@3"].tolist() == [1.0, 1.0]
    b = evaluate_popularity(samples, train, 6, config=config, protocol="B")
    assert b.sessions.shape == (2, 2, 2) and b.sessions[0, 0].tolist() == [0, 1]
    assert b.per_user["recall@m"].tolist() == [0.5, 1.0] and b.metrics["legality"] == 1.0
    masked = evaluate_popularity(samples, train, 6, config=EvalConfig(ks=[1, 3], exclude_history=True), protocol="A")
    assert masked.sessions[:, :, 0].tolist() == [[1, 2, 3], [0, 1, 2]]  # user 0 saw item 0
    assert masked.per_user["recall@1"].tolist() == [1.0, 1.0] and masked.info["exclude_history"] is True
    assert a.per_user["user"].tolist() == [0, 1] and a.per_user["sample"].tolist() == [0, 1]
