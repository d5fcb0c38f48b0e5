"""One epoch-wise training recipe for the baselines: the cascade's two models and SASRec.

``fit(spec)`` trains the module of a ``FitSpec`` on the generative model's TorchRec stack (``train.loop``): built on
the meta device, sharded by ``shard_for_training`` (planner + DistributedModelParallel + fused sparse optimiser +
clipped AdamW), fed by ``rank_dataloader`` (each torchrun rank its slice of every global batch) through TorchRec's
``TrainPipelineSparseDist``. After every epoch the tables are gathered on rank 0 (``gather_model_state``), which
validates a plain copy (``on_rank0``: every rank gets the metrics, or rank 0's error); the epoch with the best
validation ``selection_metric`` is saved, and training stops early after ``patience`` epochs without a better one.
``MetricsWriter`` writes the epoch records (``metrics.jsonl`` and ``<model>.csv``).

A spec's module is a train step: ``forward(batch) -> (loss, (loss.detach(),))``, the contract of TorchRec's train
pipelines, with the model as ``self.model`` so that the gathered state dict is the plain model's.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import numpy as np
import torch
from torch import nn
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.streamable import Pipelineable
from tqdm.auto import tqdm

from torchrec_onerec.data.batch import OneRecBatch
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.metrics import ranking_metrics
from torchrec_onerec.eval.protocols import evaluation_users
from torchrec_onerec.run_dir import atomic_write_text
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, all_reduce_sum, barrier, on_rank0
from torchrec_onerec.train.export import gather_model_state
from torchrec_onerec.train.rank_data import rank_dataloader
from torchrec_onerec.train.sharding import shard_for_training

State = Dict[str, torch.Tensor]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass
class ModelTrainResult:
    """One model's training.

    Args:
        model (str): its name (``two_tower``, ``ranker``, ``sasrec``).
        epochs (int): epochs trained (fewer than configured when training stopped early).
        steps (int): optimiser steps.
        selection_metric (str): the validation metric that picked the kept epoch (higher is better).
        best_epoch (int): the kept epoch (1-based; the last one when nothing could be validated).
        best_value (float | None): its validation value.
        history (List[Dict[str, Any]]): every epoch's record (loss, validation metrics, seconds).
        path (str): the saved plain model.
        plan (Dict[str, Dict[str, Any]]): the sharding plan, per table.
        train_seconds (float): wall seconds in training steps.
        samples_per_s (float): training samples per second.
    """

    model: str
    epochs: int
    steps: int
    selection_metric: str
    best_epoch: int
    best_value: Optional[float]
    history: List[Dict[str, Any]]
    path: str
    plan: Dict[str, Dict[str, Any]]
    train_seconds: float
    samples_per_s: float


@dataclass
class FitSpec:
    """What ``fit`` needs to train one model.

    Args:
        name: the model's name in records, progress bars and errors.
        path: where ``save`` writes the kept model.
        module: the train step, built on the meta device (module docstring).
        epoch_samples: epoch (0-based) -> that epoch's training samples (redrawn negatives, or the same set).
        transform: collate step from a ``OneRecBatch`` to the module's batch (picklable, for loader workers).
        batch_size: the global batch (each rank takes its slice).
        train_config: epochs, learning rates, weight decay and the stack settings (``section_train_config``).
        selection_metric: the key of ``validate``'s result that picks the kept epoch (higher is better).
        validate: the gathered plain state -> validation metrics (runs on rank 0 only; {} when nothing to validate).
        save: the gathered plain state -> writes ``path`` (rank 0 only).
        patience: stop after this many epochs in a row without a better validation value (0: train every epoch).
    """

    name: str
    path: Path
    module: nn.Module
    epoch_samples: Callable[[int], SampleSet]
    transform: Callable[[OneRecBatch], Pipelineable]
    batch_size: int
    train_config: TrainConfig
    selection_metric: str
    validate: Callable[[State], Dict[str, float]]
    save: Callable[[State], None]
    patience: int = 0


class LossTrainStep(nn.Module):
    """A model whose ``forward(batch)`` is its loss, as a train step: ``forward(batch) -> (loss, (loss.detach(),))``,
    the contract of TorchRec's train pipelines (whose ``progress`` returns the second element). The model is
    ``self.model``, so that ``gather_model_state`` returns the plain model's state dict.

    Example:
        >>> class Distance(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.centre = nn.Parameter(torch.zeros(2))
        ...     def forward(self, batch):
        ...         return ((batch - self.centre) ** 2).sum(dim=1).mean()
        >>> loss, (detached,) = LossTrainStep(Distance())(torch.ones(3, 2))
        >>> float(detached), loss.requires_grad, detached.requires_grad
        (2.0, True, False)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Tuple[torch.Tensor, Tuple[torch.Tensor]]:
        loss = self.model(batch)
        return loss, (loss.detach(),)


def section_train_config(
    base: TrainConfig,
    *,
    epochs: int,
    learning_rate: float,
    sparse_learning_rate: float,
    weight_decay: float,
    device: torch.device,
) -> TrainConfig:
    """The ``train`` section's stack settings with one baseline model's epochs and learning rates.

    Example:
        >>> tc = section_train_config(TrainConfig(), epochs=2, learning_rate=0.01, sparse_learning_rate=0.1,
        ...                           weight_decay=0.0, device=torch.device("cpu"))
        >>> tc.epochs, tc.sharding_type, tc.sparse_optimizer
        (2, 'table_wise', 'rowwise_adagrad')
    """
    sharding = base.sharding_type or "table_wise"
    if sharding == "row_wise" and device.type != "cuda":
        raise ValueError(
            "train.sharding_type='row_wise': TorchRec shards pooled tables (EmbeddingBagCollection, "
            "the cascade's) row-wise on CUDA only; use table_wise or column_wise on CPU"
        )
    return TrainConfig(
        epochs=epochs,
        learning_rate=learning_rate,
        sparse_learning_rate=sparse_learning_rate,
        weight_decay=weight_decay,
        warmup_steps=0,
        grad_clip=base.grad_clip,
        sparse_optimizer=base.sparse_optimizer,
        lr_decay="constant",
        sharding_type=sharding,
        collective_timeout_s=base.collective_timeout_s,
    )


class MetricsWriter:
    """Rank 0's epoch records: ``metrics.jsonl`` (emptied when the writer is made, then appended) and
    ``<model>.csv`` (rewritten after every epoch)."""

    def __init__(self, folder: Path, ctx: DistContext) -> None:
        self.folder, self.ctx = folder, ctx
        if ctx.is_rank0:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metrics.jsonl").write_text("")

    def record(self, record: Dict[str, Any]) -> None:
        if self.ctx.is_rank0:
            with open(self.folder / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")

    def table(self, name: str, rows: List[Dict[str, Any]]) -> None:
        if self.ctx.is_rank0:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_text(self.folder / f"{name}.csv", out.getvalue())


def validation_users(samples: SampleSet) -> Optional[SampleSet]:
    """The samples with a target item (``evaluation_users``), or None when none has one (nothing to validate)."""
    if not (samples.target[:, :1] >= 0).any():
        return None
    return samples.subset(evaluation_users(samples)[0])


def list_metrics(ranked: np.ndarray, samples: SampleSet, k: int) -> Dict[str, float]:
    """Mean ``ranking_metrics`` at ``k`` of ranked lists [U, >= k] against the targets of ``samples`` (U rows)."""
    return {name: float(values.mean()) for name, values in ranking_metrics(ranked, samples.target, [k]).items()}


def plain_module(module: ModuleT, state: State, device: torch.device) -> ModuleT:
    """A meta-built module holding ``state`` on ``device``, in eval mode (no random initialisation)."""
    module.load_state_dict(state, assign=True)
    return module.to(device).eval()


def fit(
    spec: FitSpec, ctx: DistContext, writer: MetricsWriter, *, seed: int, num_workers: int, progress: bool
) -> ModelTrainResult:
    """Train one model epoch by epoch, validate each epoch on rank 0, save the best (module docstring); when no
    epoch could be validated (no validation data, or undefined metrics), the last one is kept.

    Every rank gets the same validation metrics, so every rank stops after the same epoch.
    """
    training = shard_for_training(spec.module, spec.train_config, ctx, seed=seed)
    pipeline = TrainPipelineSparseDist(training.dmp, training.optimizer, device=ctx.device, execute_all_batches=True)
    loader_config = LoaderConfig(batch_size=spec.batch_size, num_workers=num_workers, shuffle=True)
    history: List[Dict[str, Any]] = []
    best_value: Optional[float] = None
    best_epoch, steps, seconds, seen, epochs = 0, 0, 0.0, 0, 0
    state: Optional[State] = None
    training.dmp.train()
    for epoch in range(spec.train_config.epochs):
        samples = spec.epoch_samples(epoch)
        loader = rank_dataloader(
            samples,
            loader_config,
            seed=seed,
            epoch=epoch,
            rank=ctx.rank,
            world_size=ctx.world_size,
            transform=spec.transform,
        )
        batches = iter(loader)
        loss_sum, epoch_steps = 0.0, 0
        start = time.perf_counter()
        with tqdm(
            total=len(loader),
            desc=f"{spec.name} {epoch + 1}/{spec.train_config.epochs}",
            unit="step",
            disable=not (progress and ctx.is_rank0),
        ) as bar:
            while True:
                try:
                    output = pipeline.progress(batches)
                except StopIteration:
                    break
                loss_sum += float(output[0])
                epoch_steps += 1
                bar.update(1)
        seconds += time.perf_counter() - start
        steps += epoch_steps
        seen += len(samples)
        epochs = epoch + 1
        total_loss, total_steps = all_reduce_sum([loss_sum, epoch_steps], ctx)
        state = gather_model_state(training.dmp, ctx)

        def validate() -> Dict[str, float]:
            assert state is not None  # rank 0 holds the gathered state
            return spec.validate(state)

        metrics = on_rank0(validate, ctx, what=f"{spec.name} validation")
        value = metrics.get(spec.selection_metric)
        better = value is not None and not math.isnan(value) and (best_value is None or value > best_value)
        if better:
            best_value, best_epoch = value, epochs
            if state is not None:
                spec.save(state)
        record = {
            "model": spec.name,
            "epoch": epochs,
            "step": steps,
            "loss": total_loss / max(total_steps, 1.0),
            "seconds": seconds,
            "best": better,
            **metrics,
        }
        history.append(record)
        writer.record(record)
        writer.table(spec.name, history)
        if spec.patience and best_value is not None and epochs - best_epoch >= spec.patience:
            break
    if best_value is None:
        best_epoch = epochs
        if state is not None:
            spec.save(state)
    barrier(ctx)
    return ModelTrainResult(
        spec.name,
        epochs,
        steps,
        spec.selection_metric,
        best_epoch,
        best_value,
        history,
        str(spec.path),
        training.plan,
        seconds,
        seen / max(seconds, 1e-9),
    )
