"""Semantic-ID tokenizer (docs/METHOD.md section 1): item embeddings -> balanced residual K-means -> unique codes."""

from torchrec_onerec.tokenizer.balanced_kmeans import BalancedKMeans, balanced_sizes
from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.tokenizer.embeddings import item_embeddings, normalize_embeddings
from torchrec_onerec.tokenizer.kmeans import KMeans, KMeansResult
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.tokenizer.report import TokenizerReport
from torchrec_onerec.tokenizer.residual import ResidualFit, ResidualQuantizer
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer
from torchrec_onerec.tokenizer.uniqueness import Collisions, disambiguate

__all__ = [
    "BalancedKMeans",
    "Codebook",
    "Collisions",
    "KMeans",
    "KMeansResult",
    "PrefixIndex",
    "ResidualFit",
    "ResidualQuantizer",
    "TokenizerConfig",
    "TokenizerReport",
    "balanced_sizes",
    "catalogue_fingerprint",
    "disambiguate",
    "fit_tokenizer",
    "item_embeddings",
    "normalize_embeddings",
]
