"""Generic readers: a one-line-per-user sequence file and a CSV/parquet interaction table with configurable
column names (docs/EVAL.md: the project must read data beyond the bundled sets). Shared rules: ``readers.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pandas as pd

from torchrec_onerec.datasets.interactions import DataError, InteractionData
from torchrec_onerec.datasets.readers import (
    PARQUET_SUFFIXES,
    WHITESPACE,
    Source,
    as_numeric,
    assemble,
    check_path,
    drop_missing,
    handle_duplicates,
    normalise_ids,
    read_csv,
    read_parquet,
    to_epoch_ms,
)


def load_interaction_table(
    path: str,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
    timestamp_unit: str = "s",
    feedback_cols: Sequence[str] = (),
    sep: str = ",",
    drop_duplicates: bool = True,
) -> InteractionData:
    """Load a CSV (any separator) or parquet (``.parquet``/``.pq``) table with one row per interaction.

    Args:
        path: the file.
        user_col, item_col, time_col: its user, item and timestamp columns.
        timestamp_unit: s, ms, us, ns or datetime (conversion rules: ``readers.py``).
        feedback_cols: numeric feedback columns to keep, under their own names.
        sep: CSV field separator or ``"whitespace"``.
        drop_duplicates: drop repeated (user, item, timestamp) rows and count them; if False they are an error.

    Returns:
        Validated InteractionData named after the file stem; items carry no features.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "log.csv")
        >>> _ = open(f, "w").write("u,i,t,r\\na,x,10,1\\nb,x,5,0\\na,y,12,1\\n")
        >>> d = load_interaction_table(f, user_col="u", item_col="i", time_col="t", feedback_cols=["r"])
        >>> d.interactions.values.tolist(), d.raw_user_ids.tolist()
        ([[0, 0, 10000, 1], [1, 0, 5000, 0], [0, 1, 12000, 1]], ['a', 'b'])
    """
    ids = (user_col, item_col)
    required = list(dict.fromkeys([*ids, time_col, *feedback_cols]))
    if path.lower().endswith(PARQUET_SUFFIXES):
        src = Source(path, first_line=None)
        frame = read_parquet(src, required=required)
    else:
        src = Source(path)
        frame = read_csv(src, sep=sep, required=required, text_columns=ids)
    canonical = {user_col: "user_id", item_col: "item_id", time_col: "timestamp"}
    dropped: Dict[str, int] = {}
    frame = drop_missing(frame, required, src, dropped, canonical)
    out = pd.DataFrame(
        {
            "user_id": normalise_ids(frame[user_col]),
            "item_id": normalise_ids(frame[item_col]),
            "timestamp": to_epoch_ms(frame[time_col], timestamp_unit, src, time_col),
            **{c: as_numeric(frame[c], src, c) for c in feedback_cols if c not in canonical},
        }
    )
    out = handle_duplicates(out, ["user_id", "item_id", "timestamp"], src, dropped, drop=drop_duplicates)
    return assemble(Path(path).stem, out, dropped).validate()


def load_sequence_file(path: str, sep: str = WHITESPACE) -> InteractionData:
    """Load a file with one line per user: ``user item item ...``, items in chronological order.

    Rules: blank lines are skipped; a line with a user and no items is dropped and counted as
    ``dropped["sequence_without_items"]`` (a warning lists the lines); a user on two lines, or an empty field
    between two separators, is a DataError naming the lines. Timestamps are the item's position in its line
    (0, 1, 2 ... ms since the epoch): an exact order key, not a time.

    Args:
        path: the file (UTF-8).
        sep: the token separator, or ``"whitespace"`` (any run of spaces/tabs).

    Returns:
        Validated InteractionData named after the file stem; items carry no features.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "seq.txt")
        >>> _ = open(f, "w").write("u1 5 7 5\\nu2 7\\n")
        >>> d = load_sequence_file(f)
        >>> d.interactions.values.tolist(), d.raw_item_ids.tolist()
        ([[0, 0, 0], [0, 1, 1], [0, 0, 2], [1, 1, 0]], [5, 7])
    """
    src = Source(path, first_line=1)
    check_path(path, "a sequence file (one line per user: user item item ...)", folder=False)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        row, byte = raw[: exc.start].count(b"\n"), raw[exc.start]
        raise DataError(f"{src.at(row)}: byte {byte:#04x} is not UTF-8 text; save the file as UTF-8") from None
    lines = pd.Series(text.splitlines(), dtype="str").str.strip()
    lines = lines[lines != ""]
    if len(lines) == 0:
        raise DataError(f"{path} is empty")
    tokens = lines.str.split(None if sep == WHITESPACE else sep, regex=False).explode().str.strip()
    if (tokens == "").any():
        row = tokens.index[(tokens == "").to_numpy()][0]
        raise DataError(f"{src.at(row)}: empty field between two {sep!r} separators")
    position = tokens.groupby(level=0).cumcount().to_numpy()
    users = tokens[position == 0]
    dup = users.duplicated(keep=False)
    if dup.any():
        rows = users.index[(users == users[dup].iloc[0]).to_numpy()]
        raise DataError(f"{path}: user {users[dup].iloc[0]!r} has more than one line ({src.lines(rows)})")
    counts = pd.Series(position, index=tokens.index).groupby(level=0).max()
    lonely = counts.index[(counts == 0).to_numpy()]
    dropped: Dict[str, int] = {}
    if len(lonely):
        dropped["sequence_without_items"] = len(lonely)
        warnings.warn(
            f"{path}: dropped {len(lonely)} lines with a user and no items ({src.lines(lonely)}); "
            "counted as dropped['sequence_without_items']",
            stacklevel=2,
        )
    items = tokens[position > 0]
    out = pd.DataFrame(
        {
            "user_id": normalise_ids(users.reindex(items.index)).to_numpy(),
            "item_id": normalise_ids(items).to_numpy(),
            "timestamp": (position[position > 0] - 1).astype(np.int64),
        }
    )
    if len(out) == 0:
        raise DataError(f"{path}: no line has an item after its user token (is sep={sep!r} right?)")
    return assemble(Path(path).stem, out, dropped).validate()
