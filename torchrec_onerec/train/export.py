"""The trained model as a plain, unsharded ``OneRecModel``, or with its tables sharded for generation.

Generation builds a fresh KeyedJaggedTensor at every decoding step. On one process it runs on an unsharded copy;
under torchrun it can also run on the sharded model, every rank searching its share of the users in lockstep
(``eval.generative``, ``distributed=True``), so no rank holds a whole table (``sharded_model`` below, and
validation during training, ``train.trainer``). Three ways to get an unsharded copy:

- ``gather_model_state``: during training, every rank sends its table shards to rank 0 (a collective; one
  process reads its own shards instead, ``local_shards_assembled``), which gets the whole ``OneRecModel`` state
  dict; ``plain_model`` turns it into a model without touching the
  random streams (built on the meta device, weights assigned), so validating does not perturb training;
- ``save_exported`` / ``load_exported``: that state dict in one file with the model config, code-level sizes
  and training fingerprint (the best model of a run, ``train/best_model.pt``);
- ``load_checkpoint_model``: a training checkpoint read by DCP into an unsharded model, in one process, with
  or without a process group (DCP maps the shards back to the original parameter names).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel

from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.train.checkpoint import READ_FAILURES, corrupt_checkpoint_error
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext
from torchrec_onerec.train.sharding import build_sharded_training
from torchrec_onerec.train.train_module import OneRecTrainStep
from torchrec_onerec.run_dir import load_tagged, save_tagged

EXPORT_FORMAT = "torchrec_onerec.exported_model/1"
MODEL_PREFIX = "model."


def gather_model_state(dmp: DistributedModelParallel, ctx: DistContext) -> Optional[Dict[str, torch.Tensor]]:
    """The whole ``OneRecModel`` state dict on rank 0 (CPU tensors); None on the other ranks. A collective
    under torchrun; with one process, no collective runs.

    Args:
        dmp (DistributedModelParallel): the sharded ``OneRecTrainStep``.
        ctx (DistContext): this rank.

    Returns:
        Dict[str, torch.Tensor] | None: keys as in ``OneRecModel.state_dict()``.
    """
    out: Dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
        for key, value in dmp.state_dict().items():
            if not key.startswith(MODEL_PREFIX):
                raise KeyError(f"unexpected state-dict key {key!r}: expected an OneRecTrainStep under DMP")
            full: Optional[torch.Tensor]
            if isinstance(value, ShardedTensor) and ctx.world_size == 1:
                full = local_shards_assembled(value)
            elif isinstance(value, ShardedTensor):
                full = torch.empty(value.size(), dtype=value.dtype, device=ctx.device) if ctx.is_rank0 else None
                value.gather(dst=0, out=full)
            else:
                full = value.detach()
            if ctx.is_rank0 and full is not None:
                out[key[len(MODEL_PREFIX) :]] = full.cpu().clone()
    return out if ctx.is_rank0 else None


def local_shards_assembled(value: ShardedTensor) -> torch.Tensor:
    """The whole tensor from this process's own shards, for a group of one process, which holds every shard.

    ``ShardedTensor.gather`` would give the same values, but gloo runs its copy on the process group's own worker
    thread, where ATen opens a second OpenMP team; from then on libgomp manages more threads than there are cores
    and cuts the spin-wait of every parallel region, so every later multi-threaded op in the process pays a
    sleep and wake-up (the synthetic run's evaluate stage took 218 s after the training stages against 127 s in a
    fresh process). Reading the local shards takes no collective.

    Raises:
        ValueError: the local shards do not cover the tensor (it is sharded over more than this process).
    """
    shards = value.local_shards()
    device = shards[0].tensor.device if shards else torch.device("cpu")
    full = torch.empty(value.size(), dtype=value.dtype, device=device)
    covered = 0
    for shard in shards:
        meta = shard.metadata
        full[tuple(slice(start, start + size) for start, size in zip(meta.shard_offsets, meta.shard_sizes))] = (
            shard.tensor
        )
        covered += shard.tensor.numel()
    if covered != full.numel():
        raise ValueError(
            f"the local shards cover {covered} of {full.numel()} elements of a {tuple(value.size())} table: "
            "it is sharded over other processes too; gather it with ShardedTensor.gather"
        )
    return full


def load_plain_state(dmp: DistributedModelParallel, state: Dict[str, torch.Tensor]) -> None:
    """Copy a plain model state dict into a sharded train step: the inverse of ``gather_model_state`` (each
    rank fills its own shards). How a training run starts from trained weights (an alignment iteration from M_t).

    Args:
        dmp (DistributedModelParallel): the sharded train step whose model sits at ``.model`` (state-dict keys
            ``model.<model key>``).
        state (Dict[str, torch.Tensor]): the full plain state dict (``gather_model_state`` /
            ``load_exported(...).state_dict()``).

    Raises:
        KeyError: the state dict's keys are not the model's (another config).
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
        sharded = dmp.state_dict()
        expected = {key[len(MODEL_PREFIX) :] for key in sharded}
        if expected != set(state):
            raise KeyError(
                f"the plain state dict does not fit the model: missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}; load a model of the same config"
            )
        for key, value in sharded.items():
            plain = state[key[len(MODEL_PREFIX) :]]
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(plain[row : row + rows, col : col + cols].to(shard.tensor.device))
            else:
                value.copy_(plain.to(value.device))
        dmp.load_state_dict(sharded)


def sharded_model(
    state: Dict[str, torch.Tensor],
    model_config: OneRecModelConfig,
    vocab_sizes: Sequence[int],
    train_config: TrainConfig,
    ctx: DistContext,
) -> OneRecModel:
    """A plain state dict in a model whose tables are sharded over the process group as training shards them
    (the planner, ``train.sharding_type``): each rank fills and keeps only its own shards. A collective: every
    rank calls it, and every rank generates with the result together (``evaluate_generative(distributed=True)``).

    Args:
        state (Dict[str, torch.Tensor]): a full ``OneRecModel`` state dict (``load_exported(...).state_dict()``).
        model_config (OneRecModelConfig): the config it was trained with.
        vocab_sizes (Sequence[int]): K_l of each code level.
        train_config (TrainConfig): the ``train`` section (sharding type; its optimiser settings go unused).
        ctx (DistContext): this rank (``init_distributed``).

    Returns:
        OneRecModel: in eval mode, its EmbeddingCollection sharded (the DMP wrapper stays alive through it).
    """
    training = build_sharded_training(model_config, vocab_sizes, train_config, ctx, seed=0)
    load_plain_state(training.dmp, state)
    module = training.dmp.module
    assert isinstance(module, OneRecTrainStep)
    return module.model.eval()


def plain_model(
    state: Dict[str, torch.Tensor],
    model_config: OneRecModelConfig,
    vocab_sizes: Sequence[int],
    *,
    device: Optional[torch.device] = None,
) -> OneRecModel:
    """An unsharded ``OneRecModel`` holding ``state`` (no random initialisation, no RNG consumed).

    Args:
        state (Dict[str, torch.Tensor]): a full ``OneRecModel`` state dict.
        model_config (OneRecModelConfig): the config it was trained with.
        vocab_sizes (Sequence[int]): K_l of each code level.
        device (torch.device | None): where to put it (CPU by default).

    Returns:
        OneRecModel: in eval mode.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> source = OneRecModel(model_size("tiny"), [3, 2])
        >>> copy = plain_model(source.state_dict(), model_config=model_size("tiny"), vocab_sizes=[3, 2])
        >>> torch.equal(copy.heads[0].weight, source.heads[0].weight), copy.training
        (True, False)
    """
    model = OneRecModel(model_config, vocab_sizes, device=torch.device("meta"))
    model.load_state_dict(state, assign=True)
    return model.to(device or torch.device("cpu")).eval()


def save_exported(
    path: Path,
    state: Dict[str, torch.Tensor],
    model_config: OneRecModelConfig,
    vocab_sizes: Sequence[int],
    fingerprint: str,
) -> None:
    """Write a plain state dict with what is needed to rebuild and check the model (atomically).

    Args:
        path (Path): the file (``torch.save`` format).
        state (Dict[str, torch.Tensor]): a full ``OneRecModel`` state dict.
        model_config (OneRecModelConfig): its config.
        vocab_sizes (Sequence[int]): K_l of each code level.
        fingerprint (str): the training fingerprint (model config, codebook, optimiser).
    """
    save_tagged(
        path,
        EXPORT_FORMAT,
        {
            "model_config": asdict(model_config),
            "vocab_sizes": [int(v) for v in vocab_sizes],
            "fingerprint": fingerprint,
            "state_dict": state,
        },
    )


def load_exported(
    path: Path, model_config: OneRecModelConfig, vocab_sizes: Sequence[int], *, device: Optional[torch.device] = None
) -> OneRecModel:
    """Read a model written by ``save_exported``, refusing one built for another config or codebook.

    Args:
        path (Path): the file.
        model_config (OneRecModelConfig): the config in use.
        vocab_sizes (Sequence[int]): the codebook's K_l in use.
        device (torch.device | None): where to put the model.

    Returns:
        OneRecModel: in eval mode.
    """
    data = load_tagged(path, EXPORT_FORMAT, "torchrec_onerec.train.export.save_exported")
    try:  # a key added after the file was written takes its default, which is what the model was built with
        saved = asdict(OneRecModelConfig(**data["model_config"]))
    except TypeError as exc:
        raise ValueError(
            f"{path} holds a model config this version does not know ({exc}); load it with the "
            "torchrec_onerec version that wrote it"
        ) from None
    if saved != asdict(model_config) or data["vocab_sizes"] != [int(v) for v in vocab_sizes]:
        raise ValueError(
            f"{path} holds a model with config {data['model_config']} and vocab_sizes "
            f"{data['vocab_sizes']}, not the {asdict(model_config)} / {list(vocab_sizes)} in use; "
            "load it with the config and codebook it was trained with"
        )
    return plain_model(data["state_dict"], model_config, vocab_sizes, device=device)


def load_checkpoint_model(
    path: Path, model_config: OneRecModelConfig, vocab_sizes: Sequence[int], *, device: Optional[torch.device] = None
) -> OneRecModel:
    """An unsharded model from a training checkpoint folder (DCP, read by this process alone).

    Args:
        path (Path): a checkpoint folder (``CheckpointStore``); any world size wrote it.
        model_config (OneRecModelConfig): the config it was trained with.
        vocab_sizes (Sequence[int]): K_l of each code level.
        device (torch.device | None): where to put the model.

    Returns:
        OneRecModel: in eval mode.

    Raises:
        CheckpointCorruptError: a file of the folder is missing, cut short or unreadable (the message names it).
    """
    module = OneRecTrainStep(OneRecModel(model_config, vocab_sizes, device=torch.device("meta")))
    module.to_empty(device=torch.device("cpu"))
    state = {"model": module.state_dict()}
    with warnings.catch_warnings():  # DCP notes that it reads in one process, which is the point here
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        try:
            dcp.load(state, checkpoint_id=str(path), no_dist=True)
        except READ_FAILURES as exc:
            raise corrupt_checkpoint_error(Path(path), exc) from None
    module.load_state_dict(state["model"])
    return module.model.to(device or torch.device("cpu")).eval()
