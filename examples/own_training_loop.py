"""Plug the OneRec model into a TorchRec training loop you already have.

You keep your own batches (KeyedJaggedTensors of item ids), your own DistributedModelParallel, optimisers and
train pipeline; the lines that change are marked ``# OneRec:``:

1. fit the semantic-ID tokenizer on your item embeddings (``fit_tokenizer``): every item becomes a short tuple
   of codes, unique per item;
2. build ``OneRecModel`` on the meta device and wrap it in ``OneRecTrainModule`` (the
   ``forward(batch) -> (loss, (loss, logits, labels))`` contract of TorchRec's train pipelines);
3. map each of your batches to the model's input with ``SemanticIdTransform`` (item ids -> code KJT);
4. after training, write sessions of real items with ``constrained_beam_search`` on an unsharded copy.

The catalogue here is a toy: 64 items in 8 topics (item embedding = topic centre + noise), and each user watches
items of one topic. The loss falls and the generated sessions stay in the user's topic. ``--package-sharding``
swaps the hand-written sharding for the package's ``shard_for_training`` (the same recipe, plus clipping and
seed-only initial weights).

Run (a few seconds on one CPU core; CUDA is used when present)::

    python examples/own_training_loop.py [--steps 80] [--run-dir runs/example_own_loop] [--package-sharding]
    torchrun --standalone --nproc_per_node=2 examples/own_training_loop.py    # the same loop, tables sharded
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, TopologyFactory, TrainerConfig
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.batch import HISTORY_KEY, USER_KEY, OneRecBatch
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, SemanticIdTransform
from torchrec_onerec.generation.beam_search import constrained_beam_search
from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule
from torchrec_onerec.runtime import resolve_device, seed_everything
from torchrec_onerec.tokenizer import Codebook, TokenizerConfig, fit_tokenizer
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import init_distributed, teardown_distributed
from torchrec_onerec.train.export import gather_model_state, plain_model
from torchrec_onerec.train.sharding import shard_for_training
from torchrec_onerec.optim_config import OptimConfig

NUM_TOPICS, ITEMS_PER_TOPIC = 8, 8
MAX_HISTORY, SESSION_ITEMS = 6, 2
DENSE_LR, SPARSE_LR = 3e-3, 0.05


def toy_catalogue(seed: int) -> Tuple[torch.Tensor, np.ndarray]:
    """Your item embeddings [I, d] (row = item id) and, for this toy only, each item's topic [I]."""
    rng = np.random.default_rng(seed)
    topic = np.arange(NUM_TOPICS * ITEMS_PER_TOPIC) // ITEMS_PER_TOPIC
    centres = rng.normal(size=(NUM_TOPICS, 16))
    embeddings = centres[topic] + 0.3 * rng.normal(size=(len(topic), 16))
    return torch.nn.functional.normalize(torch.tensor(embeddings, dtype=torch.float32), dim=1), topic


def your_batch(
    topic: np.ndarray, batch_size: int, rng: np.random.Generator
) -> Tuple[KeyedJaggedTensor, torch.Tensor, np.ndarray]:
    """What your data pipeline already yields: a KJT of item ids (keys ``history_item`` and ``user_id``) and the
    next session's items [B, M]. Each toy user has a favourite topic (returned for the printout)."""
    favourite = rng.integers(NUM_TOPICS, size=batch_size)
    histories, targets = [], []
    for t in favourite:
        items = rng.permutation(np.flatnonzero(topic == t))
        length = int(rng.integers(2, MAX_HISTORY + 1))
        histories.append(items[:length])
        targets.append(items[length : length + SESSION_ITEMS])
    users = rng.integers(1_000_000, size=batch_size)
    features = KeyedJaggedTensor.from_lengths_sync(
        keys=[HISTORY_KEY, USER_KEY],
        values=torch.from_numpy(np.concatenate(histories + [users]).astype(np.int64)),
        lengths=torch.tensor([len(h) for h in histories] + [1] * batch_size),
    )
    return features, torch.from_numpy(np.stack(targets).astype(np.int64)), favourite


def as_onerec_batch(features: KeyedJaggedTensor, target: torch.Tensor) -> OneRecBatch:
    """OneRec: your KJT and targets as a ``OneRecBatch`` (no feedback labels are needed for NTP training)."""
    return OneRecBatch(
        users=features[USER_KEY].values(),
        features=features,
        target=target,
        target_mask=target >= 0,
        labels=torch.zeros(*target.shape, 0),
    )


def training_batches(
    topic: np.ndarray, batch_size: int, rng: np.random.Generator, transform: SemanticIdTransform
) -> Iterator[SemanticIdBatch]:
    """Your batches, endlessly, each mapped to the model's input (item ids -> the KJT of their codes). With a
    DataLoader, give it ``transform`` as the collate step instead (it is picklable, so workers can run it)."""
    while True:
        features, target, _ = your_batch(topic, batch_size, rng)
        yield transform(as_onerec_batch(features, target))  # OneRec: the one extra step per batch


def shard_with_torchrec(
    module: OneRecTrainModule, device: torch.device
) -> Tuple[DistributedModelParallel, CombinedOptimizer]:
    """The usual TorchRec recipe: fused table optimiser, planner, DMP, AdamW over the dense parameters."""
    tables = module.model.embedding.ec  # OneRec: the model's one EmbeddingCollection (every code level's table)
    apply_optimizer_in_backward(RowWiseAdagrad, tables.parameters(), {"lr": SPARSE_LR, "eps": 1e-8})
    sharders = [EmbeddingCollectionSharder()]
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=dist.get_world_size()), kernel_config=KernelConfig(compute_device=device.type)
    )
    planner = EmbeddingShardingPlanner(
        topology=topology, storage_reservation=FixedPercentageStorageReservation(percentage=0.15)
    )
    plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(module, device=device, plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(
        dict(in_backward_optimizer_filter(dmp.named_parameters())),
        lambda params: torch.optim.AdamW(params, lr=DENSE_LR),
    )
    return dmp, CombinedOptimizer([dmp.fused_optimizer, dense])


def generate(
    model: OneRecModel, codebook: Codebook, transform: SemanticIdTransform, topic: np.ndarray, num_users: int, seed: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best sessions of new users, their history items excluded: (favourite topic [U], history [U, n] -1 padded,
    session [U, M])."""
    device = next(model.parameters()).device
    features, target, favourite = your_batch(topic, num_users, np.random.default_rng([seed, 1]))
    batch = transform(as_onerec_batch(features, target)).to(device)  # OneRec: the same mapping as in training
    out = constrained_beam_search(
        model, batch, prefix_index=codebook.prefix_index(device), beam_size=8, num_return=1, exclude_history=True
    )
    history = features[HISTORY_KEY].to_padded_dense(desired_length=MAX_HISTORY, padding_value=-1)
    return favourite, history.numpy(), out.items[:, 0].cpu().numpy()


def main(argv: Optional[Sequence[str]] = None) -> Optional[Dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80, help="training steps (batches)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch and process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--run-dir", default="runs/example_own_loop", help="where summary.json is written")
    parser.add_argument("--package-sharding", action="store_true", help="shard with shard_for_training instead")
    args = parser.parse_args(argv)
    seed_everything(args.seed)

    # A world-size-1 gloo group under plain python; under torchrun, the job's group (one process per rank).
    ctx = init_distributed(resolve_device(args.device), timeout_s=120)
    try:
        embeddings, topic = toy_catalogue(args.seed)
        # OneRec: item embeddings -> unique semantic IDs (here the first code comes out as the item's topic). The
        # fit is deterministic, so every rank gets the same codes (torchrun_training.py broadcasts rank 0's).
        codebook, _ = fit_tokenizer(embeddings, TokenizerConfig(codebook_sizes=[8, 8]), seed=args.seed)
        if ctx.is_rank0:
            print(
                f"tokenizer: {codebook.num_items} items -> codes of {codebook.num_levels} levels, "
                f"vocabulary sizes {codebook.vocab_sizes}"
            )

        config = OneRecModelConfig(
            d_model=32,
            num_heads=2,
            encoder_layers=1,
            decoder_layers=1,
            ffn_hidden=64,
            num_experts=4,
            top_k=2,
            expert_hidden=32,
            dropout=0.0,
            max_history=MAX_HISTORY,
            session_items=SESSION_ITEMS,
        )
        # OneRec: the model, built on meta so that DMP allocates only this rank's shards.
        module = OneRecTrainModule(OneRecModel(config, codebook.vocab_sizes, device=torch.device("meta")))
        if args.package_sharding:  # or let the package do the same recipe in one call
            optim = OptimConfig(learning_rate=DENSE_LR, sparse_learning_rate=SPARSE_LR)
            training = shard_for_training(module, optim, TrainConfig(), ctx, seed=args.seed)
            dmp, optimizer = training.dmp, training.optimizer
        else:
            dmp, optimizer = shard_with_torchrec(module, ctx.device)
        pipeline = TrainPipelineSparseDist(dmp, optimizer, device=ctx.device)

        transform = SemanticIdTransform(codebook.codes, max_history=MAX_HISTORY)
        batches = training_batches(topic, args.batch_size, np.random.default_rng([args.seed, 0, ctx.rank]), transform)
        losses = []
        for step in range(args.steps):
            loss, _logits, _labels = pipeline.progress(batches)
            losses.append(float(loss))
            if ctx.is_rank0 and (step % 20 == 0 or step == args.steps - 1):
                print(f"step {step:4d}  loss {losses[-1]:.3f}")

        # Generation runs on an unsharded copy: every rank sends its table shards to rank 0 (a collective).
        state = gather_model_state(dmp, ctx)
        if not ctx.is_rank0:
            return None
        model = plain_model(state, config, codebook.vocab_sizes, device=ctx.device)
        favourite, history, sessions = generate(model, codebook, transform, topic, num_users=64, seed=args.seed)
        for u in range(4):
            print(
                f"user with topic {favourite[u]}: history {history[u][history[u] >= 0].tolist()} -> session "
                f"{sessions[u].tolist()} (topics {topic[sessions[u]].tolist()})"
            )
        on_topic = float((topic[sessions] == favourite[:, None]).mean())
        print(f"generated items in the user's topic: {on_topic:.0%} (chance: {1 / NUM_TOPICS:.0%})")
        summary: Dict[str, object] = {
            "losses": losses,
            "sessions": sessions.tolist(),
            "history": history.tolist(),
            "on_topic": on_topic,
            "num_items": codebook.num_items,
        }
        folder = Path(args.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(summary))
        print(f"summary: {folder / 'summary.json'}")
        return summary
    finally:
        teardown_distributed(ctx)


if __name__ == "__main__":
    main()
