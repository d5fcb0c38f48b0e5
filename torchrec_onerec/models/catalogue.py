"""The top K of a catalogue-wide score, optionally without the items of each user's history: how the models that
score every item (the two-tower retrieval, SASRec) turn their scores into ranked lists.

Shape legend: B users, I items, K kept items.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_onerec.data.samples import PAD_ITEM


def top_k_items(
    scores: torch.Tensor, history: JaggedTensor, k: int, *, exclude_history: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best-scored items of each row, best first.

    Args:
        scores (torch.Tensor): [B, I] every item's score for each user (changed in place when excluding).
        history (JaggedTensor): each user's history item ids (B rows).
        k (int): items kept per row, <= I.
        exclude_history (bool): score the history's items -inf first, so they are never kept.

    Returns:
        (items [B, K] int64, their scores [B, K] float32), on the CPU; -1 and -inf where exclusion left fewer than K.

    Example:
        >>> history = JaggedTensor(values=torch.tensor([2, 0, 1]), lengths=torch.tensor([1, 2]))
        >>> items, top = top_k_items(torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.2, 0.7]]), history, 2, exclude_history=True)
        >>> items.tolist(), top[1].tolist()
        ([[1, 0], [2, -1]], [0.699999988079071, -inf])
    """
    if exclude_history:
        owner = torch.repeat_interleave(torch.arange(scores.shape[0], device=scores.device), history.lengths())
        scores[owner, history.values()] = float("-inf")
    top = torch.topk(scores, k, dim=1)
    items = torch.where(torch.isfinite(top.values), top.indices, PAD_ITEM)
    return items.cpu(), top.values.float().cpu()
