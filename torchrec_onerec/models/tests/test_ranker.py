"""Multi-task DLRM ranker: batch features, learning a planted preference, seeded negatives, AUC, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrec_onerec.data.batch import collate_samples, make_dataloader
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.models.cascade_config import RankerConfig
from torchrec_onerec.models.ranker import (
    RANKER_FEATURE_KEYS,
    MultiTaskRanker,
    RankerTrainStep,
    RankerTransform,
    candidate_samples,
    dense_width,
    item_dense_features,
    load_ranker,
    negative_samples,
    predict,
    save_ranker,
    task_aucs,
)

NUM_USERS, NUM_ITEMS = 10, 16
TASKS = ["vtr", "swt"]


def _ranker(dense_features: int) -> MultiTaskRanker:
    torch.manual_seed(0)
    return MultiTaskRanker(
        RankerConfig(embedding_dim=8, bottom_mlp=[8], top_mlp=[16]),
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        tasks=TASKS,
        dense_features=dense_features,
    )


def _planted(num: int, seed: int) -> SampleSet:
    """Users click even items (vtr) and long-view items below 8 (swt)."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(num):
        item = int(rng.integers(NUM_ITEMS))
        history = rng.choice(NUM_ITEMS, size=int(rng.integers(0, 4)), replace=False)
        labels = np.array([[float(item % 2 == 0), float(item < 8)]], np.float32)
        samples.append(Sample(k % NUM_USERS, history, np.array([item]), labels))
    return SampleSet.from_samples(samples, TASKS)


def test_transform_writes_the_pair_features_and_the_content_similarity():
    content = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]] + [[1.0, 1.0]] * (NUM_ITEMS - 3))
    features = torch.as_tensor(item_dense_features(np.ones(NUM_ITEMS), content))
    samples = SampleSet.from_samples(
        [
            Sample(4, np.array([0, 2]), np.array([2]), np.zeros((1, 2), np.float32)),
            Sample(5, np.array([0, 2]), np.array([1]), np.zeros((1, 2), np.float32)),
            Sample(6, np.array([], np.int64), np.array([1]), np.zeros((1, 2), np.float32)),
        ],
        TASKS,
    )
    batch = RankerTransform(features)(collate_samples(samples))
    assert batch.features.keys() == list(RANKER_FEATURE_KEYS)
    assert batch.features["user_id"].values().tolist() == [4, 5, 6]
    assert batch.features["item_id"].values().tolist() == [2, 1, 1]
    assert batch.features["history_item"].lengths().tolist() == [2, 2, 0]
    assert batch.dense.shape == (3, dense_width(features)) == (3, 5)
    # columns: popularity, content (2), log1p(history length), cosine(history content, item content)
    assert batch.dense[:, 3].tolist() == pytest.approx([np.log(3), np.log(3), 0.0])
    assert batch.dense[:, 4].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


def test_ranker_learns_a_planted_preference():
    features = torch.as_tensor(item_dense_features(np.ones(NUM_ITEMS), None))
    ranker = _ranker(dense_width(features))
    step = RankerTrainStep(ranker)
    optimiser = torch.optim.Adam(ranker.parameters(), lr=0.02)
    train, valid = _planted(512, seed=0), _planted(256, seed=1)
    before = task_aucs(predict(ranker, valid, features), valid.labels[:, 0], TASKS)
    for epoch in range(6):
        ranker.train()
        for batch in make_dataloader(
            train, LoaderConfig(batch_size=64), seed=0, epoch=epoch, transform=RankerTransform(features)
        ):
            loss, (_, logits, labels) = step(batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            assert logits.shape == labels.shape == (batch.labels.shape[0], len(TASKS))
    after = task_aucs(predict(ranker, valid, features), valid.labels[:, 0], TASKS)
    assert after["auc_vtr"] > 0.95 and after["auc_swt"] > 0.95
    assert after["auc_mean"] > before["auc_mean"] + 0.2


def test_negative_samples_are_seeded_and_never_the_positive():
    samples = SampleSet.from_samples(
        [Sample(u, np.array([1]), np.array([u % NUM_ITEMS, -1]), np.zeros((2, 0), np.float32)) for u in range(200)]
        + [Sample(0, np.array([1]), np.array([-1, -1]), np.zeros((2, 0), np.float32))],
        [],
    )
    a = negative_samples(samples, num_items=NUM_ITEMS, negatives_per_positive=3, seed=7)
    b = negative_samples(samples, num_items=NUM_ITEMS, negatives_per_positive=3, seed=7)
    c = negative_samples(samples, num_items=NUM_ITEMS, negatives_per_positive=3, seed=8)
    assert np.array_equal(a.target, b.target) and not np.array_equal(a.target, c.target)
    groups = a.target.reshape(200, 4)  # the sample without a target is skipped
    assert np.array_equal(groups[:, 0], np.arange(200) % NUM_ITEMS)
    assert (groups[:, 1:] != groups[:, :1]).all()
    assert set(groups[:, 1:].ravel().tolist()) == set(range(NUM_ITEMS))  # every other item gets drawn
    assert a.labels.reshape(200, 4).tolist() == [[1.0, 0.0, 0.0, 0.0]] * 200
    assert a.user.tolist() == np.repeat(np.arange(200), 4).tolist() and a.signals == ["positive"]


def test_task_aucs_match_the_hand_computed_value():
    probabilities = np.array([[0.1], [0.4], [0.35], [0.8]])
    labels = np.array([[0.0], [0.0], [1.0], [1.0]])
    # positive pairs ranked correctly: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4) -> 3 / 4
    aucs = task_aucs(probabilities, labels, ["vtr"])
    assert aucs == {"auc_vtr": pytest.approx(0.75), "auc_mean": pytest.approx(0.75)}


def test_candidate_samples_repeat_each_user_per_candidate():
    samples = SampleSet.from_samples(
        [
            Sample(3, np.array([1, 2]), np.array([5]), np.zeros((1, 0), np.float32)),
            Sample(4, np.array([6]), np.array([7]), np.zeros((1, 0), np.float32)),
        ],
        [],
    )
    pairs = candidate_samples(samples, np.array([[9, 8, -1], [0, 1, 2]]))
    assert pairs.user.tolist() == [3, 3, 3, 4, 4, 4]
    assert pairs.target.ravel().tolist() == [9, 8, 0, 0, 1, 2]
    assert [pairs[i].history.tolist() for i in (0, 3)] == [[1, 2], [6]]


def test_save_and_load_round_trip(tmp_path):
    features = torch.as_tensor(item_dense_features(np.arange(NUM_ITEMS), np.eye(NUM_ITEMS)[:, :3]))
    ranker = _ranker(dense_width(features))
    save_ranker(
        tmp_path / "r.pt",
        ranker.state_dict(),
        ranker.config,
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        tasks=TASKS,
        item_features=features,
    )
    loaded, loaded_features = load_ranker(tmp_path / "r.pt")
    samples = _planted(8, seed=2)
    assert loaded.tasks == TASKS and torch.equal(loaded_features, features)
    assert np.array_equal(predict(loaded, samples, loaded_features), predict(ranker, samples, features))


def test_ranker_rejects_repeated_tasks():
    with pytest.raises(ValueError, match="each once"):
        MultiTaskRanker(RankerConfig(), num_users=2, num_items=2, tasks=["vtr", "vtr"], dense_features=2)
