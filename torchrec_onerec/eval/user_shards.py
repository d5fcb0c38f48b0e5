"""Evaluation users split across torchrun ranks in whole batches, and their results merged back in order.

Under ``torchrun`` the evaluate stage runs on every rank. Each generative arm's users are cut into the batches
one process would make (``eval.batch_size``, in order); rank r searches a contiguous block of those batches, so
every batch is exactly the one a single process would search, and the ranks' results, gathered in rank order,
are the single process's, row for row. With one process (or no process group) everything stays local.

A model whose tables are sharded (DistributedModelParallel) looks up every rank's ids in one collective per
EmbeddingCollection call, so every rank must make the same calls: ``lockstep_batches`` is how many batches each
rank runs, and a rank with fewer real ones runs padding batches whose results it drops.

Shape legend: U users, W ranks.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch.distributed as dist
from torch import nn
from torchrec.distributed.types import ShardedModule


def group_size() -> Tuple[int, int]:
    """(this rank, the world size) of the default process group; (0, 1) without one."""
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def rank_rows(num_users: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    """The rows of U users that rank ``rank`` of ``world_size`` evaluates: a contiguous block of whole batches
    of ``batch_size`` (the first ranks take one batch more when the batches do not divide evenly).

    Example:
        >>> [rank_rows(10, 3, r, 2).tolist() for r in range(2)]  # batches [0:3] [3:6] [6:9] [9:10]
        [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9]]
        >>> rank_rows(2, 3, 1, 2).tolist()  # fewer batches than ranks: rank 1 has nothing to do
        []
    """
    if batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"batch_size={batch_size} must be >= 1 and rank={rank} in [0, {world_size})")
    batches = -(-num_users // batch_size)
    base, extra = divmod(batches, world_size)
    first = rank * base + min(rank, extra)
    count = base + (1 if rank < extra else 0)
    return np.arange(first * batch_size, min((first + count) * batch_size, num_users))


def lockstep_batches(num_users: int, batch_size: int, world_size: int) -> int:
    """How many batches every rank runs when they must run together: the most ``rank_rows`` gives any rank.

    Example:
        >>> lockstep_batches(10, 3, 2), lockstep_batches(2, 3, 2), lockstep_batches(0, 3, 2)
        (2, 1, 0)
    """
    return -(-(-(-num_users // batch_size)) // world_size)


def most_over_ranks(count: int) -> int:
    """The largest ``count`` any rank of the default process group passes (a collective); ``count`` without one.

    How many batches every rank must run when each has its own number of real ones and the ranks must run
    together (the padding ``lockstep_batches`` computes when the split is known in advance).

    Example:
        >>> most_over_ranks(3)
        3
    """
    if group_size()[1] == 1:
        return count
    counts: List[object] = [None] * dist.get_world_size()
    dist.all_gather_object(counts, int(count))
    return max(int(c) for c in counts)  # type: ignore[call-overload]


def has_sharded_tables(model: nn.Module) -> bool:
    """Whether ``model`` holds a sharded TorchRec module (its lookups are collectives over the ranks)."""
    return any(isinstance(module, ShardedModule) for module in model.modules())


def gather_rows(arrays: Sequence[np.ndarray], world_size: int) -> List[np.ndarray]:
    """Each of ``arrays`` ([U_r, ...] on this rank) concatenated over the ranks in rank order ([U, ...]); every
    rank gets the whole. With ``world_size`` 1 the arrays come back as they are.

    Example:
        >>> gather_rows([np.arange(3)], 1)[0].tolist()
        [0, 1, 2]
    """
    if world_size == 1:
        return list(arrays)
    parts: List[object] = [None] * world_size
    dist.all_gather_object(parts, [np.ascontiguousarray(a) for a in arrays])
    return [np.concatenate([part[i] for part in parts], axis=0) for i in range(len(arrays))]  # type: ignore[index]
