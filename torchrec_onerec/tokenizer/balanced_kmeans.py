"""Balanced K-means, the per-level quantiser of OneRec's semantic IDs (docs/METHOD.md section 1).

The paper's algorithm, for N points and K clusters of w = N / K points each (sizes differ by at most one when
K does not divide N; the first N mod K clusters take one more):

    initialise the K centroids from K random points;
    repeat: U = all points; for k = 1..K in turn: give cluster k the w points of U nearest to c_k, set c_k to
    their mean, remove them from U; until no assignment changes (or max_iter rounds).

``tolerance`` > 0 also stops once three rounds together lower the squared error by at most that share of it
(one round may raise it: the loop is not a descent method). At hundreds of thousands of points some always
move, and on the residual levels a few percent still do after 30 rounds while each late round buys less than a
tenth of a percent (README, tokenizer).

The loop over clusters is sequential by definition: cluster k may only take what clusters 1..k-1 left. Two
implementations give the same assignment (up to ties in distance):

``reference``: the paper's loop as written, one full distance vector and sort per cluster. O(K N d) per
round in K small steps; for tests and small N.

``fast`` (default): exact, and cheap per cluster. Cluster k's distances only involve c_k, which no earlier
cluster of the round changes, so the distances of a block of b <= 64 clusters to the still-unassigned points
are one matrix product ([|U|, b], at most chunk_size * max(K, 1024) elements, so memory stays bounded at large
N and K). Per cluster it keeps as candidates the points below a threshold placed, from a strided sample of the
points, to hold ~2.5 w of them; the w nearest *free* candidates are exactly the w nearest points of U whenever
at least w candidates are free, since every point left out is farther. When a cluster's candidates run short
(earlier clusters of the block took them) the rest of the block's candidates are recomputed with the taken
points masked (counted as ``rescans``). On CPU a block's product is taken a few megabytes of rows at a time and
only its candidates are kept: the thresholds come from the sample first, so the comparison runs while the rows
are in cache, and the [|U|, b] block is formed only when a sample placed a threshold too low. The per-cluster
step is a few NumPy operations on the host on its candidate list; the products, masks and selections run in
torch on the points' device (CPU or CUDA). The unassigned points are re-packed when a quarter of the packed ones
are taken, so the products shrink as the round proceeds: about 0.57 of a Lloyd round's product per round.

``swap_refine=True`` then lowers the squared error of the converged partition by point swaps between clusters
and Lloyd updates, keeping the sizes (``swap_refine.py``): not the paper's algorithm, an optional step after it.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from torchrec_onerec.tokenizer.kmeans import (
    KMeansResult,
    check_points,
    check_tolerance,
    cluster_error,
    cluster_means,
    random_init,
    settled,
    squared_error,
)
from torchrec_onerec.tokenizer.swap_refine import refine_by_swaps

ALGORITHMS = ("fast", "reference")
_SLACK = 2.5  # candidates per cluster ~ _SLACK * w + _PAD (fewer make more clusters run short)
_PAD = 8
_MIN_SAMPLE = 2048  # columns sampled, at least, to place a candidate threshold
_SAMPLE_RANK = 16  # expected rank of the threshold inside the sample (sets the sample size)
_REPACK = 0.75  # re-pack the unassigned points when fewer than this fraction of the packed ones are free
_MAX_BLOCK = 64  # most centroids per block (more: more of them run short; fewer: smaller products)
_CACHE_ELEMENTS = 1 << 20  # distances per row slice of a block on CPU (4 MB of float32: stays in cache)
_Hits = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # rows, columns and distances of a block's candidates


def balanced_sizes(num_points: int, num_clusters: int) -> List[int]:
    """Cluster sizes of a balanced partition: N // K each, the first N mod K clusters one more.

    Args:
        num_points (int): N.
        num_clusters (int): K <= N.

    Returns:
        K sizes summing to N, max - min <= 1.

    Example:
        >>> balanced_sizes(10, 4)
        [3, 3, 2, 2]
    """
    base, extra = divmod(num_points, num_clusters)
    return [base + 1] * extra + [base] * (num_clusters - extra)


class BalancedKMeans:
    """Balanced K-means: K clusters whose sizes differ by at most one, the paper's algorithm.

    Deterministic per seed; runs on x's device (CPU or CUDA).

    Args:
        num_clusters (int): K.
        max_iter (int): most assignment rounds (stops earlier when no assignment changes).
        tolerance (float): also stop once three rounds lower the squared error by at most this share of it.
        chunk_size (int): a distance block holds at most chunk_size * max(K, 1024) elements.
        seed (int): seed of the initial centroids.
        algorithm (str): ``fast`` (default) or ``reference`` (the paper's loop as written).
        swap_refine (bool): after the paper's rounds, lower the error by size-keeping point swaps and Lloyd
            updates (``tokenizer/swap_refine.py``).

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [9.0], [9.1]])
        >>> result = BalancedKMeans(3, seed=0).fit(x)
        >>> sorted(result.cluster_sizes().tolist())
        [2, 2, 3]
    """

    def __init__(
        self,
        num_clusters: int,
        *,
        max_iter: int = 30,
        chunk_size: int = 8192,
        seed: int = 0,
        algorithm: str = "fast",
        swap_refine: bool = False,
        tolerance: float = 0.0,
    ) -> None:
        self.tolerance = check_tolerance(tolerance)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={algorithm!r} is not one of {ALGORITHMS}")
        if max_iter < 1 or chunk_size < 1:
            raise ValueError(f"max_iter={max_iter} and chunk_size={chunk_size} must both be >= 1")
        self.num_clusters = num_clusters
        self.max_iter = max_iter
        self.chunk_size = chunk_size
        self.seed = seed
        self.algorithm = algorithm
        self.swap_refine = swap_refine

    def fit(self, x: torch.Tensor) -> KMeansResult:
        """Cluster the points.

        Args:
            x (torch.Tensor): [N, d] float points, finite, N >= K.

        Returns:
            KMeansResult with [K, d] centroids (cluster means), [N] labels whose counts are
            ``balanced_sizes(N, K)`` in cluster order, iterations, inertia, converged, rescans.
        """
        x = check_points(x, self.num_clusters)
        k = self.num_clusters
        sizes = balanced_sizes(x.shape[0], k)
        centroids = random_init(x, k, self.seed)
        x_sq = (x * x).sum(1)
        budget = self.chunk_size * max(k, 1024)
        total_sq = float(x_sq.double().sum())
        previous: Optional[torch.Tensor] = None
        errors: List[float] = []
        converged = False
        rescans = 0
        iterations = 0
        for iterations in range(1, self.max_iter + 1):
            if self.algorithm == "reference":
                labels = assign_reference(x, centroids, sizes)
            else:
                labels, block_rescans = assign_fast(x, x_sq, centroids, sizes, budget)
                rescans += block_rescans
            centroids, counts = cluster_means(x, labels, k)
            errors.append(cluster_error(total_sq, centroids, counts))
            if settled(previous, labels, errors, self.tolerance):
                converged = True
                break
            previous = labels
        swaps = 0
        if self.swap_refine:
            centroids, labels, _, swaps = refine_by_swaps(x, labels, k)
        inertia = squared_error(x, centroids, labels, self.chunk_size)
        return KMeansResult(centroids, labels, iterations, inertia, converged, rescans, swaps)


def assign_reference(x: torch.Tensor, centroids: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """One round of the paper's loop, as written: for each cluster in turn, the w nearest unassigned points.

    Args:
        x (torch.Tensor): [N, d] points.
        centroids (torch.Tensor): [K, d], updated in place: c_k becomes the mean of its points.
        sizes (Sequence[int]): K cluster sizes summing to N.

    Returns:
        [N] int64 labels.

    Example:
        >>> c = torch.tensor([[0.0], [1.0]])
        >>> assign_reference(torch.tensor([[0.9], [1.1], [0.2], [0.0]]), c, [2, 2]).tolist()
        [1, 1, 0, 0]
    """
    labels = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    for k, w in enumerate(sizes):
        dist = ((x - centroids[k]) ** 2).sum(1)  # [N]
        dist[labels >= 0] = math.inf
        nearest = torch.argsort(dist, stable=True)[:w]
        labels[nearest] = k
        centroids[k] = x[nearest].mean(0)
    return labels


def assign_fast(
    x: torch.Tensor, x_sq: torch.Tensor, centroids: torch.Tensor, sizes: Sequence[int], budget: int
) -> Tuple[torch.Tensor, int]:
    """One round of the paper's loop, blocked (see the module docstring); the same assignment as the reference.

    Args:
        x (torch.Tensor): [N, d] points.
        x_sq (torch.Tensor): [N] squared norms of x.
        centroids (torch.Tensor): [K, d] centroids of the previous round (not modified).
        sizes (Sequence[int]): K cluster sizes summing to N.
        budget (int): most elements of one [|U|, b] distance block.

    Returns:
        ([N] int64 labels on x's device, number of candidate rescans).
    """
    n, device = x.shape[0], x.device
    host = np.full(n, -1, dtype=np.int64)  # the sequential walk's state
    labels = torch.from_numpy(host) if device.type == "cpu" else torch.full((n,), -1, dtype=torch.int64, device=device)
    unsynced: List[np.ndarray] = []  # items labelled on the host but not yet on the device

    def sync() -> None:
        if device.type != "cpu" and unsynced:
            items = np.concatenate(unsynced)
            labels[torch.from_numpy(items).to(device)] = torch.from_numpy(host[items]).to(device)
        unsynced.clear()

    packed, packed_x, packed_sq = torch.arange(n, device=device), x, x_sq.clone()
    position = torch.arange(n, device=device)  # column of each still-packed point in packed_x
    num_free, rescans, k = n, 0, 0
    while k < len(sizes):
        sync()
        if num_free < _REPACK * packed.numel():
            packed = packed[labels[packed] < 0]
            packed_x, packed_sq = x[packed], x_sq[packed]
            position[packed] = torch.arange(packed.numel(), device=device)
        elif k > 0:
            packed_sq.masked_fill_(labels[packed] >= 0, math.inf)
        b = max(1, min(len(sizes) - k, budget // packed.numel(), _MAX_BLOCK))
        centres = centroids[k : k + b] * -2  # [b, d]
        block = sizes[k : k + b]
        want = min(num_free, math.ceil(_SLACK * max(block)) + _PAD)
        tau = _thresholds(packed_x, packed_sq, centres, want)
        hits = _block_hits(packed_x, packed_sq, centres, tau)
        taken: List[np.ndarray] = []
        while True:
            found = _candidates(hits, tau, packed, max(block))
            if found is None:  # a threshold placed too low: the whole block, and that column's exact threshold
                hits = _exact_thresholds(_exact_block(packed_x, packed_sq, centres), tau, want, max(block))
                found = _candidates(hits, tau, packed, max(block))
                assert found is not None, "an exact threshold holds want >= need points"
            offsets, items, values = found
            done = _walk(host, offsets, items, values, block, k, taken)
            assert done > 0, "a fresh candidate list always serves its first cluster"
            num_free -= sum(block[:done])
            k += done
            if done == len(block):
                break
            # cluster k ran short: mask what the block took so far and find the rest's candidates again
            rescans += 1
            rows = position[torch.from_numpy(np.concatenate(taken)).to(device)]
            packed_sq.index_fill_(0, rows, math.inf)
            centres, block = centres[done:], block[done:]
            tau = _thresholds(packed_x, packed_sq, centres, want)
            hits = _block_hits(packed_x, packed_sq, centres, tau)
        unsynced.extend(taken)
    sync()
    return labels, rescans


def _block_hits(packed_x: torch.Tensor, packed_sq: torch.Tensor, centres: torch.Tensor, tau: torch.Tensor) -> _Hits:
    """Per column of a block, the rows whose distance is at or below its threshold, with those distances.

    On CPU the product, the norms' addition, the comparison and the gather run on a few megabytes of rows at a
    time, while they are in cache, and the [n, b] block is never kept (memory traffic, not arithmetic, was much of
    a block's time at a million points): the same values as one product over all the rows. The rare step that
    needs every distance of a column (``_exact_thresholds``, after a sample placed a threshold too low) forms the
    block again.

    Args:
        packed_x (torch.Tensor): [n, d] packed points.
        packed_sq (torch.Tensor): [n] their squared norms, inf for taken points.
        centres (torch.Tensor): [b, d] centroids times -2.
        tau (torch.Tensor): [b] thresholds.

    Returns:
        (rows, columns, distances |x|^2 - 2 x.c) of the entries <= tau, in row-major order.
    """
    n, b = packed_x.shape[0], centres.shape[0]
    step = max(1, _CACHE_ELEMENTS // b) if packed_x.device.type == "cpu" else n
    rows, cols, values = [], [], []
    for lo in range(0, n, step):
        part = _exact_block(packed_x[lo : lo + step], packed_sq[lo : lo + step], centres)
        r, c = (part <= tau).nonzero(as_tuple=True)
        values.append(part[r, c])
        rows.append(r.add_(lo))
        cols.append(c)
    return torch.cat(rows), torch.cat(cols), torch.cat(values)


def _exact_block(packed_x: torch.Tensor, packed_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """[n, b] float32 distances |x|^2 - 2 x.c of the packed points to a block's centres (times -2)."""
    return torch.mm(packed_x, centres.T).add_(packed_sq.unsqueeze(1))


def _thresholds(packed_x: torch.Tensor, packed_sq: torch.Tensor, centres: torch.Tensor, want: int) -> torch.Tensor:
    """Per centroid, a distance below which about ``want`` (at least ~want) of the packed points lie.

    Placed from the distances to a strided sample of the points, sized so the threshold's expected rank in the
    sample is about _SAMPLE_RANK; exact (the want-th smallest distance) when the sample is all the points.

    Args:
        packed_x (torch.Tensor): [n, d] packed points.
        packed_sq (torch.Tensor): [n] their squared norms, inf for taken points.
        centres (torch.Tensor): [b, d] centroids times -2.
        want (int): target count, <= n.

    Returns:
        [b] thresholds on |x|^2 - 2 x.c.
    """
    n = packed_x.shape[0]
    step = max(1, n // max(_MIN_SAMPLE, _SAMPLE_RANK * n // want))
    sample = torch.mm(centres, packed_x[::step].T).add_(packed_sq[::step])  # [b, s]
    if step == 1:
        return sample.topk(want, dim=1, largest=False).values[:, -1]
    expected = sample.shape[1] * want / n
    rank = min(sample.shape[1], math.ceil(expected + 2 * math.sqrt(expected)) + 1)
    return sample.topk(rank, dim=1, largest=False).values[:, -1]


def _candidates(
    hits: _Hits, tau: torch.Tensor, packed: torch.Tensor, need: int
) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per column of a distance block, the points at or below its threshold, grouped by column for the walk.

    Args:
        hits (_Hits): (rows, columns, distances) of the block's entries <= tau, in row-major order.
        tau (torch.Tensor): [b] thresholds.
        packed (torch.Tensor): [n] point index of each row.
        need (int): fewest candidates a centroid may have.

    Returns:
        Host arrays: [b + 1] offsets, then the candidates' point indices and distances, grouped by centroid; None
        when a column has fewer than ``need`` (the sample placed its threshold too low).
    """
    b = tau.shape[0]
    rows, cols, found = hits
    counts = torch.bincount(cols, minlength=b)
    if bool((counts < need).any()):
        return None
    order = np.argsort(cols.to(torch.int16 if b < 2**15 else torch.int32).cpu().numpy(), kind="stable")
    offsets = np.zeros(b + 1, dtype=np.int64)
    np.cumsum(counts.cpu().numpy(), out=offsets[1:])
    return offsets, packed[rows].cpu().numpy()[order], found.cpu().numpy()[order]


def _exact_thresholds(dist: torch.Tensor, tau: torch.Tensor, want: int, need: int) -> _Hits:
    """Hits of a whole [n, b] block, with the threshold of each column holding fewer than ``need`` raised to its
    ``want``-th smallest distance (``tau`` is modified there)."""
    rows, cols = (dist <= tau).nonzero(as_tuple=True)
    short = (torch.bincount(cols, minlength=tau.shape[0]) < need).nonzero().squeeze(1)
    if short.numel() > 0:
        tau[short] = dist[:, short].t().topk(min(want, dist.shape[0]), dim=1, largest=False).values[:, -1]
        rows, cols = (dist <= tau).nonzero(as_tuple=True)
    return rows, cols, dist[rows, cols]


def _walk(
    host: np.ndarray,
    offsets: np.ndarray,
    items: np.ndarray,
    values: np.ndarray,
    block: Sequence[int],
    first: int,
    taken: List[np.ndarray],
) -> int:
    """The sequential part: cluster first + j takes the block[j] nearest free points of its candidates.

    Returns:
        The number of clusters done: len(block), or the first one whose free candidates were too few.
    """
    for j, w in enumerate(block):
        lo, hi = offsets[j], offsets[j + 1]
        cand = items[lo:hi]
        free = host[cand] < 0
        num = int(np.count_nonzero(free))
        if num < w:
            return j
        cand = cand[free]
        if num > w:
            cand = cand[np.argpartition(values[lo:hi][free], w - 1)[:w]]
        host[cand] = first + j
        taken.append(cand)
    return len(block)
