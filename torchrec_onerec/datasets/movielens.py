"""Loader for MovieLens (F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS
2015) in RecBole's atomic files or GroupLens' original layout: the next-item benchmark of docs/EVAL.md protocol A.

Layouts, told apart by the folder's files:

- RecBole: exactly one ``<name>.inter`` (tab-separated, typed header ``user_id:token  item_id:token
  rating:float  timestamp:float``), optional ``<name>.item`` and ``<name>.user``. Every ``float`` column of the
  ``.inter`` file but the timestamp is kept as feedback (``rating``); other ``token`` columns are not read.
  Timestamps are seconds.
- GroupLens: ``u.data`` (user, item, rating, timestamp in seconds; tab-separated, no header), optional
  ``u.item`` (``|``-separated, latin-1: id, title with "(year)", release date, video date, URL, 19 genre flags
  named by ``u.genre`` or the standard list) and ``u.user`` (id, age, gender, occupation, zip code).

Both give the same columns: interactions ``user_id, item_id, timestamp, rating``; items ``item_id, title, year
(Int64, <NA> when unknown: RecBole writes 'unkonwn' for item 267), genres`` (space-joined, e.g. "Animation
Children's Comedy") and any further item columns; users ``user_id, age (Int64), gender, occupation, zip_code``.

Rules: users and the catalogue are those of the interactions (no interaction is dropped for a missing item: an
item without a row in the item file keeps missing features, with a warning); item/user rows without
interactions are counted as ``dropped["item_features_unused"]`` / ``["user_features_unused"]``; repeated
(user, item, timestamp) rows are dropped and counted (``duplicate``) or, with ``drop_duplicates=False``, an
error; empty cells follow ``readers.py`` (``missing_<column>``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from torchrec_onerec.datasets.interactions import DataError, InteractionData
from torchrec_onerec.datasets.readers import (
    Source,
    as_numeric,
    assemble,
    check_path,
    drop_missing,
    handle_duplicates,
    join_features,
    normalise_ids,
    read_csv,
    to_epoch_ms,
)

GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
RECBOLE_NAMES = {"movie_title": "title", "release_year": "year", "class": "genres"}
INTEGER_FEATURES = ("year", "age")
_IDS = ("user_id", "item_id")


def load_movielens(path: str, *, drop_duplicates: bool = True) -> InteractionData:
    """Load a MovieLens folder (RecBole atomic files or GroupLens ``u.data``); rules in the module docstring.

    Args:
        path: the folder.
        drop_duplicates: drop repeated (user, item, timestamp) rows and count them; if False they are an error.

    Returns:
        Validated InteractionData named after the ``.inter`` file (RecBole) or the folder (GroupLens).

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> _ = open(os.path.join(d, "toy.inter"), "w").write(
        ...     "user_id:token\\titem_id:token\\trating:float\\ttimestamp:float\\n9\\t4\\t5\\t874965758.0\\n")
        >>> data = load_movielens(d)
        >>> data.name, data.interactions.values.tolist(), data.raw_item_ids.tolist()
        ('toy', [[0, 0, 874965758000, 5]], [4])
    """
    folder = check_path(path, "a MovieLens folder (RecBole '<name>.inter' or GroupLens 'u.data')", folder=True)
    inter_files = sorted(folder.glob("*.inter"))
    if len(inter_files) > 1:
        raise DataError(f"{path} holds several .inter files ({[f.name for f in inter_files]}); expected one")
    if inter_files:
        return _load_recbole(inter_files[0], drop_duplicates)
    if (folder / "u.data").is_file():
        return _load_grouplens(folder, drop_duplicates)
    found = sorted(p.name for p in folder.iterdir())
    raise DataError(f"{path} has neither a RecBole '<name>.inter' file nor GroupLens 'u.data' (files: {found})")


def _recbole_header(src: Source) -> Dict[str, str]:
    """Column name -> RecBole type (token, token_seq, float, float_seq) from a typed header line."""
    with open(src.path, encoding="utf-8") as f:
        fields = f.readline().rstrip("\n").split("\t")
    types = {}
    for field in fields:
        name, _, kind = field.partition(":")
        if kind not in ("token", "token_seq", "float", "float_seq"):
            raise DataError(f"{src.path} line 1: header field {field!r} is not 'name:type' (RecBole atomic file)")
        types[name] = kind
    return types


def _read_recbole(src: Source, required: Sequence[str]) -> Tuple[pd.DataFrame, Dict[str, str]]:
    """Every column of a RecBole atomic file (``token`` columns as text, names without their type), and types."""
    if check_path(src.path, "a RecBole atomic file", folder=False).stat().st_size == 0:
        raise DataError(f"{src.path} is empty")
    types = _recbole_header(src)
    text = [c for c, kind in types.items() if kind != "float"]
    frame = read_csv(
        src,
        sep="\t",
        required=required,
        optional=None,
        text_columns=text,
        rename=lambda c: c.partition(":")[0],
        quoting=csv.QUOTE_NONE,
    )
    return frame, types


def _load_recbole(inter_file: Path, drop_duplicates: bool) -> InteractionData:
    """RecBole atomic files: ``<name>.inter`` and the optional ``<name>.item`` / ``<name>.user`` beside it."""
    src = Source(str(inter_file))
    frame, kinds = _read_recbole(src, [*_IDS, "timestamp"])
    feedback = [c for c in frame.columns if kinds[c] == "float" and c not in (*_IDS, "timestamp")]
    dropped: Dict[str, int] = {}
    data = _interactions(inter_file.stem, frame, feedback, src, dropped, drop_duplicates)
    item_file, user_file = inter_file.with_suffix(".item"), inter_file.with_suffix(".user")
    if item_file.is_file():
        items = _read_recbole(Source(str(item_file)), ["item_id"])[0].rename(columns=RECBOLE_NAMES)
        data.items = _features(data.raw_item_ids, items, "item_id", Source(str(item_file)), dropped, "item")
    if user_file.is_file():
        users = _read_recbole(Source(str(user_file)), ["user_id"])[0]
        data.users = _features(data.raw_user_ids, users, "user_id", Source(str(user_file)), dropped, "user")
    return data.validate()


def _load_grouplens(folder: Path, drop_duplicates: bool) -> InteractionData:
    """GroupLens' original files: ``u.data`` and the optional ``u.item`` / ``u.user`` / ``u.genre``."""
    src = Source(str(folder / "u.data"), first_line=1)
    names = [*_IDS, "rating", "timestamp"]
    frame = read_csv(src, sep="\t", required=names, names=names, text_columns=_IDS)
    dropped: Dict[str, int] = {}
    data = _interactions(folder.name, frame, ["rating"], src, dropped, drop_duplicates)
    if (folder / "u.item").is_file():
        item_src = Source(str(folder / "u.item"), first_line=1)
        items = _grouplens_items(item_src, _genre_names(folder / "u.genre"))
        data.items = _features(data.raw_item_ids, items, "item_id", item_src, dropped, "item")
    if (folder / "u.user").is_file():
        user_src = Source(str(folder / "u.user"), first_line=1)
        cols = ["user_id", "age", "gender", "occupation", "zip_code"]
        users = read_csv(user_src, sep="|", required=cols, names=cols, text_columns=cols, encoding="latin-1")
        data.users = _features(data.raw_user_ids, users, "user_id", user_src, dropped, "user")
    return data.validate()


def _interactions(
    name: str,
    frame: pd.DataFrame,
    feedback: List[str],
    src: Source,
    dropped: Dict[str, int],
    drop_duplicates: bool,
) -> InteractionData:
    """Canonical interactions (timestamps in seconds -> ms) with id-only items, not yet validated."""
    frame = drop_missing(frame, [*_IDS, "timestamp", *feedback], src, dropped, {})
    out = pd.DataFrame(
        {
            "user_id": normalise_ids(frame["user_id"]),
            "item_id": normalise_ids(frame["item_id"]),
            "timestamp": to_epoch_ms(frame["timestamp"], "s", src, "timestamp"),
            **{c: as_numeric(frame[c], src, c) for c in feedback},
        }
    )
    out = handle_duplicates(out, ["user_id", "item_id", "timestamp"], src, dropped, drop=drop_duplicates)
    return assemble(name, out, dropped)


def _features(
    raw_ids: np.ndarray, frame: pd.DataFrame, key: str, src: Source, dropped: Dict[str, int], what: str
) -> pd.DataFrame:
    """Join side features; ``year``/``age`` become nullable Int64 (text that is not a number: <NA>)."""
    for col in INTEGER_FEATURES:
        if col in frame.columns:
            frame = frame.assign(**{col: pd.to_numeric(frame[col], errors="coerce").astype("Int64")})
    return join_features(raw_ids, frame, key, src, dropped, what)


def _genre_names(path: Path) -> Sequence[str]:
    """Genre names in flag order from ``u.genre`` (``name|index`` lines), else the standard 19."""
    if not path.is_file():
        return GENRES
    genres = read_csv(Source(str(path), first_line=1), sep="|", required=["name", "index"], names=["name", "index"])
    return genres.dropna().sort_values("index")["name"].tolist()


def _grouplens_items(src: Source, genres: Sequence[str]) -> pd.DataFrame:
    """``u.item`` as item_id, title, year, genres (space-joined names of the set flags).

    As in RecBole's conversion, the year comes from the title's trailing "(1996)" (removed from the title), else
    from the release date (Kolya: "(1996)", released 24-Jan-1997, is 1996).
    """
    flags = [f"genre_{i}" for i in range(len(genres))]
    names = ["item_id", "title", "release_date", "video_release_date", "imdb_url", *flags]
    frame = read_csv(
        src, sep="|", required=names, names=names, text_columns=names[:5], encoding="latin-1", quoting=csv.QUOTE_NONE
    )
    title = frame["title"].fillna("")
    year = title.str.extract(r"\((\d{4})\)\s*$")[0].fillna(frame["release_date"].str.extract(r"(\d{4})\s*$")[0])
    on = frame[flags].fillna(0).to_numpy() == 1
    label = np.where(on, np.array([f"{g} " for g in genres], dtype=object), "")
    return pd.DataFrame(
        {
            "item_id": frame["item_id"],
            "title": title.str.replace(r"\s*\(\d{4}\)\s*$", "", regex=True),
            "year": year,
            "genres": pd.Series(label.sum(axis=1), index=frame.index, dtype="str").str.rstrip(),
        }
    )
