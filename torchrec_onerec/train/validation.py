"""Validation of the generative model during training (docs/EVAL.md: selection on validation NDCG@10; the
selection itself is ``selection.ModelSelection``).

Where validation runs (``trainer.fit``): with one process, on a plain copy of the model built from its state
(``gather_model_state``). Under torchrun, ``GenerativeValidator`` runs on the sharded model itself: every rank
searches its share of the validation users in lockstep (its table lookups are collectives) and gets the merged
result, so every metric stays exact (catalogue coverage included) and every rank takes the same early-stopping
decision, with no table gathered; the state is gathered only to save a better epoch's model. Any other
``Validator`` runs on rank 0 over a gathered copy while the other ranks wait (within
``train.collective_timeout_s``).

The default validator is ``evaluate_generative`` (constrained beam search, the run's ``eval`` section and
``split.protocol``; the ``train`` stage builds it); a test or a user loop may pass any ``Validator``.
"""

from __future__ import annotations

import re
from typing import Callable, Dict

import torch

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex

Validator = Callable[[OneRecModel, SampleSet], Dict[str, float]]


class GenerativeValidator:
    """``evaluate_generative`` metrics of a plain model on the validation samples.

    Args:
        eval_config (EvalConfig): the ``eval`` section (beam, cut-offs).
        codes (torch.Tensor): [I, L'] item codes.
        prefix_index (PrefixIndex): the codebook's prefix index.
        protocol (str): ``split.protocol`` (what a validation user's targets are).
        max_history (int): n, ``model.max_history``.
        selection_metric (str): ``train.selection_metric``, checked against ``eval_config.ks``.
        progress (bool): show the evaluation's tqdm bar.

    Raises:
        ValueError: a selection metric at a cut-off K that ``eval.ks`` does not list.
    """

    def __init__(
        self,
        eval_config: EvalConfig,
        codes: torch.Tensor,
        prefix_index: PrefixIndex,
        *,
        protocol: str,
        max_history: int,
        selection_metric: str,
        progress: bool,
    ) -> None:
        cutoff = re.fullmatch(r"(?:ndcg|recall)@(\d+)", selection_metric)
        if cutoff and int(cutoff.group(1)) not in eval_config.ks:
            raise ValueError(
                f"train.selection_metric={selection_metric!r} needs K={cutoff.group(1)} "
                f"in eval.ks={list(eval_config.ks)}; add it there or select on another metric"
            )
        self.eval_config, self.codes, self.prefix_index = eval_config, codes, prefix_index
        self.protocol, self.max_history, self.progress = protocol, max_history, progress

    def __call__(self, model: OneRecModel, samples: SampleSet, *, distributed: bool = False) -> Dict[str, float]:
        """Metrics of ``model`` on ``samples``, generated on the model's device (``distributed``: on every rank
        together, each its share of the users; what a model with sharded tables needs)."""
        result = evaluate_generative(
            model,
            samples,
            codes=self.codes,
            prefix_index=self.prefix_index,
            config=self.eval_config,
            protocol=self.protocol,
            max_history=self.max_history,
            device=next(model.parameters()).device,
            progress=self.progress,
            distributed=distributed,
        )
        return {key: float(value) for key, value in result.metrics.items()}
