"""Training checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded model, optimisers, position, RNG.

A checkpoint is one folder ``step-<step>-epoch-<epoch>-batch-<batch>`` under the store's root:

    .metadata, __<rank>_<n>.distcp   DCP files of ``{"model": dmp.state_dict(), "optim": optimizer.state_dict()}``
                                     (table shards and the fused optimiser's per-row state stay sharded)
    rng-rank<r>.pt                   rank r's torch / CUDA / NumPy / Python random states
    meta.json                        ``CheckpointMeta``: fingerprint, step, data position, model selection state

Every rank writes into ``.tmp-<name>``; after a barrier rank 0 adds ``meta.json`` and renames the folder, so a
folder without the ``.tmp-`` prefix is complete and an interrupted save is never picked up. Resuming restores
everything needed to continue exactly where the checkpoint was taken: the data position is (epoch, global
batches done), which does not depend on the world size; DCP reshards the tables and optimiser state to the
new plan when the world size changes, and the RNG streams are then re-derived from (seed, step, rank), which
only matters when the model uses dropout. A checkpoint whose fingerprint (model config, code levels, the
codebook's codes, sparse optimiser) differs from the run's is refused with an error naming both; one with a
file missing or cut short (a partial copy, a full disk) is refused with an error naming the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from dataclasses import KW_ONLY, asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.run_dir import atomic_write_text, load_torch_file
from torchrec_onerec.runtime import seed_everything
from torchrec_onerec.train.distributed import DistContext, barrier
from torchrec_onerec.train.sharding import ShardedTraining

LOG = logging.getLogger("torchrec_onerec")
FORMAT = "torchrec_onerec.train_checkpoint/1"
META_FILE = "meta.json"
TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^step-\d{9}-epoch-\d{5}-batch-\d{7}$")


class CheckpointMismatchError(ValueError):
    """A checkpoint written for another model config, codebook or optimiser (or by another tool)."""


class CheckpointCorruptError(ValueError):
    """A checkpoint folder with a file missing, cut short or unreadable."""


# What reading a damaged DCP folder raises (CheckpointException is a BaseException, so name it).
READ_FAILURES = (CheckpointException, OSError, RuntimeError, EOFError, pickle.UnpicklingError)


def corrupt_checkpoint_error(path: Path, cause: BaseException) -> CheckpointCorruptError:
    """The error for an unreadable checkpoint, naming the folder and the first underlying failure."""
    if isinstance(cause, CheckpointException) and cause.failures:  # DCP wraps each rank's exception
        cause = next(iter(cause.failures.values()))[0]
    reason = (str(cause).splitlines() or [""])[0][:200]
    return CheckpointCorruptError(
        f"training checkpoint {path} is incomplete or corrupt ({type(cause).__name__}: {reason}); delete that "
        "folder to resume from an earlier checkpoint, or start training over (onerec run CONFIG --force train)"
    )


def training_fingerprint(
    model_config: OneRecModelConfig, vocab_sizes: Sequence[int], codes: torch.Tensor, sparse_optimizer: str
) -> str:
    """A hash of what a checkpoint's tensors are only valid for: the model config, code levels, codes, optimiser.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> codes = torch.tensor([[0, 1], [1, 0]])
        >>> a = training_fingerprint(model_size("tiny"), [2, 2], codes, "sgd")
        >>> a == training_fingerprint(model_size("tiny"), [2, 2], codes.flip(0), "sgd")
        False
    """
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {
                "model": asdict(model_config),
                "vocab_sizes": [int(v) for v in vocab_sizes],
                "sparse_optimizer": sparse_optimizer,
            },
            sort_keys=True,
        ).encode()
    )
    digest.update(codes.detach().to(torch.int64).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The seed of rank ``rank``'s random streams from optimiser step ``step`` on.

    Example:
        >>> rank_seed(0, 0, 0) == rank_seed(0, 0, 0), rank_seed(0, 0, 0) == rank_seed(0, 1, 0)
        (True, False)
    """
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


@dataclass
class TrainPosition:
    """Where a training run stands (``trainer.fit`` advances it; a checkpoint records it).

    Args:
        step (int): optimiser steps done (0: a fresh start).
        epoch (int): the epoch in progress (or the next one, at an epoch boundary).
        batch_in_epoch (int): global batches of ``epoch`` already trained on.
        stopped_early (bool): early stopping ended the run here.
        selection (Dict[str, Any]): the model-selection state (``ModelSelection.to_json``; {} before any).
        train_seconds (float): wall seconds spent in training steps so far.

    Example:
        >>> TrainPosition(step=12, epoch=1, batch_in_epoch=2).name
        'step-000000012-epoch-00001-batch-0000002'
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    stopped_early: bool = False
    selection: Dict[str, Any] = field(default_factory=dict)
    train_seconds: float = 0.0

    @property
    def name(self) -> str:
        """The folder name of a checkpoint at this position (sortable: later positions sort later)."""
        return f"step-{self.step:09d}-epoch-{self.epoch:05d}-batch-{self.batch_in_epoch:07d}"


@dataclass
class CheckpointMeta(TrainPosition):
    """What a checkpoint records besides tensors (``meta.json``): the ``TrainPosition`` fields, and:

    Args:
        fingerprint (str): ``training_fingerprint`` of the run that wrote it (keyword only).
        world_size (int): processes that wrote it.
        format (str): the checkpoint format.
    """

    _: KW_ONLY
    fingerprint: str
    world_size: int = 1
    format: str = FORMAT

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "CheckpointMeta":
        return cls(**data)


def _capture_rng() -> Dict[str, Any]:
    state: Tuple[Any, ...] = tuple(np.random.get_state())
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:]),
        "python": random.getstate(),
    }


def _restore_rng(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(state["python"])


class CheckpointStore:
    """The checkpoints of one training run.

    Args:
        root (Path): the folder that holds the checkpoint folders (shared by every rank).
        ctx (DistContext): this rank.
        fingerprint (str): ``training_fingerprint`` of the run; other checkpoints are refused.
    """

    def __init__(self, root: Path, ctx: DistContext, fingerprint: str) -> None:
        self.root, self.ctx, self.fingerprint = Path(root), ctx, fingerprint

    def complete(self) -> List[Path]:
        """Finished checkpoint folders, oldest first (``.tmp-`` folders of interrupted saves are ignored)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _NAME.match(p.name) and (p / META_FILE).is_file())

    def latest(self) -> Optional[Path]:
        """The newest complete checkpoint, or None."""
        found = self.complete()
        return found[-1] if found else None

    def read_meta(self, path: Path) -> CheckpointMeta:
        """A checkpoint's metadata, after checking that it belongs to this run's config and codebook."""
        try:
            data = json.loads((Path(path) / META_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointMismatchError(f"{path} is not a readable training checkpoint ({exc})") from exc
        if data.get("format") != FORMAT:
            raise CheckpointMismatchError(f"{path} has format {data.get('format')!r}, expected {FORMAT!r}")
        if data.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint {path} was written for another model config, codebook or sparse optimiser "
                f"(fingerprint {data.get('fingerprint')}, this run {self.fingerprint}); train from scratch with "
                "resume=False, or point run_dir to a new folder"
            )
        return CheckpointMeta.from_json(data)

    def clear(self) -> None:
        """Remove every checkpoint (a run that does not resume starts clean)."""
        if self.ctx.is_rank0 and self.root.is_dir():
            shutil.rmtree(self.root)
        barrier(self.ctx)

    def save(self, training: ShardedTraining, meta: CheckpointMeta, *, keep: Sequence[str] = ()) -> Path:
        """Write a checkpoint (a collective: every rank calls it), then drop older ones except ``keep``.

        Args:
            training (ShardedTraining): the model and optimisers.
            meta (CheckpointMeta): the position and selection state to record (``world_size`` is set here).
            keep (Sequence[str]): names of checkpoints to keep besides the new one (the best one).

        Returns:
            Path: the new checkpoint folder.
        """
        meta.world_size = self.ctx.world_size
        final = self.root / meta.name
        tmp = self.root / (TMP_PREFIX + meta.name)
        if self.ctx.is_rank0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier(self.ctx)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*in a single process.*", category=UserWarning)
            # one process: no collectives, which gloo would run on its worker thread (export.local_shards_assembled)
            dcp.save(
                {"model": training.dmp.state_dict(), "optim": training.optimizer.state_dict()},
                checkpoint_id=tmp,
                no_dist=self.ctx.world_size == 1,
            )
        torch.save(_capture_rng(), tmp / f"rng-rank{self.ctx.rank}.pt")
        barrier(self.ctx)
        if self.ctx.is_rank0:
            atomic_write_text(tmp / META_FILE, json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.complete():
                if old.name != meta.name and old.name not in keep:
                    shutil.rmtree(old)
        barrier(self.ctx)
        return final

    def load(self, path: Path, training: ShardedTraining, *, seed: int) -> CheckpointMeta:
        """Restore a checkpoint into ``training`` (a collective) and this rank's random streams.

        Args:
            path (Path): a complete checkpoint folder of this run.
            training (ShardedTraining): a freshly built model and optimisers (any world size and plan).
            seed (int): the run's seed (re-derives the RNG streams when the world size changed).

        Returns:
            CheckpointMeta: the position to continue from.

        Raises:
            CheckpointMismatchError: the checkpoint belongs to another config, codebook or optimiser.
            CheckpointCorruptError: one of its files is missing or cut short.
        """
        meta = self.read_meta(path)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*in a single process.*", category=UserWarning)
            training.optimizer.init_state()  # materialise AdamW's lazy state so DCP has tensors to load into
            state = {"model": training.dmp.state_dict(), "optim": training.optimizer.state_dict()}
            try:
                dcp.load(state, checkpoint_id=path, no_dist=self.ctx.world_size == 1)
            except READ_FAILURES as exc:
                raise corrupt_checkpoint_error(path, exc) from None
            training.dmp.load_state_dict(state["model"])
            training.optimizer.load_state_dict(state["optim"])
        rng_file = Path(path) / f"rng-rank{self.ctx.rank}.pt"
        if meta.world_size == self.ctx.world_size and rng_file.is_file():
            try:
                rng = load_torch_file(rng_file, "train: CheckpointStore.save")
            except ValueError as exc:
                raise corrupt_checkpoint_error(path, exc) from None
            _restore_rng(rng)
        else:
            LOG.info(
                "checkpoint %s was written by %d processes, resuming with %d: tables resharded, random "
                "streams re-derived from the seed",
                path,
                meta.world_size,
                self.ctx.world_size,
            )
            seed_everything(rank_seed(seed, self.ctx.rank, meta.step))
        return meta
