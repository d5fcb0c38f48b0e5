"""A failure on rank 0 while the other ranks wait for its result ends every rank within seconds, with its error.

Two gloo processes, as torchrun would start them: ``on_rank0`` itself, and the reward model's trainer whose
validation (rank 0 only, then broadcast) raises. Without the error travelling in the broadcast, rank 1 would wait
there until the collective timeout (120 s here).
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.train import reward_training
from torchrec_onerec.train.distributed import barrier, init_distributed, on_rank0, teardown_distributed
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.optim_config import OptimConfig
from torchrec_onerec.train.testing import as_torchrun_rank, free_port

WORLD_SIZE = 2
TIMEOUT_S = 120


def _samples(n: int, seed: int) -> SampleSet:
    rng = np.random.default_rng(seed)
    return SampleSet.from_samples(
        [
            Sample(
                int(rng.integers(10)),
                rng.integers(20, size=3),
                rng.choice(20, 3, False),
                rng.integers(0, 2, size=(3, 1)).astype(np.float32),
            )
            for _ in range(n)
        ],
        ["vtr"],
    )


def _fail(*args: object, **kwargs: object) -> None:
    raise ValueError("boom: no validation session has both labels")


def _worker(rank: int, port: int, folder: str) -> None:
    as_torchrun_rank(rank, WORLD_SIZE, port)
    ctx = init_distributed(torch.device("cpu"), timeout_s=TIMEOUT_S)
    outcomes = {}
    start = time.perf_counter()
    try:
        on_rank0(lambda: _fail(), ctx, what="the helper")
        outcomes["helper"] = {"error": ""}
    except RuntimeError as exc:
        outcomes["helper"] = {"error": str(exc)}
    outcomes["helper"]["seconds"] = time.perf_counter() - start
    reward_training.session_aucs = _fail  # the validation every rank waits for fails on rank 0
    config = RewardModelConfig(
        embedding_dim=8,
        num_heads=1,
        semantic_ids=False,
        train_on_impressions=False,
        optim=OptimConfig(epochs=2),
        batch_size=16,
        baseline_pooling="",
    )
    start = time.perf_counter()
    try:
        reward_training.train_reward_model(
            config,
            _samples(64, 0),
            _samples(16, 1),
            num_users=10,
            num_items=20,
            out_dir=Path(folder) / "reward",
            train_config=TrainConfig(),
            seed=0,
            device=torch.device("cpu"),
            progress=False,
        )
        outcomes["reward"] = {"error": ""}
    except RuntimeError as exc:
        outcomes["reward"] = {"error": str(exc)}
    outcomes["reward"]["seconds"] = time.perf_counter() - start
    Path(folder, f"rank{rank}.json").write_text(json.dumps(outcomes))
    gc.collect()  # the failed trainer's pipeline and model, held by the exceptions' frames until now
    barrier(ctx)
    teardown_distributed(ctx)
    # What is asserted is written; the interpreter's own teardown with gloo threads alive aborted (SIGABRT) once in
    # CI after both ranks had finished, so the worker ends here.
    os._exit(0)


def test_a_rank0_failure_ends_every_rank_with_its_error(tmp_path: Path) -> None:
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn")
    for rank in range(WORLD_SIZE):
        outcomes = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert outcomes["helper"]["error"] == (
            "the helper failed on rank 0: ValueError: boom: no validation session has both labels"
        )
        assert outcomes["reward"]["error"] == (
            "reward_model validation failed on rank 0: ValueError: boom: no validation session has both labels"
        )
        for what in ("helper", "reward"):
            assert outcomes[what]["seconds"] < 30, (rank, what, outcomes[what])  # not the 120 s timeout
