"""Process groups for training (DESIGN.md: torchrun scale-out, gloo on CPUs, nccl on GPUs).

``init_distributed`` reads the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``). Without it (a plain ``python`` process) it creates a world-size-1 group on an in-memory store,
because ``DistributedModelParallel`` and its planner always go through a process group; one process then runs
the very same code path as N. A group that the caller already created is reused and left alone at teardown.
Every collective of the group times out after ``timeout_s``, so a rank that dies ends the job in bounded time
instead of hanging the others.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Args:
        rank (int): global rank.
        world_size (int): number of processes.
        local_rank (int): rank on this machine (selects the GPU).
        local_world_size (int): processes on this machine (the planner's topology).
        device (torch.device): this rank's device (``cuda:<local_rank>`` on GPUs).
        backend (str): ``gloo`` or ``nccl``.
        owns_group (bool): the group was created here, so ``teardown_distributed`` destroys it.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str
    owns_group: bool

    @property
    def is_rank0(self) -> bool:
        """True on the rank that writes files, logs and validates."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; torchrun sets it") from None


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """``device`` on CPU; ``cuda:<local_rank>`` for a CUDA device without an index under torchrun."""
    if device.type != "cuda":
        return torch.device("cpu")
    index = device.index if device.index is not None else local_rank
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local_rank} asks for cuda:{index} but only {torch.cuda.device_count()} GPUs "
            "are visible; start at most that many processes per node (--nproc_per_node)"
        )
    return torch.device("cuda", index)


def init_distributed(device: torch.device, *, timeout_s: float) -> DistContext:
    """Join (or create) the default process group and pick this rank's device.

    Args:
        device (torch.device): the configured device type (``cpu`` or ``cuda``; the index comes from LOCAL_RANK).
        timeout_s (float): timeout of every collective, in seconds.

    Returns:
        DistContext: with ``owns_group`` True when this call created the group.

    Example:
        >>> ctx = init_distributed(torch.device("cpu"), timeout_s=60)
        >>> (ctx.rank, ctx.world_size, ctx.backend, dist.get_world_size())
        (0, 1, 'gloo', 1)
        >>> teardown_distributed(ctx); dist.is_initialized()
        False
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s} must be > 0")
    local_rank = _env_int("LOCAL_RANK", 0)
    this_device = rank_device(device, local_rank)
    if this_device.type == "cuda":
        torch.cuda.set_device(this_device)
    backend = "nccl" if this_device.type == "cuda" else "gloo"
    owns_group = not dist.is_initialized()
    if owns_group:
        _init_group(backend, datetime.timedelta(seconds=timeout_s))
    world_size = dist.get_world_size()
    return DistContext(
        dist.get_rank(),
        world_size,
        local_rank,
        _env_int("LOCAL_WORLD_SIZE", world_size),
        this_device,
        dist.get_backend(),
        owns_group=owns_group,
    )


def _init_group(backend: str, timeout: datetime.timedelta) -> None:
    """The default process group: torchrun's (``env://``) when its variables are set, else one process."""
    present = [key for key in TORCHRUN_KEYS if key in os.environ]
    if present and len(present) < len(TORCHRUN_KEYS):
        missing = sorted(set(TORCHRUN_KEYS) - set(present))
        raise ValueError(
            f"torchrun environment incomplete: {present} set but {missing} missing; launch with "
            "torchrun, or unset them to run as one process"
        )
    if present:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=_env_int("RANK", 0),
            world_size=_env_int("WORLD_SIZE", 1),
            timeout=timeout,
        )
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the default group if ``init_distributed`` created it (a caller's own group is left alone)."""
    if ctx.owns_group and dist.is_initialized():
        # Models, pipelines and pending collectives dropped by an exception may sit in reference cycles; freed
        # after the group (at interpreter exit) their gloo work objects abort the process.
        gc.collect()
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op with one process)."""
    if ctx.world_size > 1:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects; the other ranks' values are ignored).

    Example:
        >>> broadcast_object({"stop": True}, DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False))
        {'stop': True}
    """
    if ctx.world_size == 1:
        return obj
    box: List[Any] = [obj if ctx.is_rank0 else None]
    dist.broadcast_object_list(box, src=0, device=ctx.device if "nccl" in ctx.backend else None)
    return box[0]


def all_gather_object(obj: Any, ctx: DistContext) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (a collective).

    Example:
        >>> all_gather_object({"peak": 1.0}, DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False))
        [{'peak': 1.0}]
    """
    if ctx.world_size == 1:
        return [obj]
    parts: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, obj)
    return parts


T = TypeVar("T")


def on_rank0(fn: Callable[[], T], ctx: DistContext, *, what: str) -> T:
    """``fn()`` run on rank 0 alone and its result broadcast to every rank (a collective).

    When ``fn`` raises on rank 0 every rank raises, at once, a ``RuntimeError`` naming the error: the other ranks
    would otherwise wait in the broadcast until the collective timeout. In one process the error propagates as is.

    Args:
        fn: the work (e.g. validating the gathered model state); called on rank 0 only.
        ctx: this rank.
        what: what ``fn`` does, for the error message (``"<what> failed on rank 0: <error>"``).

    Example:
        >>> on_rank0(lambda: {"auc": 0.5}, DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False), what="x")
        {'auc': 0.5}
    """
    outcome: Tuple[Any, str] = (None, "")
    if ctx.is_rank0:
        try:
            outcome = (fn(), "")
        except Exception as exc:
            if ctx.world_size == 1:
                raise
            outcome = (None, f"{type(exc).__name__}: {exc}")
    result, error = broadcast_object(outcome, ctx)
    if error:
        raise RuntimeError(f"{what} failed on rank 0: {error}")
    return result


def all_reduce_sum(values: Sequence[float], ctx: DistContext) -> List[float]:
    """Element-wise sum of ``values`` over the ranks, in float64.

    Example:
        >>> all_reduce_sum([1.0, 2.5], DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False))
        [1.0, 2.5]
    """
    if ctx.world_size == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()
