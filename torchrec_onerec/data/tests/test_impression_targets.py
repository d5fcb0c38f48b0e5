"""Tests of the exposed-session training targets (``train.targets=impressions``) on hand-built data whose right
answer is known: runs of consecutive training-day impressions, clicked or not, with their labels, after the
positives the evaluation would read as history."""

from __future__ import annotations

import pytest

from torchrec_onerec.config import ConfigError, SplitConfig
from torchrec_onerec.data.impression_targets import impression_training_samples
from torchrec_onerec.data.splits import protocol_b_split
from torchrec_onerec.data.tests.test_splits import B_CFG, DAY, MIN, T0, make_data, rows_of
from torchrec_onerec.train.config import TrainConfig


def _split(session_items: int = 2, **kwargs):
    # user 0: pre-period 1, 2; training day: 10 (click), 11 (shown only), 12 (click, long view), 13 (shown only);
    # user 1: training day 20 (shown only), 21 (click); a test-day impression each
    rows = [
        (0, 10, T0, 1),
        (0, 11, T0 + MIN, 0),
        (0, 12, T0 + 2 * MIN, 1, 1, 0),
        (0, 13, T0 + 3 * MIN, 0),
        (1, 20, T0, 0),
        (1, 21, T0 + MIN, 1),
        (0, 30, T0 + 4 * DAY),
        (1, 31, T0 + 4 * DAY),
    ]
    config = SplitConfig(**B_CFG, session_items=session_items, **kwargs)
    data = make_data(rows, histories=[(0, 1), (0, 2)])
    return protocol_b_split(data, config), config, data.num_users


def test_runs_hold_every_impression_after_the_positives_before_them() -> None:
    split, config, users = _split()
    samples, short, _ = impression_training_samples(split, config, users)
    # stride m = 2; user 1's one run (20, 21) has no positive before it (min_history 1): dropped and counted
    assert rows_of(samples) == [(0, [1, 2], [10, 11]), (0, [1, 2, 10], [12, 13])]
    assert short == 1
    vtr, swt = samples.signals.index("vtr"), samples.signals.index("swt")
    assert samples.labels[:, :, vtr].tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert samples.labels[:, :, swt].tolist() == [[0.0, 0.0], [1.0, 0.0]]


def test_stride_one_starts_a_run_at_every_impression_and_cuts_at_the_users_last() -> None:
    split, config, users = _split(train_stride=1)
    samples, short, _ = impression_training_samples(split, config, users)
    assert rows_of(samples) == [
        (0, [1, 2], [10, 11]),
        (0, [1, 2, 10], [11, 12]),
        (0, [1, 2, 10], [12, 13]),
        (0, [1, 2, 10, 12], [13]),
    ]
    assert samples.target[-1].tolist() == [13, -1] and short == 2
    capped, capped_config, _ = _split(train_stride=1, max_history=1)
    histories = [row[1] for row in rows_of(impression_training_samples(capped, capped_config, users)[0])]
    assert histories == [[2], [10], [10], [12]]  # the most recent n positives


def test_targets_must_be_named() -> None:
    assert TrainConfig(targets="impressions").targets == "impressions"
    with pytest.raises(ConfigError, match="train.targets='clicks' must be one of"):
        TrainConfig(targets="clicks")


def test_engaged_leaves_out_only_the_random_exposures_without_feedback() -> None:
    split, config, users = _split()
    # without an is_rand column nothing is random: the same runs as with every exposure
    unchanged, _, skipped = impression_training_samples(split, config, users, random_exposures="engaged")
    assert rows_of(unchanged) == rows_of(impression_training_samples(split, config, users)[0]) and skipped == 0
    # 11 (shown only) and 12 (clicked) came from a random policy: 11 goes, 12 stays, 13 (shown by the policy) stays
    rows = [(0, 10, T0, 1), (0, 11, T0 + MIN, 0), (0, 12, T0 + 2 * MIN, 1, 1, 0), (0, 13, T0 + 3 * MIN, 0)]
    rows += [(1, 20, T0, 0), (1, 21, T0 + MIN, 1), (0, 30, T0 + 4 * DAY), (1, 31, T0 + 4 * DAY)]
    data = make_data(rows, histories=[(0, 1), (0, 2)])
    data.interactions["is_rand"] = data.interactions["item_id"].isin([11, 12]).astype("int8")
    random_split = protocol_b_split(data, config)
    samples, short, skipped = impression_training_samples(random_split, config, users, random_exposures="engaged")
    assert rows_of(samples) == [(0, [1, 2], [10, 12]), (0, [1, 2, 10, 12], [13])]
    assert skipped == 1 and short == 1
    assert rows_of(impression_training_samples(random_split, config, users)[0]) == rows_of(
        impression_training_samples(split, config, users)[0]
    )  # "all" keeps them


def test_random_exposures_must_be_named() -> None:
    with pytest.raises(ConfigError, match="train.random_exposures='none' must be one of"):
        TrainConfig(random_exposures="none")
    split, config, users = _split()
    with pytest.raises(ValueError, match="random_exposures='some'"):
        impression_training_samples(split, config, users, random_exposures="some")


def test_the_default_keeps_earlier_runs_fingerprints() -> None:
    import dataclasses

    from torchrec_onerec.config import OneRecConfig
    from torchrec_onerec.pipeline import LATER_KEYS, stage_fingerprint
    from torchrec_onerec.tokenizer.config import fingerprint_settings

    settings = dataclasses.asdict(TrainConfig())
    later = ("random_exposures", "sampled_siblings")
    before = {k: v for k, v in settings.items() if k not in later}  # the section earlier runs hashed
    assert fingerprint_settings(settings, LATER_KEYS["train"]) == before
    engaged = dataclasses.asdict(TrainConfig(random_exposures="engaged"))
    assert fingerprint_settings(engaged, LATER_KEYS["train"])["random_exposures"] == "engaged"
    config = OneRecConfig()
    changed = dataclasses.replace(config, train=TrainConfig(random_exposures="engaged"))
    assert stage_fingerprint(config, "train") != stage_fingerprint(changed, "train")
