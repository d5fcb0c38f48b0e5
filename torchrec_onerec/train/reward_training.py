"""Training of the session reward model (docs/METHOD.md section 3, docs/EVAL.md protocol B) on TorchRec.

``train_reward_model`` runs in one process or under ``torchrun``: it joins or creates the process group and trains
a meta-built ``RewardTrainModule`` with ``train.trainer.fit`` (planner, DMP, fused RowWiseAdagrad tables, clipped
AdamW, TorchRec's ``TrainPipelineSparseDist``, each rank its slice of every global batch) under a warm-up +
cosine learning-rate schedule; after every epoch it validates on rank 0, keeps the best model as a plain state
dict and stops after ``reward.optim.patience`` epochs without improvement. Dropout draws depend only on the seed and
the rank.

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
    reward_model.csv  the same records as a table
    result.json       ``trainer.ModelTrainResult``

Evaluation (docs/EVAL.md protocol B) is in ``eval.reward_auc``: per-tower ROC AUC at impression and at session
level.

Shape legend: N samples, M session items, S signals.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.eval.reward_auc import nan_mean, session_aucs
from torchrec_onerec.models.reward import RewardTrainModule, SessionRewardModel
from torchrec_onerec.models.reward_batch import RewardTransform
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.run_dir import atomic_write_text
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, barrier, init_distributed, teardown_distributed
from torchrec_onerec.train.reward_io import REWARD_MODEL_FILE, plain_reward_model, save_reward_model
from torchrec_onerec.train.metrics_log import MetricsWriter
from torchrec_onerec.train.trainer import FitSpec, ModelTrainResult, State, fit, sample_batches

SELECTION_METRIC = "valid_session_auc_same_length"
EVAL_BATCH_SIZE = 1024


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


def _reward_spec(
    config: RewardModelConfig,
    train: SampleSet,
    valid: SampleSet,
    *,
    num_users: int,
    num_items: int,
    item_codes: Optional[torch.Tensor],
    out_dir: Path,
    train_config: TrainConfig,
    ctx: DistContext,
    seed: int,
) -> FitSpec:
    """The reward model's ``FitSpec``: its batches (which carry the model's item tokens), validation by the
    same-length session AUCs (module docstring) and ``save_reward_model``."""
    signals = list(train.signals)
    sizes: Dict[str, Any] = dict(num_users=num_users, num_items=num_items, signals=signals, item_codes=item_codes)
    model = SessionRewardModel(config, **sizes, device=torch.device("meta"))
    transform = RewardTransform(config.session_label, model.item_tokens)  # batches carry its tokens
    path = out_dir / REWARD_MODEL_FILE

    def validate(state: State) -> Dict[str, float]:
        plain = plain_reward_model(state, config, **sizes, device=ctx.device)
        per_signal = session_aucs(plain, valid, batch_size=EVAL_BATCH_SIZE, device=ctx.device)
        out = {
            f"valid_{key}_{signal}": values[key]
            for signal, values in per_signal.items()
            for key in ("session_auc", "session_auc_same_length")
        }
        out[SELECTION_METRIC] = nan_mean([v["session_auc_same_length"] for v in per_signal.values()])
        return out

    def save(state: State) -> None:
        save_reward_model(path, state, config, num_users, num_items, signals, item_codes)

    return FitSpec(
        name="reward_model",
        module=RewardTrainModule(model),
        batches=sample_batches(lambda epoch: train, transform, config.batch_size, ctx, seed=seed),
        optim=config.optim,
        stack=train_config,
        selection_metric=SELECTION_METRIC,
        validate=validate if len(valid) else None,
        save=save,
        path=path,
        dropout_stream=0,
    )


def train_reward_model(
    config: RewardModelConfig,
    train: SampleSet,
    valid: SampleSet,
    *,
    num_users: int,
    num_items: int,
    out_dir: Path,
    train_config: TrainConfig,
    seed: int,
    device: torch.device,
    train_impressions: Optional[SampleSet] = None,
    item_codes: Optional[torch.Tensor] = None,
    progress: bool = True,
) -> ModelTrainResult:
    """Train the session reward model on TorchRec (DMP + TrainPipelineSparseDist), in one process or under torchrun.

    Args:
        config (RewardModelConfig): the ``reward`` section (the model and its ``optim``).
        train (SampleSet): training sessions of the training days only (docs/EVAL.md protocol B):
            ``impression_samples(split, "train", items_per_sample=m, ...)``.
        valid (SampleSet): validation sessions (same signals) for model selection and early stopping; empty =
            no validation (the final model is kept).
        num_users (int): the data set's number of users.
        num_items (int): the data set's number of items.
        out_dir (Path): where ``reward_model.pt``, ``metrics.jsonl`` and ``result.json`` go.
        train_config (TrainConfig): the ``train`` section's stack settings (sparse optimiser, clipping, sharding
            type, collective timeout); the optimiser is ``config.optim``.
        train_impressions (SampleSet | None): the training days' impressions
            (``impression_samples(split, "train", items_per_sample=1, ...)``), each added to the training samples
            as a 1-item session; required when ``config.train_on_impressions``, ignored otherwise.
        item_codes (torch.Tensor | None): [num_items, L'] the items' semantic-ID codes (``Codebook.codes``);
            required when ``config.semantic_ids``, ignored otherwise; saved in the model file.
        seed (int): the run's seed (initial weights, batch order, dropout).
        device (torch.device): ``cpu`` or ``cuda`` (each torchrun process takes ``cuda:<LOCAL_RANK>``).
        progress (bool): a tqdm bar on rank 0.

    Returns:
        ModelTrainResult: on every rank (also ``result.json``).
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
    ctx = init_distributed(device, timeout_s=train_config.collective_timeout_s)
    try:
        folder = Path(out_dir)
        spec = _reward_spec(
            config,
            train,
            valid,
            num_users=num_users,
            num_items=num_items,
            item_codes=item_codes if config.semantic_ids else None,
            out_dir=folder,
            train_config=train_config,
            ctx=ctx,
            seed=seed,
        )
        result = fit(spec, ctx, seed=seed, progress=progress, writer=MetricsWriter(folder, ctx))
        if ctx.is_rank0:
            atomic_write_text(folder / "result.json", json.dumps(asdict(result), indent=2))
        barrier(ctx)  # no rank tears the group down while another still uses it
        return result
    finally:
        teardown_distributed(ctx)
