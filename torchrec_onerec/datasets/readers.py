"""Shared reading checks for every loader: files and columns that must exist, missing values, timestamps,
duplicates, id encoding and side-feature joins, with messages that name the file, line/row, column and value.

Rules every loader follows (nothing is lost silently):

- Row positions in messages are ``line N`` of a text file (1-based, blank lines counted) or ``row N`` (0-based)
  of a parquet file.
- A missing file, an empty file, a missing column (the message lists the columns that exist), a value that is
  present but cannot be read (a non-numeric id, feedback value or timestamp) is a ``DataError`` naming the
  file, the column and the line/row and value.
- A row with an empty id, timestamp or feedback cell is dropped and counted in ``dropped["missing_<column>"]``
  (with a warning listing the first lines); a row missing several is counted once, under its first column.
  A blank line inside a table is such a row (so line numbers stay exact).
- Timestamps become exact int64 ms since the Unix epoch (UTC). Units ``s``/``ms``/``us``/``ns`` are integers
  or decimals; fractions of a millisecond are rounded to the nearest ms, halves up (float input carries its
  float64 rounding, e.g. ``874965758.0`` s is exactly ``874965758000`` ms). ``datetime`` text is parsed with
  pandas; text without a zone is read as UTC, text with one is converted to UTC.
- Ids are encoded with :func:`encode_ids`; raw ids that are all canonical integers (``"42"``, not ``"042"``)
  become int64, anything else stays text.
"""

from __future__ import annotations

import csv
import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from torchrec_onerec.datasets.interactions import DataError, InteractionData, encode_ids

WHITESPACE = "whitespace"
PARQUET_SUFFIXES = (".parquet", ".pq")
_SHOWN = 5  # line numbers a warning lists
_MS_RATIO = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}  # ms = value * a / b


@dataclass(frozen=True)
class Source:
    """A file being read, and how data row i maps to what a user finds in it.

    Args:
        path: the file.
        first_line: file line (1-based) of data row 0 in a text file; None for a parquet file (``row i``).

    Example:
        >>> Source("a.csv").at(0), Source("u.data", first_line=1).at(4), Source("t.parquet", None).at(3)
        ('a.csv line 2', 'u.data line 5', 't.parquet row 3')
    """

    path: str
    first_line: Optional[int] = 2

    def at(self, row: int) -> str:
        """Where data row ``row`` (0-based) is, in the user's terms: the path and :meth:`position`."""
        return f"{self.path} {self.position(row)}"

    def position(self, row: int) -> str:
        """``line N`` or ``row N`` of data row ``row`` (0-based)."""
        return f"row {int(row)}" if self.first_line is None else f"line {int(row) + self.first_line}"

    def lines(self, rows: Union[Sequence[int], np.ndarray]) -> str:
        """The first few positions of ``rows`` as a short list for a warning."""
        unit, base = ("row", 0) if self.first_line is None else ("line", self.first_line)
        shown = ", ".join(str(int(r) + base) for r in list(rows)[:_SHOWN])
        return f"{unit}{'s' if len(rows) > 1 else ''} {shown}{', ...' if len(rows) > _SHOWN else ''}"


def show(value: object) -> str:
    """``repr`` of a cell as a user wrote it (numpy scalars as plain Python values).

    Example:
        >>> show(np.int64(3)), show("x")
        ('3', "'x'")
    """
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_path(path: str, what: str, *, folder: bool) -> Path:
    """Return ``path`` as a Path, or raise DataError naming it and what was expected there."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path} does not exist (expected {what})")
    if folder != p.is_dir():
        raise DataError(f"{path} is a {'file' if folder else 'folder'}, expected {what}")
    return p


def require_columns(src: Source, columns: Sequence[str], required: Sequence[str]) -> None:
    """Raise DataError for the first required column missing from ``columns``, listing those that exist."""
    for col in required:
        if col not in columns:
            close = difflib.get_close_matches(col, [str(c) for c in columns], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{src.path}: no column {col!r} (columns: {list(columns)}){hint}")


def read_csv(
    src: Source,
    *,
    sep: str,
    required: Sequence[str],
    optional: Optional[Sequence[str]] = (),
    text_columns: Sequence[str] = (),
    names: Optional[Sequence[str]] = None,
    rename: Optional[Callable[[str], str]] = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
) -> pd.DataFrame:
    """Read a delimited text file after checking its columns; index = data row number.

    Args:
        src: the file (``first_line`` 2 with a header, 1 without).
        sep: field separator, or ``"whitespace"``.
        required, optional: columns to read (after ``rename``); a missing required column is an error;
            ``optional=None`` reads every column.
        text_columns: columns read as text (ids, tags) rather than inferred.
        names: column names of a file without a header line.
        rename: maps header names to column names (RecBole's ``user_id:token`` -> ``user_id``).
        encoding, quoting: as in ``pandas.read_csv``.

    Returns:
        The requested columns, one row per data line (blank lines are all-missing rows, so line numbers hold).
    """
    if check_path(src.path, "a delimited text file", folder=False).stat().st_size == 0:
        raise DataError(f"{src.path} is empty")
    kwargs = dict(sep=r"\s+" if sep == WHITESPACE else sep, encoding=encoding, quoting=quoting)
    try:
        header = list(names) if names is not None else list(pd.read_csv(src.path, nrows=0, **kwargs).columns)
    except pd.errors.EmptyDataError:
        raise DataError(f"{src.path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{src.path} line 1: cannot parse the header: {exc}") from None
    clean = [rename(c) for c in header] if rename else header
    require_columns(src, clean, required)
    wanted = [c for c in clean if c not in required] if optional is None else optional
    keep = [c for c in (*required, *wanted) if c in clean]
    raw = {clean.index(c): c for c in keep}
    try:
        frame = pd.read_csv(
            src.path,
            header=None if names is not None else 0,
            names=header if names is not None else None,
            usecols=[header[i] for i in raw],
            dtype={header[i]: "str" for i, c in raw.items() if c in text_columns},
            skip_blank_lines=False,
            **kwargs,
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{src.path}: cannot parse: {exc}") from None
    frame = frame.rename(columns={header[i]: c for i, c in raw.items()})[keep]
    if len(frame) == 0:
        raise DataError(f"{src.path} has a header but no data rows")
    return frame


def read_parquet(src: Source, *, required: Sequence[str]) -> pd.DataFrame:
    """Read the ``required`` columns of a parquet file after checking them; index = row number."""
    check_path(src.path, "a parquet file", folder=False)
    try:
        names = pq.read_schema(src.path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{src.path}: not a readable parquet file ({exc})") from None
    require_columns(src, names, required)
    frame = pd.read_parquet(src.path, columns=list(required))
    if len(frame) == 0:
        raise DataError(f"{src.path} has no rows")
    return frame.reset_index(drop=True)


def drop_missing(
    frame: pd.DataFrame, columns: Sequence[str], src: Source, dropped: Dict[str, int], names: Dict[str, str]
) -> pd.DataFrame:
    """Drop rows with an empty cell in ``columns``; count them as ``missing_<canonical name>`` and warn."""
    for col in columns:
        missing = frame[col].isna()
        if missing.any():
            name = f"missing_{names.get(col, col)}"
            dropped[name] = dropped.get(name, 0) + int(missing.sum())
            warnings.warn(
                f"{src.path}: dropped {int(missing.sum())} row(s) with an empty {col!r} "
                f"({src.lines(frame.index[missing])}); counted as dropped[{name!r}]",
                stacklevel=3,
            )
            frame = frame[~missing]
    return frame


def as_numeric(values: pd.Series, src: Source, col: str) -> pd.Series:
    """``values`` as numbers, or DataError naming the first value that is not one (missing cells stay NaN)."""
    if pd.api.types.is_bool_dtype(values):
        out = values.astype(np.int64)
    elif pd.api.types.is_numeric_dtype(values):
        out = values
    else:
        out = pd.to_numeric(values, errors="coerce")
        bad = out.isna() & values.notna()
        if bad.any():
            row = bad.idxmax()
            raise DataError(f"{src.at(row)}: column {col!r} has non-numeric value {show(values[row])}")
    if out.dtype.kind == "f" and np.isinf(out.to_numpy()).any():
        row = out.index[np.isinf(out.to_numpy())][0]
        raise DataError(f"{src.at(row)}: column {col!r} has infinite value {show(values[row])}")
    return out


def as_int64(values: pd.Series, src: Source, col: str) -> pd.Series:
    """``values`` (no missing cells) as int64, or DataError naming the first value that is not an integer."""
    out = as_numeric(values, src, col)
    if out.dtype.kind == "f":
        frac = out.to_numpy() != np.floor(out.to_numpy())
        if frac.any():
            row = out.index[frac][0]
            raise DataError(f"{src.at(row)}: column {col!r} has non-integer value {show(values[row])}")
    return out.astype(np.int64)


def normalise_ids(values: pd.Series) -> pd.Series:
    """Raw ids (no missing cells) as int64 when every one is a canonical integer, else as text.

    Example:
        >>> normalise_ids(pd.Series(["7", "12"])).tolist(), normalise_ids(pd.Series(["7", "007"])).tolist()
        ([7, 12], ['7', '007'])
    """
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and (values.to_numpy() == np.floor(values.to_numpy())).all():
        return values.astype(np.int64)
    text = values.astype("str")
    if text.str.fullmatch(r"-?(0|[1-9][0-9]{0,17})").all():
        return text.astype(np.int64)
    return text


def to_epoch_ms(values: pd.Series, unit: str, src: Source, col: str) -> pd.Series:
    """Timestamps (no missing cells) in ``unit`` (s, ms, us, ns, datetime) as exact int64 ms since the epoch.

    Example:
        >>> src = Source("t.csv")
        >>> to_epoch_ms(pd.Series([874965758.0, 1.0015]), "s", src, "ts").tolist()
        [874965758000, 1002]
        >>> to_epoch_ms(pd.Series(["1970-01-01T00:00:01.5+01:00"]), "datetime", src, "ts").tolist()
        [-3598500]
    """
    if unit == "datetime":
        return _datetime_to_ms(values, src, col)
    if values.dtype.kind == "M":
        raise DataError(f"{src.path}: column {col!r} holds datetimes; set data.timestamp_unit=datetime")
    num = as_numeric(values, src, col)
    mul, div = _MS_RATIO[unit]
    if num.dtype.kind in "iu":
        ints = num.to_numpy().astype(np.int64)
        if len(ints) and np.abs(ints).max() > np.iinfo(np.int64).max // mul - div:
            raise DataError(f"{src.path}: column {col!r} has values too large for unit {unit!r}")
        return pd.Series((ints * mul + div // 2) // div, index=values.index)
    return pd.Series(np.floor(num.to_numpy() * mul / div + 0.5).astype(np.int64), index=values.index)


def _datetime_to_ms(values: pd.Series, src: Source, col: str) -> pd.Series:
    """Parse date/time text (or datetime values) to int64 ms UTC; DataError naming the first unparsable one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas' "could not infer format" notice
        parsed = pd.to_datetime(values, errors="coerce", utc=True)
        retry = parsed.isna() & values.notna()
        if retry.any():  # mixed formats: parse those one by one
            parsed[retry] = pd.to_datetime(values[retry], errors="coerce", utc=True, format="mixed")
    bad = parsed.isna() & values.notna()
    if bad.any():
        row = bad.idxmax()
        raise DataError(f"{src.at(row)}: column {col!r} has unparsable timestamp {show(values[row])}")
    ns = parsed.dt.tz_localize(None).dt.as_unit("ns").astype(np.int64).to_numpy()
    return pd.Series((ns + 500_000) // 1_000_000, index=values.index)


def handle_duplicates(
    frame: pd.DataFrame, keys: Sequence[str], src: Source, dropped: Dict[str, int], *, drop: bool
) -> pd.DataFrame:
    """Drop repeated ``keys`` rows (keep the first, count ``duplicate``) or raise DataError naming a pair."""
    dup = frame.duplicated(list(keys), keep="first")
    if not dup.any():
        return frame
    if drop:
        dropped["duplicate"] = dropped.get("duplicate", 0) + int(dup.sum())
        warnings.warn(
            f"{src.path}: dropped {int(dup.sum())} duplicate {tuple(keys)} rows ({src.lines(frame.index[dup])}); "
            "counted as dropped['duplicate']",
            stacklevel=2,
        )
        return frame[~dup]
    row = dup.idxmax()
    same = (frame[list(keys)] == frame.loc[row, list(keys)]).all(axis=1)
    values = ", ".join(f"{k}={show(frame.loc[row, k])}" for k in keys)
    raise DataError(
        f"{src.at(row)} repeats {src.position(same.idxmax())} ({values}); set data.drop_duplicates=true to drop repeats"
    )


def assemble(
    name: str, interactions: pd.DataFrame, dropped: Dict[str, int], histories: Optional[pd.DataFrame] = None
) -> InteractionData:
    """Encode raw ids into contiguous ones: users and items are those of ``interactions`` and ``histories``.

    Args:
        name: the data set's name.
        interactions: raw ``user_id``, ``item_id``, int64 ``timestamp`` and further numeric columns, in order.
        dropped: counts by reason so far (kept by reference).
        histories: optional pre-period rows with raw ``user_id``, ``item_id``, ``timestamp``.

    Returns:
        InteractionData with id-only ``items`` (join features with :func:`join_features`), not yet validated.
    """
    if len(interactions) == 0:
        raise DataError(f"{name}: no interactions left after dropping rows ({dropped})")
    hist = histories if histories is not None else interactions.iloc[:0]
    n = len(interactions)
    users, raw_users = encode_ids(pd.concat([interactions["user_id"], hist["user_id"]], ignore_index=True))
    items, raw_items = encode_ids(pd.concat([interactions["item_id"], hist["item_id"]], ignore_index=True))
    inter = interactions.reset_index(drop=True).assign(user_id=users[:n], item_id=items[:n])
    if histories is not None:
        histories = histories.reset_index(drop=True).assign(user_id=users[n:], item_id=items[n:])
    return InteractionData(
        name=name,
        interactions=inter,
        items=pd.DataFrame({"item_id": np.arange(len(raw_items), dtype=np.int64)}),
        raw_user_ids=raw_users,
        raw_item_ids=raw_items,
        histories=histories,
        dropped=dropped,
    )


def join_features(
    raw_ids: np.ndarray, features: pd.DataFrame, key: str, src: Source, dropped: Dict[str, int], what: str
) -> pd.DataFrame:
    """Side features in contiguous-id order: row i holds the features of raw id ``raw_ids[i]``.

    Ids without a row get missing features (a warning says how many); rows whose id is not among ``raw_ids``
    (or is empty) are counted as ``dropped["<what>_features_unused"]``; a repeated id is a DataError.

    Args:
        raw_ids: raw id of each contiguous id, [num_ids].
        features: one row per raw id, the id in column ``key`` (read as :func:`normalise_ids` reads it).
        key: the id column of ``features``.
        src: the features file, for messages.
        dropped: counts by reason (updated).
        what: ``item`` or ``user``; the output's id column is ``<what>_id``.

    Returns:
        ``<what>_id`` 0..len(raw_ids)-1 followed by the feature columns.
    """
    total = len(features)
    features = features[features[key].notna()]
    features = features.assign(**{key: normalise_ids(features[key])})
    dup = features[key].duplicated()
    if dup.any():
        row = dup.idxmax()
        raise DataError(f"{src.at(row)}: {key} {show(features.loc[row, key])} has a second row")
    table = features.set_index(key)
    found = table.index.get_indexer(raw_ids) >= 0
    unused = total - int(found.sum())
    if unused:
        dropped[f"{what}_features_unused"] = unused
    if not found.all():
        warnings.warn(f"{src.path}: {int((~found).sum())} of {len(raw_ids)} {what}s have no row; features missing")
    out = table.reindex(raw_ids).reset_index(drop=True)
    out.insert(0, f"{what}_id", np.arange(len(raw_ids), dtype=np.int64))
    return out
