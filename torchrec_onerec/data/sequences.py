"""Per-user sequence arrays, the vectorised building blocks of the protocol A and B splits (``data.splits``).

Rows are ordered by (user, time) with stable sorts, cut into per-user blocks by offsets, merged with a data
set's pre-period histories, and sliced into targets and histories without a Python loop over users.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pandas as pd

from torchrec_onerec.data.samples import PAD_ITEM, SampleSet, take_slices
from torchrec_onerec.datasets.interactions import DataError, InteractionData


def time_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Row indices sorted by (user, timestamp) with stable sorts: file order on ties."""
    order = np.argsort(timestamps, kind="stable")
    return order[np.argsort(users[order], kind="stable")]


def user_offsets(sorted_users: np.ndarray, num_users: int) -> np.ndarray:
    """[U + 1] int64 start of each user's block in a user-sorted array."""
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(sorted_users, minlength=num_users), out=offsets[1:])
    return offsets


def label_matrix(frame: pd.DataFrame, columns: List[str]) -> Tuple[np.ndarray, int]:
    """[R, S] float32 values of ``columns`` (NaN -> 0) and the number of NaNs filled."""
    values = frame[columns].to_numpy(dtype=np.float32, copy=True) if columns else np.zeros((len(frame), 0), np.float32)
    nan = np.isnan(values)
    values[nan] = 0.0
    return values, int(nan.sum())


def pre_period(data: InteractionData) -> Tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Pre-period (user, item) arrays sorted by user, keeping each user's order, and the sorted frame."""
    hist = data.histories
    if hist is None or len(hist) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pd.DataFrame()
    for col, n in (("user_id", data.num_users), ("item_id", data.num_items)):
        if col not in hist.columns:
            raise DataError(f"{data.name}: histories table has no column {col!r} (columns: {list(hist.columns)})")
        lo, hi = int(hist[col].min()), int(hist[col].max())
        if lo < 0 or hi >= n:
            raise DataError(f"{data.name}: histories {col} values span [{lo}, {hi}] but there are {n} ids")
    order = np.argsort(hist["user_id"].to_numpy(np.int64), kind="stable")
    frame = hist.iloc[order]
    return frame["user_id"].to_numpy(np.int64), frame["item_id"].to_numpy(np.int64), frame


def target_runs(
    items: np.ndarray, labels: np.ndarray, starts: np.ndarray, lengths: np.ndarray, m: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Targets [K, m] = ``items[start:start + length]`` padded with -1, and their labels [K, m, S] (0 at pads)."""
    cols = np.arange(m)
    real = cols < lengths[:, None]  # (K, m)
    idx = np.where(real, starts[:, None] + cols, 0)
    target = np.where(real, items[idx], PAD_ITEM)
    lab = np.where(real[..., None], labels[idx], 0.0)
    return target.astype(np.int64), lab.astype(np.float32)


def assemble_samples(
    users: np.ndarray,
    seq_items: np.ndarray,
    hist_start: np.ndarray,
    hist_len: np.ndarray,
    target: np.ndarray,
    labels: np.ndarray,
    signals: List[str],
    min_history: int,
) -> Tuple[SampleSet, int]:
    """A SampleSet of the samples whose history (a slice of ``seq_items``) has >= ``min_history`` items."""
    keep = hist_len >= min_history
    values, offsets = take_slices(seq_items, hist_start[keep], hist_len[keep])
    return SampleSet(users[keep], values, offsets, target[keep], labels[keep], signals), int((~keep).sum())


def merge_pre_period(
    pre_users: np.ndarray,
    pre_items: np.ndarray,
    pre_labels: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-user sequences: pre-period rows, then the (time-sorted) logged rows. Returns users, items, labels,
    is_logged, all sorted by user."""
    order = np.argsort(np.concatenate([pre_users, users]), kind="stable")
    logged = np.concatenate([np.zeros(len(pre_users), bool), np.ones(len(users), bool)])
    return (
        np.concatenate([pre_users, users])[order],
        np.concatenate([pre_items, items])[order],
        np.concatenate([pre_labels, labels])[order],
        logged[order],
    )
