"""Tests of the protocol A and B splits on tiny hand-built data whose right answer is known (docs/EVAL.md)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pytest

from torchrec_onerec.config import ConfigError, SplitConfig
from torchrec_onerec.data.splits import SplitA, SplitB, protocol_a_split, protocol_b_split, split_data
from torchrec_onerec.datasets.interactions import DataError, InteractionData

DAY = 86_400_000
MIN = 60_000
T0 = 1_651_363_200_000  # 2022-05-01 00:00 UTC


def make_data(
    rows: Sequence[Tuple[int, ...]],
    histories: Optional[Sequence[Tuple[int, int]]] = None,
    dates: Optional[Sequence[int]] = None,
    num_items: int = 100,
) -> InteractionData:
    """rows: (user, item, timestamp[, click, long_view, like]); histories: (user, item) in order."""
    cols = ["user_id", "item_id", "timestamp", "click", "long_view", "like"]
    inter = pd.DataFrame([tuple(r) + (1, 0, 0)[len(r) - 3 :] for r in rows], columns=cols).astype("int64")
    if dates is not None:
        inter.insert(3, "date", np.asarray(dates, dtype=np.int64))
    hist = None
    if histories is not None:
        hist = pd.DataFrame(list(histories), columns=["user_id", "item_id"]).astype("int64")
        hist["timestamp"] = np.int64(-1)
    num_users = int(max(inter.user_id.max(), hist.user_id.max() if hist is not None else 0)) + 1
    return InteractionData(
        "toy",
        inter,
        pd.DataFrame({"item_id": np.arange(num_items)}),
        np.arange(num_users),
        np.arange(num_items),
        histories=hist,
    )


def rows_of(samples) -> List[Tuple[int, List[int], List[int]]]:
    return [
        (s.user, s.history.tolist(), [t for t in s.target.tolist() if t >= 0])
        for s in (samples[i] for i in range(len(samples)))
    ]


# ----------------------------------------------------------------------------------------------- protocol A
def test_a_ties_keep_file_order_on_exact_int64_timestamps() -> None:
    t = 1_650_000_000_001  # t and t + 1 are equal in float32
    data = make_data([(0, 10, t + 5), (0, 11, t + 3), (0, 12, t + 3), (0, 13, t + 2), (0, 14, t + 1)])
    split = protocol_a_split(data, SplitConfig(protocol="A", session_items=1))
    # order: 14 (t+1), 13 (t+2), 11, 12 (tie, file order), 10
    assert rows_of(split.test) == [(0, [14, 13, 11, 12], [10])]
    assert rows_of(split.valid) == [(0, [14, 13, 11], [12])]
    assert rows_of(split.train) == [(0, [14], [13]), (0, [14, 13], [11])]
    assert split.dropped["train_short_history"] == 1  # position 0 has no history (min_history=1)


def test_a_history_cap_runs_and_no_leakage() -> None:
    data = make_data([(0, i, 100 * i) for i in range(8)])
    split = protocol_a_split(data, SplitConfig(protocol="A", max_history=3, session_items=2))
    assert rows_of(split.test) == [(0, [4, 5, 6], [7])]
    assert rows_of(split.valid) == [(0, [3, 4, 5], [6])]
    assert rows_of(split.train) == [
        (0, [0], [1, 2]),
        (0, [0, 1], [2, 3]),
        (0, [0, 1, 2], [3, 4]),
        (0, [1, 2, 3], [4, 5]),
        (0, [2, 3, 4], [5]),
    ]
    assert split.test.target.tolist() == [[7, -1]] and split.test.target.shape == (1, 2)


def test_a_random_leakage_and_history_ends_before_target() -> None:
    rng = np.random.default_rng(0)
    rows = [
        (u, int(i), int(t))
        for u in range(30)
        for i, t in zip(rng.permutation(100)[: rng.integers(3, 20)], rng.integers(0, 50, 20))
    ]
    data = make_data(rows)
    split = protocol_a_split(data, SplitConfig(protocol="A", max_history=5, session_items=3))
    test = {u: (h, t[0]) for u, h, t in rows_of(split.test)}
    valid = {u: (h, t[0]) for u, h, t in rows_of(split.valid)}
    assert len(test) == len(valid) == 30
    for u, hist, target in rows_of(split.train):
        assert valid[u][1] not in target and test[u][1] not in target
    for u, (hist, _) in test.items():
        assert hist[-1] == valid[u][1] and hist[:-1] == valid[u][0][-4:]


def test_a_short_users_counted_and_pre_period_is_context_only() -> None:
    data = make_data(
        [(0, 1, 1), (1, 2, 1), (1, 3, 2), (2, 4, 1), (2, 5, 2), (2, 6, 3)], histories=[(2, 50), (2, 51), (3, 52)]
    )
    split = protocol_a_split(data, SplitConfig(protocol="A", session_items=1))
    assert split.dropped["users_with_one_interaction"] == 1
    assert split.dropped["users_with_two_interactions"] == 1
    assert rows_of(split.test) == [(1, [2], [3]), (2, [50, 51, 4, 5], [6])]
    assert rows_of(split.valid) == [(2, [50, 51, 4], [5])]
    assert rows_of(split.train) == [(2, [50, 51], [4])]  # pre-period items are never targets in protocol A
    assert split.dropped["train_short_history"] == 2  # users 0 and 1: first item, no history


def test_a_labels_present_columns_and_skipped() -> None:
    data = make_data([(0, 1, 1, 1, 0, 0), (0, 2, 2, 0, 1, 0), (0, 3, 3, 1, 1, 1)])
    data.interactions = data.interactions.drop(columns=["like"])
    split = protocol_a_split(data, SplitConfig(protocol="A", session_items=2))
    assert split.test.signals == ["swt", "vtr"] and split.skipped_signals == {"ltr": "like"}
    assert split.test.labels.tolist() == [[[1.0, 1.0], [0.0, 0.0]]]
    assert split.valid.labels.tolist() == [[[1.0, 0.0], [0.0, 0.0]]]


# ----------------------------------------------------------------------------------------------- protocol B
B_CFG = dict(protocol="B", valid_start="2022-05-03", test_start="2022-05-05", test_end="2022-05-06")


def test_b_day_boundaries_follow_the_utc_offset() -> None:
    late = T0 + 3 * DAY + 23 * 60 * MIN + 30 * MIN  # 2022-05-04 23:30 UTC = 2022-05-05 07:30 in UTC+8
    data = make_data([(0, 1, T0), (0, 2, late), (0, 3, T0 + 5 * DAY)])
    utc = protocol_b_split(data, SplitConfig(**B_CFG))
    plus8 = protocol_b_split(data, SplitConfig(**B_CFG, utc_offset_hours=8))
    assert utc.impressions["valid"].item_id.tolist() == [2] and utc.impressions["test"].item_id.tolist() == [3]
    assert plus8.impressions["valid"].item_id.tolist() == [] and plus8.impressions["test"].item_id.tolist() == [2, 3]
    assert plus8.impressions["test"].day.tolist() == [20220505, 20220506]
    # a date column wins over the timestamp
    dated = protocol_b_split(
        make_data(
            [(0, 1, T0), (0, 2, late), (0, 3, T0 + 5 * DAY), (0, 4, T0 + 5 * DAY)],
            dates=[20220501, 20220503, 20220505, 20220507],
        ),
        SplitConfig(**B_CFG),
    )
    assert dated.impressions["valid"].item_id.tolist() == [2] and dated.impressions["test"].item_id.tolist() == [3]
    assert dated.dropped["rows_after_test_end"] == 1


def test_b_default_boundaries_are_last_four_and_two_days() -> None:
    data = make_data([(0, d, T0 + d * DAY) for d in range(8)])
    split = protocol_b_split(data, SplitConfig(protocol="B"))
    assert split.stats["valid_start"] == 20220505 and split.stats["test_start"] == 20220507
    assert split.impressions["test"].item_id.tolist() == [6, 7]
    assert split.impressions["valid"].item_id.tolist() == [4, 5]
    with pytest.raises(DataError, match="train window is empty"):
        protocol_b_split(make_data([(0, 1, T0)]), SplitConfig(protocol="B"))
    with pytest.raises(ConfigError, match="valid_start <= test_start"):
        SplitConfig(protocol="B", valid_start="2022-05-05", test_start="2022-05-04")
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        SplitConfig(protocol="B", test_end="05/08/2022")


def test_b_window_vs_gap_sessions_and_history() -> None:
    test_day = T0 + 4 * DAY
    rows = [
        (0, 1, T0, 1),
        (0, 2, T0 + MIN, 0),
        (0, 3, T0 + 2 * DAY, 1),  # train, valid
        (0, 4, test_day, 1),
        (0, 5, test_day + 10 * MIN, 1),
        (0, 6, test_day + 50 * MIN, 1),  # test
        (0, 7, test_day + 60 * MIN, 0),
        (1, 8, T0, 1),
        (1, 9, test_day, 0),
    ]
    window = protocol_b_split(make_data(rows, histories=[(0, 90), (0, 91)]), SplitConfig(**B_CFG))
    assert rows_of(window.test) == [(0, [90, 91, 1, 3], [4, 5, 6])]
    assert rows_of(window.valid) == [(0, [90, 91, 1], [3])]
    assert window.dropped["test_sessions_without_positive"] == 1  # user 1: an impression, no click
    assert window.stats["test"]["users"] == 2 and window.stats["test"]["users_with_1_positives"] == 1
    assert window.stats["test"]["users_with_3_positives"] == 1
    gap = protocol_b_split(make_data(rows, histories=[(0, 90), (0, 91)]), SplitConfig(**B_CFG, session_rule="gap"))
    assert rows_of(gap.test) == [(0, [90, 91, 1, 3], [4, 5]), (0, [90, 91, 1, 3, 4, 5], [6])]
    assert gap.impressions["test"].session_id.tolist() == [0, 0, 1, 1, 2]
    assert window.impressions["test"].session_id.tolist() == [0, 0, 0, 0, 1]
    capped = protocol_b_split(
        make_data(rows, histories=[(0, 90), (0, 91)]), SplitConfig(**B_CFG, session_items=2, max_history=3)
    )
    assert rows_of(capped.test) == [(0, [91, 1, 3], [4, 5])]
    assert capped.dropped["test_positives_beyond_m"] == 1


def test_b_training_runs_of_m_include_pre_period() -> None:
    rows = [(0, 10 + i, T0 + i * MIN, int(i != 2)) for i in range(5)] + [(0, 30, T0 + 4 * DAY)]
    split = protocol_b_split(make_data(rows, histories=[(0, 1), (0, 2)]), SplitConfig(**B_CFG, session_items=2))
    # positive sequence: 1, 2 (pre-period), 10, 11, 13, 14 (12 not clicked); runs of 2 from position 1
    assert rows_of(split.train) == [(0, [1], [2, 10]), (0, [1, 2, 10], [11, 13]), (0, [1, 2, 10, 11, 13], [14])]
    assert split.train.target[-1].tolist() == [14, -1]
    assert split.stats["train_target_items_from_pre_period"] == 1
    every = protocol_b_split(
        make_data(rows, histories=[(0, 1), (0, 2)]), SplitConfig(**B_CFG, session_items=2, train_stride=1)
    )
    assert [r[2] for r in rows_of(every.train)] == [[2, 10], [10, 11], [11, 13], [13, 14], [14]]
    none = protocol_b_split(make_data(rows, histories=[(0, 1), (0, 2)]), SplitConfig(**B_CFG, min_history=6))
    assert len(none.train) == 0 and none.dropped["train_users_without_target"] == 1


def test_b_labels_mapped_per_impression_and_checked() -> None:
    rows = [
        (0, 1, T0, 1, 0, 0),
        (0, 2, T0 + 4 * DAY, 1, 1, 0),
        (0, 3, T0 + 4 * DAY + 1, 0, 1, 1),
        (0, 4, T0 + 4 * DAY + 2, 1, 0, 1),
    ]
    split = protocol_b_split(make_data(rows, histories=[(0, 7)]), SplitConfig(**B_CFG))
    assert split.test.signals == ["swt", "vtr", "ltr"]
    assert split.test.labels[0, :3].tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]
    assert split.impressions["test"][["swt", "vtr", "ltr"]].to_numpy().tolist() == [[1, 1, 0], [1, 0, 1], [0, 1, 1]]
    # pre-period target: 1 for the positive column (vtr = click), 0 for the others
    assert split.train[0].labels[0].tolist() == [0.0, 1.0, 0.0] and split.train[0].target[0] == 1
    data = make_data(rows)
    with pytest.raises(DataError, match="'ltr' maps to column 'likes'"):
        protocol_b_split(data, SplitConfig(**B_CFG, labels={"ltr": "likes"}))
    with pytest.raises(DataError, match="positive_col='is_click'"):
        protocol_b_split(data, SplitConfig(**B_CFG, positive_col="is_click"))
    every = protocol_b_split(data, SplitConfig(**B_CFG, positive_col=""))
    assert rows_of(every.test) == [(0, [1], [2, 3, 4])]


def test_split_data_dispatch() -> None:
    data = make_data([(0, i, T0 + i * DAY) for i in range(6)])
    assert isinstance(split_data(data, SplitConfig(protocol="A")), SplitA)
    assert isinstance(split_data(data, SplitConfig(protocol="B")), SplitB)
    assert split_data(data, SplitConfig(protocol="B")).summary()["protocol"] == "B"


def test_train_sequences_hold_no_evaluation_item() -> None:
    # user 0: pre-period 50; logged 1, 2, 3, 4 -> valid 3, test 4; user 1: logged 7, 8 -> test 8.
    data = make_data([(0, 1, 1), (0, 2, 2), (0, 3, 3), (0, 4, 4), (1, 7, 1), (1, 8, 2)], histories=[(0, 50)])
    seq = protocol_a_split(data, SplitConfig(protocol="A")).train_sequences
    assert seq.values.tolist() == [[0, 50], [0, 1], [0, 2], [1, 7]]
    # protocol B: training-day positives only (the clicked ones), after the pre-period items.
    rows = [(0, 1, T0, 1, 0, 0), (0, 2, T0 + 1, 0, 0, 0), (0, 3, T0 + 2 * DAY, 1, 0, 0), (0, 4, T0 + 3 * DAY, 1, 0, 0)]
    split = protocol_b_split(
        make_data(rows, histories=[(0, 60)]),
        SplitConfig(protocol="B", valid_start="2022-05-03", test_start="2022-05-04"),
    )
    assert split.train_sequences.values.tolist() == [[0, 60], [0, 1]]
