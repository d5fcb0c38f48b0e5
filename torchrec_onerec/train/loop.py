"""Session-wise NTP training of OneRec on TorchRec (docs/METHOD.md section 2): DMP, TrainPipelineSparseDist, schedule,
validation with model selection and early stopping, checkpoints and resume.

One function, ``train_generative``, for one process and for ``torchrun --nproc_per_node=N`` (gloo on CPUs,
nccl on GPUs): it joins or creates the process group (``distributed``), shards the model (``sharding``), feeds
each rank its slice of every global batch (``rank_data``: global batch = ``loader.batch_size``) through
TorchRec's ``TrainPipelineSparseDist`` (which overlaps the next batch's input_dist with this batch's compute),
sets the learning rates from the schedule before each step (``schedule``), logs windows of steps
(``metrics_log``), validates every ``train.eval_every_epochs`` epochs and after the last one on rank 0
(``validation``), keeps the best model as a plain state dict (``export``) and checkpoints at epoch ends, every
``train.checkpoint_every_steps`` steps and when ``train.max_steps`` stops the run (``checkpoint``).

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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm.auto import tqdm

from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, SemanticIdTransform
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.runtime import seed_everything
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.checkpoint import CheckpointMeta, CheckpointStore, rank_seed, training_fingerprint
from torchrec_onerec.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    teardown_distributed,
)
from torchrec_onerec.train.export import gather_model_state, save_exported
from torchrec_onerec.train.metrics_log import StepAccumulator, TrainLogger, batch_sizes, summary_rows
from torchrec_onerec.train.rank_data import rank_dataloader, steps_per_epoch, tail_samples_skipped
from torchrec_onerec.train.schedule import lr_multiplier
from torchrec_onerec.train.sharding import ShardedTraining, build_sharded_training
from torchrec_onerec.train.validation import GenerativeValidator, ModelSelection, Validator, validate

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


class _CountingIterator:
    """Yields the loader's batches and queues their (samples, tokens), popped as the pipeline executes them."""

    def __init__(self, batches: Iterator[SemanticIdBatch]) -> None:
        self.batches = batches
        self.sizes: Deque[Tuple[int, int]] = collections.deque()

    def __iter__(self) -> "_CountingIterator":
        return self

    def __next__(self) -> SemanticIdBatch:
        batch = next(self.batches)
        self.sizes.append(batch_sizes(batch))
        return batch


class _Run:
    """State of one ``train_generative`` invocation on one rank."""

    def __init__(
        self,
        config: OneRecConfig,
        train: SampleSet,
        valid: SampleSet,
        codes: torch.Tensor,
        vocab_sizes: List[int],
        run: RunDir,
        ctx: DistContext,
        validator: Validator,
        progress: bool,
    ) -> None:
        self.config, self.tc = config, config.train
        self.train, self.valid, self.codes, self.vocab_sizes = train, valid, codes, vocab_sizes
        self.run, self.ctx, self.validator, self.progress = run, ctx, validator, progress
        self.folder = run.path / "train"
        self.fingerprint = training_fingerprint(config.model, vocab_sizes, codes, self.tc.sparse_optimizer)
        self.store = CheckpointStore(self.folder / "checkpoints", ctx, self.fingerprint)
        self.steps_per_epoch = steps_per_epoch(len(train), config.loader.batch_size, ctx.world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(train)} training samples cannot feed {ctx.world_size} processes; use more "
                "samples or fewer processes"
            )
        self.total_steps = self.tc.epochs * self.steps_per_epoch
        skipped = tail_samples_skipped(len(train), config.loader.batch_size, ctx.world_size)
        if skipped and ctx.is_rank0:
            LOG.warning(
                "the last %d training samples of every epoch form a batch smaller than the %d processes "
                "and are skipped; a global batch size that leaves no such tail trains on all",
                skipped,
                ctx.world_size,
            )
        self.transform = SemanticIdTransform(codes, max_history=config.model.max_history)
        self.signal_weights = self.tc.signal_weights(train.signals)
        self.totals = [0.0, 0.0, 0.0]  # samples, tokens, seconds of this invocation
        self.window, self.epoch_window = StepAccumulator(), StepAccumulator()  # this logging window, this epoch
        self.final_loss: Optional[float] = None
        self.last_saved = ""  # name of the last checkpoint written

    def _stored_result(self, meta: CheckpointMeta) -> Optional[TrainResult]:
        """The result of a finished run whose last checkpoint is ``meta`` (None when there is more to train)."""
        path = self.folder / "result.json"
        if not (meta.stopped_early or meta.epoch >= self.tc.epochs) or not path.is_file():
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
        training = build_sharded_training(
            self.config.model,
            self.vocab_sizes,
            self.tc,
            self.ctx,
            seed=self.config.seed,
            signal_weights=self.signal_weights,
        )
        if latest is not None:
            meta = self.store.load(latest, training, seed=self.config.seed)
            if self.ctx.is_rank0:
                LOG.info(
                    "train: resumed from checkpoint %s (step %d of %d, epoch %d)",
                    latest.name,
                    meta.step,
                    self.total_steps,
                    meta.epoch,
                )
        else:
            meta = CheckpointMeta(self.fingerprint)
            seed_everything(rank_seed(self.config.seed, self.ctx.rank, 0))
        selection = (
            ModelSelection.from_json(meta.selection)
            if meta.selection
            else ModelSelection(self.tc.selection_metric, self.tc.patience)
        )
        if self.ctx.is_rank0:
            self.run.write_json("train/sharding_plan.json", training.plan)
        logger = TrainLogger(self.run, self.ctx, resume_step=meta.step)
        stop_reason = self._loop(training, meta, selection, logger)
        return self._finish(training, meta, selection, stop_reason)

    def _loop(
        self, training: ShardedTraining, meta: CheckpointMeta, selection: ModelSelection, logger: TrainLogger
    ) -> str:
        """Train epoch after epoch; returns why training stopped."""
        pipeline = TrainPipelineSparseDist(
            training.dmp, training.optimizer, device=self.ctx.device, execute_all_batches=True
        )
        limit = min(self.total_steps, self.tc.max_steps or self.total_steps)
        bar = tqdm(
            total=limit,
            initial=min(meta.step, limit),
            desc="train",
            unit="step",
            disable=not (self.ctx.is_rank0 and self.progress),
        )
        self.last_saved = meta.name if meta.step else ""
        training.dmp.train()
        try:
            while meta.epoch < self.tc.epochs and not meta.stopped_early:
                if not self._epoch(pipeline, training, meta, selection, logger, bar):
                    if meta.name != self.last_saved:
                        self._save(training, meta, selection)
                    return "max_steps"
                logger.log_epoch(self.epoch_window.flush(self.ctx), epoch=meta.epoch, step=meta.step)
                meta.epoch += 1
                meta.batch_in_epoch = 0
                due = meta.epoch % self.tc.eval_every_epochs == 0 or meta.epoch == self.tc.epochs
                if len(self.valid) and due:
                    self._validate(training, meta, selection, logger)
                    meta.stopped_early = selection.should_stop
                self._save(training, meta, selection)
            return "early_stopping" if meta.stopped_early else "epochs"
        finally:
            bar.close()

    def _epoch(
        self,
        pipeline: TrainPipelineSparseDist,
        training: ShardedTraining,
        meta: CheckpointMeta,
        selection: ModelSelection,
        logger: TrainLogger,
        bar: tqdm,
    ) -> bool:
        """Train the rest of epoch ``meta.epoch``; False when ``train.max_steps`` stopped it first."""
        # a resume with more processes may skip a trailing batch that the checkpoint's world size trained on
        first = min(meta.batch_in_epoch, self.steps_per_epoch)
        loader = rank_dataloader(
            self.train,
            self.config.loader,
            seed=self.config.seed,
            epoch=meta.epoch,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            transform=self.transform,
            start=first,
        )
        batches = _CountingIterator(iter(loader))
        while True:
            if self.tc.max_steps and meta.step >= self.tc.max_steps:
                return False
            training.set_lr_multiplier(
                lr_multiplier(
                    meta.step,
                    total_steps=self.total_steps,
                    warmup_steps=self.tc.warmup_steps,
                    decay=self.tc.lr_decay,
                    min_ratio=self.tc.min_lr_ratio,
                )
            )
            start = time.perf_counter()
            try:
                metrics = pipeline.progress(batches)
            except StopIteration:  # every rank runs out at the same step (same number of batches)
                return True
            seconds = time.perf_counter() - start
            samples, tokens = batches.sizes.popleft()  # the pipeline executes batches in order
            for window in (self.window, self.epoch_window):
                window.add(metrics, seconds, samples=samples, tokens=tokens)
            for index, value in enumerate((samples, tokens, seconds)):
                self.totals[index] += value
            meta.step += 1
            meta.batch_in_epoch += 1
            meta.train_seconds += seconds
            bar.update(1)
            if meta.step % self.tc.log_every_steps == 0:
                self._log(training, meta, logger, bar)
            every = self.tc.checkpoint_every_steps
            if every and meta.step % every == 0 and meta.batch_in_epoch < self.steps_per_epoch:
                self._save(training, meta, selection)  # an epoch's last step is saved at the epoch end

    def _log(self, training: ShardedTraining, meta: CheckpointMeta, logger: TrainLogger, bar: tqdm) -> None:
        record = self.window.flush(self.ctx)
        record.update(
            epoch=meta.epoch, lr=training.dense_optimizer.param_groups[0]["lr"], grad_norm=training.last_grad_norm
        )
        self.final_loss = record["loss"]
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        logger.log_step(record, step=meta.step)

    def _validate(
        self, training: ShardedTraining, meta: CheckpointMeta, selection: ModelSelection, logger: TrainLogger
    ) -> None:
        metrics, state = validate(
            training, self.ctx, self.validator, self.valid, config=self.config, vocab_sizes=self.vocab_sizes
        )
        best = selection.update(metrics, epoch=meta.epoch, step=meta.step, checkpoint=meta.name)
        logger.log_validation(metrics, epoch=meta.epoch, step=meta.step, best=best)
        if self.ctx.is_rank0:
            assert state is not None
            if best:
                save_exported(
                    self.folder / "best_model.pt", state, self.config.model, self.vocab_sizes, self.fingerprint
                )
            self.run.write_text("train/validation.csv", summary_rows(selection.history))

    def _save(self, training: ShardedTraining, meta: CheckpointMeta, selection: ModelSelection) -> None:
        meta.selection = selection.to_json()
        keep = [selection.best_checkpoint] if selection.best_checkpoint else []
        self.store.save(training, meta, keep=keep)
        self.last_saved = meta.name

    def _finish(
        self, training: ShardedTraining, meta: CheckpointMeta, selection: ModelSelection, stop_reason: str
    ) -> TrainResult:
        best_path = self.folder / "best_model.pt"
        if selection.best_value is None:  # nothing validated: the final model is the one to use
            state = gather_model_state(training.dmp, self.ctx)
            if self.ctx.is_rank0:
                assert state is not None
                save_exported(best_path, state, self.config.model, self.vocab_sizes, self.fingerprint)
        samples, tokens = all_reduce_sum(self.totals[:2], self.ctx)
        seconds = max(self.totals[2], 1e-9)
        result = TrainResult(
            steps=meta.step,
            epochs=meta.epoch,
            stop_reason=stop_reason,
            selection_metric=selection.metric,
            best_value=selection.best_value,
            best_epoch=selection.best_epoch,
            best_step=selection.best_step,
            validations=selection.history,
            best_model_path=str(best_path),
            best_checkpoint=(str(self.store.root / selection.best_checkpoint) if selection.best_checkpoint else None),
            world_size=self.ctx.world_size,
            plan=training.plan,
            train_seconds=meta.train_seconds,
            samples_per_s=samples / seconds,
            tokens_per_s=tokens / seconds,
            final_loss=self.final_loss,
            tail_samples_skipped=tail_samples_skipped(
                len(self.train), self.config.loader.batch_size, self.ctx.world_size
            ),
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
    config: OneRecConfig,
    train: SampleSet,
    valid: SampleSet,
    codes: torch.Tensor,
    vocab_sizes: Sequence[int],
    run_dir: Path,
    *,
    prefix_index: PrefixIndex,
    device: torch.device,
    resume: bool = True,
    validator: Optional[Validator] = None,
    progress: bool = True,
) -> TrainResult:
    """Train the OneRec model with session-wise NTP on TorchRec, in one process or under torchrun.

    Args:
        config (OneRecConfig): the run: ``model``, ``train``, ``loader`` (global batch), ``eval`` and
            ``split.protocol`` (validation), ``seed``.
        train (SampleSet): training samples (histories at most ``model.max_history`` items).
        valid (SampleSet): validation samples; empty = no validation (the final model is exported).
        codes (torch.Tensor): [I, L'] int64 semantic IDs of every item (``Codebook.codes``).
        vocab_sizes (Sequence[int]): K_l of each code level (``Codebook.vocab_sizes``).
        run_dir (Path): the run directory (artefacts under ``train/``; see the module docstring).
        prefix_index (PrefixIndex): the codebook's prefix index (constrained decoding in validation).
        device (torch.device): ``cpu`` or ``cuda`` (each torchrun process takes ``cuda:<LOCAL_RANK>``).
        resume (bool): continue from the latest checkpoint of ``run_dir`` when there is one (a finished run
            returns its stored result); False deletes its checkpoints and starts over.
        validator (Validator | None): metrics of a plain model on ``valid``; None = ``evaluate_generative``
            with the ``eval`` section.
        progress (bool): tqdm bars on rank 0.

    Returns:
        TrainResult: on every rank.
    """
    _check_user_table(config.model.num_users, train, valid)
    ctx = init_distributed(device, timeout_s=config.train.collective_timeout_s)
    try:
        check = validator or GenerativeValidator(config, codes, prefix_index, ctx.device, progress)
        run = _Run(config, train, valid, codes, [int(v) for v in vocab_sizes], RunDir(run_dir), ctx, check, progress)
        result = run.fit(resume)
        barrier(ctx)  # no rank tears the group down (rank 0 hosts its store) while another still uses it
        return result
    finally:
        teardown_distributed(ctx)
