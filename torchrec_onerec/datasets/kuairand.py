"""Loader for KuaiRand-Pure (Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly
Exposed Videos", CIKM 2022; licence CC BY-SA 4.0): the short-video log OneRec's session-wise generation,
reward model and alignment are measured on (docs/EVAL.md protocol B).

Folder layout (``../shared/data/kuairand-pure``): ``log_standard_4_25_to_5_08_pure.csv`` (required; the original
columns), ``user_histories_before_4_25.parquet``, ``video_features_basic_pure.csv`` and ``user_features_pure.csv``
(each optional: a warning says when one is absent).

Rules:

- Interactions: every log row, in file order, as released. The release holds 5,460 exact duplicate rows (and
  425 more that repeat a user, video and ``time_ms`` with other feedback); they are kept, since the published
  statistics (228,329 impressions, the docs/EVAL.md counts) include them. ``timestamp`` = ``time_ms``; ``date`` = the
  file's ``date`` column (YYYYMMDD, Beijing calendar; ~1% of rows disagree with ``time_ms`` read in UTC+8, so
  day splits should read ``date``). Feedback: ``is_click``->``click``, ``long_view``, ``is_like``->``like``,
  ``is_follow``->``follow``, ``is_comment``->``comment``, ``is_forward``->``forward``, ``is_hate``->``hate``,
  ``play_time_ms``, ``duration_ms`` (required), and when present ``profile_stay_time``, ``comment_stay_time``,
  ``is_profile_enter``->``profile_enter``, ``is_rand`` (random exposure) and ``tab``.
- Histories: each user's ``watch_seq`` (the most recent <= 50 videos watched before 04-25; ``history_len`` counts
  them all) exploded to rows in order. Timestamps are synthesised 1 ms apart, the last one at ``last_time_ms``,
  or 1 ms before the user's first logged impression where that is earlier (3 users of the release): an exact
  order key that always precedes the log, not a watch time. ``like_seq`` and ``long_watch_seq`` are separate
  capped sequences that do not align with ``watch_seq`` and are not loaded.
- Users: everyone in the log or with a non-empty history (history-only users give training sequences to
  protocol B); ``users`` joins ``user_features_pure.csv``.
- Catalogue: every video in the log or in a history (no interaction is dropped for a missing item); features
  from ``video_features_basic_pure.csv`` where it has a row, missing (NaN) otherwise; ``tag`` stays text
  (comma-separated tag ids). Feature rows of videos/users outside the catalogue are counted as
  ``dropped["item_features_unused"]`` / ``dropped["user_features_unused"]``.
- Drops (counted, with a warning): log rows with an empty cell in a read column (``missing_<column>``);
  history items of a row whose ``user_id`` is empty (``history_missing_user_id``) or that are themselves
  empty (``history_missing_item_id``); users whose ``watch_seq`` is empty and who have no log rows
  (``history_without_items``, counted in users). A user with two history rows is a DataError.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from torchrec_onerec.datasets.interactions import DataError, InteractionData
from torchrec_onerec.datasets.readers import (
    Source,
    as_int64,
    as_numeric,
    assemble,
    check_path,
    drop_missing,
    join_features,
    read_csv,
    require_columns,
    show,
)

LOG_FILE = "log_standard_4_25_to_5_08_pure.csv"
HISTORY_FILE = "user_histories_before_4_25.parquet"
VIDEO_FILE = "video_features_basic_pure.csv"
USER_FILE = "user_features_pure.csv"
FEEDBACK = {
    "is_click": "click",
    "long_view": "long_view",
    "is_like": "like",
    "is_follow": "follow",
    "is_comment": "comment",
    "is_forward": "forward",
    "is_hate": "hate",
    "play_time_ms": "play_time_ms",
    "duration_ms": "duration_ms",
}
OPTIONAL_FEEDBACK = {
    "profile_stay_time": "profile_stay_time",
    "comment_stay_time": "comment_stay_time",
    "is_profile_enter": "profile_enter",
    "is_rand": "is_rand",
    "tab": "tab",
}
T = TypeVar("T")
_LOG_IDS = {"user_id": "user_id", "video_id": "item_id", "time_ms": "timestamp", "date": "date"}


def load_kuairand(path: str) -> InteractionData:
    """Load a KuaiRand-Pure folder into canonical form (rules in the module docstring).

    Args:
        path: the folder holding ``log_standard_4_25_to_5_08_pure.csv`` and the optional side files.

    Returns:
        Validated InteractionData named ``kuairand``: ``interactions`` (user_id, item_id, timestamp, date,
        click, long_view, like, follow, comment, forward, hate, play_time_ms, duration_ms, ...), ``items``
        (item_id + video features), ``users`` (user_id + user features, or None), ``histories`` (user_id,
        item_id, timestamp; or None) and ``dropped``.

    Example:
        >>> import os, tempfile, warnings
        >>> d = tempfile.mkdtemp()
        >>> header = ",".join(["user_id", "video_id", "date", "time_ms", *FEEDBACK])
        >>> row = "7,3,20220425,1650816000000," + "1,1,0,0,0,0,0,9,20"
        >>> _ = open(os.path.join(d, LOG_FILE), "w").write(f"{header}\\n{row}\\n")
        >>> with warnings.catch_warnings():  # the side files are absent
        ...     warnings.simplefilter("ignore")
        ...     data = load_kuairand(d)
        >>> data.interactions[["user_id", "item_id", "timestamp", "date", "click"]].values.tolist()
        [[0, 0, 1650816000000, 20220425, 1]]
    """
    folder = check_path(path, "a KuaiRand-Pure folder", folder=True)
    dropped: Dict[str, int] = {}
    log = _read_log(Source(str(folder / LOG_FILE)), dropped)
    histories = _optional(folder / HISTORY_FILE, lambda p: _read_histories(p, log, dropped))
    data = assemble("kuairand", log, dropped, histories)
    video_src, user_src = Source(str(folder / VIDEO_FILE)), Source(str(folder / USER_FILE))
    videos = _optional(folder / VIDEO_FILE, lambda p: _read_features(p, "video_id", text=("tag",)))
    if videos is not None:
        data.items = join_features(data.raw_item_ids, videos, "video_id", video_src, dropped, "item")
    users = _optional(folder / USER_FILE, lambda p: _read_features(p, "user_id", text=()))
    if users is not None:
        data.users = join_features(data.raw_user_ids, users, "user_id", user_src, dropped, "user")
    return data.validate()


def _optional(path: Path, read: Callable[[Path], T]) -> Optional[T]:
    """``read(path)`` when the side file exists, else None with a warning."""
    if path.exists():
        return read(path)
    warnings.warn(f"{path} is absent: loading KuaiRand without it", stacklevel=3)
    return None


def _read_log(src: Source, dropped: Dict[str, int]) -> pd.DataFrame:
    """The impression log: canonical columns in file order, after dropping (and counting) incomplete rows."""
    required = [*_LOG_IDS, *FEEDBACK]
    frame = read_csv(src, sep=",", required=required, optional=list(OPTIONAL_FEEDBACK))
    names = {**_LOG_IDS, **FEEDBACK, **OPTIONAL_FEEDBACK}
    frame = drop_missing(frame, [c for c in names if c in frame.columns], src, dropped, names)
    out = {names[c]: as_int64(frame[c], src, c) for c in ("user_id", "video_id", "time_ms", "date")}
    for col, name in {**FEEDBACK, **OPTIONAL_FEEDBACK}.items():
        if col in frame.columns:
            out[name] = as_numeric(frame[col], src, col)
    return pd.DataFrame(out)


def _read_histories(path: Path, log: pd.DataFrame, dropped: Dict[str, int]) -> pd.DataFrame:
    """The pre-slice ``watch_seq`` of every user as (user_id, item_id, timestamp) rows, per user in order."""
    src = Source(str(path), first_line=None)
    columns = ["user_id", "last_time_ms", "watch_seq"]
    try:
        require_columns(src, pq.read_schema(path).names, columns)
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    users = table.column("user_id").to_pandas()
    seqs = table.column("watch_seq").combine_chunks()
    lengths = seqs.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    keep = users.notna().to_numpy()
    _count(dropped, "history_missing_user_id", int(lengths[~keep].sum()), src, np.flatnonzero(~keep))
    dup = users.duplicated() & users.notna()
    if dup.any():
        raise DataError(f"{src.at(dup.idxmax())}: user_id {show(users[dup.idxmax()])} has a second row")
    user_ids = as_int64(users.fillna(-1), src, "user_id").to_numpy()
    first_log = log.groupby("user_id")["timestamp"].min()
    last = table.column("last_time_ms").to_pandas().fillna(log["timestamp"].min() - 1)
    end = as_int64(last, src, "last_time_ms").to_numpy(copy=True)
    first = first_log.reindex(user_ids)
    has_log = first.notna().to_numpy()
    end[has_log] = np.minimum(end[has_log], first.to_numpy()[has_log].astype(np.int64) - 1)
    empty = keep & (lengths == 0) & ~has_log
    _count(dropped, "history_without_items", int(empty.sum()), src, np.flatnonzero(empty))
    items = pc.list_flatten(seqs).to_pandas()  # null lists contribute nothing, like their zero length
    row = np.repeat(np.arange(len(lengths)), lengths)
    back = np.repeat(np.cumsum(lengths), lengths) - 1 - np.arange(len(row))  # items after this one
    hist = pd.DataFrame({"user_id": user_ids[row], "item_id": items, "timestamp": end[row] - back})
    hist = hist[keep[row]]
    missing = hist["item_id"].isna()
    _count(dropped, "history_missing_item_id", int(missing.sum()), src, np.unique(row[hist.index[missing]]))
    hist = hist[~missing]
    return hist.assign(item_id=as_int64(hist["item_id"], src, "watch_seq")).reset_index(drop=True)


def _count(dropped: Dict[str, int], reason: str, n: int, src: Source, rows: np.ndarray) -> None:
    """Record ``n`` dropped history items/users under ``reason`` with a warning naming the file's rows."""
    if n:
        dropped[reason] = n
        warnings.warn(f"{src.path}: dropped {n} ({reason}; {src.lines(rows)})", stacklevel=3)


def _read_features(path: Path, key: str, text: Sequence[str]) -> pd.DataFrame:
    """Every column of a side-feature CSV (``text`` columns as text); the join checks the ids."""
    return read_csv(Source(str(path)), sep=",", required=[key], optional=None, text_columns=text)
