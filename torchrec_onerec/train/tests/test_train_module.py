"""``OneRecTrainStep``: ``train.amp=bf16`` runs the model's matrix products in bfloat16 and returns a float32 loss."""

from __future__ import annotations

from typing import List

import pytest
import torch

from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.train.train_module import OneRecTrainStep

CODES, SIZES = random_codes(20, [3, 3], seed=0)
BATCH = random_batch(CODES, 4, max_history=8, session_items=2, seed=0)


def _step(amp: str) -> tuple:
    torch.manual_seed(0)
    step = OneRecTrainStep(OneRecModel(model_size("tiny"), SIZES), amp=amp, device_type="cpu")
    dtypes: List[torch.dtype] = []
    linear = next(m for m in step.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    loss, metrics = step(BATCH)
    loss.backward()
    grads = [p.grad for p in step.parameters() if p.grad is not None]
    return loss, metrics, dtypes, grads


def test_bf16_autocast_runs_the_layers_in_bf16_and_keeps_float32_loss_and_weights() -> None:
    loss32, _, dtypes32, _ = _step("none")
    loss16, metrics16, dtypes16, grads16 = _step("bf16")
    assert set(dtypes32) == {torch.float32} and set(dtypes16) == {torch.bfloat16}
    assert loss16.dtype == metrics16.ntp_loss.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads16) and all(torch.isfinite(g).all() for g in grads16)
    assert loss16.item() != loss32.item() and abs(loss16.item() - loss32.item()) < 0.05 * loss32.item()


def test_unknown_amp_is_refused() -> None:
    with pytest.raises(ValueError, match="amp='fp16' must be one of"):
        OneRecTrainStep(OneRecModel(model_size("tiny"), SIZES), amp="fp16")
