"""Schema of generative-model training (issue: DMP, fused sparse optimiser, schedule, checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    """How the OneRec model is trained.

    Args:
        epochs: passes over the training samples at most.
        learning_rate: peak learning rate of the dense optimiser.
        sparse_learning_rate: learning rate of the fused optimiser of the TorchRec embedding tables.
        weight_decay: AdamW weight decay of the dense parameters.
        warmup_steps: linear warm-up steps before the decay.
        grad_clip: max global norm of the dense gradients (0 disables clipping).
        eval_every_epochs: validate every this many epochs (model selection on validation NDCG@10).
        patience: stop after this many validations without improvement (0 disables early stopping).
    """

    epochs: int = 20
    learning_rate: float = 1e-3
    sparse_learning_rate: float = 0.05
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    eval_every_epochs: int = 1
    patience: int = 3

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs} must be >= 1")
        for name in ("learning_rate", "sparse_learning_rate"):
            if getattr(self, name) <= 0:
                raise ValueError(f"train.{name}={getattr(self, name)} must be > 0")
        for name in ("weight_decay", "warmup_steps", "grad_clip", "patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name}={getattr(self, name)} must be >= 0")
        if self.eval_every_epochs < 1:
            raise ValueError(f"train.eval_every_epochs={self.eval_every_epochs} must be >= 1")
