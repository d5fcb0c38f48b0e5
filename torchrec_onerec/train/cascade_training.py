"""Training of the cascade baseline (``models.cascade``): its two models, one after the other, by ``train.trainer.fit``
(the TorchRec stack of the generative model; each epoch validated on rank 0, the best epoch's plain state dict kept
by ``save_two_tower`` / ``save_ranker``).

1. Two-tower retrieval on (history, positive item) pairs, one per real target item of the training samples
   (``training_pairs``; under protocol A with m > 1, the next m items of every position), in-batch softmax with
   logQ correction; selected on validation recall@K_r of the retrieved lists.
2. Ranker: protocol B on the training window's impressions (``impression_samples``, one per sample) with the
   split's signals as tasks; protocol A on each training target vs ``negatives_per_positive`` uniform items
   (redrawn each epoch, seeded), one task ``positive``. Selected on the mean validation AUC over tasks; the
   best ranker's test AUCs are reported too (test is read once, for the report, never for selection).

Stack-level settings come from the ``train`` section (``sparse_optimizer``, ``grad_clip``,
``collective_timeout_s``, ``sharding_type``); pooled tables shard table-wise or column-wise on CPU (TorchRec
shards EmbeddingBagCollections row-wise on CUDA only), so an empty ``sharding_type`` means ``table_wise``
here. With several ranks the in-batch negatives are each rank's share of the global batch.

Folder layout (``out_dir``, e.g. ``<run_dir>/cascade``)::

    two_tower.pt, ranker.pt     the selected models (``models.cascade.load_cascade`` reads them)
    metrics.jsonl               one record per epoch and model, then the test AUCs
    two_tower.csv, ranker.csv   the epoch records as tables
    sharding_plan.json          both models' plans
    result.json                 ``CascadeTrainResult``
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Union

import numpy as np
import torch

from torchrec_onerec.data.impressions import impression_samples
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.splits import SplitA, SplitB
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.models.cascade import RANKER_FILE, TWO_TOWER_FILE
from torchrec_onerec.models.cascade_config import CascadeConfig
from torchrec_onerec.models.ranker import (
    POSITIVE_TASK,
    MultiTaskRanker,
    RankerTrainStep,
    RankerTransform,
    dense_width,
    item_dense_features,
    load_ranker,
    negative_samples,
    predict,
    save_ranker,
    task_aucs,
)
from torchrec_onerec.models.two_tower import (
    TwoTowerRetrieval,
    TwoTowerTransform,
    item_log_frequency,
    retrieve,
    save_two_tower,
    training_pairs,
)
from torchrec_onerec.run_dir import atomic_write_text
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    init_distributed,
    teardown_distributed,
)
from torchrec_onerec.train.metrics_log import MetricsWriter
from torchrec_onerec.train.trainer import (
    baseline_stack,
    FitSpec,
    LossTrainStep,
    ModelTrainResult,
    State,
    fit,
    list_metrics,
    plain_module,
    sample_batches,
    validation_users,
)

VALIDATION_SEED_OFFSET = 1_000_003  # protocol A's validation/test negatives: a draw no training epoch uses


@dataclass
class CascadeTrainResult:
    """Both models' training and the selected ranker's AUCs (also ``result.json``).

    Args:
        two_tower (ModelTrainResult): the retrieval model.
        ranker (ModelTrainResult): the ranker.
        tasks (List[str]): the ranker's tasks.
        ranker_valid_auc (Dict[str, float]): ``auc_<task>`` and ``auc_mean`` of the kept ranker on validation.
        ranker_test_auc (Dict[str, float]): the same on the test impressions (protocol A: test targets vs
            sampled negatives).
        folder (str): ``out_dir``.
        world_size (int): processes.
    """

    two_tower: ModelTrainResult
    ranker: ModelTrainResult
    tasks: List[str]
    ranker_valid_auc: Dict[str, float]
    ranker_test_auc: Dict[str, float]
    folder: str
    world_size: int


def _item_content(data: InteractionData, use: bool) -> torch.Tensor:
    """[I, C] the data's content embedding when asked for and present, else [I, 0]."""
    if use and data.item_embeddings is not None:
        return torch.as_tensor(np.asarray(data.item_embeddings, np.float32))
    return torch.zeros(data.num_items, 0)


def _two_tower_stage(
    config: CascadeConfig,
    split: Union[SplitA, SplitB],
    data: InteractionData,
    train: TrainConfig,
    folder: Path,
    ctx: DistContext,
    run: Dict[str, Any],
) -> FitSpec:
    """The retrieval model, its training pairs and its validation (recall@K_r of the retrieved lists); ``run``
    holds ``sample_batches``' seed and worker count."""
    rc = config.retrieval
    pairs = training_pairs(split.train)
    if len(pairs) == 0:
        raise ValueError("the split's training samples hold no target item: the two-tower model has nothing to learn")
    content = _item_content(data, rc.use_item_content)
    log_q = torch.as_tensor(item_log_frequency(pairs.target[:, 0], data.num_items))
    sizes: Dict[str, Any] = dict(num_users=data.num_users, num_items=data.num_items, content_dim=int(content.shape[1]))
    k = min(rc.num_candidates, data.num_items)
    valid = validation_users(split.valid)

    def validate(state: State) -> Dict[str, float]:
        if valid is None:
            return {}
        model = plain_module(TwoTowerRetrieval(rc, **sizes, device=torch.device("meta")), state, ctx.device)
        ranked, _ = retrieve(model, valid, k=k, item_content=content)
        return list_metrics(ranked, valid, k)

    def save(state: State) -> None:
        save_two_tower(
            folder / TWO_TOWER_FILE, state, rc, num_users=data.num_users, num_items=data.num_items, item_content=content
        )

    return FitSpec(
        name="two_tower",
        path=folder / TWO_TOWER_FILE,
        module=LossTrainStep(TwoTowerRetrieval(rc, **sizes, device=torch.device("meta"))),
        batches=sample_batches(lambda epoch: pairs, TwoTowerTransform(content, log_q), rc.batch_size, ctx, **run),
        optim=rc.optim,
        stack=baseline_stack(train, ctx.device),
        selection_metric=f"recall@{k}",
        validate=validate,
        save=save,
    )


@dataclass
class _RankerData:
    """The ranker's tasks, training samples per epoch, validation and test samples and per-item features."""

    tasks: List[str]
    epoch_samples: Callable[[int], SampleSet]
    valid: SampleSet
    test: SampleSet
    item_features: torch.Tensor


def _ranker_data(
    config: CascadeConfig, split: Union[SplitA, SplitB], data: InteractionData, *, max_history: int, seed: int
) -> _RankerData:
    """Protocol B: impressions with the split's signals; protocol A: positives and sampled negatives."""
    counts = np.bincount(split.train_sequences["item_id"].to_numpy(np.int64), minlength=data.num_items)
    content = _item_content(data, config.ranker.use_item_content)
    features = torch.as_tensor(item_dense_features(counts, content.numpy() if content.shape[1] else None))
    if isinstance(split, SplitB):

        def window(name: str) -> SampleSet:
            return impression_samples(
                split, name, num_users=data.num_users, items_per_sample=1, max_history=max_history
            )

        train = window("train")
        return _RankerData(list(split.train.signals), lambda epoch: train, window("valid"), window("test"), features)
    k = config.ranker.negatives_per_positive

    def sampled(samples: SampleSet, draw_seed: int) -> SampleSet:
        return negative_samples(samples, num_items=data.num_items, negatives_per_positive=k, seed=draw_seed)

    return _RankerData(
        [POSITIVE_TASK],
        lambda epoch: sampled(split.train, seed + epoch),
        sampled(split.valid, seed + VALIDATION_SEED_OFFSET),
        sampled(split.test, seed + 2 * VALIDATION_SEED_OFFSET),
        features,
    )


def _ranker_aucs(ranker: MultiTaskRanker, samples: SampleSet, features: torch.Tensor) -> Dict[str, float]:
    """``task_aucs`` of a plain ranker on impression samples (empty dict for no samples)."""
    if len(samples) == 0:
        return {}
    return task_aucs(predict(ranker, samples, features), samples.labels[:, 0, :], ranker.tasks)


def _ranker_stage(
    config: CascadeConfig,
    ranker_data: _RankerData,
    data: InteractionData,
    train: TrainConfig,
    folder: Path,
    ctx: DistContext,
    run: Dict[str, Any],
) -> FitSpec:
    """The ranker and its validation (mean AUC over tasks); ``run`` as ``_two_tower_stage``'s."""
    rk, features = config.ranker, ranker_data.item_features
    sizes: Dict[str, Any] = dict(
        num_users=data.num_users,
        num_items=data.num_items,
        tasks=ranker_data.tasks,
        dense_features=dense_width(features),
    )

    def validate(state: State) -> Dict[str, float]:
        model = plain_module(MultiTaskRanker(rk, **sizes, device=torch.device("meta")), state, ctx.device)
        return _ranker_aucs(model, ranker_data.valid, features)

    def save(state: State) -> None:
        save_ranker(
            folder / RANKER_FILE,
            state,
            rk,
            num_users=data.num_users,
            num_items=data.num_items,
            tasks=ranker_data.tasks,
            item_features=features,
        )

    return FitSpec(
        name="ranker",
        path=folder / RANKER_FILE,
        module=RankerTrainStep(MultiTaskRanker(rk, **sizes, device=torch.device("meta"))),
        batches=sample_batches(ranker_data.epoch_samples, RankerTransform(features), rk.batch_size, ctx, **run),
        optim=rk.optim,
        stack=baseline_stack(train, ctx.device),
        selection_metric="auc_mean",
        validate=validate,
        save=save,
    )


def train_cascade(
    config: CascadeConfig,
    split: Union[SplitA, SplitB],
    data: InteractionData,
    *,
    train_config: TrainConfig,
    max_history: int,
    out_dir: Path,
    device: torch.device,
    seed: int,
    num_workers: int = 0,
    progress: bool = True,
) -> CascadeTrainResult:
    """Train the two-tower model, then the ranker, on TorchRec; keep each one's best epoch under ``out_dir``.

    Args:
        config (CascadeConfig): the ``cascade`` section.
        split (SplitA | SplitB): the run's split (protocol A: positives only; B: with impression tables).
        data (InteractionData): the data set (ids, ``item_embeddings`` for the content features).
        train_config (TrainConfig): the ``train`` section (stack settings, see the module docstring).
        max_history (int): n, the history cut of the ranker's impression samples (``split.max_history``).
        out_dir (Path): the output folder (layout in the module docstring).
        device (torch.device): ``cpu`` or ``cuda`` (each torchrun process takes ``cuda:<LOCAL_RANK>``).
        seed (int): the run's seed (initial weights, batch order, negative draws).
        num_workers (int): DataLoader worker processes.
        progress (bool): tqdm bars on rank 0.

    Returns:
        CascadeTrainResult: on every rank.
    """
    ctx = init_distributed(device, timeout_s=train_config.collective_timeout_s)
    try:
        folder = Path(out_dir)
        writer = MetricsWriter(folder, ctx)
        run: Dict[str, Any] = dict(seed=seed, num_workers=num_workers)
        two_tower_spec = _two_tower_stage(config, split, data, train_config, folder, ctx, run)
        two_tower = fit(two_tower_spec, ctx, seed=seed, progress=progress, writer=writer)
        ranker_data = _ranker_data(config, split, data, max_history=max_history, seed=seed)
        ranker_spec = _ranker_stage(config, ranker_data, data, train_config, folder, ctx, run)
        ranker = fit(ranker_spec, ctx, seed=seed, progress=progress, writer=writer)
        aucs: tuple[Dict[str, float], Dict[str, float]] = ({}, {})
        if ctx.is_rank0:
            best, features = load_ranker(folder / RANKER_FILE, device=ctx.device)
            aucs = (_ranker_aucs(best, ranker_data.valid, features), _ranker_aucs(best, ranker_data.test, features))
            writer.record({"model": "ranker", "split": "test", **aucs[1]})
        valid_auc, test_auc = broadcast_object(aucs, ctx)
        result = CascadeTrainResult(
            two_tower, ranker, ranker_data.tasks, valid_auc, test_auc, str(folder), ctx.world_size
        )
        if ctx.is_rank0:
            atomic_write_text(
                folder / "sharding_plan.json",
                json.dumps({"two_tower": two_tower.plan, "ranker": ranker.plan}, indent=2) + "\n",
            )
            atomic_write_text(folder / "result.json", json.dumps(asdict(result), indent=2, default=str) + "\n")
        barrier(ctx)
        return result
    finally:
        teardown_distributed(ctx)
