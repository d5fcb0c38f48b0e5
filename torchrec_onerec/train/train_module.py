"""The module the training loop shards and pipelines: OneRec's session NTP loss (docs/METHOD.md section 2) plus the
detached numbers the loop logs (NTP and MoE balance losses, expert load).

It is ``OneRecTrainModule`` (same parameter names, so checkpoints and sharding plans are interchangeable) with
a second output made for logging instead of ``(loss, logits, labels)``: logits are not kept alive between
steps, and the MoE expert load, which ``OneRecTrainModule`` drops, reaches the metrics.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from torchrec_onerec.data.semantic_batch import SemanticIdBatch
from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule
from torchrec_onerec.train.config import AMP_MODES


class StepMetrics(NamedTuple):
    """Detached per-step numbers of one rank.

    Args:
        loss (torch.Tensor): [] the training loss.
        ntp_loss (torch.Tensor): [] mean cross-entropy over the rank's real target codes.
        aux_loss (torch.Tensor): [] MoE balance loss (mean over decoder layers).
        expert_load (torch.Tensor): [decoder layers, E] share of token assignments per expert.
    """

    loss: torch.Tensor
    ntp_loss: torch.Tensor
    aux_loss: torch.Tensor
    expert_load: torch.Tensor


class OneRecTrainStep(OneRecTrainModule):
    """``forward(batch) -> (loss, StepMetrics)``, the contract of TorchRec's train pipelines.

    Args:
        model (OneRecModel): the model to train (kept as ``self.model``, as in ``OneRecTrainModule``).
        amp (str): ``train.amp``: ``none`` (float32) or ``bf16`` (the model's forward under ``torch.autocast``;
            the backward pass follows the forward's dtypes).
        device_type (str): ``cpu`` or ``cuda``, where the module will run (autocast is per device type, and the
            module is built on the meta device, so it cannot read it from its parameters).
        signal_weights (Sequence[float]): [S] ``train.label_weights`` in the order of the samples' signals: a
            target item's codes count ``1 + labels @ signal_weights`` times in the loss. Empty or all zero: the
            plain NTP mean.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.onerec import OneRecModel
        >>> from torchrec_onerec.models.testing import random_batch, random_codes
        >>> codes, sizes = random_codes(20, [3, 3])
        >>> step = OneRecTrainStep(OneRecModel(model_size("tiny"), sizes))
        >>> loss, metrics = step(random_batch(codes, 2, max_history=8, session_items=2))
        >>> loss.requires_grad, tuple(metrics.expert_load.shape)
        (True, (1, 4))
    """

    def __init__(
        self, model: OneRecModel, *, amp: str = "none", device_type: str = "cpu", signal_weights: Sequence[float] = ()
    ) -> None:
        super().__init__(model)
        if amp not in AMP_MODES:
            raise ValueError(f"amp={amp!r} must be one of {list(AMP_MODES)}")
        if any(w < 0 for w in signal_weights):
            raise ValueError(f"signal_weights={list(signal_weights)} must be >= 0")
        self.amp_dtype: Optional[torch.dtype] = torch.bfloat16 if amp == "bf16" else None
        self.device_type = device_type
        # a plain tuple, not a buffer: the weights are a training choice, not part of the model's state
        self.signal_weights = tuple(float(w) for w in signal_weights) if any(signal_weights) else ()

    def item_weights(self, batch: SemanticIdBatch) -> Optional[torch.Tensor]:
        """[B, M] ``1 + labels @ signal_weights`` (None without signal weights).

        Written as a sum over the constant weights, with no tensor built from them and no branch on the batch,
        so that TorchRec's pipelines can trace it with torch.fx.
        """
        if not self.signal_weights:
            return None
        weights = torch.ones_like(batch.labels[..., 0])
        for signal, weight in enumerate(self.signal_weights):
            if weight:
                weights = weights + weight * batch.labels[..., signal]
        return weights

    def forward(self, batch: SemanticIdBatch) -> Tuple[torch.Tensor, StepMetrics]:  # type: ignore[override]
        """Loss and its detached parts (float32 under autocast too: the model computes its losses in float32)."""
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.model(batch, self.item_weights(batch))
        return out.loss, StepMetrics(
            out.loss.detach(), out.ntp_loss.detach(), out.aux_loss.detach(), out.expert_load.detach()
        )
