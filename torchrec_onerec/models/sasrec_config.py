"""Schema of the ``sasrec`` config section: the SASRec baseline arm (``models.sasrec``) and its training."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchrec_onerec.errors import ConfigError
from torchrec_onerec.optim_config import OptimConfig


@dataclass
class SASRecConfig:
    """SASRec (Kang and McAuley, ICDM 2018): a causal transformer over the history items, scored against every
    item of the catalogue, trained with full-softmax cross-entropy (RecBole's default loss).

    The ``sasrec`` stage trains it only when ``compare.arms`` lists ``sasrec``. It reads the same split and the
    same history (``split.max_history`` items) as the other arms.

    Args:
        embedding_dim: D, width of the item table (which also scores the catalogue: input and output embeddings are
            one table) and of the transformer.
        num_layers: transformer blocks (pre-norm, causal self-attention, GELU feed-forward).
        num_heads: attention heads; must divide ``embedding_dim``.
        ffn_hidden: inner width of each block's feed-forward layer.
        dropout: dropout on the input embeddings and inside every block (training only).
        batch_size: global batch of (history, next item) samples.
        optim: at most ``epochs`` passes over the training samples (every position of every training sequence
            under protocol A, each target item of a training sample under B), stopping after ``patience`` epochs
            without a better validation NDCG@10 (0: train every epoch; the best epoch is kept either way); the
            learning rates of the transformer (AdamW) and of the item table (``train.sparse_optimizer``), weight
            decay.

    Example:
        >>> SASRecConfig(embedding_dim=64, num_heads=3)
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: sasrec.num_heads=3 must divide sasrec.embedding_dim=64
    """

    embedding_dim: int = 64
    num_layers: int = 2
    num_heads: int = 2
    ffn_hidden: int = 256
    dropout: float = 0.2
    batch_size: int = 256
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=40, learning_rate=1e-3, patience=4))

    def __post_init__(self) -> None:
        for name in (
            "embedding_dim",
            "num_layers",
            "num_heads",
            "ffn_hidden",
            "batch_size",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sasrec.{name}={getattr(self, name)} must be > 0")
        if self.embedding_dim % self.num_heads:
            raise ConfigError(
                f"sasrec.num_heads={self.num_heads} must divide sasrec.embedding_dim={self.embedding_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"sasrec.dropout={self.dropout} must lie in [0, 1)")
        self.optim.check("sasrec.optim")
