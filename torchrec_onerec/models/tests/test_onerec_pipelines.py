"""The model under TorchRec's train pipelines: TrainPipelineBase, and DMP + TrainPipelineSparseDist (gloo, 1 rank).

Both must give the same losses as a plain loop over the unsharded model (sparse and dense SGD).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterator, List

import pytest
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.train_pipeline import TrainPipelineBase, TrainPipelineSparseDist
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from torchrec_onerec.data.semantic_batch import SemanticIdBatch
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule
from torchrec_onerec.models.testing import random_batch, random_codes

LR = 0.1


def _setup() -> tuple[OneRecTrainModule, List[SemanticIdBatch]]:
    codes, sizes = random_codes(40, [4, 4], seed=0)
    config = model_size("tiny", num_users=50)
    batches = [
        random_batch(
            codes, 4, max_history=config.max_history, session_items=config.session_items, num_users=50, seed=seed
        )
        for seed in range(4)
    ]
    torch.manual_seed(0)
    return OneRecTrainModule(OneRecModel(config, sizes)), batches


def _plain_losses(module: OneRecTrainModule, batches: List[SemanticIdBatch]) -> List[float]:
    optimizer = torch.optim.SGD(module.parameters(), lr=LR)
    losses = []
    for batch in batches:
        loss, _ = module(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _drain(pipeline: TrainPipelineBase, batches: Iterator[SemanticIdBatch]) -> List[float]:
    losses = []
    while True:
        try:
            losses.append(pipeline.progress(batches)[0].item())
        except StopIteration:
            return losses


def test_train_pipeline_base_matches_plain_loop() -> None:
    module, batches = _setup()
    expected = _plain_losses(copy.deepcopy(module), batches)
    pipeline = TrainPipelineBase(module, torch.optim.SGD(module.parameters(), lr=LR), torch.device("cpu"))
    assert _drain(pipeline, iter(batches)) == pytest.approx(expected, rel=1e-6)


def test_dmp_sparse_dist_pipeline_matches_plain_loop(tmp_path: Path) -> None:
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    module, batches = _setup()
    expected = _plain_losses(copy.deepcopy(module), batches)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        apply_optimizer_in_backward(torch.optim.SGD, module.model.embedding.ec.parameters(), {"lr": LR})
        sharders = [EmbeddingCollectionSharder()]
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"))
        plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(module, device=torch.device("cpu"), plan=plan, sharders=sharders)
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda params: torch.optim.SGD(params, lr=LR)
        )
        optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])
        pipeline = TrainPipelineSparseDist(dmp, optimizer, device=torch.device("cpu"), execute_all_batches=True)
        assert _drain(pipeline, iter(batches)) == pytest.approx(expected, rel=1e-5)
        assert len(pipeline._pipelined_modules) == 1  # the EmbeddingCollection's input_dist was pipelined
    finally:
        dist.destroy_process_group()


def test_meta_built_model_materialises_under_dmp(tmp_path: Path) -> None:
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    codes, sizes = random_codes(40, [4, 4], seed=0)
    config = model_size("tiny")
    batch = random_batch(codes, 3, max_history=config.max_history, session_items=config.session_items)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        module = OneRecTrainModule(OneRecModel(config, sizes, device=torch.device("meta")))
        dmp = DistributedModelParallel(module, device=torch.device("cpu"))
        loss, _ = dmp(batch)
        assert torch.isfinite(loss) and not any(p.is_meta for p in dmp.parameters())
        model = dmp.module.model  # every dense module was re-initialised by its reset_parameters
        assert torch.equal(model.encoder.ln_f.weight, torch.ones(config.d_model))
        assert 0 < model.decoder.blocks[0].ffn.w_in.abs().max() <= config.d_model**-0.5
        assert 0 < model.embedding.bos.abs().max() < 0.2
    finally:
        dist.destroy_process_group()
