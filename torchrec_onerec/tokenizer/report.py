"""Quality report of a semantic-ID tokenizer (docs/METHOD.md section 1; the technical report's Table 11 measures).

Per level: utilisation (fraction of the K codes used), code entropy in bits against its maximum log2 K,
smallest and largest cluster, the reconstruction error after that many levels, K-means iterations and time.
Overall: relative squared reconstruction error ||e - sum of centroids||^2 / ||e||^2, the collision rate before
disambiguation (1 - distinct L-tuples / I), and the fraction of items whose L-tuple is unique.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List

import torch

from torchrec_onerec.tokenizer.codebook import Codebook
from torchrec_onerec.tokenizer.residual import ResidualFit
from torchrec_onerec.tokenizer.uniqueness import Collisions


@dataclass
class LevelReport:
    """One quantised level.

    Args:
        level (int): 0-based level.
        codebook_size (int): K.
        used_codes (int): codes with at least one item.
        utilisation (float): used_codes / K.
        entropy_bits (float): entropy of the code distribution over items.
        max_entropy_bits (float): log2 K, reached when every code is used equally.
        min_cluster_size (int): fewest items of a code (0 when a code is unused).
        max_cluster_size (int): most items of a code.
        reconstruction_error (float): relative squared error of the first level + 1 levels.
        iterations (int): K-means rounds.
        converged (bool): stopped because no assignment changed.
        seconds (float): fit time of the level.
    """

    level: int
    codebook_size: int
    used_codes: int
    utilisation: float
    entropy_bits: float
    max_entropy_bits: float
    min_cluster_size: int
    max_cluster_size: int
    reconstruction_error: float
    iterations: int
    converged: bool
    seconds: float


@dataclass
class TokenizerReport:
    """Quality of a fitted codebook.

    Args:
        num_items (int): I.
        dim (int): d of the embeddings.
        quantizer (str): ``balanced_kmeans`` or ``residual_kmeans``.
        reconstruction_error (float): relative squared error of the sum of the L centroids.
        collision_rate (float): 1 - distinct L-tuples / I, before disambiguation.
        unique_fraction (float): fraction of items whose L-tuple is unique.
        max_collision_group (int): most items sharing one L-tuple.
        vocab_sizes (List[int]): vocabulary of each of the L' code levels.
        seconds (float): total fit time.
        levels (List[LevelReport]): per quantised level.
    """

    num_items: int
    dim: int
    quantizer: str
    reconstruction_error: float
    collision_rate: float
    unique_fraction: float
    max_collision_group: int
    vocab_sizes: List[int]
    seconds: float
    levels: List[LevelReport] = field(default_factory=list)

    @classmethod
    def build(
        cls, fit: ResidualFit, codebook: Codebook, collisions: Collisions, *, quantizer: str, seconds: float
    ) -> "TokenizerReport":
        """Measure a fit.

        Args:
            fit (ResidualFit): the residual quantiser's output.
            codebook (Codebook): the codebook made from it.
            collisions (Collisions): collision counts before disambiguation.
            quantizer (str): the quantizer's name.
            seconds (float): total fit time.

        Returns:
            The report.

        Example:
            >>> from torchrec_onerec.tokenizer.config import TokenizerConfig
            >>> from torchrec_onerec.tokenizer.residual import ResidualQuantizer
            >>> fit = ResidualQuantizer(TokenizerConfig(codebook_sizes=[2, 2]), seed=0).fit(torch.randn(8, 3))
            >>> cb, col = Codebook.build(fit.codes, fit.centroids, fingerprint="")
            >>> r = TokenizerReport.build(fit, cb, col, quantizer="balanced_kmeans", seconds=0.0)
            >>> [(lv.utilisation, lv.entropy_bits, lv.min_cluster_size) for lv in r.levels]
            [(1.0, 1.0, 4), (1.0, 1.0, 4)]
        """
        total = max(fit.input_sq, 1e-30)
        levels = []
        for level, lf in enumerate(fit.levels):
            k = lf.size
            counts = torch.bincount(lf.codes.cpu(), minlength=k).double()
            p = counts[counts > 0] / counts.sum()
            levels.append(
                LevelReport(
                    level=level,
                    codebook_size=k,
                    used_codes=int((counts > 0).sum()),
                    utilisation=float((counts > 0).double().mean()),
                    entropy_bits=float(-(p * p.log2()).sum()),
                    max_entropy_bits=math.log2(k),
                    min_cluster_size=int(counts.min()),
                    max_cluster_size=int(counts.max()),
                    reconstruction_error=fit.residual_sq[level] / total,
                    iterations=lf.iterations,
                    converged=lf.converged,
                    seconds=lf.seconds,
                )
            )
        first = fit.levels[0].centroids
        return cls(
            num_items=codebook.num_items,
            dim=first.shape[1],
            quantizer=quantizer,
            reconstruction_error=fit.residual_sq[-1] / total,
            collision_rate=collisions.collision_rate,
            unique_fraction=collisions.unique_fraction,
            max_collision_group=collisions.max_group,
            vocab_sizes=codebook.vocab_sizes,
            seconds=seconds,
            levels=levels,
        )

    def to_json(self) -> Dict[str, Any]:
        """The report as a JSON-ready dict (``json.dumps`` it, or hand it to a run directory's JSON writer)."""
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        """The report as a markdown section with one table row per level."""
        lines = [
            "## Semantic-ID tokenizer",
            "",
            f"{self.num_items} items, d = {self.dim}, {self.quantizer}, code levels {len(self.vocab_sizes)} "
            f"(vocabularies {self.vocab_sizes}), fitted in {self.seconds:.1f} s.",
            "",
            f"- reconstruction error (relative squared): {self.reconstruction_error:.4f}",
            f"- collision rate before disambiguation: {self.collision_rate:.4f} "
            f"(largest group {self.max_collision_group} items)",
            f"- items with a unique L-tuple: {self.unique_fraction:.4f}",
            "",
            "| level | K | used | utilisation | entropy bits (max) | cluster size min-max | recon. error | iters | s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for lv in self.levels:
            iters = f"{lv.iterations}" + ("" if lv.converged else " (cap)")
            lines.append(
                f"| {lv.level} | {lv.codebook_size} | {lv.used_codes} | {lv.utilisation:.3f} | "
                f"{lv.entropy_bits:.2f} ({lv.max_entropy_bits:.2f}) | {lv.min_cluster_size}-{lv.max_cluster_size} | "
                f"{lv.reconstruction_error:.4f} | {iters} | {lv.seconds:.2f} |"
            )
        return "\n".join(lines) + "\n"
