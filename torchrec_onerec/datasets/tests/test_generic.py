"""Tests of the generic readers: sequence files, CSV/parquet interaction tables and their bad-input rules."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from torchrec_onerec.datasets.generic import load_interaction_table, load_sequence_file
from torchrec_onerec.datasets.interactions import DataError


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _table(path: str, **kwargs: object) -> pd.DataFrame:
    return load_interaction_table(path, **kwargs).interactions  # type: ignore[arg-type]


# ---- sequence files -------------------------------------------------------------------------------------------


def test_sequence_file_positions_are_exact_order(tmp_path: Path) -> None:
    data = load_sequence_file(_write(tmp_path / "s.txt", "u2 b a\n\nu1\tc  a b\n"))
    inter = data.interactions
    assert data.raw_user_ids.tolist() == ["u1", "u2"] and data.raw_item_ids.tolist() == ["a", "b", "c"]
    assert data.raw_user_ids[inter["user_id"]].tolist() == ["u2", "u2", "u1", "u1", "u1"]
    assert data.raw_item_ids[inter["item_id"]].tolist() == ["b", "a", "c", "a", "b"]
    assert inter["timestamp"].tolist() == [0, 1, 0, 1, 2] and data.dropped == {}


def test_sequence_line_with_one_token_is_dropped_and_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.txt", "1 10 11\n2\n3 12\n4\n")
    with pytest.warns(UserWarning, match=r"lines 2, 4"):
        data = load_sequence_file(path)
    assert data.dropped == {"sequence_without_items": 2}
    assert data.raw_user_ids.tolist() == [1, 3] and len(data.interactions) == 3


def test_sequence_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_sequence_file(str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="is empty"):
        load_sequence_file(_write(tmp_path / "e.txt", "\n  \n"))
    with pytest.raises(DataError, match=r"user 'u1' has more than one line \(lines 1, 3\)"):
        load_sequence_file(_write(tmp_path / "d.txt", "u1 a\nu2 b\nu1 c\n"))
    with pytest.raises(DataError, match=r"d2.txt line 2: empty field"):
        load_sequence_file(_write(tmp_path / "d2.txt", "u1,a\nu2,,b\n"), sep=",")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"no line has an item.*sep=','"):
        load_sequence_file(_write(tmp_path / "w.txt", "u1 a b\nu2 c\n"), sep=",")
    (tmp_path / "l.txt").write_bytes("u1 a\nu2 caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l.txt line 2: byte 0xe9 is not UTF-8 text"):
        load_sequence_file(str(tmp_path / "l.txt"))


# ---- interaction tables ---------------------------------------------------------------------------------------


def test_table_csv_keeps_order_feedback_and_text_ids(tmp_path: Path) -> None:
    path = _write(tmp_path / "log.tsv", "uid\tiid\tts\tclick\n007\tx\t3\t1\n7\ty\t1\t0\n007\ty\t2\t1\n")
    data = load_interaction_table(
        path, user_col="uid", item_col="iid", time_col="ts", feedback_cols=["click"], sep="\t"
    )
    assert data.name == "log" and data.raw_user_ids.tolist() == ["007", "7"]
    assert data.interactions.values.tolist() == [[0, 0, 3000, 1], [1, 1, 1000, 0], [0, 1, 2000, 1]]
    assert data.interactions["timestamp"].dtype == np.int64


def test_table_parquet_and_whitespace_csv(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": [5, 6], "item_id": [9, 9], "timestamp": [1.5, 2.0], "r": [4.0, 3.0]})
    frame.to_parquet(tmp_path / "t.parquet")
    inter = _table(str(tmp_path / "t.parquet"), feedback_cols=["r"], timestamp_unit="ms")
    assert inter["timestamp"].tolist() == [2, 2] and inter["r"].tolist() == [4.0, 3.0]
    path = _write(tmp_path / "w.txt", "user_id item_id   timestamp\n1 2 3\n")
    assert _table(path, sep="whitespace").values.tolist() == [[0, 0, 3000]]


@pytest.mark.parametrize(
    "unit, values, expected",
    [
        ("s", ["874965758.0", "874965758.0015"], [874965758000, 874965758002]),
        ("s", ["874965758", "-1"], [874965758000, -1000]),
        ("ms", ["1650812741436", "2.5"], [1650812741436, 3]),
        ("us", ["1650812741436499", "1500"], [1650812741436, 2]),
        ("ns", ["1650812741436500000", "-1500000"], [1650812741437, -1]),
        ("datetime", ["2022-04-25 08:00:00+08:00", "2022-04-25T00:00:00.0004"], [1650844800000, 1650844800000]),
    ],
)
def test_timestamp_units_convert_exactly(tmp_path: Path, unit: str, values: list, expected: list) -> None:
    rows = "".join(f"u{i},i,{v}\n" for i, v in enumerate(values))
    inter = _table(_write(tmp_path / "t.csv", "user_id,item_id,timestamp\n" + rows), timestamp_unit=unit)
    assert inter["timestamp"].tolist() == expected and inter["timestamp"].dtype == np.int64


def test_mixed_datetime_formats_parse(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "user_id,item_id,timestamp\na,i,2022-04-25\nb,i,2022-04-25 00:00:01\n")
    assert _table(path, timestamp_unit="datetime")["timestamp"].tolist() == [1650844800000, 1650844801000]


def test_unparsable_timestamps_name_line_and_value(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "user_id,item_id,timestamp\na,i,10\nb,i,soon\n")
    with pytest.raises(DataError, match=r"t.csv line 3: column 'timestamp' has non-numeric value 'soon'"):
        _table(path)
    with pytest.raises(DataError, match=r"t.csv line 2: column 'timestamp' has unparsable timestamp '10'"):
        _table(path, timestamp_unit="datetime")
    frame = pd.DataFrame({"user_id": [1], "item_id": [2], "timestamp": pd.to_datetime(["2022-01-01"])})
    frame.to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError, match="timestamp_unit=datetime"):
        _table(str(tmp_path / "d.parquet"))
    assert _table(str(tmp_path / "d.parquet"), timestamp_unit="datetime")["timestamp"].tolist() == [1640995200000]


def test_missing_columns_list_existing_ones(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "user,item_id,timestamp\na,i,1\n")
    with pytest.raises(DataError, match=r"no column 'user_id' \(columns: \['user', 'item_id', 'timestamp'\]\)"):
        _table(path)
    with pytest.raises(DataError, match="no column 'clicks'.*did you mean 'click'"):
        _table(_write(tmp_path / "c.csv", "user_id,item_id,timestamp,click\na,i,1,0\n"), feedback_cols=["clicks"])
    pd.DataFrame({"u": [1]}).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p.parquet: no column 'user_id' \(columns: \['u'\]\)"):
        _table(str(tmp_path / "p.parquet"))


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is empty"):
        _table(_write(tmp_path / "e.csv", ""))
    with pytest.raises(DataError, match="header but no data rows"):
        _table(_write(tmp_path / "h.csv", "user_id,item_id,timestamp\n"))
    with pytest.raises(DataError, match="does not exist"):
        _table(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="is a folder"):
        _table(str(tmp_path))
    with pytest.raises(DataError, match="not a readable parquet file"):
        _table(_write(tmp_path / "x.parquet", "not parquet"))
    (tmp_path / "l.csv").write_bytes("us\u00e9r,item_id,timestamp\na,i,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"l.csv line 1: cannot parse the header"):
        _table(str(tmp_path / "l.csv"))


def test_missing_ids_are_dropped_and_counted(tmp_path: Path) -> None:
    text = "user_id,item_id,timestamp,r\na,i,1,1\n,i,2,1\n\nb,,3,1\nb,j,,1\nb,j,4,\nc,k,5,1\n"
    with pytest.warns(UserWarning) as record:
        data = load_interaction_table(_write(tmp_path / "t.csv", text), feedback_cols=["r"])
    assert "empty 'user_id' (lines 3, 4)" in str(record[0].message)
    assert data.dropped == {"missing_user_id": 2, "missing_item_id": 1, "missing_timestamp": 1, "missing_r": 1}
    assert data.raw_user_ids.tolist() == ["a", "c"] and len(data.interactions) == 2


def test_duplicates_dropped_or_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "user_id,item_id,timestamp\na,i,1\nb,i,1\na,i,1.0\na,i,1\n")
    with pytest.warns(UserWarning, match="lines 4, 5"):
        data = load_interaction_table(path)
    assert data.dropped == {"duplicate": 2} and len(data.interactions) == 2
    with pytest.raises(DataError, match=r"t.csv line 4 repeats line 2 \(user_id='a', item_id='i', timestamp=1000\)"):
        load_interaction_table(path, drop_duplicates=False)


def test_non_numeric_feedback_and_no_rows_left(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.csv", "user_id,item_id,timestamp,r\na,i,1,1\na,j,2,yes\n")
    with pytest.raises(DataError, match=r"line 3: column 'r' has non-numeric value 'yes'"):
        _table(path, feedback_cols=["r"])
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no interactions left"):
        _table(_write(tmp_path / "n.csv", "user_id,item_id,timestamp\n,i,1\n"))
