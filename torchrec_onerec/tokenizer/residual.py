"""Residual quantiser: L levels of K-means on residuals, coarse to fine (docs/METHOD.md section 1).

    r^1 = e_i ;  s^l = code of r^l at level l ;  r^{l+1} = r^l - c^l_{s^l}

Level l's codebook C_l (K_l centroids) is fitted on the residuals r^l of all items, with balanced K-means (the
first paper, ``quantizer="balanced_kmeans"``) or plain Lloyd K-means (the technical report,
``quantizer="residual_kmeans"``). A fitted item's code is its cluster in the fit, which for balanced K-means
is the balanced assignment (what makes every code equally used); :meth:`ResidualQuantizer.encode` gives new
points their nearest centroid per level. Decoding sums one centroid per level. Shapes: N items, d width,
L levels, K_l codes at level l.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional, Union

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
    """

    centroids: torch.Tensor
    codes: torch.Tensor
    iterations: int
    inertia: float
    converged: bool
    rescans: int
    seconds: float


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
        """L codebooks, [K_l, d] each."""
        return [level.centroids for level in self.levels]


class ResidualQuantizer:
    """L-level residual K-means quantiser; K per level from ``config.codebook_sizes``.

    Args:
        config (TokenizerConfig): quantizer, codebook_sizes, max_iter, chunk_size, balanced_algorithm.
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
        for level, k in enumerate(cfg.codebook_sizes):
            start = time.perf_counter()
            model: Union[BalancedKMeans, KMeans]
            if cfg.quantizer == "balanced_kmeans":
                model = BalancedKMeans(
                    k,
                    max_iter=cfg.max_iter,
                    chunk_size=cfg.chunk_size,
                    seed=self.seed + level,
                    algorithm=cfg.balanced_algorithm,
                )
            else:
                model = KMeans(k, max_iter=cfg.max_iter, chunk_size=cfg.chunk_size, seed=self.seed + level)
            result = model.fit(residual)
            residual -= result.centroids[result.labels]
            if residual.is_cuda:
                torch.cuda.synchronize(residual.device)
            seconds = time.perf_counter() - start
            out.levels.append(
                LevelFit(
                    result.centroids,
                    result.labels,
                    result.iterations,
                    result.inertia,
                    result.converged,
                    result.rescans,
                    seconds,
                )
            )
            out.residual_sq.append(float((residual * residual).sum()))
            codes.append(result.labels)
        out.codes = torch.stack(codes, dim=1)
        self.codebooks = out.centroids
        return out

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
        for centroids in self._fitted():
            labels, _ = nearest_centroids(residual, centroids, self.config.chunk_size)
            residual -= centroids[labels]
            codes.append(labels)
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of one centroid per level.

        Args:
            codes (torch.Tensor): [B, L] int64 codes (or [B, L'] with extra levels, which are ignored).

        Returns:
            [B, d] reconstructions.
        """
        return decode(self._fitted(), codes)


def decode(codebooks: List[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
    """Sum over the L quantised levels of codebooks[l][codes[:, l]].

    Args:
        codebooks (List[torch.Tensor]): L tensors [K_l, d].
        codes (torch.Tensor): [B, >= L] int64 codes; columns past L (disambiguation) are ignored.

    Returns:
        [B, d] reconstructions.

    Example:
        >>> decode([torch.tensor([[1.0], [2.0]]), torch.tensor([[0.1], [0.2]])], torch.tensor([[1, 0, 7]]))
        tensor([[2.1000]])
    """
    out = codebooks[0][codes[:, 0]].clone()
    for level in range(1, len(codebooks)):
        out += codebooks[level][codes[:, level]]
    return out
