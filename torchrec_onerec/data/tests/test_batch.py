"""Tests of OneRecBatch (TorchRec Pipelineable), the vectorised collate and the deterministic DataLoader."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter

from torchrec_onerec.config import LoaderConfig
from torchrec_onerec.data.batch import (
    HISTORY_KEY,
    USER_KEY,
    EpochBatchSampler,
    OneRecBatch,
    collate_samples,
    make_dataloader,
)
from torchrec_onerec.data.samples import Sample, SampleSet

NUM_ITEMS, NUM_USERS, M, S = 30, 10, 3, 2


def random_set(n: int = 23, seed: int = 0) -> SampleSet:
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        k = int(rng.integers(1, M + 1))
        target = np.full(M, -1)
        target[:k] = rng.integers(0, NUM_ITEMS, k)
        labels = np.zeros((M, S), np.float32)
        labels[:k] = rng.integers(0, 2, (k, S))
        samples.append(Sample(i % NUM_USERS, rng.integers(0, NUM_ITEMS, int(rng.integers(0, 6))), target, labels))
    return SampleSet.from_samples(samples, ["vtr", "ltr"])


def test_collate_shapes_and_contents() -> None:
    samples = random_set()
    rows = np.array([4, 0, 7])
    batch = collate_samples(samples, rows)
    assert batch.batch_size == 3 and batch.features.keys() == [HISTORY_KEY, USER_KEY]
    history = batch.features[HISTORY_KEY]
    assert history.lengths().tolist() == [len(samples[int(r)].history) for r in rows]
    assert history.values().tolist() == np.concatenate([samples[int(r)].history for r in rows]).tolist()
    assert batch.features[USER_KEY].values().tolist() == batch.users.tolist() == samples.user[rows].tolist()
    assert batch.target.shape == (3, M) and batch.target.dtype == torch.int64
    assert batch.labels.shape == (3, M, S) and batch.labels.dtype == torch.float32
    assert torch.equal(batch.target_mask, batch.target >= 0)
    from_list = collate_samples([samples[int(r)] for r in rows])
    assert torch.equal(from_list.target, batch.target) and torch.equal(from_list.labels, batch.labels)
    with pytest.raises(ValueError, match="indices are only accepted"):
        collate_samples([samples[0]], [0])


def test_pipelineable_to_record_stream_and_pin_memory() -> None:
    batch = collate_samples(random_set(), np.arange(5))
    moved = batch.to(torch.device("cpu"), non_blocking=True)
    assert isinstance(moved, OneRecBatch) and torch.equal(moved.target, batch.target)
    assert torch.equal(moved.features.values(), batch.features.values())
    batch.record_stream(torch.cpu.Stream())  # host tensors: nothing to record, must not raise
    pinned = batch.pin_memory()
    if torch.accelerator.is_available():
        assert pinned.target.is_pinned()
    else:
        assert pinned is batch


def test_loader_is_deterministic_per_seed_and_epoch() -> None:
    samples = random_set(50)
    config = LoaderConfig(batch_size=8)

    def order(seed: int, epoch: int) -> list:
        loader = make_dataloader(samples, config, seed=seed, epoch=epoch)
        return [row for b in loader for row in b.target[:, 0].tolist()], len(loader)

    first, num_batches = order(0, 0)
    assert num_batches == 7 and len(first) == 50
    assert order(0, 0)[0] == first
    assert order(0, 1)[0] != first and order(1, 0)[0] != first
    plain = [b.users.tolist() for b in make_dataloader(samples, config, seed=0, shuffle=False)]
    assert sum(plain, []) == samples.user.tolist()
    rows = [r.tolist() for r in EpochBatchSampler(50, 8, shuffle=True, seed=3, epoch=2)]
    assert sorted(sum(rows, [])) == list(range(50)) and [len(r) for r in rows] == [8] * 6 + [2]


def test_loader_with_a_worker_process() -> None:
    samples = random_set(20)
    loader = make_dataloader(samples, LoaderConfig(batch_size=6, num_workers=1), seed=5, epoch=1)
    in_process = make_dataloader(samples, LoaderConfig(batch_size=6), seed=5, epoch=1)
    assert [b.target.tolist() for b in loader] == [b.target.tolist() for b in in_process]
    doubled = make_dataloader(samples, LoaderConfig(batch_size=6, num_workers=1), seed=5, epoch=1, transform=_double)
    assert [b.target.tolist() for b in doubled] == [(2 * b.target).tolist() for b in in_process]


def _double(batch: OneRecBatch) -> OneRecBatch:
    """A picklable transform for the loader test."""
    return OneRecBatch(batch.users, batch.features, 2 * batch.target, batch.target_mask, batch.labels)


class TinyModel(nn.Module):
    """Mean of the history and user embeddings -> logits over items; loss on the first target item."""

    def __init__(self) -> None:
        super().__init__()
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name="item_table", embedding_dim=8, num_embeddings=NUM_ITEMS, feature_names=[HISTORY_KEY]
                ),
                EmbeddingConfig(name="user_table", embedding_dim=8, num_embeddings=NUM_USERS, feature_names=[USER_KEY]),
            ]
        )
        self.out = nn.Linear(8, NUM_ITEMS)

    def forward(self, batch: OneRecBatch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        emb = self.ec(batch.features)
        history = emb[HISTORY_KEY].to_padded_dense(desired_length=5)  # (B, 5, D)
        pooled = history.sum(1) / batch.features[HISTORY_KEY].lengths().clamp(min=1)[:, None]
        logits = self.out(pooled + emb[USER_KEY].values())  # (B, NUM_ITEMS)
        loss = nn.functional.cross_entropy(logits, batch.target[:, 0])
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())


def test_train_pipeline_base_accepts_the_batch() -> None:
    torch.manual_seed(0)
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    pipeline = TrainPipelineBase(model, optimizer, device=torch.device("cpu"))
    batches = iter(make_dataloader(random_set(16), LoaderConfig(batch_size=8), seed=0))
    before = model.out.weight.detach().clone()
    losses = [pipeline.progress(batches)[0] for _ in range(2)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert not torch.equal(before, model.out.weight)
    with pytest.raises(StopIteration):
        pipeline.progress(batches)


def test_train_pipeline_sparse_dist_accepts_the_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = TinyModel()
        apply_optimizer_in_backward(torch.optim.SGD, model.ec.parameters(), {"lr": 0.5})
        dmp = DistributedModelParallel(model, device=torch.device("cpu"))
        dense = torch.optim.SGD(dict(in_backward_optimizer_filter(dmp.named_parameters())).values(), lr=0.5)
        pipeline = TrainPipelineSparseDist(dmp, dense, device=torch.device("cpu"), execute_all_batches=True)
        batches = iter(make_dataloader(random_set(16), LoaderConfig(batch_size=8), seed=0))
        losses = [pipeline.progress(batches)[0] for _ in range(2)]
        assert all(torch.isfinite(loss) for loss in losses)
    finally:
        dist.destroy_process_group()
