"""Trivial floors for every report: the most popular training items, scored like the model (docs/EVAL.md A and B).

Popularity = the number of times an item occurs in the split's ``train_sequences`` (the training side only:
pre-period history and training interactions, never validation or test), ties broken by the lower item id.
Every user gets the same list (minus the user's history items when ``eval.exclude_history`` is on), written as
R sessions of M items: under protocol A R = max(ks) one-item sequences, under protocol B
R = ceil(max(ks) / m) sessions of m, the first being the m most popular items. Scores are minus the session
rank. The users, metrics and names are those of ``evaluate_generative``, through ``eval.protocols``.

Shape legend: N samples, U evaluated users, R sessions, M session items, I items.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.metrics import dedupe_rows
from torchrec_onerec.eval.protocols import EvalResult, check_protocol, evaluation_users, score_sessions


def popularity_ranking(train_sequences: pd.DataFrame, num_items: int, k: int) -> np.ndarray:
    """The ``k`` most frequent items of the training sequences, most frequent first (ties: lower id first).

    Args:
        train_sequences (pd.DataFrame): an ``item_id`` column of contiguous ids in [0, I) (``Split*.train_sequences``).
        num_items (int): I, the catalogue size.
        k (int): list length, 1 <= k <= I.

    Returns:
        [k] int64 item ids.

    Example:
        >>> popularity_ranking(pd.DataFrame({"item_id": [2, 0, 2, 1, 0]}), 4, 3).tolist()
        [0, 2, 1]
    """
    if not 1 <= k <= num_items:
        raise ValueError(f"k={k} must lie in [1, num_items={num_items}]; K cannot exceed the catalogue")
    if "item_id" not in train_sequences.columns:
        raise ValueError(f"train_sequences has columns {list(train_sequences.columns)}, it needs 'item_id'")
    ids = train_sequences["item_id"].to_numpy(dtype=np.int64)
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num_items):
        raise ValueError(
            f"train_sequences holds item ids in [{int(ids.min())}, {int(ids.max())}], outside the "
            f"catalogue [0, {num_items}); pass the split's train_sequences and its data's num_items"
        )
    counts = np.bincount(ids, minlength=num_items)
    return np.argsort(-counts, kind="stable")[:k].astype(np.int64)


def _excluding_history(candidates: np.ndarray, samples: SampleSet, num_items: int) -> np.ndarray:
    """[U, C] per-user copies of ``candidates`` [C] with each user's history items removed, left-aligned."""
    U = len(samples)
    history_rows = np.repeat(np.arange(U, dtype=np.int64), samples.history_lengths)
    seen = history_rows * num_items + samples.history_values  # (user, item) keys of every history entry
    keys = np.arange(U, dtype=np.int64)[:, None] * num_items + candidates[None, :]  # [U, C]
    lists = np.where(np.isin(keys, seen), PAD_ITEM, candidates[None, :])
    return dedupe_rows(lists)


def evaluate_popularity(
    samples: SampleSet,
    train_sequences: pd.DataFrame,
    num_items: int,
    *,
    config: EvalConfig,
    protocol: str,
) -> EvalResult:
    """Score the popularity list on the users ``evaluate_generative`` would evaluate.

    Args:
        samples (SampleSet): N validation or test samples.
        train_sequences (pd.DataFrame): the split's ``train_sequences`` (``item_id`` column).
        num_items (int): I, the catalogue size.
        config (EvalConfig): ks and exclude_history (beam settings do not apply).
        protocol (str): ``"A"`` or ``"B"``.

    Returns:
        EvalResult: metrics and per-user arrays named as the model's; sessions [U, R, M], scores [U, R].

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> no_labels = np.zeros((1, 0), np.float32)
        >>> samples = SampleSet.from_samples([Sample(0, np.array([1]), np.array([2]), no_labels),
        ...                                   Sample(1, np.array([2]), np.array([3]), no_labels)], [])
        >>> train = pd.DataFrame({"item_id": [2, 2, 2, 0, 0, 1]})
        >>> r = evaluate_popularity(samples, train, 4, config=EvalConfig(ks=[1, 3]), protocol="A")
        >>> r.per_user["recall@1"].tolist(), r.per_user["recall@3"].tolist()
        ([1.0, 0.0], [1.0, 0.0])
    """
    check_protocol(protocol)
    rows, skipped = evaluation_users(samples)
    users = samples.subset(rows)
    U, K = len(users), max(config.ks)
    M = 1 if protocol == "A" else users.session_items
    R = -(-K // M)  # enough sessions for a top-K list
    start = time.perf_counter()
    extra = int(users.history_lengths.max()) if config.exclude_history else 0
    candidates = popularity_ranking(train_sequences, num_items, min(num_items, R * M + extra))
    if config.exclude_history:
        lists = _excluding_history(candidates, users, num_items)
    else:
        lists = np.broadcast_to(candidates, (U, candidates.size))
    flat = np.full((U, R * M), PAD_ITEM, dtype=np.int64)  # a catalogue smaller than R M leaves padding
    width = min(R * M, lists.shape[1])
    flat[:, :width] = lists[:, :width]
    sessions = flat.reshape(U, R, M)
    scores = np.broadcast_to(-np.arange(R, dtype=np.float32), (U, R)).copy()
    metrics, per_user = score_sessions(
        protocol, sessions, scores, users.target, ks=config.ks, num_items=num_items, legality=np.ones(U)
    )
    per_user["user"] = users.user.copy()
    per_user["sample"] = rows
    seconds = time.perf_counter() - start
    info = {
        "protocol": protocol,
        "arm": "popularity",
        "ks": list(config.ks),
        "session_items": M,
        "exclude_history": config.exclude_history,
        "num_samples": len(samples),
        "users_without_target": skipped,
        "seconds": seconds,
    }
    return EvalResult(metrics, per_user, sessions, scores, info)
