"""The optimiser section every trainable model has: ``train.optim``, ``reward.optim``, ``align.optim``,
``cascade.retrieval.optim``, ``cascade.ranker.optim``, ``sasrec.optim``.

One schema, one meaning: how many epochs, the peak learning rates of the dense optimiser (AdamW) and of the
TorchRec tables' fused optimiser, AdamW's weight decay, the schedule both rates follow (``train.schedule``) and
early stopping. Each section gives its own defaults; ``train.trainer.fit`` reads it as it is. The stack settings
that every model shares (sparse optimiser, gradient clipping, sharding type, collective timeout) stay in the
``train`` section.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict

from torchrec_onerec.errors import ConfigError

LR_DECAYS = ("cosine", "linear", "constant")


@dataclass
class OptimConfig:
    """How one model is optimised.

    Args:
        epochs: passes over the training samples at most.
        learning_rate: peak learning rate of the dense parameters (AdamW).
        sparse_learning_rate: peak learning rate of the fused optimiser of the TorchRec embedding tables.
        weight_decay: AdamW weight decay of the dense parameters.
        warmup_steps: linear warm-up steps, from the first step to the peak rates.
        lr_decay: the shape after the warm-up, for both rates: ``cosine``, ``linear`` or ``constant``; it spans
            ``epochs`` full epochs.
        min_lr_ratio: the decay ends at this fraction of the peak rates.
        patience: stop after this many validations in a row without a better value (0: train every epoch).

    Example:
        >>> OptimConfig(epochs=3, learning_rate=3e-3).check("reward.optim")
        >>> OptimConfig(learning_rate=0.0).check("reward.optim")
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: reward.optim.learning_rate=0.0 must be > 0
    """

    epochs: int = 1
    learning_rate: float = 1e-3
    sparse_learning_rate: float = 0.05
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_decay: str = "constant"
    min_lr_ratio: float = 0.1
    patience: int = 0

    def check(self, section: str) -> None:
        """Raise ConfigError naming ``<section>.<key>`` for the first value out of range."""
        if self.epochs < 1:
            raise ConfigError(f"{section}.epochs={self.epochs} must be >= 1")
        for name in ("learning_rate", "sparse_learning_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{section}.{name}={getattr(self, name)} must be > 0")
        for name in ("weight_decay", "warmup_steps", "patience"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{section}.{name}={getattr(self, name)} must be >= 0")
        if self.lr_decay not in LR_DECAYS:
            raise ConfigError(f"{section}.lr_decay={self.lr_decay!r} must be one of {list(LR_DECAYS)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{section}.min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")


def section_with_optim(saved: Dict[str, Any]) -> Dict[str, Any]:
    """A section's saved fields (the config in a model file) with its optimiser settings as an ``OptimConfig``:
    nested under ``optim`` as files write them, or flat, as files written before the ``optim`` section did.

    Example:
        >>> old = section_with_optim({"embedding_dim": 8, "epochs": 3})
        >>> old["embedding_dim"], old["optim"].epochs, old["optim"].learning_rate
        (8, 3, 0.001)
        >>> section_with_optim({"optim": {"epochs": 2}})["optim"].epochs
        2
    """
    names = {f.name for f in fields(OptimConfig)}
    flat = {key: value for key, value in saved.items() if key in names}
    rest = {key: value for key, value in saved.items() if key not in names and key != "optim"}
    return {**rest, "optim": OptimConfig(**{**flat, **saved.get("optim", {})})}
