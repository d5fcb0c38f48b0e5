"""``OneRecTrainStep``: ``train.amp=bf16`` runs the model's matrix products in bfloat16 and returns a float32 loss."""

from __future__ import annotations

import dataclasses
from typing import List

import pytest
import torch
from torchrec.fx import Tracer

from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.train.config import TrainConfig
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


def test_signal_weights_weigh_each_target_item_by_its_feedback() -> None:
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny"), SIZES).eval()
    plain = OneRecTrainStep(model)
    weighted = OneRecTrainStep(model, signal_weights=[2.0])  # random_batch's one signal is 1 at real items
    assert plain.item_weights(BATCH) is None and plain.signal_weights == ()
    torch.testing.assert_close(weighted.item_weights(BATCH), 1.0 + 2.0 * BATCH.labels[..., 0])
    # every real item has the same label, so the weighted mean is the plain mean
    torch.testing.assert_close(weighted(BATCH)[0], plain(BATCH)[0])
    labels = BATCH.labels.clone()
    labels[0] = 0.0  # the first user's items now count 1/3 as much as the others'
    other = dataclasses.replace(BATCH, labels=labels)
    assert not torch.isclose(weighted(other)[0], plain(other)[0])
    assert OneRecTrainStep(model, signal_weights=[0.0]).signal_weights == ()  # all zero: the plain loss


def test_signal_weights_are_checked() -> None:
    model = OneRecModel(model_size("tiny"), SIZES)
    with pytest.raises(ValueError, match="must be >= 0"):
        OneRecTrainStep(model, signal_weights=[-1.0])


def test_the_weighted_step_traces_with_torch_fx() -> None:
    # TorchRec's TrainPipelineSparseDist traces the train module: no control flow may depend on the batch
    graph = Tracer().trace(OneRecTrainStep(OneRecModel(model_size("tiny"), SIZES), signal_weights=[1.0, 0.0, 2.0]))
    assert any(node.op == "call_module" for node in graph.nodes)


def test_label_weights_follow_the_samples_signal_order_and_name_unknown_signals() -> None:
    config = TrainConfig(label_weights={"ltr": 2.0, "swt": 1.0})
    assert config.signal_weights(["swt", "vtr", "ltr"]) == [1.0, 0.0, 2.0]
    with pytest.raises(ConfigError, match=r"names \['ltr'\], which the training samples do not carry"):
        config.signal_weights(["swt", "vtr"])
    with pytest.raises(ConfigError, match="weights must be >= 0"):
        TrainConfig(label_weights={"swt": -1.0})
