"""Schema of the ``data`` config section: which loader reads what."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
from torchrec_onerec.errors import ConfigError

DATA_SOURCES = ("synthetic", "kuairand", "movielens", "sequence", "table")
TIMESTAMP_UNITS = ("s", "ms", "us", "ns", "datetime")


@dataclass
class DataConfig:
    """Where the interactions come from and how to read them.

    Args:
        source: one of ``synthetic`` (the embedded world, no files), ``kuairand`` (the KuaiRand-Pure layout),
            ``movielens`` (RecBole atomic files or GroupLens ``u.data``/``u.item``), ``sequence`` (one line per
            user: ``user item item ...``), ``table`` (a CSV/parquet interaction table).
        path: a folder (kuairand, movielens) or a file (sequence, table); ignored for synthetic.
        user_col, item_col, time_col: column names of a ``table`` source.
        timestamp_unit: unit of ``time_col`` in a ``table`` source: s, ms, us, ns or ``datetime`` (parsed text).
        feedback_cols: extra 0/1 or numeric feedback columns of a ``table`` source to keep.
        sep: field separator of a ``table`` CSV or a ``sequence`` file (``"whitespace"`` for any run of blanks);
            ``auto`` means ``,`` for a table and whitespace for a sequence file.
        drop_duplicates: (movielens and table sources) drop duplicate (user, item, timestamp) rows, counted in
            the statistics; if false, duplicates are an error. KuaiRand keeps its log as released.
    """

    source: str = "synthetic"
    path: Optional[str] = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    timestamp_unit: str = "s"
    feedback_cols: List[str] = field(default_factory=list)
    sep: str = "auto"
    drop_duplicates: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ConfigError(f"data.source={self.source!r} is not one of {DATA_SOURCES}")
        if self.timestamp_unit not in TIMESTAMP_UNITS:
            raise ConfigError(f"data.timestamp_unit={self.timestamp_unit!r} is not one of {TIMESTAMP_UNITS}")
