"""Per-rank data: each rank a disjoint slice of every global batch, equal step counts, mid-epoch resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrec_onerec.data.batch import EpochBatchSampler
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.semantic_batch import SemanticIdTransform
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.train.rank_data import RankBatchSampler, rank_dataloader, steps_per_epoch
from torchrec_onerec.train.testing import random_samples


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_rank_slices_partition_each_global_batch(world_size: int) -> None:
    num, batch = 23, 6
    expected = [rows for rows in EpochBatchSampler(num, batch, shuffle=True, seed=3, epoch=1)]
    expected = [rows for rows in expected if len(rows) >= world_size]
    per_rank = [
        list(RankBatchSampler(num, batch, shuffle=True, seed=3, epoch=1, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    assert all(len(batches) == steps_per_epoch(num, batch, world_size) == len(expected) for batches in per_rank)
    for step, rows in enumerate(expected):
        assert np.array_equal(np.concatenate([per_rank[r][step] for r in range(world_size)]), rows)


def test_start_skips_the_batches_already_trained() -> None:
    full = list(RankBatchSampler(20, 4, shuffle=True, seed=0, epoch=2, rank=1, world_size=2))
    rest = list(RankBatchSampler(20, 4, shuffle=True, seed=0, epoch=2, rank=1, world_size=2, start=3))
    assert len(rest) == 2 and all(np.array_equal(a, b) for a, b in zip(full[3:], rest))
    with pytest.raises(ValueError, match="start=6"):
        RankBatchSampler(20, 4, shuffle=True, seed=0, epoch=0, rank=0, world_size=1, start=6)


def test_rank_dataloader_yields_semantic_batches_of_its_rows() -> None:
    codes, _ = random_codes(30, [4, 4], seed=0)
    samples = random_samples(10, 30, max_history=8, session_items=2, seed=0)
    loader = rank_dataloader(
        samples,
        LoaderConfig(batch_size=4, shuffle=False),
        seed=0,
        epoch=0,
        rank=1,
        world_size=2,
        transform=SemanticIdTransform(codes, max_history=8),
    )
    users = [batch.users.tolist() for batch in loader]
    assert users == [[2, 3], [6, 7], [9]]
    assert all(batch.target_codes.shape[2] == 3 for batch in loader)
    assert torch.equal(next(iter(loader)).target, torch.from_numpy(samples.target[2:4]))
