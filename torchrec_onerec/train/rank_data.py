"""Per-rank training batches: every rank reads a disjoint slice of each global batch (data parallelism).

The global batch is ``loader.batch_size`` samples, in the order ``EpochBatchSampler`` gives for (seed, epoch)
(the same on every rank and for every world size). Rank r of W takes the r-th of W near-equal contiguous parts
(``np.array_split``), so a W-process step sees exactly the samples of the 1-process step. Every rank must run
the same number of steps (each step has collectives), so a trailing global batch with fewer than W samples is
skipped; ``tail_samples_skipped`` counts them. Resuming mid-epoch starts at a given global batch: the sampler
skips the batches before it without loading them. The loader never draws from the global random stream (which
dropout uses), so where an epoch's loader is created does not change the training trajectory.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from torchrec.streamable import Pipelineable

from torchrec_onerec.data.batch import EpochBatchSampler, OneRecBatch, SampleSetBatches
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import SampleSet


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Global batches per epoch that every rank trains on (a last batch smaller than ``world_size`` is skipped).

    Example:
        >>> steps_per_epoch(10, 4, 2), steps_per_epoch(9, 4, 2), steps_per_epoch(10, 4, 3)
        (3, 2, 2)
    """
    full, tail = divmod(num_samples, batch_size)
    return full + (1 if tail >= world_size else 0)


def tail_samples_skipped(num_samples: int, batch_size: int, world_size: int) -> int:
    """Samples per epoch in a skipped trailing batch (0 when every sample is trained on).

    Example:
        >>> tail_samples_skipped(9, 4, 2), tail_samples_skipped(10, 4, 3)
        (1, 2)
    """
    tail = num_samples % batch_size
    return tail if tail < world_size else 0


class RankBatchSampler(Sampler[np.ndarray]):
    """Rank ``rank``'s row indices of each global batch of one epoch, from global batch ``start`` on.

    Args:
        num_samples (int): N.
        batch_size (int): the global batch B.
        shuffle (bool): permute the rows each epoch.
        seed (int): the run's seed.
        epoch (int): the epoch (fixes the permutation).
        rank (int): this rank.
        world_size (int): W.
        start (int): global batches already trained on in this epoch.

    Example:
        >>> [b.tolist() for b in RankBatchSampler(9, 4, shuffle=False, seed=0, epoch=0, rank=1, world_size=2)]
        [[2, 3], [6, 7]]
        >>> [b.tolist() for b in RankBatchSampler(9, 4, shuffle=False, seed=0, epoch=0, rank=0, world_size=2,
        ...                                       start=1)]
        [[4, 5]]
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        start: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        total = steps_per_epoch(num_samples, batch_size, world_size)
        if not 0 <= start <= total:
            raise ValueError(f"start={start} must lie in [0, {total}] (global batches per epoch)")
        self.global_sampler = EpochBatchSampler(num_samples, batch_size, shuffle=shuffle, seed=seed, epoch=epoch)
        self.rank, self.world_size, self.start, self.total = rank, world_size, start, total

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, rows in enumerate(self.global_sampler):
            if index >= self.total:
                return
            if index >= self.start:
                yield np.array_split(rows, self.world_size)[self.rank]


def rank_dataloader(
    samples: SampleSet,
    config: LoaderConfig,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    transform: Callable[[OneRecBatch], Pipelineable],
    start: int = 0,
) -> DataLoader:
    """This rank's training batches of one epoch.

    Args:
        samples (SampleSet): the training samples.
        config (LoaderConfig): the global ``batch_size``, ``num_workers``, ``shuffle``.
        seed (int): the run's seed.
        epoch (int): the epoch.
        rank (int): this rank.
        world_size (int): W.
        transform (Callable): picklable collate step run in the loader (``SemanticIdTransform``).
        start (int): global batches of this epoch already trained on (resume).

    Returns:
        DataLoader: ``steps_per_epoch(N, B, W) - start`` batches of about B / W samples.
    """
    sampler = RankBatchSampler(
        len(samples),
        config.batch_size,
        shuffle=config.shuffle,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        start=start,
    )
    # the loader draws its workers' base seed from this generator, not from the global stream (dropout's)
    generator = torch.Generator().manual_seed(seed)
    # batch_size=None: collate_fn gets one batch, not the list torch's annotation expects
    return DataLoader(
        SampleSetBatches(samples),
        batch_size=None,
        sampler=sampler,
        collate_fn=transform,  # type: ignore[arg-type]
        num_workers=config.num_workers,
        generator=generator,
    )
