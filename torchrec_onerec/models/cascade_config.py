"""Schema of the ``cascade`` config section: the retrieval -> ranking -> top-m baseline that OneRec replaces
(docs/METHOD.md introduction; DESIGN.md "cascade baseline").

Two sub-sections, one per model: ``cascade.retrieval`` (the two-tower model, ``models.two_tower``) and
``cascade.ranker`` (the DLRM-style multi-task ranker, ``models.ranker``). Both train on the same TorchRec stack
as the generative model (``train.cascade_training``); the stack-level keys (sparse optimiser, sharding type,
gradient clipping, collective timeout) come from the ``train`` section, the sizes, epochs, batch sizes and
learning rates from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

from torchrec_onerec.errors import ConfigError
from torchrec_onerec.optim_config import OptimConfig


def _check_positive(section: str, obj: object, names: tuple[str, ...]) -> None:
    """Raise ConfigError naming the first of ``names`` whose value is not > 0."""
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ConfigError(f"{section}.{name}={value} must be > 0")


def _check_layers(key: str, sizes: List[int]) -> None:
    """Raise ConfigError unless every layer size is >= 1."""
    if any(size < 1 for size in sizes):
        raise ConfigError(f"{key}={list(sizes)}: every layer size must be >= 1")


@dataclass
class RetrievalConfig:
    """The two-tower retrieval model and its training.

    Args:
        embedding_dim: D, width of the id tables and of the L2-normalised user and item vectors.
        tower_hidden: hidden layer sizes of each tower's MLP (ReLU) before its last linear layer to D; empty = one
            linear layer.
        temperature: the softmax temperature over cosine similarities.
        logq_correction: subtract log q(item) (its share of the training pairs) from the in-batch logits, so that
            popular items, which are sampled as negatives more often, are not over-penalised (Yi et al., RecSys 2019).
        use_item_content: feed the data set's item content embedding (``InteractionData.item_embeddings``) to the
            item tower when the data has one.
        batch_size: global batch of (history, positive item) pairs; the other pairs' items are the negatives.
        optim: epochs (passes over the training pairs; the best epoch by validation recall@num_candidates is
            kept), the learning rates of the towers' MLPs (AdamW) and of the id tables, weight decay.
        num_candidates: K_r, items retrieved per user by exact inner product over the whole catalogue.

    Example:
        >>> RetrievalConfig(temperature=0.0)
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: cascade.retrieval.temperature=0.0 must be > 0
    """

    embedding_dim: int = 32
    tower_hidden: List[int] = field(default_factory=lambda: [64])
    temperature: float = 0.05
    logq_correction: bool = True
    use_item_content: bool = True
    batch_size: int = 512
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=5, learning_rate=3e-3))
    num_candidates: int = 100

    def __post_init__(self) -> None:
        _check_positive(
            "cascade.retrieval",
            self,
            (
                "embedding_dim",
                "temperature",
                "batch_size",
                "num_candidates",
            ),
        )
        _check_layers("cascade.retrieval.tower_hidden", self.tower_hidden)
        self.optim.check("cascade.retrieval.optim")


@dataclass
class RankerConfig:
    """The DLRM-style multi-task ranker and its training.

    Args:
        embedding_dim: D of the ``rank_user`` and ``rank_item`` tables (DLRM needs one D for all).
        bottom_mlp: hidden sizes of DLRM's dense arch before its last layer to D (empty: one layer).
        top_mlp: hidden sizes of DLRM's over arch before its last layer, which has one logit per task.
        use_item_content: add the data set's item content embedding to the dense features when it has one.
        batch_size: global batch of impressions (or of positives and sampled negatives under protocol A).
        optim: epochs (passes over the training impressions; the best epoch by mean validation AUC is kept), the
            learning rates of the MLPs (AdamW) and of the tables, weight decay.
        negatives_per_positive: protocol A (positives only): uniformly drawn negative items per positive, one task
            ``positive``; redrawn every epoch from the seed.
        score_weights: task -> weight of its probability in the combined score that orders the retrieved
            candidates (e.g. ``{vtr: 1.0, swt: 1.0, ltr: 2.0}``); empty = equal weights; a task left out weighs 0.
        rerank_weights: the diversity weights the ``cascade_rerank`` arm tries on the validation users for its third
            stage, an MMR re-rank of the ranked candidates (``models.cascade.mmr_rerank``); 0 (the plain ranking)
            is always tried too. It keeps the weight with the best validation score: the session reward model's
            estimate of the served session where one is trained (protocol B), else validation NDCG@10.

    Example:
        >>> RankerConfig(score_weights={"vtr": -1.0})
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: cascade.ranker.score_weights={'vtr': -1.0}: weights must be >= 0 ...
    """

    embedding_dim: int = 16
    bottom_mlp: List[int] = field(default_factory=lambda: [32])
    top_mlp: List[int] = field(default_factory=lambda: [64, 32])
    use_item_content: bool = True
    batch_size: int = 512
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=3, learning_rate=3e-3))
    negatives_per_positive: int = 4
    score_weights: Dict[str, float] = field(default_factory=dict)
    rerank_weights: List[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5, 0.7])

    def __post_init__(self) -> None:
        if any(not 0.0 <= w <= 1.0 for w in self.rerank_weights):
            raise ConfigError(
                f"cascade.ranker.rerank_weights={list(self.rerank_weights)}: every weight must lie in "
                "[0, 1] (0 keeps the ranking, 1 ignores relevance after the first item)"
            )
        _check_positive(
            "cascade.ranker",
            self,
            (
                "embedding_dim",
                "batch_size",
                "negatives_per_positive",
            ),
        )
        _check_layers("cascade.ranker.bottom_mlp", self.bottom_mlp)
        _check_layers("cascade.ranker.top_mlp", self.top_mlp)
        if not self.top_mlp:
            raise ConfigError(
                "cascade.ranker.top_mlp=[] needs at least one hidden layer (DLRM's over arch has two "
                "or more layers); e.g. [64, 32]"
            )
        self.optim.check("cascade.ranker.optim")
        weights = dict(self.score_weights)
        if weights and (min(weights.values()) < 0 or sum(weights.values()) <= 0):
            raise ConfigError(f"cascade.ranker.score_weights={weights}: weights must be >= 0 with a positive sum")


@dataclass
class CascadeConfig:
    """The cascade baseline: two-tower retrieval of ``retrieval.num_candidates`` items, ranked by the ranker's
    combined score, written as sessions of m (the first one is the top-m session).

    Args:
        retrieval: the two-tower model.
        ranker: the multi-task ranker and the combined score.

    Example:
        >>> CascadeConfig().retrieval.num_candidates, CascadeConfig().ranker.score_weights
        (100, {})
    """

    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
