"""Validation during training, model selection and early stopping (docs/EVAL.md: selection on validation NDCG@10).

Where validation runs: generation needs an unsharded model (see ``export``), so at each validation every rank
sends its table shards to rank 0 (``gather_model_state``), rank 0 builds a plain ``OneRecModel`` from them and
runs the validator over the whole validation set on its device, and broadcasts the metrics, so every rank
takes the same early-stopping decision. The other ranks wait meanwhile, so a validation pass must finish
within ``train.collective_timeout_s``. Evaluating the full set on one rank keeps every metric exact, including
those that are not means over users (catalogue coverage).

The default validator is ``evaluate_generative`` (constrained beam search, the run's ``eval`` section and
``split.protocol``); a test or a user loop may pass any ``Validator``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.distributed import DistContext, on_rank0
from torchrec_onerec.train.export import gather_model_state, plain_model
from torchrec_onerec.train.sharding import ShardedTraining

Validator = Callable[[OneRecModel, SampleSet], Dict[str, float]]


class GenerativeValidator:
    """``evaluate_generative`` metrics of a plain model on the validation samples.

    Args:
        config (OneRecConfig): the run (``eval`` section, ``split.protocol``, ``model.max_history``).
        codes (torch.Tensor): [I, L'] item codes.
        prefix_index (PrefixIndex): the codebook's prefix index.
        device (torch.device): where to generate.
        progress (bool): show the evaluation's tqdm bar.
    """

    def __init__(
        self, config: OneRecConfig, codes: torch.Tensor, prefix_index: PrefixIndex, device: torch.device, progress: bool
    ) -> None:
        cutoff = re.fullmatch(r"(?:ndcg|recall)@(\d+)", config.train.selection_metric)
        if cutoff and int(cutoff.group(1)) not in config.eval.ks:
            raise ValueError(
                f"train.selection_metric={config.train.selection_metric!r} needs K={cutoff.group(1)} "
                f"in eval.ks={list(config.eval.ks)}; add it there or select on another metric"
            )
        self.config, self.codes, self.prefix_index, self.device, self.progress = (
            config,
            codes,
            prefix_index,
            device,
            progress,
        )

    def __call__(self, model: OneRecModel, samples: SampleSet) -> Dict[str, float]:
        result = evaluate_generative(
            model,
            samples,
            codes=self.codes,
            prefix_index=self.prefix_index,
            config=self.config.eval,
            protocol=self.config.split.protocol,
            max_history=self.config.model.max_history,
            device=self.device,
            progress=self.progress,
        )
        return {key: float(value) for key, value in result.metrics.items()}


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
                f"train.selection_metric={self.metric!r} is not among the validation metrics "
                f"{sorted(metrics)}; set train.selection_metric to one of them"
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


def validate(
    training: ShardedTraining,
    ctx: DistContext,
    validator: Validator,
    samples: SampleSet,
    *,
    config: OneRecConfig,
    vocab_sizes: List[int],
) -> Tuple[Dict[str, float], Optional[Dict[str, torch.Tensor]]]:
    """Validate the current weights on rank 0 (a collective; see the module docstring).

    Args:
        training (ShardedTraining): the sharded model.
        ctx (DistContext): this rank.
        validator (Validator): metrics of a plain model on ``samples``.
        samples (SampleSet): the validation samples.
        config (OneRecConfig): the run (model config).
        vocab_sizes (List[int]): K_l of each code level.

    Returns:
        (the metrics, identical on every rank; the gathered state dict on rank 0, else None).

    Raises:
        RuntimeError: on every rank when the validator failed on rank 0 (its error is in the message).
    """
    state = gather_model_state(training.dmp, ctx)

    def metrics() -> Dict[str, float]:
        assert state is not None  # rank 0 holds the gathered state
        return validator(plain_model(state, config.model, vocab_sizes, device=ctx.device), samples)

    return on_rank0(metrics, ctx, what="validation"), state
