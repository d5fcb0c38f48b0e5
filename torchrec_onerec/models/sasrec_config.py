"""Schema of the ``sasrec`` config section: the SASRec baseline arm (``models.sasrec``) and its training."""

from __future__ import annotations

from dataclasses import dataclass

from torchrec_onerec.errors import ConfigError


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
        epochs: at most this many passes over the training samples (every position of every training sequence
            under protocol A, each target item of a training sample under B).
        patience: stop after this many epochs without a better validation NDCG@10 (0: train every epoch); the best
            epoch is kept either way.
        batch_size: global batch of (history, next item) samples.
        learning_rate: AdamW learning rate of the transformer.
        sparse_learning_rate: learning rate of the fused optimiser of the item table (``train.sparse_optimizer``).
        weight_decay: AdamW weight decay.

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
    epochs: int = 40
    patience: int = 4
    batch_size: int = 256
    learning_rate: float = 1e-3
    sparse_learning_rate: float = 0.05
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "embedding_dim",
            "num_layers",
            "num_heads",
            "ffn_hidden",
            "epochs",
            "batch_size",
            "learning_rate",
            "sparse_learning_rate",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sasrec.{name}={getattr(self, name)} must be > 0")
        if self.embedding_dim % self.num_heads:
            raise ConfigError(
                f"sasrec.num_heads={self.num_heads} must divide sasrec.embedding_dim={self.embedding_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"sasrec.dropout={self.dropout} must lie in [0, 1)")
        if self.patience < 0 or self.weight_decay < 0:
            raise ConfigError(
                f"sasrec.patience={self.patience} and sasrec.weight_decay={self.weight_decay} must be >= 0"
            )
