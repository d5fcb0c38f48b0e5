"""Schema of the semantic-ID tokenizer (docs/METHOD.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from torchrec_onerec.tokenizer.kmeans import check_tolerance

EMBEDDING_SOURCES = ("content", "file", "features", "collaborative", "text")
QUANTIZERS = ("balanced_kmeans", "residual_kmeans")
NORMALIZATIONS = ("l2", "standardize", "none")
BALANCED_ALGORITHMS = ("fast", "reference")
DISAMBIGUATIONS = ("auto", "always", "item")
CODEBOOK_SCOPES = ("level", "prefix")


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
        codebook_scope: ``level`` (one codebook per level shared by every prefix: residual K-means, the papers')
            or ``prefix`` (below the first level, one codebook per parent prefix, fitted on that prefix's items
            only: hierarchical K-means). With ``prefix`` the items under a prefix are split K ways, so L levels
            give every item its own tuple once the product of the K's exceeds the catalogue (a prefix holding
            at most K items gives each its own code), and each level fits what is left under its own parent.
        max_iter: K-means iterations per level at most (stops earlier when no assignment changes).
        tolerance: also stop a level's K-means once three rounds (from the seventh on) lower its squared error by
            at most this share of it (0: only when a round moves no item). At large N the residual levels still move
            a few percent of the items after max_iter rounds while each late round buys little; 0.003 fits the
            paper's size in 58 rounds instead of 90, for about 1% more error (README, tokenizer).
        chunk_size: rows per block of the distance computation (bounds memory at large N and K): plain
            K-means holds [chunk_size, K] distances, balanced K-means at most chunk_size * max(K, 1024).
        balanced_algorithm: ``fast`` (exact, blocked) or ``reference`` (the paper's loop as written, slow).
        balanced_swap_refine: after balanced K-means converges, lower its squared error by point swaps between
            clusters and Lloyd updates, keeping the sizes (``tokenizer/swap_refine.py``; about 3x the fit's time,
            and [N, K] costs in memory: for up to N * K = 2^27).
        disambiguation: ``auto`` appends an extra code level only when two items share all L codes;
            ``always`` appends it even when every L-tuple is unique (then it is all zeros); ``item`` appends the
            item id itself, so the last level scores the whole catalogue under the L-code prefix (a two-stage
            softmax: the semantic levels group the items, the last one names one; its table and output head have a
            row per item, so it suits catalogues of thousands of items, not of millions).
        feature_columns: item-table columns used by ``features`` (empty: every column but ``item_id``;
            free-text string columns, whose token vocabulary exceeds max_feature_categories, are then skipped).
        max_feature_categories: most one-hot/multi-hot categories kept per column (the most frequent).
        categorical_max_values: integer columns with at most this many distinct values are one-hot
            categories; other numeric columns are standardised.
        text_column: item-table column embedded by ``text``.
        collaborative_window: ``collaborative`` counts two items as co-occurring when they are at most this
            many positions apart in a user's time-ordered training interactions.
    """

    embedding_source: str = "content"
    embedding_path: Optional[str] = None
    embedding_dim: int = 64
    normalize: str = "l2"
    quantizer: str = "balanced_kmeans"
    codebook_sizes: List[int] = field(default_factory=lambda: [32, 32, 32])
    codebook_scope: str = "level"
    max_iter: int = 30
    tolerance: float = 0.0
    chunk_size: int = 8192
    balanced_algorithm: str = "fast"
    balanced_swap_refine: bool = False
    disambiguation: str = "auto"
    feature_columns: List[str] = field(default_factory=list)
    max_feature_categories: int = 1000
    categorical_max_values: int = 32
    text_column: str = "title"
    collaborative_window: int = 20

    def __post_init__(self) -> None:
        if self.embedding_source not in EMBEDDING_SOURCES:
            raise ValueError(f"tokenizer.embedding_source={self.embedding_source!r} is not one of {EMBEDDING_SOURCES}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"tokenizer.quantizer={self.quantizer!r} is not one of {QUANTIZERS}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"tokenizer.normalize={self.normalize!r} is not one of {NORMALIZATIONS}")
        if not self.codebook_sizes or any(k < 2 for k in self.codebook_sizes):
            raise ValueError(
                f"tokenizer.codebook_sizes={list(self.codebook_sizes)} needs at least one level, each K >= 2"
            )
        if self.codebook_scope not in CODEBOOK_SCOPES:
            raise ValueError(f"tokenizer.codebook_scope={self.codebook_scope!r} is not one of {CODEBOOK_SCOPES}")
        if self.max_iter < 1 or self.chunk_size < 1:
            raise ValueError(
                f"tokenizer.max_iter={self.max_iter} and tokenizer.chunk_size={self.chunk_size} must be >= 1"
            )
        check_tolerance(self.tolerance, "tokenizer.tolerance")
        if self.balanced_algorithm not in BALANCED_ALGORITHMS:
            raise ValueError(
                f"tokenizer.balanced_algorithm={self.balanced_algorithm!r} is not one of {BALANCED_ALGORITHMS}"
            )
        if self.disambiguation not in DISAMBIGUATIONS:
            raise ValueError(f"tokenizer.disambiguation={self.disambiguation!r} is not one of {DISAMBIGUATIONS}")
        if self.embedding_dim < 1 or self.max_feature_categories < 1 or self.categorical_max_values < 1:
            raise ValueError(
                f"tokenizer.embedding_dim={self.embedding_dim}, max_feature_categories={self.max_feature_categories} "
                f"and categorical_max_values={self.categorical_max_values} must be >= 1"
            )
        if self.collaborative_window < 1:
            raise ValueError(f"tokenizer.collaborative_window={self.collaborative_window} must be >= 1")


# Keys added after run directories existed, with the value that keeps the old behaviour: at that value a key is
# left out of the fingerprints (``catalogue_fingerprint``, the stages' in ``pipeline.py``), so upgrading the
# package does not redo the stages of an earlier run whose settings did not change.
LATER_KEYS: Dict[str, object] = {"balanced_swap_refine": False, "tolerance": 0.0}


def fingerprint_settings(settings: Any, later_keys: Optional[Dict[str, object]] = None) -> Any:
    """``settings`` (a config section as a dict) without the keys of ``later_keys`` (the tokenizer's
    ``LATER_KEYS`` when None) that hold their old-behaviour value (anything but a dict comes back as it is).

    Example:
        >>> fingerprint_settings({"max_iter": 30, "balanced_swap_refine": False})
        {'max_iter': 30}
        >>> fingerprint_settings({"max_iter": 30, "balanced_swap_refine": True})
        {'max_iter': 30, 'balanced_swap_refine': True}
    """
    if not isinstance(settings, dict):
        return settings
    later = LATER_KEYS if later_keys is None else later_keys
    return {key: value for key, value in settings.items() if key not in later or value != later[key]}
