"""Residual quantiser: L levels of K-means on residuals, coarse to fine (docs/METHOD.md section 1).

    r^1 = e_i ;  s^l = code of r^l at level l ;  r^{l+1} = r^l - c^l_{s^l}

Level l's codebook C_l (K_l centroids) is fitted on the residuals r^l of all items, with balanced K-means (the
first paper, ``quantizer="balanced_kmeans"``) or plain Lloyd K-means (the technical report,
``quantizer="residual_kmeans"``). A fitted item's code is its cluster in the fit, which for balanced K-means
is the balanced assignment (what makes every code equally used); :meth:`ResidualQuantizer.encode` gives new
points their nearest centroid per level. Decoding sums one centroid per level.

With ``codebook_scope="prefix"`` every level below the first has one codebook per parent: the items whose codes
agree on levels < l (a parent, identified by its centroid row at level l - 1) are clustered into K_l groups among
themselves, or, when there are at most K_l of them, each gets its own code (0, 1, ... in item order) and its
residual is its centroid. A level's centroids are then rows keyed by ``parent_row * K_l + code`` (sorted, at most
one per item), and decoding follows the rows level by level. Shapes: N items, d width, L levels, K_l codes at
level l, M_l centroid rows at level l.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import torch

from torchrec_onerec.tokenizer.balanced_kmeans import BalancedKMeans
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.tokenizer.kmeans import KMeans, check_points, nearest_centroids


@dataclass
class LevelFit:
    """One level of a residual fit.

    Args:
        centroids (torch.Tensor): [K_l, d] codebook of the level.
        codes (torch.Tensor): [N] int64 code of each item.
        iterations (int): K-means rounds run.
        inertia (float): squared error of the level's residuals against their centroids.
        converged (bool): stopped because no assignment changed.
        rescans (int): candidate rescans of the balanced fast path (0 otherwise).
        seconds (float): wall time of the level's fit.
        keys (torch.Tensor | None): [M_l] sorted ``parent_row * K_l + code`` of each centroid row under
            ``codebook_scope="prefix"`` (``centroids`` is then [M_l, d]); None for one codebook of the level.
        codebook_size (int): K_l (0: ``centroids.shape[0]``).
    """

    centroids: torch.Tensor
    codes: torch.Tensor
    iterations: int
    inertia: float
    converged: bool
    rescans: int
    seconds: float
    keys: Optional[torch.Tensor] = None
    codebook_size: int = 0

    @property
    def size(self) -> int:
        """K_l, the codes of the level."""
        return self.codebook_size or int(self.centroids.shape[0])


@dataclass
class ResidualFit:
    """A fitted residual quantiser's output.

    Args:
        codes (torch.Tensor): [N, L] int64 codes.
        levels (List[LevelFit]): per-level fits.
        input_sq (float): sum over items of ||e_i||^2.
        residual_sq (List[float]): sum of ||r^{l+1}||^2 after each level l (L entries, non-increasing in
            practice): the reconstruction error of the first l + 1 levels.
    """

    codes: torch.Tensor
    levels: List[LevelFit] = field(default_factory=list)
    input_sq: float = 0.0
    residual_sq: List[float] = field(default_factory=list)

    @property
    def centroids(self) -> List[torch.Tensor]:
        """L codebooks, [K_l, d] each ([M_l, d] rows under ``codebook_scope="prefix"``)."""
        return [level.centroids for level in self.levels]

    @property
    def centroid_keys(self) -> Optional[List[torch.Tensor]]:
        """Each level's row keys under ``codebook_scope="prefix"`` (level 0: its codes); None otherwise."""
        if all(level.keys is None for level in self.levels):
            return None
        return [
            level.keys if level.keys is not None else torch.arange(level.size, device=level.centroids.device)
            for level in self.levels
        ]

    @property
    def codebook_sizes(self) -> List[int]:
        """K_l of each level."""
        return [level.size for level in self.levels]


class ResidualQuantizer:
    """L-level residual K-means quantiser; K per level from ``config.codebook_sizes``.

    Args:
        config (TokenizerConfig): quantizer, codebook_sizes, max_iter, tolerance, chunk_size, balanced_algorithm.
        seed (int): level l uses seed + l.

    Example:
        >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        >>> rq = ResidualQuantizer(TokenizerConfig(codebook_sizes=[4, 4]), seed=0)
        >>> fit = rq.fit(x)
        >>> fit.codes.shape, torch.bincount(fit.codes[:, 0]).tolist()
        (torch.Size([64, 2]), [16, 16, 16, 16])
        >>> fit.residual_sq[1] < fit.residual_sq[0] < fit.input_sq
        True
    """

    def __init__(self, config: TokenizerConfig, *, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.codebooks: Optional[List[torch.Tensor]] = None
        self.keys: Optional[List[torch.Tensor]] = None

    def _kmeans(self, k: int, level: int) -> Union[BalancedKMeans, KMeans]:
        cfg = self.config
        if cfg.quantizer == "balanced_kmeans":
            return BalancedKMeans(
                k,
                max_iter=cfg.max_iter,
                chunk_size=cfg.chunk_size,
                seed=self.seed + level,
                algorithm=cfg.balanced_algorithm,
                swap_refine=cfg.balanced_swap_refine,
                tolerance=cfg.tolerance,
            )
        return KMeans(
            k, max_iter=cfg.max_iter, chunk_size=cfg.chunk_size, seed=self.seed + level, tolerance=cfg.tolerance
        )

    def fit(self, x: torch.Tensor) -> ResidualFit:
        """Fit the L codebooks level by level on the residuals; runs on x's device.

        Args:
            x (torch.Tensor): [N, d] item embeddings, finite, N >= every K_l.

        Returns:
            ResidualFit with [N, L] codes.
        """
        cfg = self.config
        for level, k in enumerate(cfg.codebook_sizes):
            if k > x.shape[0]:
                raise ValueError(
                    f"tokenizer.codebook_sizes[{level}]={k} is larger than the number of items N={x.shape[0]} "
                    f"(each level clusters all N residuals): use K <= {x.shape[0]}"
                )
        residual = check_points(x, min(cfg.codebook_sizes), "embeddings").clone()
        out = ResidualFit(codes=torch.empty(x.shape[0], 0, dtype=torch.int64, device=x.device))
        out.input_sq = float((residual * residual).sum())
        codes = []
        rows = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)  # each item's centroid row so far
        for level, k in enumerate(cfg.codebook_sizes):
            start = time.perf_counter()
            if level == 0 or cfg.codebook_scope == "level":
                result = self._kmeans(k, level).fit(residual)
                fit = LevelFit(
                    result.centroids,
                    result.labels,
                    result.iterations,
                    result.inertia,
                    result.converged,
                    result.rescans,
                    0.0,
                )
                rows = result.labels
            else:
                fit, rows = self._fit_per_prefix(residual, rows, k, level)
            residual -= fit.centroids[rows]
            if residual.is_cuda:
                torch.cuda.synchronize(residual.device)
            fit.seconds = time.perf_counter() - start
            out.levels.append(fit)
            out.residual_sq.append(float((residual * residual).sum()))
            codes.append(fit.codes)
        out.codes = torch.stack(codes, dim=1)
        self.codebooks, self.keys = out.centroids, out.centroid_keys
        return out

    def _fit_per_prefix(
        self, residual: torch.Tensor, parents: torch.Tensor, k: int, level: int
    ) -> Tuple[LevelFit, torch.Tensor]:
        """One level of ``codebook_scope="prefix"``: K-means within each parent's items (module docstring).

        Args:
            residual (torch.Tensor): [N, d] residuals r^l.
            parents (torch.Tensor): [N] int64 each item's centroid row at level l - 1.
            k (int): K_l.
            level (int): l (seeds the fits with seed + l).

        Returns:
            (the level's fit with [M_l, d] centroid rows and their keys, [N] each item's row).
        """
        n = residual.shape[0]
        order = torch.argsort(parents, stable=True)
        groups, counts = torch.unique_consecutive(parents[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        codes = torch.empty(n, dtype=torch.int64, device=residual.device)
        # a parent with at most K items: each item its own code, its residual its own centroid
        rank = torch.arange(n, device=residual.device) - torch.repeat_interleave(starts, counts)
        alone = torch.repeat_interleave(counts <= k, counts)
        codes[order[alone]] = rank[alone]
        keys, centroids = [groups.repeat_interleave(counts)[alone] * k + rank[alone]], [residual[order[alone]]]
        iterations, converged, rescans = 0, True, 0
        for group in torch.nonzero(counts > k).flatten().tolist():
            members = order[int(starts[group]) : int(starts[group] + counts[group])]
            result = self._kmeans(k, level).fit(residual[members])
            codes[members] = result.labels
            keys.append(groups[group] * k + torch.arange(k, device=residual.device))
            centroids.append(result.centroids)
            iterations, converged = max(iterations, result.iterations), converged and result.converged
            rescans += result.rescans
        key, by_key = torch.sort(torch.cat(keys))
        rows = torch.searchsorted(key, parents * k + codes)
        table = torch.cat(centroids)[by_key]
        inertia = float(((residual - table[rows]) ** 2).sum())
        return LevelFit(table, codes, iterations, inertia, converged, rescans, 0.0, keys=key, codebook_size=k), rows

    def _fitted(self) -> List[torch.Tensor]:
        if self.codebooks is None:
            raise RuntimeError("ResidualQuantizer is not fitted: call fit(x) first")
        return self.codebooks

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes of (new) points: the nearest centroid of the residual at each level.

        Args:
            x (torch.Tensor): [B, d] points on the codebooks' device.

        Returns:
            [B, L] int64 codes.
        """
        residual = x.to(self._fitted()[0].dtype).clone()
        codes = []
        rows = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for level, centroids in enumerate(self._fitted()):
            if self.keys is None or level == 0:
                labels, _ = nearest_centroids(residual, centroids, self.config.chunk_size)
                rows = labels.clone()
            else:  # the nearest among the rows under each point's parent
                k = self.config.codebook_sizes[level]
                keys, labels, parents = self.keys[level], torch.empty_like(rows), rows.clone()
                for parent in parents.unique().tolist():
                    points = torch.nonzero(parents == parent).flatten()
                    first, last = torch.searchsorted(
                        keys, torch.tensor([parent * k, (parent + 1) * k], device=keys.device)
                    ).tolist()
                    if first == last:
                        raise ValueError(
                            f"level {level - 1} centroid row {parent} holds no fitted item, so level "
                            f"{level} has no codebook under it (plain K-means left it empty)"
                        )
                    nearest, _ = nearest_centroids(residual[points], centroids[first:last], self.config.chunk_size)
                    labels[points] = keys[first:last][nearest] - parent * k
                    rows[points] = first + nearest
            residual -= centroids[rows]
            codes.append(labels)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of one centroid per level.

        Args:
            codes (torch.Tensor): [B, L] int64 codes (or [B, L'] with extra levels, which are ignored).

        Returns:
            [B, d] reconstructions.
        """
        return decode(self._fitted(), codes, keys=self.keys, sizes=list(self.config.codebook_sizes))


def decode(
    codebooks: List[torch.Tensor],
    codes: torch.Tensor,
    *,
    keys: Optional[List[torch.Tensor]] = None,
    sizes: Optional[List[int]] = None,
) -> torch.Tensor:
    """Sum over the L quantised levels of each level's centroid of the code tuple.

    Args:
        codebooks (List[torch.Tensor]): L tensors [K_l, d], or [M_l, d] rows with ``keys``.
        codes (torch.Tensor): [B, >= L] int64 codes; columns past L (disambiguation) are ignored.
        keys (List[torch.Tensor] | None): ``codebook_scope="prefix"``: each level's sorted row keys
            ``parent_row * K_l + code`` (module docstring); None: one codebook per level, indexed by the code.
        sizes (List[int] | None): K_l of each level; required with ``keys``.

    Returns:
        [B, d] reconstructions.

    Raises:
        ValueError: with ``keys``, a tuple whose prefix has no such child (not a tuple of the fitted items).

    Example:
        >>> decode([torch.tensor([[1.0], [2.0]]), torch.tensor([[0.1], [0.2]])], torch.tensor([[1, 0, 7]]))
        tensor([[2.1000]])
        >>> decode([torch.tensor([[1.0], [2.0]]), torch.tensor([[0.1], [0.2], [0.3]])], torch.tensor([[1, 1]]),
        ...        keys=[torch.tensor([0, 1]), torch.tensor([0, 2, 3])], sizes=[2, 2])
        tensor([[2.3000]])
    """
    if keys is None:
        out = codebooks[0][codes[:, 0]].clone()
        for level in range(1, len(codebooks)):
            out += codebooks[level][codes[:, level]]
        return out
    if sizes is None or len(sizes) != len(codebooks) or len(keys) != len(codebooks):
        raise ValueError(f"decode with keys needs one key tensor and one size per level ({len(codebooks)} levels)")
    out = torch.zeros(codes.shape[0], codebooks[0].shape[1], dtype=codebooks[0].dtype, device=codes.device)
    rows = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
    for level, (table, level_keys, k) in enumerate(zip(codebooks, keys, sizes)):
        wanted = rows * k + codes[:, level]
        rows = torch.searchsorted(level_keys, wanted).clamp(max=len(level_keys) - 1)
        missing = level_keys[rows] != wanted
        if missing.any():
            bad = int(torch.nonzero(missing)[0])
            raise ValueError(
                f"code tuple {codes[bad, : len(codebooks)].tolist()} (row {bad}) has no centroid at level "
                f"{level}: under codebook_scope='prefix' only the fitted items' tuples decode"
            )
        out += table[rows]
    return out
