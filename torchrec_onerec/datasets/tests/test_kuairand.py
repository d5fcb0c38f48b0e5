"""Tests of the KuaiRand-Pure loader on a tiny folder with the release's layout."""

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pytest

from torchrec_onerec.datasets.interactions import DataError
from torchrec_onerec.datasets.kuairand import FEEDBACK, HISTORY_FILE, LOG_FILE, USER_FILE, VIDEO_FILE, load_kuairand

T0 = 1650816000000  # 2022-04-25 00:00 Beijing


def _log(rows: list) -> pd.DataFrame:
    """Log rows (user, video, time offset, click, like) with the release's columns."""
    frame = pd.DataFrame(rows, columns=["user_id", "video_id", "offset", "is_click", "is_like"])
    out = pd.DataFrame({"user_id": frame["user_id"], "video_id": frame["video_id"], "date": 20220425, "hourmin": 0})
    out["time_ms"] = T0 + frame["offset"]
    for col in FEEDBACK:
        out[col] = frame[col] if col in frame else 0
    return out.assign(is_rand=0, tab=1)


def _folder(tmp_path: Path, log: Optional[pd.DataFrame] = None, histories: Optional[pd.DataFrame] = None) -> str:
    """A KuaiRand-Pure folder: users 10, 11 in the log; 10, 12 with histories; video 99 only in a history."""
    log = log if log is not None else _log([[10, 5, 100, 1, 0], [11, 6, 50, 0, 0], [10, 6, 200, 1, 1]])
    log.to_csv(tmp_path / LOG_FILE, index=False)
    if histories is None:
        histories = pd.DataFrame(
            {"user_id": [10, 12], "history_len": [70, 1], "last_time_ms": [T0 - 1000, T0 - 5000]}
        ).assign(watch_seq=[[7, 5, 7], [99]], like_seq=[[], []], long_watch_seq=[[7], []])
    histories.to_parquet(tmp_path / HISTORY_FILE)
    pd.DataFrame(
        {"video_id": [5, 6, 7, 99, 1000], "video_type": ["NORMAL", "AD", "NORMAL", "NORMAL", "NORMAL"],
         "video_duration": [1.5, np.nan, 3.0, 4.0, 5.0], "tag": ["1,2", "3", None, "4", "5"]}
    ).to_csv(tmp_path / VIDEO_FILE, index=False)  # fmt: skip
    pd.DataFrame({"user_id": [10, 11, 12, 13], "user_active_degree": ["high", "low", "full", "x"]}).to_csv(
        tmp_path / USER_FILE, index=False
    )
    return str(tmp_path)


def test_canonical_interactions(tmp_path: Path) -> None:
    data = load_kuairand(_folder(tmp_path))
    inter = data.interactions
    assert list(inter.columns[:13]) == [
        "user_id", "item_id", "timestamp", "date", "click", "long_view", "like", "follow", "comment",
        "forward", "hate", "play_time_ms", "duration_ms",
    ]  # fmt: skip
    assert {"is_rand", "tab"} <= set(inter.columns) and "hourmin" not in inter.columns
    assert data.raw_user_ids[inter["user_id"]].tolist() == [10, 11, 10]  # file order
    assert data.raw_item_ids[inter["item_id"]].tolist() == [5, 6, 6]
    assert inter["timestamp"].tolist() == [T0 + 100, T0 + 50, T0 + 200] and inter["date"].tolist() == [20220425] * 3
    assert inter["click"].tolist() == [1, 0, 1] and inter["like"].tolist() == [0, 0, 1]
    assert all(inter[c].dtype == np.int64 for c in ("user_id", "item_id", "timestamp", "date"))


def test_catalogue_users_and_features(tmp_path: Path) -> None:
    data = load_kuairand(_folder(tmp_path))
    assert data.raw_item_ids.tolist() == [5, 6, 7, 99]  # log + histories; video 1000 unused
    assert data.raw_user_ids.tolist() == [10, 11, 12]  # user 12 only has a history
    assert data.dropped == {"item_features_unused": 1, "user_features_unused": 1}
    items = data.items
    assert items["item_id"].tolist() == [0, 1, 2, 3]
    assert items["video_type"].tolist() == ["NORMAL", "AD", "NORMAL", "NORMAL"]
    assert items["tag"].iloc[0] == "1,2" and pd.isna(items["tag"].iloc[2]) and np.isnan(items["video_duration"].iloc[1])
    assert data.users is not None and data.users["user_active_degree"].tolist() == ["high", "low", "full"]


def test_histories_exploded_in_order_before_the_log(tmp_path: Path) -> None:
    data = load_kuairand(_folder(tmp_path))
    hist = data.histories
    assert hist is not None and list(hist.columns) == ["user_id", "item_id", "timestamp"]
    assert data.raw_user_ids[hist["user_id"]].tolist() == [10, 10, 10, 12]
    assert data.raw_item_ids[hist["item_id"]].tolist() == [7, 5, 7, 99]
    assert hist["timestamp"].tolist() == [T0 - 1002, T0 - 1001, T0 - 1000, T0 - 5000]


def test_history_clamped_before_first_impression_and_bad_rows_counted(tmp_path: Path) -> None:
    histories = pd.DataFrame(
        {"user_id": [10, None, 13, 11], "history_len": [2, 1, 0, 2], "last_time_ms": [T0 + 10_000, T0, T0, T0 - 9]}
    ).assign(watch_seq=[[7, 5], [5], [], [5, None]], like_seq=[[]] * 4, long_watch_seq=[[]] * 4)
    with pytest.warns(UserWarning) as record:
        data = load_kuairand(_folder(tmp_path, histories=histories))
    assert data.dropped["history_missing_user_id"] == 1 and data.dropped["history_without_items"] == 1
    assert data.dropped["history_missing_item_id"] == 1
    assert any("row 1" in str(w.message) for w in record)
    hist = data.histories
    assert hist is not None and hist["timestamp"].tolist() == [T0 + 98, T0 + 99, T0 - 10]  # user 10 first logs at +100
    assert data.raw_user_ids.tolist() == [10, 11]  # user 13: empty history and no log


def test_user_with_two_history_rows_is_an_error(tmp_path: Path) -> None:
    histories = pd.DataFrame({"user_id": [10, 10], "history_len": [1, 1], "last_time_ms": [T0, T0]}).assign(
        watch_seq=[[7], [5]], like_seq=[[], []], long_watch_seq=[[], []]
    )
    with pytest.raises(DataError, match=rf"{HISTORY_FILE} row 1: user_id 10 has a second row"):
        load_kuairand(_folder(tmp_path, histories=histories))


def test_missing_ids_dropped_and_counted(tmp_path: Path) -> None:
    log = _log([[10, 5, 100, 1, 0], [11, 6, 50, 0, 0], [10, 6, 200, 1, 1]]).astype({"video_id": "float64"})
    log.loc[1, "video_id"] = np.nan
    with pytest.warns(UserWarning, match=r"line 3"):
        data = load_kuairand(_folder(tmp_path, log=log))
    assert data.dropped["missing_item_id"] == 1 and len(data.interactions) == 2


def test_bad_log_values_and_columns(tmp_path: Path) -> None:
    log = _log([[10, 5, 100, 1, 0]]).astype({"time_ms": "str"})
    log.loc[0, "time_ms"] = "noon"
    with pytest.raises(DataError, match=r"line 2: column 'time_ms' has non-numeric value 'noon'"):
        load_kuairand(_folder(tmp_path, log=log))
    with pytest.raises(DataError, match=r"no column 'is_click' \(columns: \['user_id', 'video_id'"):
        load_kuairand(_folder(tmp_path, log=_log([[10, 5, 100, 1, 0]]).drop(columns="is_click")))
    log = _log([[10, 5, 100, 1, 0]]).astype({"user_id": "float64"})
    log.loc[0, "user_id"] = 10.5
    with pytest.raises(DataError, match=r"column 'user_id' has non-integer value 10.5"):
        load_kuairand(_folder(tmp_path, log=log))


def test_missing_folder_files_and_empty_log(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_kuairand(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=f"{LOG_FILE} does not exist"):
        load_kuairand(str(tmp_path))
    (tmp_path / LOG_FILE).write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_kuairand(str(tmp_path))
    _log([[10, 5, 100, 1, 0]]).to_csv(tmp_path / LOG_FILE, index=False)
    with pytest.warns(UserWarning, match="absent"):
        data = load_kuairand(str(tmp_path))
    assert data.histories is None and data.users is None and list(data.items.columns) == ["item_id"]
