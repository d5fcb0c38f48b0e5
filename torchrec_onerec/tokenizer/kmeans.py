"""Plain K-means (Lloyd) and the chunked distance helpers both K-means variants share (docs/METHOD.md section 1).

The first OneRec paper fits each semantic-ID level with *balanced* K-means (``balanced_kmeans.py``); the
technical report (arXiv 2506.13695) moved to plain residual K-means, which is :class:`KMeans` here. Distances
are computed in blocks of ``chunk_size`` rows, so a fit never holds more than a [chunk_size, K] block of them.
Shapes: N points, d width, K clusters.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch


@dataclass
class KMeansResult:
    """What a K-means fit returns.

    Args:
        centroids (torch.Tensor): [K, d] cluster centres, the mean of each cluster's points.
        labels (torch.Tensor): [N] int64 cluster of each point.
        iterations (int): assignment rounds run.
        inertia (float): sum over points of the squared distance to their centroid.
        converged (bool): True when it stopped because a round moved no point (or, with a ``tolerance``, three
            rounds lowered the squared error by at most that share), False when it hit max_iter.
        rescans (int): balanced fast path only: candidate lists that ran short and were recomputed.
        swaps (int): balanced with ``swap_refine`` only: point swaps the refinement made.
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    iterations: int
    inertia: float
    converged: bool
    rescans: int = 0
    swaps: int = 0

    def cluster_sizes(self) -> torch.Tensor:
        """Returns [K] int64 number of points per cluster."""
        return torch.bincount(self.labels, minlength=self.centroids.shape[0])


def check_tolerance(tolerance: float, name: str = "tolerance") -> float:
    """Validate a stopping tolerance: a relative drop of the squared error, in [0, 1)."""
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(
            f"{name}={tolerance} must be in [0, 1): once three rounds lower the squared error by at most that share "
            "of it the fit ends (0: only a round that moves no point ends it)"
        )
    return float(tolerance)


def cluster_error(total_sq: float, centroids: torch.Tensor, counts: torch.Tensor) -> float:
    """Sum over points of the squared distance to their cluster's mean, from the means alone (no pass over x).

    With c_k the mean of cluster k's n_k points, sum_i |x_i - c_k(i)|^2 = sum_i |x_i|^2 - sum_k n_k |c_k|^2.

    Example:
        >>> x = torch.tensor([[1.0], [3.0], [5.0]])
        >>> cluster_error(float((x * x).sum()), torch.tensor([[2.0], [5.0]]), torch.tensor([2, 1]))
        2.0
    """
    return total_sq - float((counts.double() * (centroids.double() ** 2).sum(1)).sum())


TOLERANCE_ROUNDS = 3  # the balanced loop's error is not monotone: its second round's is often above its first's


def settled(previous: Optional[torch.Tensor], labels: torch.Tensor, errors: List[float], tolerance: float) -> bool:
    """Whether a fit stops after this round: no point moved, or (tolerance > 0, from round 2 * TOLERANCE_ROUNDS + 1
    on) the last TOLERANCE_ROUNDS rounds together lowered the squared error by at most ``tolerance`` of what it was
    before them.

    Args:
        previous (Optional[torch.Tensor]): [N] labels of the previous round (None on the first).
        labels (torch.Tensor): [N] labels of this round.
        errors (List[float]): the squared error after each round so far, this one last.
        tolerance (float): the relative drop below which the fit stops.

    Example:
        >>> same, moved = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])
        >>> settled(same, same, [9.0, 5.0], 0.0), settled(same, moved, [9.0, 8.0, 6.0, 5.99], 0.0)
        (True, False)
        >>> falling, flat = [9, 8, 7, 6, 5, 4.5, 4], [9, 8, 7, 6, 6, 6, 5.99]
        >>> settled(same, moved, falling, 0.01), settled(same, moved, flat, 0.01)
        (False, True)
    """
    if previous is None:
        return False
    if torch.equal(previous, labels):
        return True
    if tolerance == 0.0 or len(errors) <= 2 * TOLERANCE_ROUNDS:  # the first rounds' errors may rise: never compared
        return False
    before = errors[-1 - TOLERANCE_ROUNDS]
    return before - errors[-1] <= tolerance * before


def check_points(x: torch.Tensor, num_clusters: int, name: str = "x") -> torch.Tensor:
    """Validate a point matrix for a K-means fit; returns it as float32 (float64 stays float64).

    Args:
        x (torch.Tensor): [N, d] points.
        num_clusters (int): K, at least 1 and at most N.
        name (str): how the caller calls ``x``, for error messages.

    Returns:
        [N, d] float tensor on x's device.

    Example:
        >>> check_points(torch.zeros(3, 2), 4)
        Traceback (most recent call last):
        ...
        ValueError: K=4 clusters is larger than the number of points N=3 in x: use at most 3 clusters or more points
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor [N, d], got {shape}")
    n, d = x.shape
    if d == 0:
        raise ValueError(f"{name} has width d=0 (shape {tuple(x.shape)}): embeddings need at least one dimension")
    if n == 0:
        raise ValueError(f"{name} has no rows (shape {tuple(x.shape)})")
    if num_clusters < 1:
        raise ValueError(f"K={num_clusters} clusters must be >= 1")
    if num_clusters > n:
        raise ValueError(
            f"K={num_clusters} clusters is larger than the number of points N={n} in {name}: "
            f"use at most {n} clusters or more points"
        )
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # a row sum is finite unless a value is not (or the sum overflows): check only the suspect rows in full
    suspect = (~torch.isfinite(x.sum(1))).nonzero().squeeze(1)
    rows = suspect[~torch.isfinite(x[suspect]).all(dim=1)]
    if rows.numel() > 0:
        raise ValueError(
            f"{name} has NaN or inf in {rows.numel()} rows, e.g. rows {rows[:10].tolist()}: fix or drop those items"
        )
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def random_init(x: torch.Tensor, num_clusters: int, seed: int) -> torch.Tensor:
    """K distinct random points as initial centroids, deterministic per seed (CPU generator, any device).

    Args:
        x (torch.Tensor): [N, d] points.
        num_clusters (int): K <= N.
        seed (int): seed of the generator.

    Returns:
        [K, d] copy of K rows of x.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(x.shape[0], generator=gen)[:num_clusters].to(x.device)
    return x[rows].clone()


def cluster_means(x: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean of each cluster's points.

    The sums are one sparse [K, N] x [N, d] product over the points sorted by cluster, not atomic scatter
    adds, so they are bit-for-bit reproducible on GPUs too.

    Args:
        x (torch.Tensor): [N, d] points.
        labels (torch.Tensor): [N] int64 cluster of each point.
        num_clusters (int): K.

    Returns:
        ([K, d] means, zero rows for empty clusters; [K] int64 counts).

    Example:
        >>> means, counts = cluster_means(torch.tensor([[1.0], [3.0], [5.0]]), torch.tensor([0, 0, 2]), 3)
        >>> means.tolist(), counts.tolist()
        ([[2.0], [0.0], [5.0]], [2, 0, 1])
    """
    counts = torch.bincount(labels, minlength=num_clusters)
    rows = torch.zeros(num_clusters + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(counts, 0, out=rows[1:])
    order = torch.argsort(labels, stable=True)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        members = torch.sparse_csr_tensor(
            rows, order, torch.ones_like(labels, dtype=x.dtype), (num_clusters, x.shape[0]), check_invariants=False
        )
        sums = members @ x
    return sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype), counts


def nearest_centroids(x: torch.Tensor, centroids: torch.Tensor, chunk_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point, computed in [chunk_size, K] blocks.

    Args:
        x (torch.Tensor): [N, d] points.
        centroids (torch.Tensor): [K, d].
        chunk_size (int): rows per block.

    Returns:
        ([N] int64 nearest centroid, [N] squared distance to it).

    Example:
        >>> labels, sq = nearest_centroids(torch.tensor([[0.0], [0.9], [2.1]]), torch.tensor([[0.0], [2.0]]), 2)
        >>> labels.tolist(), [round(v, 2) for v in sq.tolist()]
        ([0, 0, 1], [0.0, 0.81, 0.01])
    """
    c_sq = (centroids * centroids).sum(1)
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    sq = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        block = x[start : start + chunk_size]
        dist = torch.mm(block, centroids.T).mul_(-2).add_(c_sq)  # [chunk, K]: |c|^2 - 2 x.c
        val, idx = dist.min(dim=1)
        labels[start : start + chunk_size] = idx
        sq[start : start + chunk_size] = (val + (block * block).sum(1)).clamp_min_(0)
    return labels, sq


def squared_error(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> float:
    """Sum over points of ||x_i - centroids[labels_i]||^2, in chunks (the inertia of an assignment).

    Args:
        x (torch.Tensor): [N, d] points.
        centroids (torch.Tensor): [K, d].
        labels (torch.Tensor): [N] int64.
        chunk_size (int): rows per block.

    Returns:
        The sum as a Python float.
    """
    total = 0.0
    for start in range(0, x.shape[0], chunk_size):
        diff = x[start : start + chunk_size] - centroids[labels[start : start + chunk_size]]
        total += float((diff * diff).sum())
    return total


class KMeans:
    """Plain (unbalanced) Lloyd K-means, the technical report's per-level quantiser.

    Initialised from K random points (deterministic per seed); each round assigns every point to its nearest
    centroid and moves each centroid to its cluster's mean; a cluster left empty is re-seeded with the point
    farthest from its centroid. Stops when a round moves no point (or, with a ``tolerance``, once three rounds
    lower the squared error by at most that share of it) or after ``max_iter`` rounds. Runs on x's device.

    Args:
        num_clusters (int): K.
        max_iter (int): most assignment rounds.
        chunk_size (int): rows per [chunk_size, K] distance block.
        tolerance (float): also stop once three rounds lower the squared error by at most this share of it.
        seed (int): seed of the initialisation.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
        >>> result = KMeans(2, seed=0).fit(x)
        >>> sorted(result.cluster_sizes().tolist()), result.converged
        ([2, 2], True)
    """

    def __init__(
        self, num_clusters: int, *, max_iter: int = 30, chunk_size: int = 8192, seed: int = 0, tolerance: float = 0.0
    ) -> None:
        if max_iter < 1 or chunk_size < 1:
            raise ValueError(f"max_iter={max_iter} and chunk_size={chunk_size} must both be >= 1")
        self.tolerance = check_tolerance(tolerance)
        self.num_clusters = num_clusters
        self.max_iter = max_iter
        self.chunk_size = chunk_size
        self.seed = seed

    def fit(self, x: torch.Tensor) -> KMeansResult:
        """Cluster the points.

        Args:
            x (torch.Tensor): [N, d] float points, finite, N >= K.

        Returns:
            KMeansResult with [K, d] centroids and [N] labels.
        """
        x = check_points(x, self.num_clusters)
        k = self.num_clusters
        centroids = random_init(x, k, self.seed)
        total_sq = float((x * x).sum(1).double().sum())
        previous: Optional[torch.Tensor] = None
        errors: List[float] = []
        converged = False
        iterations = 0
        for iterations in range(1, self.max_iter + 1):
            labels, sq = nearest_centroids(x, centroids, self.chunk_size)
            counts = torch.bincount(labels, minlength=k)
            if bool((counts == 0).any()):
                labels = _fill_empty(labels, sq, counts)
            centroids, counts = cluster_means(x, labels, k)
            errors.append(cluster_error(total_sq, centroids, counts))
            if settled(previous, labels, errors, self.tolerance):
                converged = True
                break
            previous = labels
        inertia = squared_error(x, centroids, labels, self.chunk_size)
        return KMeansResult(centroids, labels, iterations, inertia, converged)


def _fill_empty(labels: torch.Tensor, sq: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Move into each empty cluster the worst-served point of a cluster that keeps at least one point."""
    labels, sq, counts = labels.clone(), sq.clone(), counts.clone()
    for cluster in (counts == 0).nonzero().squeeze(1).tolist():
        donor_ok = counts[labels] >= 2
        point = int(torch.where(donor_ok, sq, torch.full_like(sq, -1.0)).argmax())
        counts[labels[point]] -= 1
        counts[cluster] += 1
        labels[point] = cluster
        sq[point] = -1.0
    return labels
