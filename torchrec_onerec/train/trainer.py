"""The one training recipe on the project's TorchRec stack, for every model: the generative model (``train.loop``
adds its checkpoints and resume as hooks), the reward model, the cascade's two models, SASRec and each alignment
iteration.

``fit(spec, ctx)`` trains the module of a ``FitSpec``: built on the meta device, sharded by ``shard_for_training``
(planner + DistributedModelParallel + fused sparse optimiser + clipped AdamW), optionally started from a plain
state dict (``load_plain_state``), fed each rank's slice of every global batch (``sample_batches`` /
``rank_dataloader``) through TorchRec's ``TrainPipelineSparseDist``, with the learning rates set from the
schedule (``schedule.lr_multiplier``: warm-up, then constant, linear or cosine decay) before every step. After
every epoch the tables are gathered on rank 0 (``gather_model_state``), which validates a plain copy
(``on_rank0``: every rank gets the metrics, or rank 0's error), or, for a spec with ``validate_sharded`` under
torchrun, every rank validates its share of the users on the sharded model itself (no gather);
``ModelSelection`` keeps the epoch with the best validation ``selection_metric`` (saved by the spec's ``save``)
and stops training after ``optim.patience`` epochs without a better one. ``metrics_log.MetricsWriter`` writes the
epoch records (``metrics.jsonl`` and ``<model>.csv``). Hooks add what the generative model's loop needs
(``train.loop``): step logging, DCP checkpoints and resuming at any step.

A spec's module is a train step, the contract of TorchRec's train pipelines: ``forward(batch) -> (loss,
output)``, whose ``output`` the pipeline returns and ``spec.step_loss`` reads; the model is ``self.model``, so
that the gathered state dict is the plain model's (``LossTrainStep`` wraps a model whose forward is its loss).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.streamable import Pipelineable
from tqdm.auto import tqdm

from torchrec_onerec.data.batch import OneRecBatch
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.metrics import ranking_metrics
from torchrec_onerec.eval.protocols import evaluation_users
from torchrec_onerec.optim_config import OptimConfig
from torchrec_onerec.runtime import seed_everything
from torchrec_onerec.train.checkpoint import TrainPosition, rank_seed
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, all_reduce_sum, barrier, broadcast_object, on_rank0
from torchrec_onerec.train.export import gather_model_state, load_plain_state
from torchrec_onerec.train.metrics_log import MetricsWriter
from torchrec_onerec.train.rank_data import rank_dataloader, steps_per_epoch
from torchrec_onerec.train.schedule import lr_multiplier
from torchrec_onerec.train.selection import ModelSelection
from torchrec_onerec.train.sharding import ShardedTraining, shard_for_training

LOG = logging.getLogger("torchrec_onerec")
State = Dict[str, torch.Tensor]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass
class ModelTrainResult:
    """One model's training (``result.json`` of its folder).

    Args:
        model (str): its name (``reward_model``, ``two_tower``, ``ranker``, ``sasrec``, ``align_iteration_<t>``).
        epochs (int): epochs trained (fewer than configured when training stopped early).
        steps (int): optimiser steps.
        stop_reason (str): ``epochs`` (all trained), ``early_stopping`` or ``max_steps``.
        selection_metric (str): the validation metric that picked the kept epoch (higher is better).
        best_epoch (int | None): the kept epoch (1-based; None when nothing could be validated: the last is kept).
        best_value (float | None): its validation value.
        history (List[Dict[str, Any]]): every epoch's record (loss, learning rate, validation metrics, seconds).
        model_path (str): the saved plain model ("" when the spec has no file).
        plan (Dict[str, Dict[str, Any]]): the sharding plan, per table.
        world_size (int): processes.
        train_seconds (float): wall seconds in training steps (since step 0, over resumes).
        samples_per_s (float): training samples per second of this invocation.
    """

    model: str
    epochs: int
    steps: int
    stop_reason: str
    selection_metric: str
    best_epoch: Optional[int]
    best_value: Optional[float]
    history: List[Dict[str, Any]]
    model_path: str
    plan: Dict[str, Dict[str, Any]]
    world_size: int
    train_seconds: float
    samples_per_s: float


def _first_output(output: Any) -> float:
    return float(output[0])


class EpochBatches(Protocol):
    """What ``FitSpec.batches`` gives for an epoch: a sized iterable of one rank's batches (a ``DataLoader``)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


Hook = Callable[[ShardedTraining, TrainPosition], None]


@dataclass
class FitSpec:
    """What ``fit`` needs to train one model. The fields after ``path`` are for runs that start from trained
    weights, keep dropout streams, log steps, or checkpoint and resume (the generative model's loop).

    Args:
        name: the model's name in records, progress bars and errors.
        module: the train step, built on the meta device (module docstring).
        batches: (epoch, first global batch) -> this rank's batches of that epoch from that batch on (0-based;
            ``sample_batches``). ``first`` is > 0 only on resuming mid-epoch.
        optim: epochs, learning rates, weight decay, schedule (warm-up, decay) and ``patience``: stop after this
            many validations in a row without a better value (0: train every epoch).
        stack: the ``train`` section's stack settings (sparse optimiser, clipping, sharding type).
        selection_metric: the key of ``validate``'s result that picks the kept epoch (higher is better).
        validate: the gathered plain state -> validation metrics (runs on rank 0 only; {} when nothing to
            validate). None: no validation, the last epoch is kept.
        validate_sharded: with more than one process, used instead of ``validate``: the sharded train step
            (``dmp.module``, detached from the train pipeline) -> validation metrics, called on every rank
            together, each returning the same metrics; no table is gathered for it. The state is gathered
            only when the epoch is the best so far, for ``save``.
        save: the gathered plain state -> keeps it (writes the model file; rank 0 only). Called for every better
            epoch, and once at the end when no epoch was validated.
        path: the file ``save`` writes (reported in the result), if any.
        validate_every: validate after every this many epochs, and after the last.
        max_steps: stop after this many optimiser steps in all (0: no limit).
        init_state: a plain state dict copied into the shards before training (``load_plain_state``): a model
            that starts from trained weights rather than its initialisation.
        dropout_stream: on a fresh start, reseed every rank with ``rank_seed(seed, rank, dropout_stream)`` once
            sharded, so that dropout draws depend only on the seed, the rank and this number (None: the streams
            are left as sharding leaves them).
        step_loss: the pipeline's output of one step -> its loss (a caller may record more of the output).
        start: the sharded model -> the position to train from; a position past step 0 is a resume (its
            checkpoint loaded into the model, its selection state in ``position.selection``). None: step 0.
        on_step: after every optimiser step: (the model, the position, the pipeline's output, the step's seconds).
        on_epoch: after every epoch, its validation and selection: (the model, the position, the selection, the
            epoch's validation metrics: {} when it was not validated).
        checkpoint: writes a checkpoint at the position (every rank; a collective): after every epoch, every
            ``checkpoint_every_steps`` steps within an epoch, and where ``max_steps`` stops training.
        checkpoint_every_steps: 0: checkpoints at epoch ends only.
    """

    name: str
    module: nn.Module
    batches: Callable[[int, int], EpochBatches]
    optim: OptimConfig
    stack: TrainConfig
    selection_metric: str = ""
    validate: Optional[Callable[[State], Dict[str, float]]] = None
    validate_sharded: Optional[Callable[[nn.Module], Dict[str, float]]] = None
    save: Optional[Callable[[State], None]] = None
    path: Optional[Path] = None
    validate_every: int = 1
    max_steps: int = 0
    init_state: Optional[State] = None
    dropout_stream: Optional[int] = None
    step_loss: Callable[[Any], float] = _first_output
    start: Optional[Callable[[ShardedTraining], TrainPosition]] = None
    on_step: Optional[Callable[[ShardedTraining, TrainPosition, Any, float], None]] = None
    on_epoch: Optional[Callable[[ShardedTraining, TrainPosition, ModelSelection, Dict[str, float]], None]] = None
    checkpoint: Optional[Hook] = None
    checkpoint_every_steps: int = 0


def sample_batches(
    epoch_samples: Callable[[int], SampleSet],
    transform: Callable[[OneRecBatch], Pipelineable],
    batch_size: int,
    ctx: DistContext,
    *,
    seed: int,
    num_workers: int = 0,
) -> Callable[[int, int], DataLoader]:
    """``FitSpec.batches`` over samples: each epoch's samples (redrawn negatives, or the same set), shuffled by
    (seed, epoch), each rank its slice of every global batch of ``batch_size`` (``rank_dataloader``), collated by
    ``transform`` (picklable, for loader workers). A first batch past the epoch's end gives no batch (a resume
    with more processes may skip a trailing batch that the checkpoint's world size trained on)."""
    config = LoaderConfig(batch_size=batch_size, num_workers=num_workers, shuffle=True)

    def batches(epoch: int, first: int) -> DataLoader:
        samples = epoch_samples(epoch)
        return rank_dataloader(
            samples,
            config,
            seed=seed,
            epoch=epoch,
            rank=ctx.rank,
            world_size=ctx.world_size,
            transform=transform,
            start=min(first, steps_per_epoch(len(samples), batch_size, ctx.world_size)),
        )

    return batches


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


def baseline_stack(train: TrainConfig, device: torch.device) -> TrainConfig:
    """The ``train`` section's stack settings for a baseline model (the cascade's two, SASRec): as they are, with
    the tables table-wise when the section leaves the choice to the planner.

    Example:
        >>> baseline_stack(TrainConfig(), torch.device("cpu")).sharding_type
        'table_wise'

    Raises:
        ValueError: ``row_wise`` off CUDA.
    """
    sharding = train.sharding_type or "table_wise"
    if sharding == "row_wise" and device.type != "cuda":
        raise ValueError(
            "train.sharding_type='row_wise': TorchRec shards pooled tables (EmbeddingBagCollection, "
            "the cascade's) row-wise on CUDA only; use table_wise or column_wise on CPU"
        )
    return replace(train, sharding_type=sharding)


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
    spec: FitSpec, ctx: DistContext, *, seed: int, progress: bool, writer: Optional[MetricsWriter] = None
) -> ModelTrainResult:
    """Train one model epoch by epoch, validate on rank 0 and keep the best (module docstring); when no epoch
    could be validated (no validation, no validation data, or undefined metrics), the last one is kept.

    Every rank gets the same validation metrics, so every rank stops after the same epoch.

    Args:
        spec (FitSpec): the model, its batches, optimiser settings, validation, saving and hooks.
        ctx (DistContext): this rank.
        seed (int): the run's seed (initial weights; the dropout streams with ``spec.dropout_stream``).
        progress (bool): a tqdm bar on rank 0 (one for the run, from the step it starts at).
        writer (MetricsWriter | None): where the epoch records go (None: only into the result).

    Returns:
        ModelTrainResult: on every rank (the epoch records of this invocation).

    Raises:
        ValueError: an epoch gives this rank no batch (fewer samples than processes).
        RuntimeError: on every rank, when the validation failed on rank 0 (its error is in the message).
    """
    optim = spec.optim
    training = shard_for_training(spec.module, optim, spec.stack, ctx, seed=seed)
    if spec.init_state is not None:
        load_plain_state(training.dmp, spec.init_state)
    position = spec.start(training) if spec.start is not None else TrainPosition()
    if position.step == 0 and spec.dropout_stream is not None:
        seed_everything(rank_seed(seed, ctx.rank, spec.dropout_stream))
    selection = (
        ModelSelection.from_json(position.selection)
        if position.selection
        else ModelSelection(spec.selection_metric, optim.patience)
    )
    run = _Fit(spec, ctx, training, position, selection, progress)
    history: List[Dict[str, Any]] = []
    stop_reason = "early_stopping" if position.stopped_early else "epochs"
    training.dmp.train()
    try:
        while position.epoch < optim.epochs and not position.stopped_early:
            record = run.epoch()
            if record is None:
                stop_reason = "max_steps"
                break
            history.append(record)
            if writer is not None:
                writer.record(record)
                writer.table(spec.name, history)
            if position.stopped_early:
                stop_reason = "early_stopping"
    finally:
        if run.bar is not None:
            run.bar.close()
    position.selection = selection.to_json()  # the final selection state, for a caller that keeps the position
    if selection.best_value is None:
        state = gather_model_state(training.dmp, ctx)
        if state is not None and spec.save is not None:
            spec.save(state)
    result = ModelTrainResult(
        model=spec.name,
        epochs=position.epoch,
        steps=position.step,
        stop_reason=stop_reason,
        selection_metric=spec.selection_metric,
        best_epoch=selection.best_epoch,
        best_value=selection.best_value,
        history=history,
        model_path=str(spec.path or ""),
        plan=training.plan,
        world_size=ctx.world_size,
        train_seconds=position.train_seconds,
        samples_per_s=run.samples / max(run.seconds, 1e-9),
    )
    barrier(ctx)
    return broadcast_object(result, ctx)  # rank 0's clock, on every rank


class _Fit:
    """One ``fit`` invocation's epochs on one rank."""

    def __init__(
        self,
        spec: FitSpec,
        ctx: DistContext,
        training: ShardedTraining,
        position: TrainPosition,
        selection: ModelSelection,
        progress: bool,
    ) -> None:
        self.spec, self.ctx, self.training, self.position, self.selection = spec, ctx, training, position, selection
        self.pipeline = TrainPipelineSparseDist(
            training.dmp, training.optimizer, device=ctx.device, execute_all_batches=True
        )
        self.progress = progress
        self.total_steps = 0  # the schedule's length, known from the first epoch's batch count
        self.samples, self.seconds = 0, 0.0  # this invocation's training samples and seconds in steps
        self.saved_at = position.name if position.step else ""  # the last checkpoint's position
        self.bar: Optional[tqdm] = None

    def epoch(self) -> Optional[Dict[str, Any]]:
        """Train the rest of epoch ``position.epoch``, validate, select; its record, or None when ``max_steps``
        stopped it first."""
        spec, position = self.spec, self.position
        first = position.batch_in_epoch
        loader = spec.batches(position.epoch, first)
        epoch_steps = len(loader) if first == 0 else len(spec.batches(position.epoch, 0))
        if epoch_steps == 0:
            raise ValueError(
                f"{spec.name}: epoch {position.epoch + 1} gives rank {self.ctx.rank} of {self.ctx.world_size} no "
                "batch; use more training samples or fewer processes"
            )
        self.total_steps = self.total_steps or spec.optim.epochs * epoch_steps
        trained = self._steps(loader, epoch_steps)
        if trained is None:
            return None
        self.samples += len(getattr(loader, "dataset", ()))
        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
        loss_sum, steps = all_reduce_sum(list(trained), self.ctx)
        record: Dict[str, Any] = {
            "model": spec.name,
            "epoch": position.epoch,
            "step": position.step,
            "loss": loss_sum / max(steps, 1.0),
            "lr": self.training.dense_optimizer.param_groups[0]["lr"],
            "seconds": position.train_seconds,
            "best": False,
        }
        metrics: Dict[str, float] = {}
        if spec.validate is not None and (
            position.epoch % spec.validate_every == 0 or position.epoch == spec.optim.epochs
        ):
            metrics, best = self._validate()
            record.update(metrics, best=best)
            position.stopped_early = self.selection.should_stop
        if spec.on_epoch is not None:
            spec.on_epoch(self.training, position, self.selection, metrics)
        self._checkpoint()
        return record

    def _steps(self, loader: EpochBatches, epoch_steps: int) -> Optional[Tuple[float, int]]:
        """This rank's optimiser steps over ``loader``; (its loss sum, its steps), or None when ``max_steps``
        stopped training."""
        spec, position, optim = self.spec, self.position, self.spec.optim
        if self.bar is None:  # one bar for the whole run, from where it starts
            limit = min(self.total_steps, spec.max_steps or self.total_steps)
            self.bar = tqdm(
                total=limit,
                initial=min(position.step, limit),
                desc=spec.name,
                unit="step",
                disable=not (self.progress and self.ctx.is_rank0),
            )
        loss_sum, steps = 0.0, 0
        batches = iter(loader)
        while True:
            if spec.max_steps and position.step >= spec.max_steps:
                if position.name != self.saved_at:
                    self._checkpoint()
                return None
            self.training.set_lr_multiplier(
                lr_multiplier(
                    position.step,
                    total_steps=self.total_steps,
                    warmup_steps=optim.warmup_steps,
                    decay=optim.lr_decay,
                    min_ratio=optim.min_lr_ratio,
                )
            )
            start = time.perf_counter()
            try:
                output = self.pipeline.progress(batches)
            except StopIteration:  # every rank runs out at the same step
                return loss_sum, steps
            seconds = time.perf_counter() - start
            loss_sum, steps = loss_sum + spec.step_loss(output), steps + 1
            position.step, position.batch_in_epoch = position.step + 1, position.batch_in_epoch + 1
            position.train_seconds += seconds
            self.seconds += seconds
            self.bar.update(1)
            self.bar.set_postfix(epoch=position.epoch + 1, loss=f"{loss_sum / steps:.4f}")
            if spec.on_step is not None:
                spec.on_step(self.training, position, output, seconds)
            every = spec.checkpoint_every_steps
            if every and position.step % every == 0 and position.batch_in_epoch < epoch_steps:
                self._checkpoint()  # an epoch's last step is saved at the epoch end

    def _validate(self) -> Tuple[Dict[str, float], bool]:
        """Validate (on the sharded model, or on rank 0's gathered copy), record it in the selection, save the
        model when it is the best so far; (the metrics, whether they are the best so far)."""
        spec, position = self.spec, self.position
        sharded = spec.validate_sharded is not None and self.ctx.world_size > 1
        if sharded:
            state = None
            metrics = self._validate_sharded()
        else:
            state = gather_model_state(self.training.dmp, self.ctx)
            metrics = on_rank0(partial(_validate_state, spec, state), self.ctx, what=f"{spec.name} validation")
        if not metrics:  # nothing to validate
            return metrics, False
        if math.isnan(metrics.get(spec.selection_metric, 0.0)):
            LOG.warning("%s: validation %s is undefined at epoch %d", spec.name, spec.selection_metric, position.epoch)
        best = self.selection.update(metrics, epoch=position.epoch, step=position.step, checkpoint=position.name)
        if best and sharded and spec.save is not None:  # every rank has the same metrics, so every rank gathers
            state = gather_model_state(self.training.dmp, self.ctx)
        if best and state is not None and spec.save is not None:
            spec.save(state)
        return metrics, best

    def _validate_sharded(self) -> Dict[str, float]:
        """``spec.validate_sharded`` on every rank, with the pipeline's rewritten table forwards put back for it."""
        assert self.spec.validate_sharded is not None
        model = self.pipeline.detach()
        try:
            return self.spec.validate_sharded(self.training.dmp.module)
        finally:
            self.pipeline.attach(model)
            self.training.dmp.train()

    def _checkpoint(self) -> None:
        if self.spec.checkpoint is not None:
            self.position.selection = self.selection.to_json()
            self.spec.checkpoint(self.training, self.position)
            self.saved_at = self.position.name


def _validate_state(spec: FitSpec, state: Optional[State]) -> Dict[str, float]:
    assert state is not None and spec.validate is not None  # rank 0 holds the gathered state
    return spec.validate(state)
