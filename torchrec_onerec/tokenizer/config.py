"""Schema of the semantic-ID tokenizer (ONEREC.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

EMBEDDING_SOURCES = ("content", "file", "features", "collaborative", "text")
QUANTIZERS = ("balanced_kmeans", "residual_kmeans")
NORMALIZATIONS = ("l2", "standardize", "none")


@dataclass
class TokenizerConfig:
    """Item embeddings -> L-level semantic codes, unique per item.

    Args:
        embedding_source: ``content`` (the data set's own content embedding, e.g. the synthetic world's),
            ``file`` (.npy or parquet with ``item_id`` + vector), ``features`` (item side features),
            ``collaborative`` (from training interactions only), ``text`` (titles through
            sentence-transformers, optional extra).
        embedding_path: the file for ``file``, or a local sentence-transformers model folder for ``text``.
        embedding_dim: width of ``collaborative`` embeddings.
        normalize: ``l2``, ``standardize`` or ``none``, applied before quantisation.
        quantizer: ``balanced_kmeans`` (the paper's) or ``residual_kmeans`` (plain, the technical report's).
        codebook_sizes: K per level; the number of entries is L.
        max_iter: K-means iterations per level at most (stops earlier when no assignment changes).
        chunk_size: rows per block of the distance computation (bounds memory at large N and K).
    """

    embedding_source: str = "content"
    embedding_path: Optional[str] = None
    embedding_dim: int = 64
    normalize: str = "l2"
    quantizer: str = "balanced_kmeans"
    codebook_sizes: List[int] = field(default_factory=lambda: [32, 32, 32])
    max_iter: int = 30
    chunk_size: int = 8192

    def __post_init__(self) -> None:
        if self.embedding_source not in EMBEDDING_SOURCES:
            raise ValueError(f"tokenizer.embedding_source={self.embedding_source!r} is not one of {EMBEDDING_SOURCES}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"tokenizer.quantizer={self.quantizer!r} is not one of {QUANTIZERS}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"tokenizer.normalize={self.normalize!r} is not one of {NORMALIZATIONS}")
        if not self.codebook_sizes or any(k < 2 for k in self.codebook_sizes):
            raise ValueError(f"tokenizer.codebook_sizes={list(self.codebook_sizes)} needs at least one level, each K >= 2")
        if self.max_iter < 1 or self.chunk_size < 1:
            raise ValueError("tokenizer.max_iter and tokenizer.chunk_size must be >= 1")
