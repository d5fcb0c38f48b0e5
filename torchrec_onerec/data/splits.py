"""Train/validation/test samples under docs/EVAL.md protocol A (leave-one-out) and protocol B (day split, sessions).

Protocol A (next item, RecBole's 'LS' split):
    * Each user's logged interactions are ordered by a stable sort on the exact int64 timestamps (file order on
      ties). With L of them, ``min(2, L - 1)`` are held out, as RecBole's ``leave_one_out`` does: the last item
      is the test target, the second last the validation target, everything before is training. So a user
      with L = 2 gives a test target but no validation target, a user with L = 1 only training data; both are
      counted in ``dropped`` (``users_with_two_interactions``, ``users_with_one_interaction``).
    * Training: every position of the training sequence is a target: the next m items from it, cut at the end
      of the training sequence (so never a validation or test item) and padded with -1; history = the n items
      before it. Validation/test use one target slot; the test history includes the validation item.
    * Pre-period ``histories`` rows, where a data set has them, are history context before the first logged
      item and never targets. ``positive_col`` is not used: every interaction counts.
    * Labels: the signals of ``config.labels`` whose column the data has; the others are listed in
      ``SplitA.skipped_signals`` (the next-item protocol needs no labels).

Protocol B (sessions with feedback):
    * Day of a row: the data's ``date`` column (YYYYMMDD) where it has one, else the calendar day of
      ``timestamp + utc_offset_hours``. Train = days before ``valid_start``; valid = [valid_start, test_start);
      test = [test_start, test_end]. Empty boundaries default to the last 2 days of the data (or up to
      ``test_end``) for test and the 2 days before for validation. Rows after ``test_end`` are dropped (counted).
    * Positive: ``positive_col == 1`` (every row when ``positive_col`` is ""). Pre-period ``histories`` rows are
      positives (watched items) that precede every logged row.
    * Training targets: the user's chronological positive sequence (pre-period items, then training-day
      positives) is cut into consecutive non-overlapping runs of m (stride m; ``train_stride`` sets another
      stride, 1 = a run at every position), the first run starting at
      position ``min_history`` so every run has at least that much history; the final partial run is kept,
      padded with -1. History = the n positives before the run. Pre-period items may be targets (docs/EVAL.md); their
      labels come from the ``histories`` table's column where it has one, else 1 for the positive column and 0
      for the other signals. Users whose sequence has no position past ``min_history`` are counted.
    * Sessions (valid and test targets, and ``session_id`` in every impression table): ``window`` = all of a
      user's impressions inside one split window; ``gap`` = runs inside a window whose consecutive gaps are
      under ``session_gap_minutes``. Target = the session's positives in time order, at most m (further ones
      counted in ``{split}_positives_beyond_m``); sessions without a positive are counted and skipped. History =
      the user's positives before the session's first impression (pre-period, earlier days, earlier sessions).
    * Labels: signal -> column of ``config.labels``; a missing column is a DataError. NaN labels become 0
      (counted in ``label_nan_filled``).

In both protocols a sample whose history is shorter than ``min_history`` is dropped and counted.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Dict, Tuple, Union

import numpy as np
import pandas as pd

from torchrec_onerec.data.config import SplitConfig
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.data.sequences import (
    assemble_samples,
    label_matrix,
    merge_pre_period,
    pre_period,
    target_runs,
    time_order,
    user_offsets,
)
from torchrec_onerec.datasets.interactions import DataError, InteractionData

MS_PER_DAY = 86_400_000
WINDOWS = ("train", "valid", "test")


@dataclass
class SplitA:
    """Protocol A samples.

    Args:
        train (SampleSet): every training position, targets [N, M] = the next m training items.
        valid (SampleSet): one sample per user with >= 3 interactions, target = second-last item (slot 0).
        test (SampleSet): one sample per user with >= 2 interactions, target = last item (slot 0).
        dropped (Dict[str, int]): what could not become a sample, by reason.
        skipped_signals (Dict[str, str]): label signals whose column the data lacks (signal -> column).
        train_sequences (pd.DataFrame): ``user_id``, ``item_id`` of every training-side interaction (pre-period,
            then logged training items), chronological per user: what training-only statistics (collaborative
            item embeddings, popularity) may read.
    """

    train: SampleSet
    valid: SampleSet
    test: SampleSet
    dropped: Dict[str, int]
    skipped_signals: Dict[str, str]
    train_sequences: pd.DataFrame

    def summary(self) -> Dict[str, object]:
        """Per-split ``SampleSet.summary()`` plus the drop counts."""
        return {
            "protocol": "A",
            **{w: getattr(self, w).summary() for w in WINDOWS},
            "dropped": dict(self.dropped),
            "skipped_signals": dict(self.skipped_signals),
        }


@dataclass
class SplitB:
    """Protocol B samples and impression tables.

    Args:
        train (SampleSet): runs of m positives with the n positives before each.
        valid (SampleSet): one sample per validation session with a positive.
        test (SampleSet): one sample per test session with a positive.
        impressions (Dict[str, pd.DataFrame]): ``train``/``valid``/``test`` -> one row per impression in
            (user, time) order: ``user_id``, ``item_id``, ``timestamp``, ``day`` (YYYYMMDD), ``session_id``
            (0.. within the split), ``positive`` and one float32 column per signal (the reward model's data).
        dropped (Dict[str, int]): rows, sessions, users and samples left out, by reason.
        stats (Dict[str, object]): resolved day boundaries and per-window counts (users, impressions, sessions,
            users with >= 1/2/3 positives ...).
        train_sequences (pd.DataFrame): ``user_id``, ``item_id`` of the training positive sequences (pre-period,
            then training-day positives), chronological per user: what training-only statistics may read.
    """

    train: SampleSet
    valid: SampleSet
    test: SampleSet
    impressions: Dict[str, pd.DataFrame]
    dropped: Dict[str, int]
    stats: Dict[str, object]
    train_sequences: pd.DataFrame

    def summary(self) -> Dict[str, object]:
        """Per-split ``SampleSet.summary()``, drop counts and window statistics."""
        return {
            "protocol": "B",
            **{w: getattr(self, w).summary() for w in WINDOWS},
            "dropped": dict(self.dropped),
            "stats": self.stats,
        }


def split_data(data: InteractionData, config: SplitConfig) -> Union[SplitA, SplitB]:
    """Cut ``data`` by ``config.protocol`` (``A``: ``protocol_a_split``, ``B``: ``protocol_b_split``)."""
    if config.protocol == "A":
        return protocol_a_split(data, config)
    if config.protocol == "B":
        return protocol_b_split(data, config)
    raise ValueError(f"split.protocol={config.protocol!r} must be 'A' or 'B'")


def protocol_a_split(data: InteractionData, config: SplitConfig) -> SplitA:
    """Leave-one-out split of docs/EVAL.md protocol A (rules in the module docstring).

    Args:
        data (InteractionData): the interactions (``user_id``, ``item_id``, ``timestamp``) and optional
            pre-period ``histories``.
        config (SplitConfig): ``max_history`` (n), ``session_items`` (m), ``min_history``, ``labels``.

    Returns:
        SplitA: train/valid/test SampleSets (targets [N, M], labels [N, M, S]) and drop counts.

    Example:
        >>> inter = pd.DataFrame({"user_id": [0, 0, 0, 0], "item_id": [3, 1, 2, 0],
        ...                       "timestamp": [5, 1, 2, 2]}).astype("int64")
        >>> data = InteractionData("toy", inter, pd.DataFrame({"item_id": np.arange(4)}),
        ...                        np.arange(1), np.arange(4))
        >>> split = protocol_a_split(data, SplitConfig(protocol="A", session_items=2))
        >>> split.test.target.tolist(), split.valid.target.tolist(), split.train.target.tolist()
        ([[3, -1]], [[0, -1]], [[2, -1]])
    """
    data.validate()
    inter = data.interactions
    m, n = config.session_items, config.max_history
    present = {s: c for s, c in config.labels.items() if c in inter.columns}
    skipped = {s: c for s, c in config.labels.items() if c not in inter.columns}
    signals = list(present)
    row_labels, nan_filled = label_matrix(inter, list(present.values()))
    users_raw = inter["user_id"].to_numpy(np.int64)
    order = time_order(users_raw, inter["timestamp"].to_numpy(np.int64))
    log_users = users_raw[order]
    pre_users, pre_items, _ = pre_period(data)
    users, items, labels, logged = merge_pre_period(
        pre_users,
        pre_items,
        np.zeros((len(pre_users), len(signals)), np.float32),
        log_users,
        inter["item_id"].to_numpy(np.int64)[order],
        row_labels[order],
    )
    num_users = data.num_users
    offsets = user_offsets(users, num_users)
    num_pre = np.bincount(pre_users, minlength=num_users)
    num_log = np.bincount(log_users, minlength=num_users)
    held = np.minimum(2, np.maximum(num_log - 1, 0))  # RecBole leave_one_out: min(2, L - 1) held out
    pos = np.arange(len(users))
    rank = pos - offsets[users] - num_pre[users]  # position among the user's logged items (< 0: pre-period)
    train_end = (num_log - held)[users]

    def make(select: np.ndarray, run_len: np.ndarray) -> Tuple[SampleSet, int]:
        at, who = pos[select], users[select]
        start = np.maximum(offsets[who], at - n)
        target, lab = target_runs(items, labels, at, run_len, m)
        return assemble_samples(who, items, start, at - start, target, lab, signals, config.min_history)

    train_sel = logged & (rank < train_end)
    train, d_train = make(train_sel, np.minimum(m, (train_end - rank)[train_sel]))
    valid_sel = logged & (held[users] == 2) & (rank == num_log[users] - 2)
    valid, d_valid = make(valid_sel, np.ones(int(valid_sel.sum()), np.int64))
    test_sel = logged & (held[users] >= 1) & (rank == num_log[users] - 1)
    test, d_test = make(test_sel, np.ones(int(test_sel.sum()), np.int64))
    dropped = {
        "users_with_one_interaction": int((num_log == 1).sum()),
        "users_with_two_interactions": int((num_log == 2).sum()),
        "train_short_history": d_train,
        "valid_short_history": d_valid,
        "test_short_history": d_test,
        "label_nan_filled": nan_filled,
    }
    seq_sel = train_sel | ~logged
    sequences = pd.DataFrame({"user_id": users[seq_sel], "item_id": items[seq_sel]})
    return SplitA(train, valid, test, dropped, skipped, sequences)


def _day_numbers(data: InteractionData, utc_offset_hours: float) -> np.ndarray:
    """[R] int64 calendar day (YYYYMMDD) of each interaction: the ``date`` column, else timestamp + offset."""
    inter = data.interactions
    if "date" in inter.columns:
        return inter["date"].to_numpy(np.int64)
    shifted = inter["timestamp"].to_numpy(np.int64) + int(round(utc_offset_hours * 3_600_000))
    day = (shifted // MS_PER_DAY).astype("datetime64[D]")
    month = day.astype("datetime64[M]")
    years = day.astype("datetime64[Y]").astype(np.int64) + 1970
    months = month.astype(np.int64) % 12 + 1
    return years * 10000 + months * 100 + (day - month).astype(np.int64) + 1


def _as_int(day: datetime.date) -> int:
    return day.year * 10000 + day.month * 100 + day.day


def _boundaries(days: np.ndarray, config: SplitConfig) -> Tuple[int, int, int]:
    """Resolved (valid_start, test_start, test_end) as YYYYMMDD ints (defaults in the module docstring)."""
    last = int(days.max())
    end = (
        datetime.date.fromisoformat(config.test_end)
        if config.test_end
        else datetime.date(last // 10000, last // 100 % 100, last % 100)
    )
    test_start = datetime.date.fromisoformat(config.test_start) if config.test_start else end - datetime.timedelta(1)
    valid_start = (
        datetime.date.fromisoformat(config.valid_start) if config.valid_start else test_start - datetime.timedelta(2)
    )
    if not valid_start <= test_start <= end:
        raise DataError(
            f"protocol B day boundaries resolve to valid_start={valid_start}, test_start={test_start}, "
            f"test_end={end}; they must be in order: set split.valid_start/test_start/test_end"
        )
    return _as_int(valid_start), _as_int(test_start), _as_int(end)


def _check_columns(data: InteractionData, config: SplitConfig) -> None:
    """DataError naming the signal/column of ``config`` that the interaction table lacks."""
    cols = data.interactions.columns
    if config.positive_col and config.positive_col not in cols:
        raise DataError(
            f"{data.name}: split.positive_col={config.positive_col!r} is not a column "
            f"(columns: {list(cols)}); set it to one of them, or to '' to count every row as positive"
        )
    for signal, col in config.labels.items():
        if col not in cols:
            raise DataError(
                f"{data.name}: label signal {signal!r} maps to column {col!r}, which the data lacks "
                f"(columns: {list(cols)}); fix split.labels.{signal}"
            )


def _eval_targets(
    frame: Dict[str, np.ndarray], new: np.ndarray, m: int, num_signals: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Session targets of one window.

    Returns:
        (first row [K] of each session with a positive, targets [K, m], labels [K, m, S], sessions without a
        positive, positives beyond m).
    """
    sid = np.cumsum(new) - 1
    prow = np.flatnonzero(frame["positive"])
    psid = sid[prow]
    rank = np.arange(len(prow)) - np.searchsorted(psid, psid, side="left")  # order among the session's positives
    sessions = np.unique(psid)
    keep = rank < m
    k = np.searchsorted(sessions, psid[keep])
    target = np.full((len(sessions), m), PAD_ITEM, dtype=np.int64)
    target[k, rank[keep]] = frame["item"][prow[keep]]
    labels = np.zeros((len(sessions), m, num_signals), dtype=np.float32)
    labels[k, rank[keep]] = frame["labels"][prow[keep]]
    first = np.flatnonzero(new)[sessions]
    return first, target, labels, int(new.sum()) - len(sessions), int((~keep).sum())


def protocol_b_split(data: InteractionData, config: SplitConfig) -> SplitB:
    """Day split with sessions of docs/EVAL.md protocol B (rules in the module docstring).

    Args:
        data (InteractionData): interactions with ``positive_col`` and the label columns, optional ``date``
            and pre-period ``histories``.
        config (SplitConfig): day boundaries, ``session_rule``, n, m, ``labels``, ``min_history``.

    Returns:
        SplitB: train/valid/test SampleSets (targets [N, M], labels [N, M, S]), impression tables, drop counts
        and window statistics.

    Example:
        >>> day = 86_400_000
        >>> inter = pd.DataFrame({"user_id": [0, 0, 0, 0], "item_id": [1, 2, 3, 4],
        ...                       "timestamp": [0, day, 2 * day, 2 * day + 1], "click": [1, 1, 1, 0],
        ...                       "long_view": [0, 1, 1, 0], "like": [0, 0, 0, 1]}).astype("int64")
        >>> data = InteractionData("toy", inter, pd.DataFrame({"item_id": np.arange(5)}), np.arange(1), np.arange(5))
        >>> split = protocol_b_split(data, SplitConfig(protocol="B", session_items=2, valid_start="1970-01-02",
        ...                                            test_start="1970-01-03"))
        >>> split.test[0].history.tolist(), split.test.target.tolist(), split.test.labels[0, 0].tolist()
        ([1, 2], [[3, -1]], [1.0, 1.0, 0.0])
    """
    data.validate()
    _check_columns(data, config)
    inter = data.interactions
    m, n, num_users = config.session_items, config.max_history, data.num_users
    signals, columns = list(config.labels), list(config.labels.values())
    row_labels, nan_filled = label_matrix(inter, columns)
    days = _day_numbers(data, config.utc_offset_hours)
    valid_start, test_start, test_end = _boundaries(days, config)
    window = np.where(days < valid_start, 0, np.where(days < test_start, 1, np.where(days <= test_end, 2, -1)))
    positive = (inter[config.positive_col].to_numpy() == 1) if config.positive_col else np.ones(len(inter), bool)
    order = time_order(inter["user_id"].to_numpy(np.int64), inter["timestamp"].to_numpy(np.int64))
    order = order[window[order] >= 0]
    rows = {
        "user": inter["user_id"].to_numpy(np.int64)[order],
        "item": inter["item_id"].to_numpy(np.int64)[order],
        "time": inter["timestamp"].to_numpy(np.int64)[order],
        "day": days[order],
        "window": window[order],
        "positive": positive[order],
        "labels": row_labels[order],
        # a randomly exposing policy's impression (KuaiRand's random log, the synthetic world's is_rand sessions)
        "is_rand": (inter["is_rand"].to_numpy() == 1)[order]
        if "is_rand" in inter.columns
        else np.zeros(len(order), bool),
    }
    for name, count in (("train", rows["window"] == 0), ("test", rows["window"] == 2)):
        if not count.any():
            raise DataError(
                f"{data.name}: protocol B {name} window is empty "
                f"(days {int(days.min())}..{int(days.max())},"
                f" valid_start={valid_start}, test_start={test_start}, test_end={test_end})"
            )
    pre_users, pre_items, pre_frame = pre_period(data)
    pre_labels = np.zeros((len(pre_users), len(columns)), np.float32)
    for j, col in enumerate(columns):  # the histories' own column, else 1 for the positive column, 0 otherwise
        pre_labels[:, j] = (
            pre_frame[col].to_numpy(np.float32) if col in pre_frame.columns else col == config.positive_col
        )
    pre_nan = np.isnan(pre_labels)
    pre_labels[pre_nan] = 0.0
    dropped: Dict[str, int] = {
        "rows_after_test_end": int((window < 0).sum()),
        "label_nan_filled": nan_filled + int(pre_nan.sum()),
    }
    stats: Dict[str, object] = {
        "valid_start": valid_start,
        "test_start": test_start,
        "test_end": test_end,
        "session_rule": config.session_rule,
        "pre_period_items": int(len(pre_users)),
    }

    # Training: runs of m over pre-period + training-day positives, stride m, first run at position min_history.
    sel = (rows["window"] == 0) & rows["positive"]
    t_users, t_items, t_labels, _ = merge_pre_period(
        pre_users, pre_items, pre_labels, rows["user"][sel], rows["item"][sel], rows["labels"][sel]
    )
    t_off = user_offsets(t_users, num_users)
    rank = np.arange(len(t_users)) - t_off[t_users]
    length = np.diff(t_off)
    s0 = config.min_history
    stride = config.train_stride or m
    at = np.flatnonzero((rank >= s0) & ((rank - s0) % stride == 0))
    who = t_users[at]
    hist_start = np.maximum(t_off[who], at - n)
    target, labels = target_runs(t_items, t_labels, at, np.minimum(m, length[who] - rank[at]), m)
    train, dropped["train_short_history"] = assemble_samples(
        who, t_items, hist_start, at - hist_start, target, labels, signals, s0
    )
    dropped["train_users_without_target"] = int(((length > 0) & (length <= s0)).sum())
    num_pre = np.bincount(pre_users, minlength=num_users)
    stats["train_target_items_from_pre_period"] = int(np.clip(num_pre[who] - rank[at], 0, m).sum())

    # Evaluation histories: pre-period + every logged positive before the session's first impression.
    a_users, a_items, _, _ = merge_pre_period(
        pre_users,
        pre_items,
        np.zeros((len(pre_users), 0), np.float32),
        rows["user"][rows["positive"]],
        rows["item"][rows["positive"]],
        np.zeros((int(rows["positive"].sum()), 0), np.float32),
    )
    a_off = user_offsets(a_users, num_users)
    cpos = np.concatenate([[0], np.cumsum(rows["positive"])])  # cpos[r] = positives among sorted rows [0, r)
    log_off = user_offsets(rows["user"], num_users)

    sets: Dict[str, SampleSet] = {"train": train}
    impressions: Dict[str, pd.DataFrame] = {}
    gap_ms = config.session_gap_minutes * 60_000
    for w, name in enumerate(WINDOWS):
        idx = np.flatnonzero(rows["window"] == w)
        part = {key: value[idx] for key, value in rows.items()}
        new = np.ones(len(idx), bool)
        new[1:] = part["user"][1:] != part["user"][:-1]
        if config.session_rule == "gap":
            new[1:] |= np.diff(part["time"]) >= gap_ms
        impressions[name] = pd.DataFrame(
            {
                "user_id": part["user"],
                "item_id": part["item"],
                "timestamp": part["time"],
                "day": part["day"],
                "session_id": np.cumsum(new) - 1,
                "positive": part["positive"],
                "is_rand": part["is_rand"],
                **{s: part["labels"][:, j] for j, s in enumerate(signals)},
            }
        )
        per_user = np.bincount(part["user"][part["positive"]], minlength=num_users)
        window_stats: Dict[str, int] = {
            "users": int(len(np.unique(part["user"]))),
            "impressions": int(len(idx)),
            "positives": int(part["positive"].sum()),
            "sessions": int(new.sum()),
            **{f"users_with_{k}_positives": int((per_user >= k).sum()) for k in (1, 2, 3)},
        }
        stats[name] = window_stats
        if name == "train":
            continue
        first, target, labels, no_pos, beyond = _eval_targets(part, new, m, len(signals))
        dropped[f"{name}_sessions_without_positive"] = no_pos
        dropped[f"{name}_positives_beyond_m"] = beyond
        row = idx[first]  # sorted-row index of each target session's first impression
        who = rows["user"][row]
        end = a_off[who] + num_pre[who] + cpos[row] - cpos[log_off[who]]
        hist_start = np.maximum(a_off[who], end - n)
        sets[name], dropped[f"{name}_short_history"] = assemble_samples(
            who, a_items, hist_start, end - hist_start, target, labels, signals, s0
        )
        window_stats["sessions_with_positive"] = int(len(first))
    sequences = pd.DataFrame({"user_id": t_users, "item_id": t_items})
    return SplitB(sets["train"], sets["valid"], sets["test"], impressions, dropped, stats, sequences)
