"""Impression samples agree with the split's own evaluation histories and keep every impression."""

from __future__ import annotations

import numpy as np
import pytest

from torchrec_onerec.config import load_config
from torchrec_onerec.data.impressions import impression_samples, randomised_chunks
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


def test_randomised_chunks_split_the_samples_by_the_policy_that_showed_them():
    cfg = load_config("configs/tiny.yaml", ["split.protocol=B", "data.synthetic.random_session_rate=0.4"])
    data = load_dataset(cfg.data, seed=0)
    split = split_data(data, cfg.split)
    assert isinstance(split, SplitB) and "is_rand" in split.impressions["test"].columns
    frame = split.impressions["test"]
    random_rows = set(zip(frame["user_id"][frame["is_rand"] == 1], frame["item_id"][frame["is_rand"] == 1]))
    kwargs = dict(num_users=data.num_users, items_per_sample=3, max_history=cfg.split.max_history)
    every = impression_samples(split, "test", **kwargs)
    flags = randomised_chunks(split, "test", items_per_sample=3)
    randomised, logged = every.subset(np.flatnonzero(flags)), every.subset(np.flatnonzero(~flags))
    assert len(randomised) + len(logged) == len(every) and len(randomised) > 0 and len(logged) > 0

    def shown(samples):
        return [{(u, i) for i in row if i >= 0} for u, row in zip(samples.user, samples.target)]

    assert all(chunk <= random_rows for chunk in shown(randomised))  # every item randomly exposed
    # the logged chunks hold every policy-chosen impression (a pair can be shown both ways, hence the count)
    policy_rows = int((frame["is_rand"] == 0).sum())
    assert sum(len(chunk - random_rows) for chunk in shown(logged)) <= policy_rows <= int((logged.target >= 0).sum())
    without = SplitB(split.train, split.valid, split.test, {"test": frame.drop(columns="is_rand")}, {}, {}, None)
    assert not randomised_chunks(without, "test", items_per_sample=3).any()
