"""Model selection and early stopping over validations (docs/EVAL.md: choose on validation, never on test).

``ModelSelection`` keeps the best validation value of one metric (higher is better; ties keep the earlier model),
where it was reached, and how many validations have passed since; it serialises to JSON so that a resumed run
(``train.checkpoint``) continues the same count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class ModelSelection:
    """Best validation score so far and the early-stopping counter (higher metric is better).

    Args:
        metric (str): the selection metric key.
        patience (int): validations without improvement before stopping (0: never stop early).
        best_value (float | None): best score so far.
        best_epoch (int | None): epochs completed at the best validation.
        best_step (int | None): optimiser steps at the best validation.
        best_checkpoint (str | None): name of the checkpoint taken right after the best validation.
        evals_since_best (int): validations since the best one.
        history (List[Dict[str, Any]]): every validation: epoch, step and metrics.

    Example:
        >>> s = ModelSelection("ndcg@10", patience=1)
        >>> s.update({"ndcg@10": 0.2}, epoch=1, step=10, checkpoint="a"), s.should_stop
        (True, False)
        >>> s.update({"ndcg@10": 0.1}, epoch=2, step=20, checkpoint="b"), s.should_stop, s.best_checkpoint
        (False, True, 'a')
    """

    metric: str
    patience: int
    best_value: Optional[float] = None
    best_epoch: Optional[int] = None
    best_step: Optional[int] = None
    best_checkpoint: Optional[str] = None
    evals_since_best: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)

    def update(self, metrics: Dict[str, float], *, epoch: int, step: int, checkpoint: str) -> bool:
        """Record one validation; True when it is the best so far (ties keep the earlier model)."""
        if self.metric not in metrics:
            raise ValueError(
                f"the selection metric {self.metric!r} is not among the validation metrics {sorted(metrics)}; "
                "select on one of them (the generative model's is train.selection_metric)"
            )
        value = float(metrics[self.metric])
        self.history.append({"epoch": epoch, "step": step, **metrics})
        if math.isnan(value) or (self.best_value is not None and value <= self.best_value):
            self.evals_since_best += 1
            return False
        self.best_value, self.best_epoch, self.best_step, self.best_checkpoint = value, epoch, step, checkpoint
        self.evals_since_best = 0
        return True

    @property
    def should_stop(self) -> bool:
        """True when ``patience`` validations in a row brought no improvement."""
        return self.patience > 0 and self.evals_since_best >= self.patience

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "ModelSelection":
        return cls(**data)
