"""OneRec under ``DistributedModelParallel``: planner, sharded tables with a fused optimiser, AdamW for the rest.

The recipe of TorchRec's generative-recommenders (docs/METHOD.md section 2 trained at scale; CPU facts in
../shared/TORCHREC-CPU.md):

1. build ``OneRecTrainStep(OneRecModel(...))`` on the meta device (nothing allocated);
2. ``apply_optimizer_in_backward`` on the EmbeddingCollection's tables: the table update is fused into the
   backward pass by fbgemm. On CPU fbgemm fuses SGD, Adagrad and RowWiseAdagrad but not Adam
   (``train.sparse_optimizer=adam`` needs CUDA); Adagrad gets an explicit eps so it matches torch's;
3. ``EmbeddingShardingPlanner`` over the job's topology (world size, processes per node, device type; built by
   TorchRec's ``TopologyFactory``) and the dense model's exact size, ``collective_plan`` (every rank gets rank
   0's plan), optionally forcing one sharding type on every table;
4. ``DistributedModelParallel``: shards the tables, materialises the dense modules and wraps them in DDP
   (gradients are averaged over ranks; the sparse gradients are averaged too, like DDP's mean);
5. seed-only initial weights (``init_weights``), so every world size starts from the same point;
6. AdamW over the dense parameters (``in_backward_optimizer_filter`` drops the fused tables) in a
   ``KeyedOptimizerWrapper``, wrapped by TorchRec's ``GradientClippingOptimizer`` (global L2 norm, logged),
   and combined with ``dmp.fused_optimizer`` in a ``CombinedOptimizer``, whose ``step`` only moves the dense
   parameters (the tables were updated during backward).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, Type, Union

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.clipping import GradientClipping, GradientClippingOptimizer
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.optim_config import OptimConfig
from torchrec_onerec.train.config import CPU_FUSED_OPTIMIZERS, TrainConfig
from torchrec_onerec.train.distributed import DistContext
from torchrec_onerec.train.init_weights import initialise_weights
from torchrec_onerec.train.train_module import OneRecTrainStep

SPARSE_EPS = 1e-8
STORAGE_MARGIN = 0.15
DENSE_BYTES_PER_PARAM = 16  # float32 parameter, gradient and AdamW's two moments
_SPARSE_CLASSES: Dict[str, Type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "adam": torch.optim.Adam,
}


def sparse_optimizer_args(
    name: str, lr: float, device: torch.device
) -> Tuple[Type[torch.optim.Optimizer], Dict[str, Any]]:
    """The optimiser class and a fresh kwargs dict for ``apply_optimizer_in_backward`` (DMP mutates the dict).

    Args:
        name (str): ``train.sparse_optimizer``.
        lr (float): the table learning rate.
        device (torch.device): where the tables live (Adam is fused on CUDA only).

    Returns:
        (optimiser class, kwargs).

    Example:
        >>> cls, kwargs = sparse_optimizer_args("rowwise_adagrad", 0.1, torch.device("cpu"))
        >>> cls.__name__, kwargs
        ('RowWiseAdagrad', {'lr': 0.1, 'eps': 1e-08})
    """
    if name not in _SPARSE_CLASSES:
        raise ValueError(f"train.sparse_optimizer={name!r} must be one of {sorted(_SPARSE_CLASSES)}")
    if device.type == "cpu" and name not in CPU_FUSED_OPTIMIZERS:
        raise ValueError(
            f"train.sparse_optimizer={name!r} is not fused by fbgemm on CPU; use one of "
            f"{list(CPU_FUSED_OPTIMIZERS)} (rowwise_adagrad is the usual choice), or train on CUDA"
        )
    kwargs: Dict[str, Any] = {"lr": lr}
    if name != "sgd":
        kwargs["eps"] = SPARSE_EPS
    return _SPARSE_CLASSES[name], kwargs


def describe_plan(plan: ShardingPlan) -> Dict[str, Dict[str, Any]]:
    """Table name -> ``{"sharding_type", "compute_kernel", "ranks"}`` of a sharding plan (for logs and tests)."""
    out: Dict[str, Dict[str, Any]] = {}
    for module_plan in plan.plan.values():
        for table, sharding in module_plan.items():  # type: ignore[union-attr]
            out[table] = {
                "sharding_type": sharding.sharding_type,
                "compute_kernel": sharding.compute_kernel,
                "ranks": list(sharding.ranks or []),
            }
    return out


@dataclass
class ShardedTraining:
    """A sharded model and its optimisers.

    Args:
        dmp (DistributedModelParallel): the sharded ``OneRecTrainStep``.
        optimizer (CombinedOptimizer): ``sparse`` (fused, per table) + ``dense`` (clipped AdamW); what the train
            pipeline steps and what checkpoints save.
        sparse_optimizer (KeyedOptimizer): ``dmp.fused_optimizer``.
        dense_optimizer (GradientClippingOptimizer): the clipped AdamW.
        plan (Dict[str, Dict[str, Any]]): ``describe_plan`` of the sharding plan.
        learning_rates (Tuple[float, float]): peak (dense, sparse) learning rates the schedule scales.
    """

    dmp: DistributedModelParallel
    optimizer: CombinedOptimizer
    sparse_optimizer: KeyedOptimizer
    dense_optimizer: GradientClippingOptimizer
    plan: Dict[str, Dict[str, Any]]
    learning_rates: Tuple[float, float]

    def set_lr_multiplier(self, multiplier: float) -> None:
        """Scale both peak learning rates by ``multiplier`` (the fused tables read it at the next step)."""
        dense_lr, sparse_lr = self.learning_rates
        for group in self.dense_optimizer.param_groups:
            group["lr"] = dense_lr * multiplier
        for group in self.sparse_optimizer.param_groups:
            group["lr"] = sparse_lr * multiplier

    @property
    def last_grad_norm(self) -> float:
        """Global L2 norm of the dense gradients at the last step, before clipping (nan before any step)."""
        norm = self.dense_optimizer.last_total_grad_norm
        return float("nan") if norm is None else float(norm)


def _constraints(tables: Sequence[str], sharding_type: str) -> Dict[str, ParameterConstraints]:
    """Force ``sharding_type`` (with the fused kernel, the only one TW/RW/CW offer) on every table."""
    if not sharding_type:
        return {}
    return {name: ParameterConstraints(sharding_types=[sharding_type], compute_kernels=["fused"]) for name in tables}


def embedding_collections(module: nn.Module) -> Dict[str, Union[EmbeddingCollection, EmbeddingBagCollection]]:
    """Module path -> every TorchRec ``EmbeddingCollection`` / ``EmbeddingBagCollection`` inside ``module``."""
    return {
        name: sub
        for name, sub in module.named_modules()
        if isinstance(sub, (EmbeddingCollection, EmbeddingBagCollection))
    }


def _planner(
    module: nn.Module,
    collections: Dict[str, nn.Module],
    tables: Sequence[str],
    train_config: TrainConfig,
    ctx: DistContext,
) -> EmbeddingShardingPlanner:
    """A planner for this job's topology, told the dense model's true size (it is on the meta device)."""
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=ctx.world_size, local_world_size=ctx.local_world_size),
        kernel_config=KernelConfig(compute_device=ctx.device.type),
    )
    table_params = {id(p) for c in collections.values() for p in c.parameters()}
    dense_params = sum(p.numel() for p in module.parameters() if id(p) not in table_params)
    with warnings.catch_warnings():  # it warns that estimates from meta tensors are wrong: ours is exact
        warnings.filterwarnings("ignore", message="HeuristicalStorageReservation", category=FutureWarning)
        reservation = HeuristicalStorageReservation(
            percentage=STORAGE_MARGIN, dense_tensor_estimate=dense_params * DENSE_BYTES_PER_PARAM
        )
    return EmbeddingShardingPlanner(
        topology=topology, storage_reservation=reservation, constraints=_constraints(tables, train_config.sharding_type)
    )


def shard_for_training(
    module: nn.Module, optim: OptimConfig, stack: TrainConfig, ctx: DistContext, *, seed: int
) -> ShardedTraining:
    """Shard any meta-built module holding TorchRec embedding collections, and set up its optimisers.

    Steps 2-6 of the module docstring for every ``EmbeddingCollection`` and ``EmbeddingBagCollection`` in
    ``module`` (the OneRec model, the cascade's towers and ranker, the session reward model all go through
    here, so they shard and train alike). Each table needs a name unique across the module.

    Args:
        module (nn.Module): the train module, built on the meta device; its ``forward(batch)`` returns
            ``(loss, detached outputs)``.
        optim (OptimConfig): the model's learning rates and weight decay.
        stack (TrainConfig): the ``train`` section's stack settings: clipping, sparse optimiser, sharding type.
        ctx (DistContext): this rank (``init_distributed``).
        seed (int): the run's seed; the initial weights depend on it only.

    Returns:
        ShardedTraining: the DMP-wrapped module and its optimisers, learning rates at their peaks.
    """
    if not dist.is_initialized():
        raise RuntimeError("shard_for_training needs the default process group; call init_distributed first")
    collections = embedding_collections(module)
    if not collections:
        raise ValueError(f"{type(module).__name__} holds no EmbeddingCollection or EmbeddingBagCollection to shard")
    tables: List[Tuple[str, Any]] = []
    for path, collection in collections.items():
        configs = (
            collection.embedding_configs()
            if isinstance(collection, EmbeddingCollection)
            else collection.embedding_bag_configs()
        )
        attribute = "embeddings" if isinstance(collection, EmbeddingCollection) else "embedding_bags"
        tables += [(f"{path}.{attribute}.", config) for config in configs]
    names = [config.name for _, config in tables]
    if len(set(names)) != len(names):
        raise ValueError(f"table names {names} repeat; give every table of {type(module).__name__} its own name")
    cls, kwargs = sparse_optimizer_args(stack.sparse_optimizer, optim.sparse_learning_rate, ctx.device)
    for collection in collections.values():
        apply_optimizer_in_backward(cls, collection.parameters(), dict(kwargs))
    sharders: List[Any] = [EmbeddingCollectionSharder(), EmbeddingBagCollectionSharder()]
    planner = _planner(module, collections, names, stack, ctx)
    plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module, device=ctx.device, plan=plan, sharders=sharders)
    initialise_weights(dmp, tables, seed=seed)
    lr, weight_decay = optim.learning_rate, optim.weight_decay
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    )
    clipping = GradientClipping.NORM if stack.grad_clip > 0 else GradientClipping.NONE
    clipped = GradientClippingOptimizer(dense, clipping=clipping, max_gradient=stack.grad_clip, track_grad_norm=True)
    optimizer = CombinedOptimizer([("sparse", dmp.fused_optimizer), ("dense", clipped)])
    return ShardedTraining(
        dmp, optimizer, dmp.fused_optimizer, clipped, describe_plan(plan), (lr, optim.sparse_learning_rate)
    )


def build_sharded_training(
    model_config: OneRecModelConfig,
    vocab_sizes: Sequence[int],
    train_config: TrainConfig,
    ctx: DistContext,
    *,
    seed: int,
    signal_weights: Sequence[float] = (),
) -> ShardedTraining:
    """Shard a new OneRec model (in its ``OneRecTrainStep``) with ``shard_for_training``.

    Args:
        model_config (OneRecModelConfig): model sizes.
        vocab_sizes (Sequence[int]): K_l of each code level.
        train_config (TrainConfig): the ``train`` section: ``optim`` (learning rates, weight decay), clipping,
            sparse optimiser, sharding type, amp.
        ctx (DistContext): this rank (``init_distributed``).
        seed (int): the run's seed; the initial weights depend on it only.
        signal_weights (Sequence[float]): ``OneRecTrainStep``'s per-signal loss weights (empty: the plain NTP loss).

    Returns:
        ShardedTraining: the DMP-wrapped model and its optimisers, learning rates at their peaks.
    """
    if not dist.is_initialized():
        raise RuntimeError("build_sharded_training needs the default process group; call init_distributed first")
    module = onerec_train_step(model_config, vocab_sizes, train_config, ctx.device, signal_weights=signal_weights)
    return shard_for_training(module, train_config.optim, train_config, ctx, seed=seed)


def onerec_train_step(
    model_config: OneRecModelConfig,
    vocab_sizes: Sequence[int],
    train_config: TrainConfig,
    device: torch.device,
    *,
    signal_weights: Sequence[float] = (),
) -> OneRecTrainStep:
    """A new OneRec model in its ``OneRecTrainStep``, on the meta device (what ``shard_for_training`` takes), with
    ``train_config.amp`` autocast on ``device``'s type and ``signal_weights`` (empty: the plain NTP loss)."""
    return OneRecTrainStep(
        OneRecModel(model_config, vocab_sizes, device=torch.device("meta")),
        amp=train_config.amp,
        device_type=device.type,
        signal_weights=signal_weights,
    )
