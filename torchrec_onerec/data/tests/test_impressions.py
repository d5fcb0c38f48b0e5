"""Impression samples agree with the split's own evaluation histories and keep every impression."""

from __future__ import annotations

import numpy as np
import pytest

from torchrec_onerec.config import load_config
from torchrec_onerec.data.impressions import impression_samples
from torchrec_onerec.data.splits import SplitB, split_data
from torchrec_onerec.datasets.load import load_dataset


@pytest.fixture(scope="module")
def synthetic_split():
    cfg = load_config("configs/tiny.yaml", ["split.protocol=B", "split.min_history=0"])
    data = load_dataset(cfg.data, seed=0)
    split = split_data(data, cfg.split)
    assert isinstance(split, SplitB)
    return data, split, cfg


@pytest.mark.parametrize("window", ["train", "valid", "test"])
def test_every_impression_lands_once_with_its_labels(synthetic_split, window):
    data, split, cfg = synthetic_split
    frame = split.impressions[window]
    samples = impression_samples(split, window, num_users=data.num_users, items_per_sample=3, max_history=10)
    real = samples.target >= 0
    assert real.sum() == len(frame)
    assert np.array_equal(samples.target[real], frame["item_id"].to_numpy())
    signals = list(samples.signals)
    assert np.array_equal(samples.labels[real], frame[signals].to_numpy(np.float32))
    assert samples.history_lengths.max() <= 10


@pytest.mark.parametrize("window", ["valid", "test"])
def test_session_start_history_equals_the_split_evaluation_history(synthetic_split, window):
    data, split, cfg = synthetic_split
    n = cfg.split.max_history
    samples = impression_samples(split, window, num_users=data.num_users, items_per_sample=1000, max_history=n)
    by_user = {int(samples.user[i]): samples[i].history.tolist() for i in range(len(samples))}  # one window session
    evaluated = getattr(split, window)
    assert len(evaluated) > 0
    for i in range(len(evaluated)):
        assert by_user[int(evaluated.user[i])] == evaluated[i].history.tolist()


def test_histories_hold_only_earlier_positives(synthetic_split):
    data, split, _ = synthetic_split
    samples = impression_samples(split, "train", num_users=data.num_users, items_per_sample=1, max_history=1000)
    frame = split.impressions["train"]
    user = int(frame["user_id"].iloc[0])
    rows = frame[frame["user_id"] == user]
    positives_so_far = 0
    for k, (_, row) in enumerate(rows.iterrows()):
        assert len(samples[k].history) == positives_so_far
        positives_so_far += int(row["positive"])


def test_rejects_an_unknown_window(synthetic_split):
    data, split, _ = synthetic_split
    with pytest.raises(ValueError, match="window='later'"):
        impression_samples(split, "later", num_users=data.num_users, items_per_sample=1, max_history=5)
