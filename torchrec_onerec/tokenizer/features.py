"""Item embeddings from item side features, for the semantic-ID tokenizer (docs/METHOD.md section 1).

OneRec quantises a content embedding of each item; a catalogue without one can use its side features. Column
rules (``TokenizerConfig``: feature_columns, max_feature_categories, categorical_max_values):

- bool: one 0/1 column, standardised like a number.
- numbers: integer-valued columns with at most ``categorical_max_values`` distinct values, or named ``*_id``
  (author_id, music_id ...), are categories (one-hot); other numbers are standardised (mean 0, std 1; a missing
  value becomes the mean, i.e. 0; a constant column carries nothing and is skipped).
- text: values holding a separator (``,``, ``|``, ``;`` or white space) are token lists (multi-hot: genres
  "Action Comedy", KuaiRand tags "1,5,7"), others one category each (one-hot: "NORMAL"/"AD"); lists in a cell are
  token lists too. A column whose token vocabulary exceeds ``max_feature_categories`` is free text (titles) and
  is skipped unless named in ``feature_columns``; then, as for every category column, the
  ``max_feature_categories`` most frequent tokens are kept.
Missing values, skipped columns and dropped rare tokens are counted in the returned notes.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Tuple

import numpy as np
import pandas as pd

from torchrec_onerec.datasets.interactions import DataError
from torchrec_onerec.tokenizer.config import TokenizerConfig

SEPARATORS = re.compile(r"[,|;\s]+")


def feature_matrix(items: pd.DataFrame, config: TokenizerConfig) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Encode the item table's side features as one float matrix.

    Args:
        items (pd.DataFrame): ``item_id`` 0..I-1 in order plus feature columns.
        config (TokenizerConfig): feature_columns, max_feature_categories, categorical_max_values.

    Returns:
        ([I, F] float32 features, notes: per column its kind and width, skipped columns with the reason,
        missing values and dropped rare tokens per column).

    Example:
        >>> items = pd.DataFrame({"item_id": [0, 1, 2], "duration": [1.5, 3.0, 4.5],
        ...                       "genres": ["Action Comedy", "Comedy", "Drama"]})
        >>> x, notes = feature_matrix(items, TokenizerConfig())
        >>> x.astype(float).round(2).tolist()
        [[-1.22, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.22, 0.0, 0.0, 1.0]]
        >>> notes["columns"]
        {'duration': 'numeric:1', 'genres': 'multi-hot:3'}
    """
    explicit = list(config.feature_columns)
    columns = explicit or [c for c in items.columns if c != "item_id"]
    absent = [c for c in columns if c not in items.columns]
    if absent:
        raise DataError(
            f"tokenizer.feature_columns names {absent}, not in the item table (columns: {list(items.columns)})"
        )
    notes: Dict[str, Any] = {"columns": {}, "skipped": {}, "missing_values": {}, "dropped_tokens": {}}
    blocks: List[np.ndarray] = []
    for name in columns:
        series = items[name]
        missing = int(series.isna().sum())
        if missing:
            notes["missing_values"][name] = missing
        if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
            block, kind = _numeric(series, name, config)
        elif (
            isinstance(series.dtype, pd.CategoricalDtype)
            or pd.api.types.is_string_dtype(series)
            or (pd.api.types.is_object_dtype(series))
        ):
            block, kind = _tokens(series.astype(object), name, name in explicit, config, notes)
        else:
            block, kind = None, f"unsupported dtype {series.dtype}"
        if block is None:
            notes["skipped"][name] = kind
        else:
            blocks.append(block)
            notes["columns"][name] = f"{kind}:{block.shape[1]}"
    if not blocks:
        raise DataError(
            f"no usable item feature columns among {columns} (skipped: {notes['skipped']}); "
            "choose tokenizer.feature_columns or another tokenizer.embedding_source"
        )
    return np.concatenate(blocks, axis=1).astype(np.float32), notes


def _numeric(series: pd.Series, name: str, config: TokenizerConfig) -> Tuple[Any, str]:
    values = series.astype("float64").to_numpy(na_value=np.nan)
    known = values[~np.isnan(values)]
    if known.size == 0:
        return None, "all values missing"
    integral = bool(np.all(np.mod(known, 1) == 0)) and not pd.api.types.is_bool_dtype(series)
    distinct = np.unique(known)
    if distinct.size == 1:
        return None, "constant"
    if integral and (distinct.size <= config.categorical_max_values or name.endswith("_id")):
        tokens = [[str(int(v))] if not np.isnan(v) else [] for v in values]
        return _multi_hot(tokens, config.max_feature_categories)[0], "one-hot"
    return np.nan_to_num((values - known.mean()) / known.std(), nan=0.0)[:, None], "numeric"


def _tokens(
    series: pd.Series, name: str, explicit: bool, config: TokenizerConfig, notes: Dict[str, Any]
) -> Tuple[Any, str]:
    cells = series.tolist()
    listed = any(isinstance(c, (list, tuple, np.ndarray)) for c in cells)
    split = listed or any(isinstance(c, str) and SEPARATORS.search(c.strip()) for c in cells)
    tokens = [_cell_tokens(c, split) for c in cells]
    vocab = len({t for cell in tokens for t in cell})
    if vocab > config.max_feature_categories and not explicit:
        return None, f"free text ({vocab} distinct tokens > max_feature_categories={config.max_feature_categories})"
    block, dropped = _multi_hot(tokens, config.max_feature_categories)
    if dropped:
        notes["dropped_tokens"][name] = dropped
    return block, "multi-hot" if split else "one-hot"


def _cell_tokens(cell: Any, split: bool) -> List[str]:
    if isinstance(cell, (list, tuple, np.ndarray)):
        return [str(t) for t in cell]
    if cell is None or (not isinstance(cell, str) and pd.isna(cell)):
        return []
    text = str(cell).strip()
    if not split:
        return [text] if text else []
    return [t for t in SEPARATORS.split(text) if t]


def _multi_hot(tokens: List[List[str]], max_categories: int) -> Tuple[np.ndarray, int]:
    """[I, V] 0/1 matrix over the max_categories most frequent tokens (ties by token); dropped occurrences."""
    flat = pd.Series(tokens, dtype=object).explode().dropna()
    counts = flat.value_counts()
    kept = sorted(sorted(counts.index, key=lambda t: (-counts[t], t))[:max_categories])
    column = flat.map(pd.Series(np.arange(len(kept)), index=kept)).to_numpy(dtype=np.float64, na_value=np.nan)
    found = ~np.isnan(column)
    out = np.zeros((len(tokens), max(len(kept), 1)), dtype=np.float32)
    out[flat.index.to_numpy()[found], column[found].astype(np.int64)] = 1.0
    return out, int((~found).sum())
