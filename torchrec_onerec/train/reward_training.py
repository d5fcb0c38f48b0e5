"""Training of the session reward model (docs/METHOD.md section 3, docs/EVAL.md protocol B) on TorchRec.

``train_reward_model`` runs in one process or under ``torchrun`` like the generative model's loop: it joins or
creates the process group, shards a meta-built ``RewardTrainModule`` with ``shard_for_training`` (planner, DMP,
fused RowWiseAdagrad tables, clipped AdamW), feeds each rank its slice of every global batch through TorchRec's
``TrainPipelineSparseDist`` with a warm-up + cosine learning-rate schedule, and after every epoch validates on
rank 0, keeping the best model as a plain state dict and stopping after ``reward.patience`` epochs without
improvement.

Training samples: the training days' sessions of m impressions and, with ``reward.train_on_impressions``,
every training impression again as a 1-item session (``single_item_sessions``): the pooled session labels
alone give each item little credit, and the model learned the user-item affinity much more slowly without them.

Model selection: the mean over towers of the validation sessions' same-length AUC (label: any positive item;
only pairs of sessions with the same number of items count, see ``session_aucs``). The plain session AUC is
dominated by session length (a 5-item session holds a click more often than a 1-item one), which says nothing
about how the model ranks the equal-length sessions it is asked to compare.

Output folder::

    reward_model.pt   the best validated model (the final one when nothing could be validated)
    metrics.jsonl     one record per epoch: mean training loss, learning rate, validation AUCs
    result.json       ``RewardTrainResult``

Evaluation (docs/EVAL.md protocol B) is in ``eval.reward_auc``: per-tower ROC AUC at impression and at session
level.

Shape legend: N samples, M session items, S signals.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm.auto import tqdm

from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.eval.reward_auc import nan_mean, session_aucs
from torchrec_onerec.models.reward import RewardTrainModule, SessionRewardModel
from torchrec_onerec.models.reward_batch import RewardTransform
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.run_dir import atomic_write_text
from torchrec_onerec.runtime import seed_everything
from torchrec_onerec.train.checkpoint import rank_seed
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    on_rank0,
    teardown_distributed,
)
from torchrec_onerec.train.export import gather_model_state
from torchrec_onerec.train.rank_data import rank_dataloader, steps_per_epoch
from torchrec_onerec.train.reward_io import plain_reward_model, save_reward_model
from torchrec_onerec.train.schedule import lr_multiplier
from torchrec_onerec.train.sharding import ShardedTraining, shard_for_training
from torchrec_onerec.train.validation import ModelSelection

LOG = logging.getLogger("torchrec_onerec")
SELECTION_METRIC = "valid_session_auc_same_length"
EVAL_BATCH_SIZE = 1024


@dataclass
class RewardTrainResult:
    """What a reward-model training run achieved (also written to ``result.json``).

    Args:
        model_path (str): the saved plain model (``load_reward_model``).
        epochs (int): epochs completed.
        steps (int): optimiser steps done.
        stop_reason (str): ``epochs`` or ``early_stopping``.
        best_epoch (int | None): epochs completed at the best validation (None: nothing validated).
        best_value (float | None): its mean session-level validation AUC over towers.
        validations (List[Dict[str, Any]]): every epoch's record (as in ``metrics.jsonl``).
        plan (Dict[str, Dict[str, Any]]): the sharding plan, per table.
        world_size (int): processes.
        train_seconds (float): wall seconds in training steps.
    """

    model_path: str
    epochs: int
    steps: int
    stop_reason: str
    best_epoch: Optional[int]
    best_value: Optional[float]
    validations: List[Dict[str, Any]]
    plan: Dict[str, Dict[str, Any]]
    world_size: int
    train_seconds: float


def single_item_sessions(impressions: SampleSet, session_items: int) -> SampleSet:
    """Every real impression as its own 1-item session of width M (the training mix of ``train_on_impressions``).

    Args:
        impressions (SampleSet): impression samples (any width; each real item becomes one sample).
        session_items (int): M of the result (the sessions' width), >= 1.

    Returns:
        SampleSet: one sample per real impression, in order: its sample's user and history, target
        ``[item, -1, ...]``, labels ``[item labels, 0, ...]``.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> s = SampleSet.from_samples([Sample(0, np.array([9]), np.array([4, 5]), np.eye(2, 1, dtype=np.float32))],
        ...                            ["vtr"])
        >>> out = single_item_sessions(s, 3)
        >>> out.target.tolist(), out.labels[:, 0, 0].tolist(), out[1].history.tolist()
        ([[4, -1, -1], [5, -1, -1]], [1.0, 0.0], [9])
    """
    if session_items < 1:
        raise ValueError(f"session_items={session_items} must be >= 1")
    rows, cols = np.nonzero(impressions.target != PAD_ITEM)
    out = impressions.subset(rows)
    target = np.full((len(rows), session_items), PAD_ITEM, np.int64)
    target[:, 0] = impressions.target[rows, cols]
    labels = np.zeros((len(rows), session_items, len(impressions.signals)), np.float32)
    labels[:, 0] = impressions.labels[rows, cols]
    return SampleSet(out.user, out.history_values, out.history_offsets, target, labels, list(impressions.signals))


def concat_samples(first: SampleSet, second: SampleSet) -> SampleSet:
    """The samples of ``first`` then those of ``second`` (same M and signals).

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> a = SampleSet.from_samples([Sample(0, np.array([1]), np.array([2]), np.zeros((1, 0), np.float32))], [])
        >>> b = SampleSet.from_samples([Sample(3, np.array([4, 5]), np.array([6]), np.zeros((1, 0), np.float32))], [])
        >>> both = concat_samples(a, b)
        >>> both.user.tolist(), both[1].history.tolist()
        ([0, 3], [4, 5])
    """
    if first.session_items != second.session_items or list(first.signals) != list(second.signals):
        raise ValueError(
            f"cannot concatenate samples of width {first.session_items} with signals "
            f"{list(first.signals)} and width {second.session_items} with {list(second.signals)}"
        )
    offsets = np.concatenate([first.history_offsets[:-1], second.history_offsets + first.history_offsets[-1]])
    return SampleSet(
        np.concatenate([first.user, second.user]),
        np.concatenate([first.history_values, second.history_values]),
        offsets,
        np.concatenate([first.target, second.target]),
        np.concatenate([first.labels, second.labels]),
        list(first.signals),
    )


def reward_train_config(config: RewardModelConfig) -> TrainConfig:
    """The ``TrainConfig`` that ``shard_for_training`` and the schedule read, from the ``reward`` section.

    Example:
        >>> tc = reward_train_config(RewardModelConfig(epochs=4, learning_rate=0.01))
        >>> tc.epochs, tc.learning_rate, tc.sparse_optimizer, tc.lr_decay
        (4, 0.01, 'rowwise_adagrad', 'cosine')
    """
    return TrainConfig(
        epochs=config.epochs,
        learning_rate=config.learning_rate,
        sparse_learning_rate=config.sparse_learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        patience=config.patience,
        selection_metric=SELECTION_METRIC,
    )


class _RewardRun:
    """One ``train_reward_model`` invocation on one rank."""

    def __init__(
        self,
        config: RewardModelConfig,
        train: SampleSet,
        valid: SampleSet,
        num_users: int,
        num_items: int,
        item_codes: Optional[torch.Tensor],
        out_dir: Path,
        seed: int,
        ctx: DistContext,
        progress: bool,
    ) -> None:
        self.config, self.train, self.valid = config, train, valid
        self.item_codes = item_codes if config.semantic_ids else None
        self.num_users, self.num_items, self.signals = num_users, num_items, list(train.signals)
        self.out_dir, self.seed, self.ctx, self.progress = Path(out_dir), seed, ctx, progress
        self.tc = reward_train_config(config)
        self.loader = LoaderConfig(batch_size=config.batch_size, shuffle=True)
        self.steps_per_epoch = steps_per_epoch(len(train), config.batch_size, ctx.world_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(train)} training sessions cannot feed {ctx.world_size} processes; use more "
                "sessions or fewer processes"
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        self.model_path = self.out_dir / "reward_model.pt"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.step, self.seconds = 0, 0.0  # optimiser steps done, wall seconds in them

    def _save(self, state: Optional[Dict[str, torch.Tensor]]) -> None:
        if self.ctx.is_rank0:
            assert state is not None
            save_reward_model(
                self.model_path, state, self.config, self.num_users, self.num_items, self.signals, self.item_codes
            )

    def _validate(self, dmp: DistributedModelParallel) -> Tuple[Dict[str, float], Optional[Dict[str, torch.Tensor]]]:
        """Session-level validation AUCs on rank 0, broadcast to every rank (a collective; a failure on rank 0
        ends every rank with its error)."""
        state = gather_model_state(dmp, self.ctx)

        def metrics() -> Dict[str, float]:
            assert state is not None  # rank 0 holds the gathered state
            model = plain_reward_model(
                state,
                self.config,
                self.num_users,
                self.num_items,
                self.signals,
                item_codes=self.item_codes,
                device=self.ctx.device,
            )
            per_signal = session_aucs(model, self.valid, batch_size=EVAL_BATCH_SIZE, device=self.ctx.device)
            out = {
                f"valid_{key}_{signal}": values[key]
                for signal, values in per_signal.items()
                for key in ("session_auc", "session_auc_same_length")
            }
            out[SELECTION_METRIC] = nan_mean([v["session_auc_same_length"] for v in per_signal.values()])
            return out

        return on_rank0(metrics, self.ctx, what="reward model validation"), state

    def _epoch(self, pipeline: TrainPipelineSparseDist, training: ShardedTraining, epoch: int, bar: tqdm) -> float:
        """Train one epoch; returns its mean loss over steps and ranks."""
        batches = iter(
            rank_dataloader(
                self.train,
                self.loader,
                seed=self.seed,
                epoch=epoch,
                rank=self.ctx.rank,
                world_size=self.ctx.world_size,
                transform=self.transform,
            )
        )
        loss_sum, loss_steps = 0.0, 0
        while True:
            training.set_lr_multiplier(
                lr_multiplier(
                    self.step,
                    total_steps=self.total_steps,
                    warmup_steps=self.tc.warmup_steps,
                    decay=self.tc.lr_decay,
                    min_ratio=self.tc.min_lr_ratio,
                )
            )
            start = time.perf_counter()
            try:
                loss = pipeline.progress(batches)[0]
            except StopIteration:  # every rank runs out at the same step
                break
            self.seconds += time.perf_counter() - start
            loss_sum, loss_steps, self.step = loss_sum + float(loss), loss_steps + 1, self.step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / loss_steps:.4f}")
        total_loss, total_steps = all_reduce_sum([loss_sum, loss_steps], self.ctx)
        return total_loss / max(total_steps, 1)

    def _select(self, training: ShardedTraining, selection: ModelSelection, epoch: int) -> Dict[str, Any]:
        """Validate, save the model when it is the best so far; returns the validation record."""
        metrics, state = self._validate(training.dmp)
        best = False
        if math.isnan(metrics[SELECTION_METRIC]):  # no tower has both classes: nothing to select on
            LOG.warning("reward model: no validation AUC is defined (labels of one class); the final model is kept")
        else:
            best = selection.update(metrics, epoch=epoch, step=self.step, checkpoint=str(self.model_path))
        if best:
            self._save(state)
        return {**metrics, "best": best}

    def fit(self) -> RewardTrainResult:
        model = SessionRewardModel(
            self.config,
            self.num_users,
            self.num_items,
            self.signals,
            item_codes=self.item_codes,
            device=torch.device("meta"),
        )
        self.transform = RewardTransform(self.config.session_label, model.item_tokens)  # batches carry its tokens
        training = shard_for_training(RewardTrainModule(model), self.tc, self.ctx, seed=self.seed)
        seed_everything(rank_seed(self.seed, self.ctx.rank, 0))  # dropout streams differ per rank
        pipeline = TrainPipelineSparseDist(
            training.dmp, training.optimizer, device=self.ctx.device, execute_all_batches=True
        )
        selection = ModelSelection(SELECTION_METRIC, self.config.patience)
        if self.ctx.is_rank0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.metrics_path.unlink(missing_ok=True)
        records: List[Dict[str, Any]] = []
        epoch, stop_reason = 0, "epochs"
        bar = tqdm(
            total=self.total_steps, desc="train-reward", unit="step", disable=not (self.ctx.is_rank0 and self.progress)
        )
        training.dmp.train()
        try:
            while epoch < self.config.epochs and stop_reason == "epochs":
                record: Dict[str, Any] = {"epoch": epoch + 1, "loss": self._epoch(pipeline, training, epoch, bar)}
                epoch += 1
                record.update(step=self.step, lr=training.dense_optimizer.param_groups[0]["lr"])
                if len(self.valid):
                    record.update(self._select(training, selection, epoch))
                records.append(record)
                if self.ctx.is_rank0:
                    with open(self.metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                if selection.should_stop:
                    stop_reason = "early_stopping"
        finally:
            bar.close()
        if selection.best_value is None:  # nothing validated (or every AUC undefined): keep the final model
            self._save(gather_model_state(training.dmp, self.ctx))
        result = RewardTrainResult(
            model_path=str(self.model_path),
            epochs=epoch,
            steps=self.step,
            stop_reason=stop_reason,
            best_epoch=selection.best_epoch,
            best_value=selection.best_value,
            validations=records,
            plan=training.plan,
            world_size=self.ctx.world_size,
            train_seconds=self.seconds,
        )
        result = broadcast_object(result, self.ctx)
        if self.ctx.is_rank0:
            atomic_write_text(self.out_dir / "result.json", json.dumps(asdict(result), indent=2))
        return result


def train_reward_model(
    config: RewardModelConfig,
    train: SampleSet,
    valid: SampleSet,
    *,
    num_users: int,
    num_items: int,
    out_dir: Path,
    seed: int,
    device: torch.device,
    train_impressions: Optional[SampleSet] = None,
    item_codes: Optional[torch.Tensor] = None,
    progress: bool = True,
) -> RewardTrainResult:
    """Train the session reward model on TorchRec (DMP + TrainPipelineSparseDist), in one process or under torchrun.

    Args:
        config (RewardModelConfig): the ``reward`` section (model and training keys).
        train (SampleSet): training sessions of the training days only (docs/EVAL.md protocol B):
            ``impression_samples(split, "train", items_per_sample=m, ...)``.
        valid (SampleSet): validation sessions (same signals) for model selection and early stopping; empty =
            no validation (the final model is kept).
        num_users (int): the data set's number of users.
        num_items (int): the data set's number of items.
        out_dir (Path): where ``reward_model.pt``, ``metrics.jsonl`` and ``result.json`` go.
        train_impressions (SampleSet | None): the training days' impressions
            (``impression_samples(split, "train", items_per_sample=1, ...)``), each added to the training samples
            as a 1-item session; required when ``config.train_on_impressions``, ignored otherwise.
        item_codes (torch.Tensor | None): [num_items, L'] the items' semantic-ID codes (``Codebook.codes``);
            required when ``config.semantic_ids``, ignored otherwise; saved in the model file.
        seed (int): the run's seed (initial weights, batch order, dropout).
        device (torch.device): ``cpu`` or ``cuda`` (each torchrun process takes ``cuda:<LOCAL_RANK>``).
        progress (bool): a tqdm bar on rank 0.

    Returns:
        RewardTrainResult: on every rank.
    """
    if config.train_on_impressions:
        if train_impressions is None:
            raise ValueError(
                "reward.train_on_impressions is true but no train_impressions were given; pass "
                "impression_samples(split, 'train', items_per_sample=1, ...) or set it to false"
            )
        train = concat_samples(train, single_item_sessions(train_impressions, train.session_items))
    if config.semantic_ids and item_codes is None:
        raise ValueError(
            "reward.semantic_ids is true but no item_codes were given; pass the codebook's codes "
            "(Codebook.codes of the tokenize stage) or set reward.semantic_ids=false"
        )
    if not train.signals:
        raise ValueError("the training sessions carry no signals; set split.labels (e.g. swt: long_view)")
    if list(valid.signals) != list(train.signals):
        raise ValueError(
            f"valid signals {list(valid.signals)} differ from train signals {list(train.signals)}; "
            "build both from the same split"
        )
    for name, samples in (("train", train), ("valid", valid)):
        largest_user, largest_item = samples.largest_ids()
        if largest_user >= num_users or largest_item >= num_items:
            raise ValueError(
                f"{name} holds user or item ids beyond num_users={num_users} / num_items={num_items}; "
                "pass the data set's sizes"
            )
    ctx = init_distributed(device, timeout_s=reward_train_config(config).collective_timeout_s)
    try:
        result = _RewardRun(config, train, valid, num_users, num_items, item_codes, out_dir, seed, ctx, progress).fit()
        barrier(ctx)  # no rank tears the group down while another still uses it
        return result
    finally:
        teardown_distributed(ctx)
