"""Impression-level samples of a protocol-B split: what the ranker and the session reward model learn from.

The generative model learns from positives only; a ranker and a reward model need the impressions a user
skipped too. ``impression_samples`` cuts one window's impression table (``SplitB.impressions``) into samples:

* each session (``session_id``) is split, in time order, into consecutive chunks of ``items_per_sample``
  impressions (1 for a ranker: one sample per impression; m for the reward model: sessions of m); the last
  chunk of a session may be shorter (padded with -1);
* target = the chunk's items, labels = their signals (the split's ``labels``), 0 at padding;
* history = the user's n most recent positives before the chunk's first impression: pre-period items, then
  positives of earlier windows and of earlier rows of this window, as ``SplitB`` builds evaluation histories.

``randomised_chunks`` marks, in the same order, the chunks a randomly exposing policy showed (every impression
``is_rand``: KuaiRand's random log, the synthetic world's randomised sessions). A reward model scores sessions no
logging policy chose; the randomised ones are the logged sessions most like them.

Shape legend: N samples, M = ``items_per_sample``, S signals.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pandas as pd

from torchrec_onerec.data.samples import PAD_ITEM, SampleSet, take_slices
from torchrec_onerec.data.splits import WINDOWS, SplitB


def _positive_sequences(split: SplitB, num_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's positives in time order: (items sorted by user, user offsets [U + 1], pre-period counts [U]).

    ``train_sequences`` already holds the pre-period items and the training-window positives; the validation
    and test windows' positives follow them.
    """
    train_pos = split.impressions["train"]
    num_pre = np.bincount(split.train_sequences["user_id"].to_numpy(np.int64), minlength=num_users) - np.bincount(
        train_pos["user_id"].to_numpy(np.int64)[train_pos["positive"].to_numpy(bool)], minlength=num_users
    )
    users = [split.train_sequences["user_id"].to_numpy(np.int64)]
    items = [split.train_sequences["item_id"].to_numpy(np.int64)]
    for window in WINDOWS[1:]:
        frame = split.impressions[window]
        positive = frame["positive"].to_numpy(bool)
        users.append(frame["user_id"].to_numpy(np.int64)[positive])
        items.append(frame["item_id"].to_numpy(np.int64)[positive])
    all_users = np.concatenate(users)
    order = np.argsort(all_users, kind="stable")  # keeps each user's chronological order
    offsets = np.zeros(num_users + 1, np.int64)
    np.cumsum(np.bincount(all_users, minlength=num_users), out=offsets[1:])
    return np.concatenate(items)[order], offsets, num_pre


def _chunks(frame: pd.DataFrame, items_per_sample: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each session of an impression table cut into chunks of ``items_per_sample`` rows: (first row [N], rows
    [N, M] (0 at padding), real [N, M] bool)."""
    session = frame["session_id"].to_numpy(np.int64)
    new_session = np.ones(len(frame), bool)
    new_session[1:] = session[1:] != session[:-1]
    session_start = np.maximum.accumulate(np.where(new_session, np.arange(len(frame)), 0))
    rank = np.arange(len(frame)) - session_start
    starts = np.flatnonzero(rank % items_per_sample == 0)
    session_end = np.concatenate([np.flatnonzero(new_session)[1:], [len(frame)]])
    end_of = session_end[np.cumsum(new_session) - 1]  # one past the last row of each row's session
    lengths = np.minimum(items_per_sample, end_of[starts] - starts)
    cols = np.arange(items_per_sample)
    real = cols < lengths[:, None]
    idx = np.where(real, starts[:, None] + cols, 0)
    return starts, idx, real


def randomised_chunks(split: SplitB, window: str, *, items_per_sample: int) -> np.ndarray:
    """[N] bool, in ``impression_samples``' order: True for a chunk whose impressions a randomly exposing policy
    showed (all ``is_rand``); all False when the window has no ``is_rand`` column.

    Example:
        >>> frame = pd.DataFrame({"session_id": [0, 0, 0, 1], "is_rand": [1, 1, 0, 1]})
        >>> split = SplitB(None, None, None, {"valid": frame}, {}, {}, None)
        >>> randomised_chunks(split, "valid", items_per_sample=2).tolist()
        [True, False, True]
    """
    frame = split.impressions[window]
    _, idx, real = _chunks(frame, items_per_sample)
    if "is_rand" not in frame.columns:
        return np.zeros(len(real), bool)
    return np.asarray(np.where(real, frame["is_rand"].to_numpy(bool)[idx], True).all(axis=1))


def impression_samples(
    split: SplitB,
    window: str,
    *,
    num_users: int,
    items_per_sample: int,
    max_history: int,
) -> SampleSet:
    """Chunks of ``items_per_sample`` impressions of one window, each with the user's positive history.

    Args:
        split (SplitB): a protocol-B split (``split_data`` with ``split.protocol=B``).
        window (str): ``train``, ``valid`` or ``test``.
        num_users (int): the data set's number of users (ids lie in [0, num_users)).
        items_per_sample (int): M, impressions per sample (1: one sample per impression).
        max_history (int): n, the most recent positives kept as history.

    Returns:
        SampleSet: N samples, target [N, M] (-1 padded), labels [N, M, S] with the split's signals, users in
        (user, time) order.

    Example:
        >>> from torchrec_onerec.data.config import SplitConfig
        >>> from torchrec_onerec.data.splits import protocol_b_split
        >>> from torchrec_onerec.datasets.interactions import InteractionData
        >>> day = 86_400_000
        >>> inter = pd.DataFrame({"user_id": [0, 0, 0, 0], "item_id": [1, 2, 3, 4],
        ...                       "timestamp": [0, day, 2 * day, 2 * day + 1], "click": [1, 0, 1, 0],
        ...                       "long_view": [1, 0, 0, 0], "like": [0, 0, 0, 0]}).astype("int64")
        >>> data = InteractionData("toy", inter, pd.DataFrame({"item_id": np.arange(5)}), np.arange(1), np.arange(5))
        >>> split = protocol_b_split(data, SplitConfig(protocol="B", session_items=2, min_history=0,
        ...                                            valid_start="1970-01-02", test_start="1970-01-03"))
        >>> test = impression_samples(split, "test", num_users=1, items_per_sample=1, max_history=5)
        >>> test.target.tolist(), [test[i].history.tolist() for i in range(len(test))]
        ([[3], [4]], [[1], [1, 3]])
    """
    if window not in WINDOWS:
        raise ValueError(f"window={window!r} must be one of {list(WINDOWS)}")
    for name, value in (("items_per_sample", items_per_sample), ("max_history", max_history)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    signals = list(split.train.signals)
    frame: pd.DataFrame = split.impressions[window]
    seq_items, seq_offsets, num_pre = _positive_sequences(split, num_users)
    users = frame["user_id"].to_numpy(np.int64)
    positive = frame["positive"].to_numpy(bool)
    earlier_windows = np.zeros(num_users, np.int64)  # each user's positives in the windows before this one
    for name in WINDOWS[: WINDOWS.index(window)]:
        f = split.impressions[name]
        earlier_windows += np.bincount(
            f["user_id"].to_numpy(np.int64)[f["positive"].to_numpy(bool)], minlength=num_users
        )
    # positives of this user in this window on rows strictly before each row (rows are in (user, time) order)
    cum = np.concatenate([[0], np.cumsum(positive)])
    first_row = np.searchsorted(users, users, side="left")
    in_window_before = cum[np.arange(len(frame))] - cum[first_row]
    starts, idx, real = _chunks(frame, items_per_sample)
    item_ids = frame["item_id"].to_numpy(np.int64)
    label_values = frame[signals].to_numpy(np.float32) if signals else np.zeros((len(frame), 0), np.float32)
    target = np.where(real, item_ids[idx], PAD_ITEM)
    labels = np.where(real[..., None], label_values[idx], 0.0).astype(np.float32)
    who = users[starts]
    end = seq_offsets[who] + num_pre[who] + earlier_windows[who] + in_window_before[starts]
    hist_start = np.maximum(seq_offsets[who], end - max_history)
    values, offsets = take_slices(seq_items, hist_start, end - hist_start)
    return SampleSet(who, values, offsets, target, labels, signals)
