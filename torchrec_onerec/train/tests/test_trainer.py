"""``train.trainer.fit``, the one training recipe: selection and early stopping, the learning-rate schedule, a start
from trained weights, dropout streams, no validation, and a rank without batches. A small SASRec on the tiny world
is the model (any train step would do)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from torchrec_onerec.config import load_config
from torchrec_onerec.data.splits import split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.models.sasrec import SASRec, SASRecTransform
from torchrec_onerec.models.sasrec_config import SASRecConfig
from torchrec_onerec.models.two_tower import training_pairs
from torchrec_onerec.train.distributed import DistContext, init_distributed, teardown_distributed
from torchrec_onerec.train.schedule import lr_multiplier
from torchrec_onerec.train.metrics_log import MetricsWriter
from torchrec_onerec.optim_config import OptimConfig
from torchrec_onerec.train.checkpoint import TrainPosition
from torchrec_onerec.train.trainer import (
    baseline_stack,
    FitSpec,
    LossTrainStep,
    ModelTrainResult,
    State,
    fit,
    sample_batches,
)

CPU = torch.device("cpu")
SMALL = SASRecConfig(embedding_dim=16, num_heads=2, ffn_hidden=32, dropout=0.3, batch_size=32)


@pytest.fixture(scope="module")
def world() -> Dict[str, Any]:
    cfg = load_config("configs/tiny.yaml", ["split.protocol=A", "split.session_items=1"])
    data = load_dataset(cfg.data, seed=0)
    split = split_data(data, cfg.split)
    return {
        "num_items": data.num_items,
        "max_history": cfg.split.max_history,
        "train": cfg.train,
        "pairs": training_pairs(split.train).subset(np.arange(64)),
    }


def _fit(
    world: Dict[str, Any],
    *,
    epochs: int = 2,
    learning_rate: float = 1e-3,
    sparse_learning_rate: float = 0.1,
    writer_dir: Optional[Path] = None,
    optim_changes: Optional[Dict[str, Any]] = None,
    **spec: Any,
) -> ModelTrainResult:
    """``fit`` of the small SASRec on 64 training pairs (2 batches of 32 an epoch), in one process."""
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    ctx = init_distributed(CPU, timeout_s=60)
    try:
        model = SASRec(
            SMALL, num_items=world["num_items"], max_history=world["max_history"], device=torch.device("meta")
        )
        optim = OptimConfig(epochs=epochs, learning_rate=learning_rate, sparse_learning_rate=sparse_learning_rate)
        fields: Dict[str, Any] = dict(
            name="sasrec",
            module=LossTrainStep(model),
            batches=sample_batches(lambda epoch: world["pairs"], SASRecTransform(world["num_items"]), 32, ctx, seed=0),
            optim=replace(optim, **(optim_changes or {})),
            stack=baseline_stack(world["train"], CPU),
        )
        fields.update(spec)
        writer = MetricsWriter(writer_dir, ctx) if writer_dir is not None else None
        return fit(FitSpec(**fields), ctx, seed=0, progress=False, writer=writer)
    finally:
        teardown_distributed(ctx)


def _kept(into: List[State]) -> Any:
    return lambda state: into.append({key: value.clone() for key, value in state.items()})


def _same(a: State, b: State) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_fit_keeps_the_best_epoch_and_stops_after_patience_epochs_without_a_better_one(world, tmp_path):
    values = iter([0.5, 0.4, 0.6, 0.3, 0.2, 0.1, 0.0])
    saved: List[State] = []
    result = _fit(
        world,
        epochs=7,
        path=tmp_path / "kept.pt",
        selection_metric="score",
        validate=lambda state: {"score": next(values)},
        save=_kept(saved),
        optim_changes={"patience": 2},
        writer_dir=tmp_path,
    )
    assert (result.epochs, result.best_epoch, result.best_value, len(saved)) == (5, 3, 0.6, 2)
    assert (result.stop_reason, result.steps, result.model_path) == ("early_stopping", 10, str(tmp_path / "kept.pt"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["best"] for r in records] == [True, False, True, False, False]
    assert (tmp_path / "sasrec.csv").read_text().count("\n") == 6  # a header and 5 epochs


def test_fit_sets_the_learning_rate_from_the_schedule_before_every_step(world):
    schedule = {"warmup_steps": 3, "lr_decay": "cosine", "min_lr_ratio": 0.1}
    result = _fit(world, epochs=3, learning_rate=1e-3, optim_changes=schedule)
    # each epoch's record holds the rate set for the step after its last one (2 steps an epoch, 6 in all)
    expected = [
        1e-3 * lr_multiplier(step, total_steps=6, warmup_steps=3, decay="cosine", min_ratio=0.1) for step in (2, 4, 6)
    ]
    assert [r["lr"] for r in result.history] == pytest.approx(expected)
    assert len(set(expected)) == 3


def test_fit_starts_from_the_given_weights(world):
    """With both learning rates 1e-12 nothing moves measurably: the kept state is the start state, not a fresh
    initialisation."""
    first: List[State] = []
    _fit(world, epochs=1, save=_kept(first))
    start = {key: value + 0.5 for key, value in first[0].items()}  # weights no initialisation would draw
    frozen: List[State] = []
    _fit(world, epochs=1, learning_rate=1e-12, sparse_learning_rate=1e-12, init_state=start, save=_kept(frozen))
    assert all(torch.allclose(frozen[0][key], start[key], atol=1e-6) for key in start)
    fresh: List[State] = []
    _fit(world, epochs=1, learning_rate=1e-12, sparse_learning_rate=1e-12, save=_kept(fresh))
    assert not all(torch.allclose(fresh[0][key], start[key], atol=1e-6) for key in start)


def test_the_dropout_stream_decides_the_dropout_draws(world):
    states: Dict[int, List[State]] = {0: [], 1: []}
    for stream, into in ((0, states[0]), (0, states[0]), (1, states[1])):
        _fit(world, epochs=1, dropout_stream=stream, save=_kept(into))
    (a, b), (c,) = states[0], states[1]
    assert _same(a, b)
    assert not _same(a, c)  # same data, order and initial weights: only dropout differs


def test_without_validation_the_last_epoch_is_kept_once(world):
    saved: List[State] = []
    result = _fit(world, epochs=2, save=_kept(saved))
    assert (result.best_epoch, result.best_value, result.stop_reason, len(saved)) == (None, None, "epochs", 1)
    assert [r["best"] for r in result.history] == [False, False]


def test_an_epoch_without_batches_is_an_error_naming_the_model(world):
    def empty(epoch: int, first: int) -> DataLoader:
        return DataLoader([], batch_size=None)

    with pytest.raises(ValueError, match="sasrec: epoch 1 gives rank 0 of 1 no batch"):
        _fit(world, batches=empty)


def test_sample_batches_gives_each_rank_its_slice_of_every_global_batch(world):
    ranks = [DistContext(rank, 2, rank, 2, CPU, "gloo", False) for rank in range(2)]
    transform = SASRecTransform(world["num_items"])
    loaders = [sample_batches(lambda epoch: world["pairs"], transform, 32, ctx, seed=0)(0, 0) for ctx in ranks]
    assert [len(loader) for loader in loaders] == [2, 2]
    sizes = [[len(batch.target) for batch in loader] for loader in loaders]
    assert sizes == [[16, 16], [16, 16]]


def test_checkpoints_come_every_n_steps_at_epoch_ends_and_where_max_steps_stops(world):
    positions: List[str] = []

    def checkpoint(training: Any, position: TrainPosition) -> None:
        positions.append(position.name)

    result = _fit(world, epochs=3, checkpoint=checkpoint, checkpoint_every_steps=3, max_steps=5)
    assert result.stop_reason == "max_steps" and result.steps == 5 and result.epochs == 2
    assert positions == [
        TrainPosition(step=2, epoch=1).name,  # an epoch end
        TrainPosition(step=3, epoch=1, batch_in_epoch=1).name,  # every 3 steps, inside an epoch
        TrainPosition(step=4, epoch=2).name,
        TrainPosition(step=5, epoch=2, batch_in_epoch=1).name,  # where max_steps stopped training
    ]


def test_fit_resumes_from_the_position_start_gives(world):
    """A start past step 0 trains only what is left: here the second half of epoch 2 and epoch 3."""
    seen: List[int] = []
    result = _fit(
        world,
        epochs=3,
        start=lambda training: TrainPosition(step=3, epoch=1, batch_in_epoch=1),
        on_step=lambda training, position, output, seconds: seen.append(position.step),
    )
    assert seen == [4, 5, 6] and (result.steps, result.epochs) == (6, 3)
    assert [r["epoch"] for r in result.history] == [2, 3]


def test_on_epoch_gets_the_epochs_validation_and_the_position_keeps_the_final_selection(world):
    seen: List[Dict[str, float]] = []
    position = TrainPosition()
    values = iter([0.2, 0.1])
    _fit(
        world,
        epochs=3,
        selection_metric="score",
        validate=lambda state: {"score": next(values)},
        validate_every=2,
        start=lambda training: position,
        on_epoch=lambda training, where, selection, metrics: seen.append(metrics),
    )
    assert seen == [{}, {"score": 0.2}, {"score": 0.1}]  # every 2nd epoch and the last
    assert position.selection["best_epoch"] == 2 and len(position.selection["history"]) == 2
