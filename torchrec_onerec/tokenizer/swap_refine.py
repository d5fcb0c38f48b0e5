"""Pairwise-swap refinement of a balanced clustering (``BalancedKMeans(swap_refine=True)``).

The paper's balanced K-means (``balanced_kmeans.py``) fills the clusters one after another, so the last ones take
what the first left: at exact balance its squared error stays several per cent above that of an optimal balanced
assignment (k-means-constrained solves each round's assignment exactly, by min-cost flow, at many times the cost).
This refinement starts from its converged partition and alternates two steps until no swap helps:

- swap passes with the centroids fixed: point i (cluster a) and point j (cluster b) trade clusters when that
  lowers the total squared distance, cost[i, b] + cost[j, a] < cost[i, a] + cost[j, b]. Every swap keeps every
  cluster's size, so the balance stays exact. A pass finds, for each cluster pair (b, a), the member of b that
  loses least by moving to a, gives each point its best such partner, and applies the best swaps first among
  those that share no point (a swap's gain depends only on its two points, so disjoint swaps add up);
- a Lloyd update: each centroid becomes the mean of its points, which lowers the error again.

Both steps only ever lower the squared error. A pass holds the [N, K] cost matrix and a [K, max size, K] copy
of it, so the refinement is for N * K up to ``MAX_ELEMENTS`` (a million items at K = 128, 500k at K = 256).

Shape legend: N points, d width, K clusters, w the largest cluster size.
"""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np
import torch

from torchrec_onerec.tokenizer.kmeans import cluster_means

MAX_ELEMENTS = 1 << 27  # N * K above this would hold gigabytes of costs: refuse rather than swap to disk


def swap_pass(cost: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> Tuple[torch.Tensor, int]:
    """One pass of point swaps that lower the total cost; sizes per cluster do not change.

    Args:
        cost (torch.Tensor): [N, K] cost of each point in each cluster (squared distance up to a per-point
            constant).
        labels (torch.Tensor): [N] int64 cluster of each point.
        num_clusters (int): K.

    Returns:
        ([N] new labels, number of swaps made).

    Example:
        >>> cost = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # each point sits in the other's cluster
        >>> labels, swaps = swap_pass(cost, torch.tensor([0, 1]), 2)
        >>> labels.tolist(), swaps
        ([1, 0], 1)
    """
    n, k = cost.shape[0], num_clusters
    delta = cost - cost.gather(1, labels.unsqueeze(1))  # [N, K] change of i's cost if it moved to k
    order = labels.argsort(stable=True)
    counts = torch.bincount(labels, minlength=k)
    start = counts.cumsum(0) - counts
    slot = torch.empty_like(order)
    slot[order] = torch.arange(n, device=labels.device) - start[labels[order]]
    grouped = torch.empty((k, int(counts.max()), k), dtype=cost.dtype, device=cost.device)
    for size in counts.unique().tolist():  # pad the smaller clusters' rows (sizes differ by one when balanced)
        grouped[counts == size, size:] = math.inf
    grouped[labels, slot] = delta  # [K (b), w, K (a)]: each cluster's members
    least, where = grouped.min(dim=1)  # [K (b), K (a)]: b's member that loses least by moving to a
    partner = order[(start.unsqueeze(1) + where).clamp(max=n - 1)]  # [K (b), K (a)] its point index
    gain, target = delta.add_(least.T.contiguous()[labels]).min(dim=1)  # [N]: i's best swap, into `target`
    candidates = (gain < 0).nonzero().squeeze(1)
    if candidates.numel() == 0:
        return labels, 0
    candidates = candidates[gain[candidates].argsort()]  # best first
    mates = partner[target[candidates], labels[candidates]]
    new = labels.clone()
    used = np.zeros(n, dtype=bool)
    first, second = candidates.cpu().numpy(), mates.cpu().numpy()
    accepted = np.zeros(len(first), dtype=bool)
    for c, (i, j) in enumerate(zip(first, second)):  # keep the swaps that share no point, best first
        if not (used[i] or used[j]) and i != j:
            used[i] = used[j] = accepted[c] = True
    keep = torch.from_numpy(accepted).to(labels.device)
    i, j = candidates[keep], mates[keep]
    new[i], new[j] = labels[j], labels[i]
    return new, int(keep.sum())


def refine_by_swaps(
    x: torch.Tensor, labels: torch.Tensor, num_clusters: int, *, max_rounds: int = 30, max_passes: int = 3
) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """Swap passes then a Lloyd update, until a round makes no swap (or ``max_rounds``).

    Args:
        x (torch.Tensor): [N, d] points.
        labels (torch.Tensor): [N] int64 starting clusters (a balanced partition; its sizes are kept).
        num_clusters (int): K.
        max_rounds (int): most rounds of passes + update.
        max_passes (int): most swap passes per round (a round stops early at a pass with no swap).

    Returns:
        ([K, d] centroids, [N] labels, rounds run, swaps made).

    Example:
        >>> x = torch.tensor([[0.0], [0.2], [10.0], [10.2]])
        >>> _, labels, _, swaps = refine_by_swaps(x, torch.tensor([0, 1, 0, 1]), 2)
        >>> labels.tolist(), swaps  # the two clusters become the two pairs
        ([0, 0, 1, 1], 1)
    """
    n, k = x.shape[0], num_clusters
    if n * k > MAX_ELEMENTS:
        raise ValueError(
            f"swap refinement of N={n} points into K={k} clusters would hold N*K={n * k} costs "
            f"(more than {MAX_ELEMENTS}); set tokenizer.balanced_swap_refine=false, or fit fewer items per codebook "
            "(tokenizer.codebook_scope=prefix)"
        )
    centroids, _ = cluster_means(x, labels, k)
    swaps, rounds = 0, 0
    for rounds in range(1, max_rounds + 1):
        cost = torch.mm(x, centroids.T).mul_(-2).add_((centroids * centroids).sum(1))  # |c|^2 - 2 x.c
        moved = 0
        for _ in range(max_passes):
            labels, made = swap_pass(cost, labels, k)
            moved += made
            if made == 0:
                break
        swaps += moved
        centroids, _ = cluster_means(x, labels, k)
        if moved == 0:
            break
    return centroids, labels, rounds, swaps
