"""Tests of the MovieLens loader on tiny RecBole and GroupLens folders holding the same ratings."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from torchrec_onerec.datasets.interactions import DataError
from torchrec_onerec.datasets.movielens import GENRES, load_movielens

RATINGS = [(196, 242, 3, 881250949), (186, 302, 3, 891717742), (196, 302, 5, 881250950)]


def _recbole(folder: Path, ratings: list = RATINGS) -> str:
    folder.mkdir(exist_ok=True)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "ml-tiny.inter").write_text(inter + "".join(f"{u}\t{i}\t{r}\t{t}.0\n" for u, i, r, t in ratings))
    (folder / "ml-tiny.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
        "999\tUnrated\tunkonwn\tunknown\n"
    )
    (folder / "ml-tiny.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "186\t39\tF\texecutive\t00000\n196\t49\tM\twriter\t55105\n"
    )
    return str(folder)


def _grouplens(folder: Path) -> str:
    folder.mkdir(exist_ok=True)
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in RATINGS))
    flags = {242: ["Comedy"], 302: ["Crime", "Film-Noir", "Mystery", "Thriller"], 999: ["unknown"]}
    titles = {
        242: ("Kolya (1996)", "24-Jan-1997"),  # RecBole takes the title's year
        302: ("L.A. Confidential (1997)", "01-Jan-1997"),
        999: ("Unrated", ""),
    }
    lines = [
        "|".join([str(i), titles[i][0], titles[i][1], "", "http://x"] + ["1" if g in flags[i] else "0" for g in GENRES])
        for i in flags
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)) + "\n")  # as released
    (folder / "u.user").write_text("186|39|F|executive|00000\n196|49|M|writer|55105\n")
    return str(folder)


def test_recbole_layout(tmp_path: Path) -> None:
    data = load_movielens(_recbole(tmp_path / "rb"))
    assert data.name == "ml-tiny" and data.raw_user_ids.tolist() == [186, 196]
    assert data.raw_item_ids.tolist() == [242, 302]
    assert data.interactions.values.tolist() == [
        [1, 0, 881250949000, 3],
        [0, 1, 891717742000, 3],
        [1, 1, 881250950000, 5],
    ]
    assert data.items["title"].tolist() == ["Kolya", "L.A. Confidential"]
    assert data.items["year"].tolist() == [1996, 1997]
    assert data.items["genres"].iloc[1] == "Crime Film-Noir Mystery Thriller"
    assert data.users is not None and data.users["zip_code"].tolist() == ["00000", "55105"]
    assert data.dropped == {"item_features_unused": 1}


def test_grouplens_layout_matches_recbole(tmp_path: Path) -> None:
    rb, gl = load_movielens(_recbole(tmp_path / "rb")), load_movielens(_grouplens(tmp_path / "gl"))
    assert gl.name == "gl"
    pd.testing.assert_frame_equal(rb.interactions, gl.interactions)
    pd.testing.assert_frame_equal(rb.items, gl.items)
    assert rb.users is not None and gl.users is not None
    pd.testing.assert_frame_equal(rb.users, gl.users)
    assert np.array_equal(rb.raw_item_ids, gl.raw_item_ids) and rb.dropped == gl.dropped


def test_grouplens_without_genre_file_uses_standard_names(tmp_path: Path) -> None:
    folder = Path(_grouplens(tmp_path / "gl"))
    (folder / "u.genre").unlink()
    assert load_movielens(str(folder)).items["genres"].tolist() == ["Comedy", "Crime Film-Noir Mystery Thriller"]


def test_unknown_year_is_missing(tmp_path: Path) -> None:
    data = load_movielens(_recbole(tmp_path / "rb", ratings=[*RATINGS, (186, 999, 1, 881250951)]))
    assert data.items["year"].isna().tolist() == [False, False, True] and data.items["genres"].iloc[2] == "unknown"
    assert data.dropped == {}


def test_item_missing_from_item_file_kept_with_missing_features(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="1 of 3 items have no row"):
        data = load_movielens(_recbole(tmp_path / "rb", ratings=[*RATINGS, (186, 5, 4, 881250951)]))
    assert data.raw_item_ids.tolist() == [5, 242, 302] and pd.isna(data.items["title"].iloc[0])
    assert len(data.interactions) == 4


def test_duplicates_dropped_or_named(tmp_path: Path) -> None:
    folder = _recbole(tmp_path / "rb", ratings=[*RATINGS, RATINGS[1]])
    with pytest.warns(UserWarning, match="line 5"):
        data = load_movielens(folder)
    assert data.dropped["duplicate"] == 1 and len(data.interactions) == 3
    with pytest.raises(DataError, match=r"ml-tiny.inter line 5 repeats line 3"):
        load_movielens(folder, drop_duplicates=False)


def test_bad_folders_and_headers(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_movielens(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"neither .* 'u.data' \(files: \['notes.txt'\]\)"):
        load_movielens(str(tmp_path / "empty"))
    (tmp_path / "empty" / "a.inter").write_text("")
    with pytest.raises(DataError, match="a.inter is empty"):
        load_movielens(str(tmp_path / "empty"))
    (tmp_path / "empty" / "a.inter").write_text("user_id\titem_id\n1\t2\n")
    with pytest.raises(DataError, match=r"line 1: header field 'user_id' is not 'name:type'"):
        load_movielens(str(tmp_path / "empty"))
    (tmp_path / "empty" / "a.inter").write_text("user_id:token\titem:token\ttimestamp:float\n1\t2\t3\n")
    with pytest.raises(DataError, match=r"no column 'item_id' \(columns: \['user_id', 'item', 'timestamp'\]\)"):
        load_movielens(str(tmp_path / "empty"))
    (tmp_path / "empty" / "b.inter").write_text("")
    with pytest.raises(DataError, match="several .inter files"):
        load_movielens(str(tmp_path / "empty"))


def test_grouplens_bad_timestamp_names_line(tmp_path: Path) -> None:
    folder = Path(_grouplens(tmp_path / "gl"))
    (folder / "u.data").write_text("1\t2\t3\t881250949\n1\t3\t4\tlater\n")
    with pytest.raises(DataError, match=r"u.data line 2: column 'timestamp' has non-numeric value 'later'"):
        load_movielens(str(folder))
