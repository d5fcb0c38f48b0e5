"""Schema of the ``reward`` config section: the session reward model (docs/METHOD.md section 3) and its training."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict

from torchrec_onerec.errors import ConfigError
from torchrec_onerec.optim_config import OptimConfig

POOLINGS = ("attention", "sum", "mean")
SESSION_LABELS = ("mean", "any")
TOWER_LEVELS = ("session", "item")


@dataclass
class RewardModelConfig:
    """The session reward model R(u, S) and how it is trained (docs/EVAL.md protocol B: training days only).

    Args:
        embedding_dim: D, width of the item and user tables and of every item representation e_i.
        num_heads: heads of the self-attention over a session's items; must divide ``embedding_dim``.
        tower_hidden: hidden width of the user MLP and of each signal's tower.
        embedding_init: every table row starts uniform in [-embedding_init, embedding_init]; 0 keeps TorchRec's
            default of +-sqrt(1 / rows) (0.02 for 2,000 items). The user-item term e_i = v_i (.) u is a product of
            two such rows: from TorchRec's tiny rows it is learnt too slowly, and on the synthetic world the
            model was selected (validation AUC peaks after 1-2 epochs) before it had learnt any user-item
            interaction (benchmarks/reward_hacking.py: history_topic_gain 0).
        semantic_ids: add the embeddings of each item's semantic-ID codes (the tokenize stage's codebook) to its
            id embedding, in the history and in the session: items with similar content share rows, so a user's
            interest learnt from some items carries over to similar ones (an id-only table learns it per item and,
            on the synthetic world, learnt item popularity and quality but not the user's topics: see
            benchmarks/reward_hacking.py). False: id embeddings only.
        user_id_embedding: give each user id its own row (table ``reward_user``) in the user representation;
            False (the default) builds u from the history alone: a per-user row memorises when users have few
            training sessions (on the synthetic world, about 34 impressions each, validation AUC peaked after 1-2
            epochs with it and the model learnt no user-item interaction), and a new user has no trained row.
            KuaiRand's test AUC with these defaults against the earlier ones (id-only, user rows, TorchRec's
            init, learning rate 1e-3): same-length session 0.727 vs 0.724, impression 0.729 vs 0.729.
        history_attention: fuse each session item with u plus its own attention read of the history (the
            history items most like it weigh most: ``models.history_attention``, DIN's target-aware attention),
            so a user's several interests are not averaged into one vector; False: u alone (the paper's design).
            On the synthetic world it did not help: validation same-length session AUC 0.6374 against 0.6376.
        pooling: ``attention`` (self-attention over the session's items, then sum-pool: the paper's design);
            the baselines the attention design is measured against, where items never see each other: ``sum``
            (the same sum-pool without the attention) and ``mean`` (the mean of the e_i).
        tower_level: where the signal towers read: ``session`` (the pooled session vector, trained on the session
            labels: the paper's design) or ``item`` (each slot's vector after the attention, so every item is
            scored in the context of the others, trained on the items' own labels; a session's probability is
            the mean over its real items, the expected rate that ``session_label=mean`` targets). The world
            sums each slot's response, and per-item labels credit the user-item match directly where a pooled
            label spreads it over m items. On the synthetic world it predicts better (validation same-length
            session AUC 0.644 against 0.638) and aligns worse: an item's own labels say little about what a repeated
            topic costs the session, so the aligned sessions lost diversity (OneRec + IPA's true reward 4.78
            against 5.24, configs/synthetic.yaml's header).
        dropout: dropout in the towers, the user MLP and on the attention output (training only).
        weights: signal -> weight of its tower in the scalar reward (negative for an unwanted signal); empty =
            weight 1 for every signal; a signal left out of a non-empty mapping weighs 0.
        session_label: the training target of a session from its items' 0/1 labels: ``mean`` (a soft target,
            the signal's rate over the session's real items) or ``any`` (1 when some item is positive).
        train_on_impressions: also train on every training impression as a 1-item session (its own labels),
            besides the sessions of m: per-item credit that the pooled session labels lack. Measured on the
            default synthetic world (mean over towers, test days): impression AUC 0.598 -> 0.628, same-length
            session AUC 0.585 -> 0.595 (attention pooling); on a world with a strong user-topic signal the
            session AUC went from 0.53 to 0.64.
        batch_size: sessions per global batch.
        optim: epochs, learning rates, weight decay, warm-up + cosine schedule, and the epochs without a better
            validation AUC before stopping (``patience``). On the synthetic world, 5 epochs at a dense learning
            rate of 1e-3 reach a test AUC of 0.653 (impressions) / 0.603 (same-length sessions), at 3e-3 0.667 /
            0.630.
        baseline_pooling: the ``train-reward`` stage also trains this pooling with the same settings and reports
            both models' test AUCs side by side, so the attention design is shown to earn its place (or not);
            ``""`` skips it.

    Example:
        >>> RewardModelConfig(pooling="mean").num_heads
        2
        >>> RewardModelConfig(embedding_dim=30, num_heads=4)
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: reward.num_heads=4 must divide reward.embedding_dim=30; ...
    """

    embedding_dim: int = 32
    num_heads: int = 2
    tower_hidden: int = 64
    embedding_init: float = 0.5
    semantic_ids: bool = True
    user_id_embedding: bool = False
    history_attention: bool = False
    pooling: str = "attention"
    tower_level: str = "session"
    dropout: float = 0.0
    weights: Dict[str, float] = field(default_factory=dict)
    session_label: str = "mean"
    train_on_impressions: bool = True
    batch_size: int = 256
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            epochs=5,
            learning_rate=3e-3,
            sparse_learning_rate=0.05,
            weight_decay=0.01,
            warmup_steps=10,
            lr_decay="cosine",
            min_lr_ratio=0.1,
            patience=2,
        )
    )
    baseline_pooling: str = "mean"

    def __post_init__(self) -> None:
        self.optim.check("reward.optim")
        for name in ("embedding_dim", "num_heads", "tower_hidden", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"reward.{name}={getattr(self, name)} must be >= 1")
        if self.embedding_dim % self.num_heads:
            raise ConfigError(
                f"reward.num_heads={self.num_heads} must divide reward.embedding_dim="
                f"{self.embedding_dim}; pick a head count that divides the width"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"reward.pooling={self.pooling!r} must be one of {list(POOLINGS)}")
        if self.tower_level not in TOWER_LEVELS:
            raise ConfigError(f"reward.tower_level={self.tower_level!r} must be one of {list(TOWER_LEVELS)}")
        if self.tower_level == "item" and self.session_label != "mean":
            raise ConfigError(
                "reward.tower_level=item scores a session by the mean of its items' probabilities, "
                f"which is what session_label=mean targets; got session_label={self.session_label!r}"
            )
        if self.baseline_pooling not in ("", *POOLINGS):
            raise ConfigError(
                f"reward.baseline_pooling={self.baseline_pooling!r} must be '' (none) or one of {list(POOLINGS)}"
            )
        if self.session_label not in SESSION_LABELS:
            raise ConfigError(f"reward.session_label={self.session_label!r} must be one of {list(SESSION_LABELS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"reward.dropout={self.dropout} must lie in [0, 1)")
        if self.embedding_init < 0:
            raise ConfigError(f"reward.embedding_init={self.embedding_init} must be >= 0")
        bad = {signal: weight for signal, weight in self.weights.items() if not math.isfinite(weight)}
        if bad:
            raise ConfigError(
                f"reward.weights has non-finite weights {bad}; give each signal a finite weight "
                "(negative for an unwanted signal such as hate, or leave a signal out to ignore it)"
            )
