"""Vectorised ranking and generation metrics, per user (docs/EVAL.md protocols A and B).

Every function returns one value per user (row) so that means, and later paired bootstrap intervals between
arms (the A/B harness), are computed from the same arrays. Item ids are ints >= 0; -1 is padding everywhere.

Definitions (P = the user's distinct positive items, ``hit_j`` = 1 when rank j (0-based) holds an item of P
that has not appeared earlier in the list, else 0):

- Recall@K = sum_{j<K} hit_j / |P|. With one positive it is the hit rate (HR@K) of docs/EVAL.md protocol A; with
  |P| > K it cannot reach 1.
- NDCG@K = DCG@K / IDCG@K with binary gains, DCG@K = sum_{j<K} hit_j / log2(j + 2) and
  IDCG@K = sum_{j<min(K, |P|)} 1 / log2(j + 2).
- A list shorter than K is read as padded: missing ranks earn nothing. A repeated item earns nothing and keeps
  its rank (protocols compact their lists first, see ``dedupe_rows``).
- Legality: the fraction of a user's generated code tuples that are real items (the tokenizer's
  ``PrefixIndex``).
- Repeat rate: the fraction of a user's generated sessions holding some item twice; the repeated-slot rate:
  the fraction of their item slots that repeat an item earlier in the same session.
- Coverage@K: distinct items in all users' top-K / catalogue size (one number, not per user).

Filler sessions (beam search returns them with score -inf when fewer than R valid sessions exist) are left out
of legality and repeat rates through ``valid``; a user with no real session counts as legal and repeat-free.

Shape legend: U users, L list length, M session items (or positives per user), R sessions per user, L' code
levels.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from torchrec_onerec.tokenizer.prefix_index import PrefixIndex

PAD = -1


def _check_ids(name: str, ids: np.ndarray, ndim: int) -> np.ndarray:
    """``ids`` as int64 with ``ndim`` axes and values >= -1, else ValueError."""
    ids = np.asarray(ids)
    if ids.ndim != ndim or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a {ndim}-d integer array, got shape {ids.shape} and dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and int(ids.min()) < PAD:
        raise ValueError(f"{name} holds {int(ids.min())}; item ids are >= 0 and -1 is the only padding value")
    return ids


def first_occurrence(rows: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of each real id in its row (sort-based, O(U L log L)).

    Args:
        rows (np.ndarray): [U, L] int ids, -1 padding.

    Returns:
        [U, L] bool, True where the id is real and not seen earlier in the row.

    Example:
        >>> first_occurrence(np.array([[3, 1, 3, -1, 1, 2]])).astype(int).tolist()
        [[1, 1, 0, 0, 0, 1]]
    """
    rows = np.asarray(rows)
    order = np.argsort(rows, axis=1, kind="stable")  # equal ids keep their left-to-right order
    ranked = np.take_along_axis(rows, order, axis=1)
    repeat_sorted = np.zeros(rows.shape, dtype=bool)
    repeat_sorted[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    return ~repeat & (rows != PAD)


def dedupe_rows(rows: np.ndarray) -> np.ndarray:
    """Drop padding and later repeats of each row, keep the rest in order, shift it left and pad with -1.

    Args:
        rows (np.ndarray): [U, L] int ids, -1 padding.

    Returns:
        [U, L] int64.

    Example:
        >>> dedupe_rows(np.array([[4, -1, 4, 2], [1, 2, 3, 1]])).tolist()
        [[4, 2, -1, -1], [1, 2, 3, -1]]
    """
    rows = _check_ids("rows", rows, 2)
    keep = first_occurrence(rows)
    order = np.argsort(~keep, axis=1, kind="stable")  # kept ids first, in their order
    out = np.take_along_axis(rows, order, axis=1)
    out[~np.take_along_axis(keep, order, axis=1)] = PAD
    return out


def list_lengths(rows: np.ndarray) -> np.ndarray:
    """[U, L] ids -> [U] int64 number of real (non -1) entries per row."""
    return (np.asarray(rows) != PAD).sum(axis=1).astype(np.int64)


def ranking_metrics(
    ranked: np.ndarray, targets: np.ndarray, ks: Sequence[int], *, suffix: Optional[str] = None
) -> Dict[str, np.ndarray]:
    """Recall@K and NDCG@K of each user's ranked list against the user's positives (module docstring).

    Args:
        ranked (np.ndarray): [U, L] item ids, best first, -1 padding (any L, also L < K).
        targets (np.ndarray): [U, M] positive item ids, -1 padding; every row needs at least one positive.
        ks (Sequence[int]): cut-offs K >= 1.
        suffix (str | None): name the keys ``recall@{suffix}`` / ``ndcg@{suffix}`` instead of ``recall@{K}``
            (for one K, e.g. ``"m"``).

    Returns:
        ``{"recall@K": [U] float64, "ndcg@K": [U] float64}`` for every K.

    Example:
        >>> r = ranking_metrics(np.array([[7, 8, 9], [1, 2, 3]]), np.array([[9], [4]]), [1, 3])
        >>> r["recall@3"].tolist(), round(float(r["ndcg@3"][0]), 4), r["ndcg@1"].tolist()
        ([1.0, 0.0], 0.5, [0.0, 0.0])
    """
    ranked = _check_ids("ranked", ranked, 2)
    targets = _check_ids("targets", targets, 2)
    if ranked.shape[0] != targets.shape[0]:
        raise ValueError(f"ranked has {ranked.shape[0]} rows but targets has {targets.shape[0]}; one row per user")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks={ks} needs at least one cut-off, each >= 1")
    if suffix is not None and len(ks) != 1:
        raise ValueError(f"suffix={suffix!r} names a single cut-off, got ks={ks}")
    positives = first_occurrence(targets)  # distinct positives
    num_pos = positives.sum(axis=1)
    if (num_pos == 0).any():
        raise ValueError(
            f"{int((num_pos == 0).sum())} targets row(s) hold no positive item (e.g. row "
            f"{int(np.argmax(num_pos == 0))}); drop users without a target before scoring"
        )
    width = max(ks)
    top = np.full((ranked.shape[0], width), PAD, dtype=np.int64)  # [U, max K]; shorter lists read as padded
    top[:, : min(width, ranked.shape[1])] = ranked[:, :width]
    pos = np.where(positives, targets, PAD - 1)  # padding and repeated positives never match
    hits = (top[:, :, None] == pos[:, None, :]).any(axis=2) & first_occurrence(top)  # [U, max K]
    discount = 1.0 / np.log2(np.arange(2, width + 2))  # [max K]
    ideal = np.cumsum(discount)
    out: Dict[str, np.ndarray] = {}
    for k in ks:
        name = suffix if suffix is not None else str(k)
        out[f"recall@{name}"] = hits[:, :k].sum(axis=1) / num_pos
        out[f"ndcg@{name}"] = (hits[:, :k] * discount[:k]).sum(axis=1) / ideal[np.minimum(k, num_pos) - 1]
    return out


def generated_items(codes: torch.Tensor, prefix_index: PrefixIndex) -> np.ndarray:
    """The item of each generated code tuple.

    Args:
        codes (torch.Tensor): [..., L'] int64 code tuples (any leading shape).
        prefix_index (PrefixIndex): the tokenizer's index of the valid tuples.

    Returns:
        [...] int64 item ids, -1 where no item has the tuple.
    """
    lead = codes.shape[:-1]
    flat = codes.reshape(-1, codes.shape[-1]).to(prefix_index.device)
    return prefix_index.item_of(flat).view(lead).cpu().numpy()


def legality_rate(codes: torch.Tensor, prefix_index: PrefixIndex, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Per user, the fraction of generated code tuples (of real sessions) that are real items.

    Args:
        codes (torch.Tensor): [U, R, M, L'] int64 generated code tuples.
        prefix_index (PrefixIndex): the valid tuples.
        valid (np.ndarray | None): [U, R] bool, False for filler sessions (None: all real).

    Returns:
        [U] float64 in [0, 1] (1.0 for a user without a real session).

    Example:
        >>> index = PrefixIndex(torch.tensor([[0, 1], [1, 0]]))
        >>> legality_rate(torch.tensor([[[[0, 1], [1, 1]]], [[[1, 0], [0, 1]]]]), index).tolist()
        [0.5, 1.0]
    """
    if codes.dim() != 4:
        raise ValueError(f"codes must be [U, R, M, L'], got shape {tuple(codes.shape)}")
    U, R, M, _ = codes.shape
    valid = np.ones((U, R), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    legal = (generated_items(codes, prefix_index) >= 0) & valid[:, :, None]  # [U, R, M]
    slots = valid.sum(axis=1) * M
    return np.where(slots > 0, legal.sum(axis=(1, 2)) / np.maximum(slots, 1), 1.0)


def repeat_rates(items: np.ndarray, valid: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Per user, how often generated sessions repeat an item (-1 entries are never repeats).

    Args:
        items (np.ndarray): [U, R, M] item ids of the generated sessions.
        valid (np.ndarray | None): [U, R] bool, False for filler sessions (None: all real).

    Returns:
        (session rate [U]: fraction of real sessions holding a repeat, slot rate [U]: fraction of their item
        slots that repeat an earlier item of the session), float64, 0.0 for a user without a real session.

    Example:
        >>> s, t = repeat_rates(np.array([[[1, 1, 2], [1, 2, 3]]]))
        >>> s.tolist(), [round(x, 4) for x in t.tolist()]
        ([0.5], [0.1667])
    """
    items = _check_ids("items", items, 3)
    U, R, M = items.shape
    valid = np.ones((U, R), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    repeated = ((items != PAD) & ~first_occurrence(items.reshape(U * R, M)).reshape(U, R, M)) & valid[:, :, None]
    sessions = valid.sum(axis=1)
    session_rate = np.where(sessions > 0, repeated.any(axis=2).sum(axis=1) / np.maximum(sessions, 1), 0.0)
    slot_rate = np.where(sessions > 0, repeated.sum(axis=(1, 2)) / np.maximum(sessions * M, 1), 0.0)
    return session_rate, slot_rate


def coverage(ranked: np.ndarray, num_items: int, k: Optional[int] = None) -> float:
    """Distinct real items in all users' top-``k`` over the catalogue size.

    Args:
        ranked (np.ndarray): [U, L] item ids, -1 padding.
        num_items (int): I, the catalogue size (> 0).
        k (int | None): cut-off (None: whole lists).

    Returns:
        float in [0, 1].

    Example:
        >>> coverage(np.array([[0, 1, 2], [1, 0, -1]]), 10, k=2)
        0.2
    """
    ranked = _check_ids("ranked", ranked, 2)
    if num_items < 1:
        raise ValueError(f"num_items={num_items} must be >= 1 (the catalogue size)")
    top = ranked if k is None else ranked[:, :k]
    distinct = np.unique(top[top != PAD])
    if distinct.size and int(distinct.max()) >= num_items:
        raise ValueError(f"ranked holds item {int(distinct.max())} outside the catalogue [0, {num_items})")
    return float(distinct.size / num_items)
