"""Initial weights that depend on the seed only, not on the world size or the sharding plan.

``DistributedModelParallel`` materialises a meta-built model rank by rank: each rank initialises its own table
shards from its own random stream, and the dense modules afterwards, from wherever that stream has got to.
The starting point would then change with the number of processes, and an N-process run could not be
compared with a 1-process run of the same global batch. So after DMP:

- every table row block is redrawn from a generator keyed by (seed, table name, block of ``ROW_BLOCK`` rows),
  uniform in the table's ``[weight_init_min, weight_init_max]`` (TorchRec's default, ±sqrt(1 / rows)); a rank
  draws only the blocks its shards overlap, so no rank ever holds a whole table;
- the dense modules are re-initialised by their ``reset_parameters`` in module order after
  ``torch.manual_seed(seed)``, identically on every rank (DDP's replicas stay equal); a module that owns
  parameters and holds parts with parameters is reset once more after its parts, so that its own choice for
  them (a smaller scale, say) stands.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardedModule
from torchrec.modules.embedding_configs import BaseEmbeddingConfig

ROW_BLOCK = 65536


def _block_generator(seed: int, table: str, block: int) -> torch.Generator:
    """A CPU generator keyed by (seed, table, row block)."""
    state = np.random.SeedSequence([seed, zlib.crc32(table.encode()), block]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def table_rows(config: BaseEmbeddingConfig, seed: int, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of a table's seeded initial weights (the same whatever slice is asked for).

    Args:
        config (BaseEmbeddingConfig): the table (name, rows, width, init bounds).
        seed (int): the run's seed.
        start (int): first row.
        stop (int): one past the last row.

    Returns:
        torch.Tensor: [stop - start, D] float32 on CPU.

    Example:
        >>> from torchrec.modules.embedding_configs import EmbeddingConfig
        >>> table = EmbeddingConfig(name="t", embedding_dim=2, num_embeddings=5, feature_names=["f"])
        >>> torch.equal(table_rows(table, 0, 0, 5)[2:4], table_rows(table, 0, 2, 4))
        True
    """
    if not 0 <= start <= stop <= config.num_embeddings:
        raise ValueError(f"rows {start}:{stop} are outside table {config.name!r} of {config.num_embeddings} rows")
    if stop == start:
        return torch.empty(0, config.embedding_dim)
    low, high = config.get_weight_init_min(), config.get_weight_init_max()
    parts = []
    for block in range(start // ROW_BLOCK, (stop - 1) // ROW_BLOCK + 1):
        first = block * ROW_BLOCK
        rows = min(ROW_BLOCK, config.num_embeddings - first)
        values = torch.rand(rows, config.embedding_dim, generator=_block_generator(seed, config.name, block))
        parts.append(values[max(start, first) - first : min(stop, first + rows) - first])
    return torch.cat(parts) * (high - low) + low


def _init_tables(dmp: DistributedModelParallel, tables: Sequence[Tuple[str, BaseEmbeddingConfig]], seed: int) -> None:
    """Overwrite every local table shard with its rows of ``table_rows``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
        state = dmp.state_dict()
        for prefix, table in tables:
            key = f"{prefix}{table.name}.weight"
            weight = state.get(key)
            if not isinstance(weight, ShardedTensor):
                raise TypeError(f"{key} is {type(weight).__name__} in the DMP state dict, expected a ShardedTensor")
            for shard in weight.local_shards():
                (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                values = table_rows(table, seed, row, row + rows)[:, col : col + cols]
                shard.tensor.copy_(values.to(shard.tensor.device, shard.tensor.dtype))
        dmp.load_state_dict(state)


def _init_dense(module: nn.Module, seed: int) -> None:
    """``reset_parameters`` of every module outside the sharded ones, in module order, after seeding; then, again,
    of every such module that owns parameters and also holds sub-modules with parameters (a composite, whose own
    ``reset_parameters`` may set its parts, e.g. ``SemanticTokenEmbedding``'s 0.02-scale position tables), deepest
    first, so that a composite's initialisation of its parts is not undone by the parts' own defaults."""
    sharded = [name for name, sub in module.named_modules() if isinstance(sub, ShardedModule)]
    torch.manual_seed(seed)
    dense = []
    for name, sub in module.named_modules():
        if any(name == root or name.startswith(root + ".") for root in sharded):
            continue
        own = list(sub.parameters(recurse=False))
        if own and not hasattr(sub, "reset_parameters"):
            raise RuntimeError(
                f"module {name!r} ({type(sub).__name__}) owns parameters but has no "
                "reset_parameters, so its initialisation would depend on the world size"
            )
        if own:
            sub.reset_parameters()
            dense.append(sub)
    composites = [sub for sub in dense if any(next(child.parameters(), None) is not None for child in sub.children())]
    for sub in reversed(composites):
        sub.reset_parameters()


def initialise_weights(
    dmp: DistributedModelParallel, tables: Sequence[Tuple[str, BaseEmbeddingConfig]], *, seed: int
) -> None:
    """Give a freshly built DMP the seed's initial weights (see the module docstring).

    Args:
        dmp (DistributedModelParallel): the sharded model, just built.
        tables (Sequence[Tuple[str, BaseEmbeddingConfig]]): (state-dict prefix, table config) of every table,
            e.g. ``("model.embedding.ec.embeddings.", config)``.
        seed (int): the run's seed.
    """
    with torch.no_grad():
        _init_dense(dmp.module, seed)
        _init_tables(dmp, tables, seed)
