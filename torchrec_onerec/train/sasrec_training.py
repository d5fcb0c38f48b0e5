"""Training of the SASRec baseline arm (``models.sasrec``) by ``train.trainer.fit``, on the split every arm uses.

Training samples: one (history, next item) pair per real target item of the split's training samples
(``training_pairs``, as the two-tower model's): under protocol A every position of every training sequence, as
RecBole's SASRec trains on every prefix. Each epoch is validated on rank 0 by NDCG@10 of the full-catalogue
ranking on the validation users (``evaluation_users``; all their positives count under protocol B); the best
epoch is kept, and training stops after ``sasrec.optim.patience`` epochs without a better one. Stack-level settings
(sparse optimiser, sharding type, gradient clipping, collective timeout) come from the ``train`` section.

Folder layout (``out_dir``, e.g. ``<run_dir>/sasrec``)::

    sasrec.pt       the selected model (``models.sasrec.load_sasrec`` reads it)
    metrics.jsonl   one record per epoch
    sasrec.csv      the same records as a table
    result.json     ``ModelTrainResult``
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Union

import torch

from torchrec_onerec.data.splits import SplitA, SplitB
from torchrec_onerec.models.sasrec import SASRec, SASRecTransform, rank_items, save_sasrec
from torchrec_onerec.models.sasrec_config import SASRecConfig
from torchrec_onerec.models.two_tower import training_pairs
from torchrec_onerec.run_dir import atomic_write_text
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import barrier, init_distributed, teardown_distributed
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

SASREC_FILE = "sasrec.pt"
SELECTION_K = 10


def train_sasrec(
    config: SASRecConfig,
    split: Union[SplitA, SplitB],
    *,
    num_items: int,
    max_history: int,
    train_config: TrainConfig,
    out_dir: Path,
    device: torch.device,
    seed: int,
    num_workers: int = 0,
    progress: bool = True,
) -> ModelTrainResult:
    """Train SASRec on the split's training samples; keep the epoch with the best validation NDCG@10.

    Args:
        config (SASRecConfig): the ``sasrec`` section.
        split (SplitA | SplitB): the run's split.
        num_items (int): I, the catalogue size.
        max_history (int): n, the split's ``max_history``.
        train_config (TrainConfig): the ``train`` section (stack settings, see the module docstring).
        out_dir (Path): the output folder (layout in the module docstring).
        device (torch.device): ``cpu`` or ``cuda`` (each torchrun process takes ``cuda:<LOCAL_RANK>``).
        seed (int): the run's seed (initial weights, batch order).
        num_workers (int): DataLoader worker processes.
        progress (bool): a tqdm bar on rank 0.

    Returns:
        ModelTrainResult: on every rank.

    Raises:
        ValueError: the training samples hold no target item.
    """
    pairs = training_pairs(split.train)
    if len(pairs) == 0:
        raise ValueError("the split's training samples hold no target item: SASRec has nothing to learn")
    valid = validation_users(split.valid)
    k = min(SELECTION_K, num_items)
    folder = Path(out_dir)
    ctx = init_distributed(device, timeout_s=train_config.collective_timeout_s)
    try:

        def build(on: torch.device) -> SASRec:
            return SASRec(config, num_items=num_items, max_history=max_history, device=on)

        def validate(state: State) -> Dict[str, float]:
            if valid is None:
                return {}
            model = plain_module(build(torch.device("meta")), state, ctx.device)
            ranked, _ = rank_items(model, valid, k=k)
            return list_metrics(ranked, valid, k)

        def save(state: State) -> None:
            save_sasrec(folder / SASREC_FILE, state, config, num_items=num_items, max_history=max_history)

        spec = FitSpec(
            name="sasrec",
            path=folder / SASREC_FILE,
            module=LossTrainStep(build(torch.device("meta"))),
            batches=sample_batches(
                lambda epoch: pairs,
                SASRecTransform(num_items),
                config.batch_size,
                ctx,
                seed=seed,
                num_workers=num_workers,
            ),
            optim=config.optim,
            stack=baseline_stack(train_config, ctx.device),
            selection_metric=f"ndcg@{k}",
            validate=validate,
            save=save,
        )
        result = fit(spec, ctx, seed=seed, progress=progress, writer=MetricsWriter(folder, ctx))
        if ctx.is_rank0:
            atomic_write_text(folder / "result.json", json.dumps(asdict(result), indent=2, default=str) + "\n")
        barrier(ctx)
        return result
    finally:
        teardown_distributed(ctx)
