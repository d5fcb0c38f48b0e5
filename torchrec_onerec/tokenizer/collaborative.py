"""Collaborative item embeddings from training interactions, for the semantic-ID tokenizer (docs/METHOD.md
section 1: any item embedding will do, and this one is collaborative).

Two items co-occur when the same user interacted with both at most ``window`` positions apart in the user's
chronological sequence. The positive pointwise mutual information of the co-occurrence counts,
PPMI(i, j) = max(0, log(c_ij * total / (c_i * c_j))), is a sparse symmetric [I, I] matrix; its truncated
SVD (randomised, in torch, deterministic per seed) gives the embedding U_k * sqrt(S_k). Only the interactions
passed in are read: the caller passes the training part, never validation or test. Items without any
co-occurrence get a zero row (counted). Shapes: I items, k = embedding width.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import pandas as pd
import torch

from torchrec_onerec.datasets.interactions import DataError

_OVERSAMPLE = 10  # extra random directions of the randomised SVD
_POWER_ITERS = 4  # subspace iterations of the randomised SVD


def cooccurrence(interactions: pd.DataFrame, num_items: int, window: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric co-occurrence counts of items at most ``window`` positions apart in a user's sequence.

    Args:
        interactions (pd.DataFrame): ``user_id``, ``item_id`` (contiguous ids) in chronological order per user,
            or with a ``timestamp`` column to order by.
        num_items (int): I.
        window (int): largest distance in positions.

    Returns:
        (rows, cols, counts) of the non-zero entries, rows != cols, each pair in both directions.

    Example:
        >>> df = pd.DataFrame({"user_id": [0, 0, 0, 1], "item_id": [0, 1, 2, 0]})
        >>> [a.tolist() for a in cooccurrence(df, 3, window=1)]
        [[0, 1, 1, 2], [1, 0, 2, 1], [1.0, 1.0, 1.0, 1.0]]
    """
    for column in ("user_id", "item_id"):
        if column not in interactions.columns:
            raise DataError(f"training interactions have no column {column!r} (columns: {list(interactions.columns)})")
    keys = ["user_id", "timestamp"] if "timestamp" in interactions.columns else ["user_id"]
    ordered = interactions.sort_values(keys, kind="stable")
    users = ordered["user_id"].to_numpy(np.int64)
    items = ordered["item_id"].to_numpy(np.int64)
    if items.size and (items.min() < 0 or items.max() >= num_items):
        bad = np.unique(items[(items < 0) | (items >= num_items)])
        raise DataError(
            f"training interactions name item ids {bad[:10].tolist()} outside the catalogue [0, {num_items})"
        )
    pair_keys, pair_counts = [], []
    for offset in range(1, window + 1):
        a, b = items[:-offset], items[offset:]
        same = (users[:-offset] == users[offset:]) & (a != b)
        if not same.any():
            continue
        both = np.concatenate([a[same] * num_items + b[same], b[same] * num_items + a[same]])
        unique, counts = np.unique(both, return_counts=True)
        pair_keys.append(unique)
        pair_counts.append(counts)
    if not pair_keys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    unique, inverse = np.unique(np.concatenate(pair_keys), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(pair_counts).astype(np.float64))
    return unique // num_items, unique % num_items, counts


def collaborative_embeddings(
    interactions: pd.DataFrame, num_items: int, dim: int, *, window: int, seed: int
) -> Tuple[torch.Tensor, Dict[str, Any]]:
    """Truncated SVD of the PPMI co-occurrence matrix of the given (training) interactions.

    Args:
        interactions (pd.DataFrame): training interactions, see :func:`cooccurrence`.
        num_items (int): I.
        dim (int): k, the embedding width, <= I.
        window (int): co-occurrence window in positions.
        seed (int): seed of the randomised SVD.

    Returns:
        ([I, k] float32 embeddings, notes: co-occurring pairs and items without any co-occurrence).

    Example:
        >>> df = pd.DataFrame({"user_id": [0, 0, 1, 1, 2, 2], "item_id": [0, 1, 0, 1, 2, 3]})
        >>> x, notes = collaborative_embeddings(df, 5, 2, window=1, seed=0)
        >>> x.shape, notes["items_without_cooccurrence"]
        (torch.Size([5, 2]), 1)
        >>> bool(torch.allclose(x[0], x[1], atol=1e-5)), bool(x[4].abs().sum() == 0)
        (True, True)
    """
    if dim > num_items:
        raise ValueError(
            f"tokenizer.embedding_dim={dim} exceeds the number of items {num_items}: an SVD of an [I, I] matrix "
            f"has at most I dimensions; use embedding_dim <= {num_items}"
        )
    rows, cols, counts = cooccurrence(interactions, num_items, window)
    marginal = np.bincount(rows, weights=counts, minlength=num_items)
    pmi = np.log(counts * counts.sum() / (marginal[rows] * marginal[cols])) if counts.size else counts
    keep = pmi > 0
    index = torch.from_numpy(np.stack([rows[keep], cols[keep]]))
    values = torch.from_numpy(pmi[keep]).float()
    matrix = torch.sparse_coo_tensor(index, values, (num_items, num_items), check_invariants=True).coalesce()
    embeddings = _randomized_svd(matrix, dim, seed)
    notes = {"pairs": int(counts.size // 2), "items_without_cooccurrence": int((marginal == 0).sum())}
    return embeddings, notes


def _randomized_svd(matrix: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """U_k * sqrt(S_k) of a sparse symmetric [I, I] matrix by subspace iteration (Halko et al. 2011)."""
    size = matrix.shape[0]
    width = min(size, dim + _OVERSAMPLE)
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.sparse.mm(matrix, torch.randn(size, width, generator=gen))).Q  # [I, width]
    for _ in range(_POWER_ITERS):
        basis = torch.linalg.qr(torch.sparse.mm(matrix, basis)).Q
    small = torch.sparse.mm(matrix, basis).T  # [width, I] = basis^T M (M symmetric)
    u, s, _ = torch.linalg.svd(small, full_matrices=False)
    vectors = basis @ u[:, :dim]  # [I, k]
    pivot = vectors.abs().argmax(dim=0)  # fix each column's sign: its largest entry is positive
    signs = torch.sign(vectors[pivot, torch.arange(vectors.shape[1])])
    return vectors * torch.where(signs == 0, 1.0, signs) * s[:dim].sqrt()
