"""The OneRec batch (a TorchRec ``Pipelineable``), its vectorised collate and a deterministic DataLoader.

A batch is a slice of a ``SampleSet`` (``torchrec_onerec.data.samples``) built from the splits of docs/EVAL.md
protocols A and B: the sparse part is a ``KeyedJaggedTensor`` that TorchRec's ``EmbeddingCollection`` and
train pipelines (``TrainPipelineBase``, ``TrainPipelineSparseDist``) consume; targets and labels are dense.

Shape legend: B batch, M session items, S reward signals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable

from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import PAD_ITEM, Sample, SampleSet, gather_jagged

HISTORY_KEY = "history_item"
USER_KEY = "user_id"
FEATURE_KEYS = (HISTORY_KEY, USER_KEY)


BatchT = TypeVar("BatchT", bound="TensorFieldsBatch")


def _device_type(value: Union[torch.Tensor, KeyedJaggedTensor]) -> str:
    return (value.device() if isinstance(value, KeyedJaggedTensor) else value.device).type


class TensorFieldsBatch(Pipelineable):
    """TorchRec's ``Pipelineable`` for a dataclass whose every field is a tensor or a KeyedJaggedTensor:
    ``to``, ``record_stream`` and ``pin_memory`` apply to each field in turn."""

    def _map_fields(self: BatchT, fn: Callable[[Any], Any]) -> BatchT:
        return dataclasses.replace(self, **{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def to(self: BatchT, device: torch.device, non_blocking: bool = False) -> BatchT:
        """A copy on ``device`` (every tensor and KJT)."""
        return self._map_fields(lambda value: value.to(device=device, non_blocking=non_blocking))

    def record_stream(self, stream: torch.Stream) -> None:
        """Mark accelerator tensors as used on ``stream``; host (CPU) tensors have nothing to record."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        if all(_device_type(v) == "cpu" for v in values):
            return
        for value in values:
            value.record_stream(stream)

    def pin_memory(self: BatchT) -> BatchT:
        """A copy in pinned host memory; ``self`` unchanged when no accelerator is available (pinning would raise)."""
        if not torch.accelerator.is_available():
            return self
        return self._map_fields(lambda value: value.pin_memory())


@dataclass
class OneRecBatch(TensorFieldsBatch):
    """B samples as tensors; implements TorchRec's ``Pipelineable`` (``to``, ``record_stream``, ``pin_memory``).

    Args:
        users (torch.Tensor): [B] int64 user ids.
        features (KeyedJaggedTensor): keys ``FEATURE_KEYS``: ``HISTORY_KEY`` ("history_item") holds each sample's
            history item ids oldest to newest (lengths [B], 0 allowed), ``USER_KEY`` ("user_id") one id per sample.
        target (torch.Tensor): [B, M] int64 target session item ids, -1 at padding.
        target_mask (torch.Tensor): [B, M] bool, True at real target items.
        labels (torch.Tensor): [B, M, S] float32 feedback per target item (0 at padding).

    Example:
        >>> s = SampleSet.from_samples([Sample(1, np.array([4, 5]), np.array([6, -1]), np.ones((2, 1), np.float32)),
        ...                             Sample(2, np.array([], dtype=np.int64), np.array([7, 8]),
        ...                                    np.zeros((2, 1), np.float32))], ["vtr"])
        >>> b = collate_samples(s)
        >>> b.features[HISTORY_KEY].lengths().tolist(), b.target_mask.tolist(), tuple(b.labels.shape)
        ([2, 0], [[True, False], [True, True]], (2, 2, 1))
    """

    users: torch.Tensor
    features: KeyedJaggedTensor
    target: torch.Tensor
    target_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.users.shape[0])


def collate_samples(
    samples: Union[SampleSet, Sequence[Sample]], indices: Optional[Union[np.ndarray, Sequence[int]]] = None
) -> OneRecBatch:
    """Build a batch from a ``SampleSet`` slice (vectorised) or from a list of ``Sample`` objects.

    Args:
        samples (SampleSet | Sequence[Sample]): the source; a list of samples must share M and S.
        indices (np.ndarray | Sequence[int] | None): [B] rows of a SampleSet to take, in order (None: all rows).
            Only for a SampleSet.

    Returns:
        OneRecBatch: B = ``len(indices)`` (or the number of samples).
    """
    if not isinstance(samples, SampleSet):
        if indices is not None:
            raise ValueError("collate_samples: indices are only accepted with a SampleSet, not a list of samples")
        signals = [f"signal_{k}" for k in range(np.asarray(samples[0].labels).shape[-1])] if len(samples) else []
        samples = SampleSet.from_samples(samples, signals)
    rows = np.arange(len(samples)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    values, offsets = gather_jagged(samples.history_values, samples.history_offsets, rows)
    users = samples.user[rows]
    lengths = np.diff(offsets)
    features = KeyedJaggedTensor.from_lengths_sync(
        keys=list(FEATURE_KEYS),
        values=torch.from_numpy(np.concatenate([values, users])),
        lengths=torch.from_numpy(np.concatenate([lengths, np.ones(len(rows), np.int64)])),
    )
    target = torch.from_numpy(samples.target[rows])
    return OneRecBatch(
        users=torch.from_numpy(users),
        features=features,
        target=target,
        target_mask=target != PAD_ITEM,
        labels=torch.from_numpy(samples.labels[rows]),
    )


class SampleSetBatches(Dataset[OneRecBatch]):
    """A map-style dataset whose index is a whole batch of rows, so one call slices the columnar arrays."""

    def __init__(self, samples: SampleSet) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, rows: np.ndarray) -> OneRecBatch:
        return collate_samples(self.samples, rows)


class EpochBatchSampler(Sampler[np.ndarray]):
    """Yields [B] index arrays over ``num_samples`` rows; the shuffle is a function of (seed, epoch) only.

    Args:
        num_samples (int): N.
        batch_size (int): B; the last batch may be smaller.
        shuffle (bool): permute the rows (else 0..N-1 in order).
        seed (int): the run's seed.
        epoch (int): the epoch; each gives a different permutation, the same one every time it is replayed.

    Example:
        >>> [b.tolist() for b in EpochBatchSampler(5, 2, shuffle=False, seed=0, epoch=0)]
        [[0, 1], [2, 3], [4]]
        >>> a = [b.tolist() for b in EpochBatchSampler(5, 5, shuffle=True, seed=1, epoch=0)]
        >>> a == [b.tolist() for b in EpochBatchSampler(5, 5, shuffle=True, seed=1, epoch=0)]
        True
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed={seed} and epoch={epoch} must both be >= 0")
        self.num_samples, self.batch_size, self.shuffle, self.seed, self.epoch = (
            num_samples,
            batch_size,
            shuffle,
            seed,
            epoch,
        )

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.shuffle:
            mixed = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]  # well-spread 32-bit seed
            generator = torch.Generator().manual_seed(int(mixed))
            order = torch.randperm(self.num_samples, generator=generator).numpy()
        else:
            order = np.arange(self.num_samples)
        for start in range(0, self.num_samples, self.batch_size):
            yield order[start : start + self.batch_size]


def _no_collate(batch: OneRecBatch) -> OneRecBatch:
    """The dataset already returns whole batches."""
    return batch


def make_dataloader(
    samples: SampleSet,
    config: LoaderConfig,
    *,
    seed: int,
    epoch: int = 0,
    shuffle: Optional[bool] = None,
    transform: Optional[Callable[[OneRecBatch], Pipelineable]] = None,
) -> DataLoader:
    """A DataLoader of ``OneRecBatch`` over ``samples``, one columnar slice per batch.

    Args:
        samples (SampleSet): N samples.
        config (LoaderConfig): ``batch_size`` (B), ``num_workers``, ``shuffle``.
        seed (int): the run's seed; with ``epoch`` it fixes the order.
        epoch (int): call once per epoch with a new value to get a new (reproducible) order.
        shuffle (bool | None): overrides ``config.shuffle`` (pass False for evaluation).
        transform (Callable | None): a picklable ``OneRecBatch -> Pipelineable`` step run in the loader (in the
            workers when ``num_workers > 0``), e.g. the semantic-ID transform; None yields ``OneRecBatch``.

    Returns:
        DataLoader: ceil(N / B) batches, the last one possibly smaller.

    Example:
        >>> s = SampleSet.from_samples([Sample(u, np.array([u]), np.array([u + 1]), np.zeros((1, 0), np.float32))
        ...                             for u in range(5)], [])
        >>> [b.users.tolist() for b in make_dataloader(s, LoaderConfig(batch_size=2), seed=0, shuffle=False)]
        [[0, 1], [2, 3], [4]]
    """
    sampler = EpochBatchSampler(
        len(samples), config.batch_size, shuffle=config.shuffle if shuffle is None else shuffle, seed=seed, epoch=epoch
    )
    return DataLoader(
        SampleSetBatches(samples),
        batch_size=None,
        sampler=sampler,
        collate_fn=_no_collate if transform is None else transform,  # type: ignore[arg-type]
        num_workers=config.num_workers,
    )  # batch_size=None: collate_fn gets one batch, not a list
