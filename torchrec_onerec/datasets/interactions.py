"""The canonical data set every loader produces: one interaction table and one item table.

Ids are contiguous ints (``user_id`` in [0, num_users), ``item_id`` in [0, num_items)) and the raw ids are
kept in ``raw_user_ids`` / ``raw_item_ids`` (index = contiguous id). Timestamps are int64 milliseconds since
the Unix epoch (UTC), exact, so that stable sorts on them reproduce file order on ties (docs/EVAL.md protocol A).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("user_id", "item_id", "timestamp")


class DataError(ValueError):
    """Input data that cannot be used as given; the message names the file, column, row or value."""


@dataclass
class InteractionData:
    """One loaded data set in canonical form.

    Args:
        name: the data set's name (``synthetic``, ``kuairand``, ``ml-100k``, a file stem ...).
        interactions: one row per interaction/impression, in source order: ``user_id`` (int64),
            ``item_id`` (int64), ``timestamp`` (int64 ms, UTC), optional ``date`` (int YYYYMMDD, the source's
            own calendar day where it has one) and feedback columns (``click``, ``long_view``, ``like`` ...,
            numeric).
        items: one row per item, ``item_id`` 0..num_items-1 in order, plus optional side features/text.
        raw_user_ids: raw user id of each contiguous user id, shape [num_users].
        raw_item_ids: raw item id of each contiguous item id, shape [num_items].
        users: optional user side features, ``user_id`` 0..num_users-1 in order.
        histories: optional interactions from before the logged period (KuaiRand's pre-slice watch
            sequences), columns ``user_id``, ``item_id``, ``timestamp`` (may be -1 when unknown), in
            chronological order per user; they extend histories but are never targets.
        item_embeddings: optional content embedding [num_items, d] (float32) that the data set brings.
        dropped: counts of rows dropped while loading, by reason (never silent).
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    raw_user_ids: np.ndarray
    raw_item_ids: np.ndarray
    users: Optional[pd.DataFrame] = None
    histories: Optional[pd.DataFrame] = None
    item_embeddings: Optional[np.ndarray] = None
    dropped: Dict[str, int] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.raw_user_ids)

    @property
    def num_items(self) -> int:
        return len(self.raw_item_ids)

    @property
    def feedback_columns(self) -> list[str]:
        """Numeric columns beyond the ids, the timestamp and the date."""
        return [c for c in self.interactions.columns if c not in (*REQUIRED_COLUMNS, "date")]

    def validate(self) -> "InteractionData":
        """Check the canonical invariants; raise DataError naming the first violation. Returns self."""
        inter = self.interactions
        for col in REQUIRED_COLUMNS:
            if col not in inter.columns:
                raise DataError(
                    f"{self.name}: interaction table has no column {col!r} (columns: {list(inter.columns)})"
                )
            if inter[col].dtype != np.int64:
                raise DataError(f"{self.name}: column {col!r} must be int64, got {inter[col].dtype}")
        if len(inter) == 0:
            raise DataError(f"{self.name}: the interaction table is empty")
        for col, n in (("user_id", self.num_users), ("item_id", self.num_items)):
            lo, hi = int(inter[col].min()), int(inter[col].max())
            if lo < 0 or hi >= n:
                raise DataError(f"{self.name}: {col} values span [{lo}, {hi}] but there are {n} ids")
        if len(self.items) != self.num_items or not np.array_equal(
            self.items["item_id"].to_numpy(), np.arange(self.num_items)
        ):
            raise DataError(f"{self.name}: item table must list item_id 0..{self.num_items - 1} in order")
        if self.item_embeddings is not None and self.item_embeddings.shape[0] != self.num_items:
            raise DataError(
                f"{self.name}: item_embeddings has {self.item_embeddings.shape[0]} rows for {self.num_items} items"
            )
        return self

    def summary(self) -> Dict[str, object]:
        """Counts a user reads first: users, items, interactions, per-user lengths, feedback means (rates of 0/1
        columns), drops."""
        inter = self.interactions
        per_user = inter.groupby("user_id").size()
        out: Dict[str, object] = {
            "name": self.name,
            "users": self.num_users,
            "items": self.num_items,
            "interactions": int(len(inter)),
            "users_with_interactions": int(len(per_user)),
            "interactions_per_user": {
                "mean": float(per_user.mean()),
                "median": float(per_user.median()),
                "min": int(per_user.min()),
                "max": int(per_user.max()),
            },
            "first_timestamp_ms": int(inter["timestamp"].min()),
            "last_timestamp_ms": int(inter["timestamp"].max()),
            "feedback_means": {c: float(inter[c].mean()) for c in self.feedback_columns},  # rates for 0/1 columns
            "dropped": dict(self.dropped),
        }
        if self.histories is not None:
            out["pre_period_history_items"] = int(len(self.histories))
        return out


def encode_ids(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids to contiguous int64 codes in order of first appearance sorted by raw value.

    Returns:
        (codes [len(raw)] int64, uniques [num_ids]) with ``uniques[codes] == raw``.

    Example:
        >>> codes, uniques = encode_ids(pd.Series(["b", "a", "b"]))
        >>> codes.tolist(), uniques.tolist()
        ([1, 0, 1], ['a', 'b'])
    """
    codes, uniques = pd.factorize(raw, sort=True)
    return codes.astype(np.int64), np.asarray(uniques)
