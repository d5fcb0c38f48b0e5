"""Session-wise NTP training of OneRec on TorchRec (docs/METHOD.md section 2): DMP, TrainPipelineSparseDist, schedule,
validation with model selection and early stopping, checkpoints and resume.

One function, ``train_generative``, for one process and for ``torchrun --nproc_per_node=N`` (gloo on CPUs,
nccl on GPUs). It joins or creates the process group (``distributed``) and trains with the project's one
recipe, ``trainer.fit``: the model sharded (``sharding``), each rank its slice of every global batch
(``rank_data``: global batch = ``loader.batch_size``) through TorchRec's ``TrainPipelineSparseDist`` (which
overlaps the next batch's input_dist with this batch's compute), the learning rates set from the schedule
before each step (``schedule``), validation on rank 0 every ``train.eval_every_epochs`` epochs and after the
last one (``validation``), the best model kept as a plain state dict (``export``). What this module adds, as
fit's hooks: logging windows of steps (``metrics_log``), checkpoints at epoch ends, every
``train.checkpoint_every_steps`` steps and where ``train.max_steps`` stops the run, and resuming from the
latest one (``checkpoint``).

Run-directory layout (stage ``train``)::

    train/checkpoints/<name>/   the latest checkpoint and the best one (DCP)
    train/best_model.pt         the best validated model (or the final one if nothing was validated)
    train/metrics.csv           one row per logging window; metrics.jsonl gets the same records
    train/validation.csv        one row per validation
    train/sharding_plan.json    sharding type, kernel and ranks of every table
    train/result.json           ``TrainResult``
"""

from __future__ import annotations

import collections
import json
import logging
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, SemanticIdTransform
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.train.checkpoint import CheckpointMeta, CheckpointStore, TrainPosition, training_fingerprint
from torchrec_onerec.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    teardown_distributed,
)
from torchrec_onerec.train.export import plain_model, save_exported
from torchrec_onerec.train.metrics_log import StepAccumulator, TrainLogger, batch_sizes, summary_rows
from torchrec_onerec.train.rank_data import rank_dataloader, steps_per_epoch, tail_samples_skipped
from torchrec_onerec.train.selection import ModelSelection
from torchrec_onerec.train.sharding import ShardedTraining, onerec_train_step
from torchrec_onerec.train.train_module import OneRecTrainStep, StepMetrics
from torchrec_onerec.train.trainer import FitSpec, ModelTrainResult, State, fit
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.validation import GenerativeValidator, Validator

LOG = logging.getLogger("torchrec_onerec")


@dataclass
class TrainResult:
    """What a training run achieved (also written to ``train/result.json``).

    Args:
        steps (int): optimiser steps done in total.
        epochs (int): epochs completed.
        stop_reason (str): ``epochs`` (all done), ``early_stopping`` or ``max_steps``.
        selection_metric (str): the validation metric that selected the best model.
        best_value (float | None): its best value (None when nothing was validated).
        best_epoch (int | None): epochs completed at the best validation.
        best_step (int | None): steps done at the best validation.
        validations (List[Dict[str, Any]]): every validation's epoch, step and metrics.
        best_model_path (str): the exported plain model (``export.load_exported``).
        best_checkpoint (str | None): the DCP checkpoint taken at the best validation.
        world_size (int): processes of the (last) invocation.
        plan (Dict[str, Dict[str, Any]]): the sharding plan, per table.
        train_seconds (float): wall seconds in training steps, over every invocation.
        samples_per_s (float): training samples per second of the last invocation.
        tokens_per_s (float): history + target code tokens per second of the last invocation.
        final_loss (float | None): mean loss of the last logging window.
        tail_samples_skipped (int): samples per epoch in a trailing batch smaller than the world size.
        fingerprint (str): the training fingerprint (model config, codebook, sparse optimiser).
    """

    steps: int
    epochs: int
    stop_reason: str
    selection_metric: str
    best_value: Optional[float]
    best_epoch: Optional[int]
    best_step: Optional[int]
    validations: List[Dict[str, Any]]
    best_model_path: str
    best_checkpoint: Optional[str]
    world_size: int
    plan: Dict[str, Dict[str, Any]]
    train_seconds: float
    samples_per_s: float
    tokens_per_s: float
    final_loss: Optional[float]
    tail_samples_skipped: int
    fingerprint: str = ""


class _CountingLoader:
    """An epoch's loader whose batches queue their (samples, tokens), popped as the pipeline executes them."""

    def __init__(self, loader: DataLoader, sizes: Deque[Tuple[int, int]]) -> None:
        self.loader, self.sizes = loader, sizes

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[SemanticIdBatch]:
        for batch in self.loader:
            self.sizes.append(batch_sizes(batch))
            yield batch


class _Run:
    """State of one ``train_generative`` invocation on one rank: ``trainer.fit`` with the generative model's
    hooks (step-window logging, DCP checkpoints, resume)."""

    def __init__(
        self,
        model_config: OneRecModelConfig,
        train_config: TrainConfig,
        loader: LoaderConfig,
        seed: int,
        train: SampleSet,
        valid: SampleSet,
        codes: torch.Tensor,
        vocab_sizes: List[int],
        run: RunDir,
        ctx: DistContext,
        validator: Validator,
        progress: bool,
    ) -> None:
        self.model_config, self.tc, self.loader, self.seed = model_config, train_config, loader, seed
        self.train, self.valid, self.codes, self.vocab_sizes = train, valid, codes, vocab_sizes
        self.run, self.ctx, self.validator, self.progress = run, ctx, validator, progress
        self.folder = run.path / "train"
        self.fingerprint = training_fingerprint(model_config, vocab_sizes, codes, self.tc.sparse_optimizer)
        self.store = CheckpointStore(self.folder / "checkpoints", ctx, self.fingerprint)
        self.steps_per_epoch = steps_per_epoch(len(train), loader.batch_size, ctx.world_size)  # 0: fit refuses it
        skipped = tail_samples_skipped(len(train), loader.batch_size, ctx.world_size)
        if skipped and ctx.is_rank0:
            LOG.warning(
                "the last %d training samples of every epoch form a batch smaller than the %d processes "
                "and are skipped; a global batch size that leaves no such tail trains on all",
                skipped,
                ctx.world_size,
            )
        self.transform = SemanticIdTransform(
            codes,
            max_history=model_config.max_history,
            siblings=model_config.reads_siblings,
            sampled_siblings=self.tc.sampled_siblings,
            seed=seed,
        )
        self.signal_weights = self.tc.signal_weights(train.signals)
        self.sizes: Deque[Tuple[int, int]] = collections.deque()  # (samples, tokens) of the batches in flight
        self.totals = [0.0, 0.0, 0.0]  # samples, tokens, seconds of this invocation
        self.window, self.epoch_window = StepAccumulator(), StepAccumulator()  # this logging window, this epoch
        self.final_loss: Optional[float] = None
        self.meta = CheckpointMeta(fingerprint=self.fingerprint)  # the position fit advances
        self.logger: Optional[TrainLogger] = None

    def _stored_result(self, meta: CheckpointMeta) -> Optional[TrainResult]:
        """The result of a finished run whose last checkpoint is ``meta`` (None when there is more to train)."""
        path = self.folder / "result.json"
        if not (meta.stopped_early or meta.epoch >= self.tc.optim.epochs) or not path.is_file():
            return None
        result = TrainResult(**json.loads(path.read_text()))
        return result if (result.steps, result.fingerprint) == (meta.step, self.fingerprint) else None

    def fit(self, resume: bool) -> TrainResult:
        if not resume:
            self.store.clear()
        latest = self.store.latest() if resume else None
        if latest is not None:
            done = self._stored_result(self.store.read_meta(latest))
            if done is not None:
                return done
        spec = FitSpec(
            name="train",
            module=onerec_train_step(
                self.model_config, self.vocab_sizes, self.tc, self.ctx.device, signal_weights=self.signal_weights
            ),
            batches=self._batches,
            optim=self.tc.optim,
            stack=self.tc,
            selection_metric=self.tc.selection_metric,
            validate=self._validate if len(self.valid) else None,
            validate_sharded=(
                self._validate_sharded if len(self.valid) and isinstance(self.validator, GenerativeValidator) else None
            ),
            save=self._save_best,
            path=self.folder / "best_model.pt",
            validate_every=self.tc.eval_every_epochs,
            max_steps=self.tc.max_steps,
            dropout_stream=0,
            step_loss=lambda metrics: float(metrics.loss),
            start=partial(self._start, latest),
            on_step=self._on_step,
            on_epoch=self._on_epoch,
            checkpoint=self._checkpoint,
            checkpoint_every_steps=self.tc.checkpoint_every_steps,
        )
        return self._finish(fit(spec, self.ctx, seed=self.seed, progress=self.progress))

    def _start(self, latest: Optional[Path], training: ShardedTraining) -> CheckpointMeta:
        """The position to train from: the latest checkpoint, loaded into ``training``, or step 0."""
        if latest is not None:
            self.meta = self.store.load(latest, training, seed=self.seed)
            if self.ctx.is_rank0:
                LOG.info(
                    "train: resumed from checkpoint %s (step %d of %d, epoch %d)",
                    latest.name,
                    self.meta.step,
                    self.tc.optim.epochs * self.steps_per_epoch,
                    self.meta.epoch,
                )
        if self.ctx.is_rank0:
            self.run.write_json("train/sharding_plan.json", training.plan)
        self.logger = TrainLogger(self.run, self.ctx, resume_step=self.meta.step)
        return self.meta

    def _batches(self, epoch: int, first: int) -> _CountingLoader:
        # a resume with more processes may skip a trailing batch that the checkpoint's world size trained on
        loader = rank_dataloader(
            self.train,
            self.loader,
            seed=self.seed,
            epoch=epoch,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            transform=self.transform,
            start=min(first, self.steps_per_epoch),
        )
        return _CountingLoader(loader, self.sizes)

    def _on_step(
        self, training: ShardedTraining, position: TrainPosition, metrics: StepMetrics, seconds: float
    ) -> None:
        samples, tokens = self.sizes.popleft()  # the pipeline executes batches in order
        for window in (self.window, self.epoch_window):
            window.add(metrics, seconds, samples=samples, tokens=tokens)
        for index, value in enumerate((samples, tokens, seconds)):
            self.totals[index] += value
        if position.step % self.tc.log_every_steps == 0:
            record = self.window.flush(self.ctx)
            record.update(
                epoch=position.epoch,
                lr=training.dense_optimizer.param_groups[0]["lr"],
                grad_norm=training.last_grad_norm,
            )
            self.final_loss = record["loss"]
            assert self.logger is not None
            self.logger.log_step(record, step=position.step)

    def _on_epoch(
        self, training: ShardedTraining, position: TrainPosition, selection: ModelSelection, metrics: Dict[str, float]
    ) -> None:
        assert self.logger is not None
        self.logger.log_epoch(self.epoch_window.flush(self.ctx), epoch=position.epoch - 1, step=position.step)
        if metrics:  # validated at this epoch
            self.logger.log_validation(
                metrics, epoch=position.epoch, step=position.step, best=selection.best_step == position.step
            )
            if self.ctx.is_rank0:
                self.run.write_text("train/validation.csv", summary_rows(selection.history))

    def _validate(self, state: State) -> Dict[str, float]:
        return self.validator(
            plain_model(state, self.model_config, self.vocab_sizes, device=self.ctx.device), self.valid
        )

    def _validate_sharded(self, module: nn.Module) -> Dict[str, float]:
        assert isinstance(module, OneRecTrainStep) and isinstance(self.validator, GenerativeValidator)
        return self.validator(module.model, self.valid, distributed=True)

    def _save_best(self, state: State) -> None:
        save_exported(self.folder / "best_model.pt", state, self.model_config, self.vocab_sizes, self.fingerprint)

    def _checkpoint(self, training: ShardedTraining, position: TrainPosition) -> None:
        assert isinstance(position, CheckpointMeta)
        best = position.selection.get("best_checkpoint")
        self.store.save(training, position, keep=[best] if best else [])

    def _finish(self, fitted: ModelTrainResult) -> TrainResult:
        selection = ModelSelection.from_json(self.meta.selection)  # fit leaves its final state in the position
        samples, tokens = all_reduce_sum(self.totals[:2], self.ctx)
        seconds = max(self.totals[2], 1e-9)
        result = TrainResult(
            steps=fitted.steps,
            epochs=fitted.epochs,
            stop_reason=fitted.stop_reason,
            selection_metric=selection.metric,
            best_value=selection.best_value,
            best_epoch=selection.best_epoch,
            best_step=selection.best_step,
            validations=selection.history,
            best_model_path=fitted.model_path,
            best_checkpoint=(str(self.store.root / selection.best_checkpoint) if selection.best_checkpoint else None),
            world_size=self.ctx.world_size,
            plan=fitted.plan,
            train_seconds=fitted.train_seconds,
            samples_per_s=samples / seconds,
            tokens_per_s=tokens / seconds,
            final_loss=self.final_loss,
            tail_samples_skipped=tail_samples_skipped(len(self.train), self.loader.batch_size, self.ctx.world_size),
            fingerprint=self.fingerprint,
        )
        result = broadcast_object(result, self.ctx)  # rank 0's clock and counts, on every rank
        if self.ctx.is_rank0:
            self.run.write_json("train/result.json", asdict(result))
        return result


def _check_user_table(num_users: int, *samples: SampleSet) -> None:
    """Refuse user ids beyond the user-id table: TorchRec's CPU kernels would embed them as zeros, silently."""
    if not num_users:
        return
    largest = max((s.largest_ids()[0] for s in samples), default=-1)
    if largest >= num_users:
        raise ValueError(
            f"model.num_users={num_users} is too small: the samples hold user id {largest}; set "
            f"model.num_users to at least {largest + 1} (the data set's user count) or to 0 for no "
            "user feature"
        )


def train_generative(
    model_config: OneRecModelConfig,
    train_config: TrainConfig,
    loader: LoaderConfig,
    train: SampleSet,
    valid: SampleSet,
    codes: torch.Tensor,
    vocab_sizes: Sequence[int],
    run_dir: Path,
    *,
    validator: Validator,
    seed: int,
    device: torch.device,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train the OneRec model with session-wise NTP on TorchRec, in one process or under torchrun.

    Args:
        model_config (OneRecModelConfig): the ``model`` section.
        train_config (TrainConfig): the ``train`` section (its ``optim``, selection, checkpoints, stack settings).
        loader (LoaderConfig): the ``loader`` section (``batch_size`` is the global batch).
        train (SampleSet): training samples (histories at most ``model.max_history`` items).
        valid (SampleSet): validation samples; empty = no validation (the final model is exported).
        codes (torch.Tensor): [I, L'] int64 semantic IDs of every item (``Codebook.codes``).
        vocab_sizes (Sequence[int]): K_l of each code level (``Codebook.vocab_sizes``).
        run_dir (Path): the run directory (artefacts under ``train/``; see the module docstring).
        validator (Validator): metrics of a plain model on ``valid`` (``validation.GenerativeValidator``: the run's
            ``eval`` section and constrained beam search), computed on rank 0.
        seed (int): the run's seed (initial weights, batch order, dropout).
        device (torch.device): ``cpu`` or ``cuda`` (each torchrun process takes ``cuda:<LOCAL_RANK>``).
        resume (bool): continue from the latest checkpoint of ``run_dir`` when there is one (a finished run
            returns its stored result); False deletes its checkpoints and starts over.
        progress (bool): a tqdm bar on rank 0.

    Returns:
        TrainResult: on every rank.
    """
    _check_user_table(model_config.num_users, train, valid)
    ctx = init_distributed(device, timeout_s=train_config.collective_timeout_s)
    try:
        run = _Run(
            model_config,
            train_config,
            loader,
            seed,
            train,
            valid,
            codes,
            [int(v) for v in vocab_sizes],
            RunDir(run_dir),
            ctx,
            validator,
            progress,
        )
        result = run.fit(resume)
        barrier(ctx)  # no rank tears the group down (rank 0 hosts its store) while another still uses it
        return result
    finally:
        teardown_distributed(ctx)
