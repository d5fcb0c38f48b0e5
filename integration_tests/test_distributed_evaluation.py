"""Generative evaluation with its users split across two gloo processes, as the evaluate stage runs under torchrun.

Each worker joins a two-rank group and calls ``evaluate_generative(..., distributed=True)`` on the same tiny model,
unsharded or with its tables sharded row-wise over the two ranks (``train.export.sharded_model``: the lookups
are collectives, so the ranks search in lockstep), by beam search or, sharded, as slates (three code levels: the
prefix-tree pass), also with the item-id level scored per prefix from a sharded ``item_output`` table
(``model.item_head=prefix``); the test process runs the same evaluation alone. Results
travel through files. Checked: both ranks get the one process's sessions, scores and metrics exactly, also when
there are fewer batches than ranks, and a sharded rank holds half of each table's rows.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed._shard.sharded_tensor import ShardedTensor

from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import init_distributed, teardown_distributed
from torchrec_onerec.train.export import sharded_model
from torchrec_onerec.train.testing import as_torchrun_rank, free_port, random_samples

WORLD_SIZE = 2
CODES, SIZES = random_codes(40, [4, 4], seed=0)


CONFIG = model_size("tiny", max_history=8, session_items=2)
# two cluster levels, then the item id scored per prefix
ITEMS = torch.arange(40)
PREFIX_CODES, PREFIX_SIZES = torch.stack([ITEMS % 4, ITEMS // 4 % 4, ITEMS], dim=1), [4, 4, 40]
PREFIX_CONFIG = model_size("tiny", max_history=8, session_items=2, item_head="prefix")


def _setting(prefix: bool):
    return (PREFIX_CODES, PREFIX_SIZES, PREFIX_CONFIG) if prefix else (CODES, SIZES, CONFIG)


def _plain_model(prefix: bool = False) -> OneRecModel:
    _, sizes, config = _setting(prefix)
    torch.manual_seed(0)
    return OneRecModel(config, sizes).eval()


def _evaluate(
    num_users: int,
    distributed: bool,
    model: Optional[OneRecModel] = None,
    slate: bool = False,
    prefix: bool = False,
) -> EvalResult:
    codes, sizes, _ = _setting(prefix)
    model = _plain_model(prefix) if model is None else model
    samples = random_samples(num_users, 40, max_history=8, session_items=2, seed=1)
    return evaluate_generative(
        model,
        samples,
        codes=codes,
        prefix_index=PrefixIndex(codes, vocab_sizes=sizes),
        config=EvalConfig(beam_size=6, num_return=4, ks=[2, 4], batch_size=4),
        protocol="B",
        max_history=8,
        progress=False,
        distributed=distributed,
        slate=slate,
    )


def _worker(rank: int, port: int, num_users: int, sharded: bool, slate: bool, prefix: bool, out: str) -> None:
    as_torchrun_rank(rank, WORLD_SIZE, port)
    group = init_distributed(torch.device("cpu"), timeout_s=60)
    try:
        model = None
        if sharded:
            _, sizes, config = _setting(prefix)
            state = _plain_model(prefix).state_dict()
            model = sharded_model(state, config, sizes, TrainConfig(sharding_type="row_wise"), group)
            rows = {
                name: sum(shard.tensor.shape[0] for shard in tensor.local_shards())
                for name, tensor in model.embedding.ec.state_dict().items()
                if isinstance(tensor, ShardedTensor)
            }
            Path(out, f"rows{rank}.pkl").write_bytes(pickle.dumps(rows))
        result = _evaluate(num_users, distributed=True, model=model, slate=slate, prefix=prefix)
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        teardown_distributed(group)


@pytest.mark.parametrize(
    "sharded,slate,prefix",
    [(False, False, False), (True, False, False), (True, True, False), (True, False, True), (True, True, True)],
    ids=["plain", "sharded", "sharded-slate", "sharded-prefix", "sharded-prefix-slate"],
)
@pytest.mark.parametrize("num_users", [13, 3])  # 4 batches of 4 (2 per rank); 1 batch (rank 1 idle)
def test_two_ranks_give_the_one_process_sessions_and_metrics(
    tmp_path: Path, num_users: int, sharded: bool, slate: bool, prefix: bool
) -> None:
    mp.start_processes(
        _worker,
        args=(free_port(), num_users, sharded, slate, prefix, str(tmp_path)),
        nprocs=WORLD_SIZE,
        start_method="spawn",
    )
    alone = _evaluate(num_users, distributed=False, slate=slate, prefix=prefix)
    assert alone.info["ranks"] == 1 and len(alone.sessions) == num_users
    for rank in range(WORLD_SIZE):
        shared = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        assert shared.info["ranks"] == WORLD_SIZE
        assert np.array_equal(shared.sessions, alone.sessions)
        assert np.array_equal(shared.scores, alone.scores)
        assert shared.metrics == alone.metrics
        for name, values in alone.per_user.items():
            assert np.array_equal(shared.per_user[name], values), name
        assert shared.info["sharded_tables"] is sharded
    if sharded:  # row-wise: each rank keeps about half of every table (the item level's output rows too)
        sizes = _setting(prefix)[1]
        whole = {f"embeddings.code_{level}.weight": size for level, size in enumerate(sizes)}
        if prefix:
            whole["embeddings.item_output.weight"] = sizes[-1]
        for rank in range(WORLD_SIZE):
            rows = pickle.loads((tmp_path / f"rows{rank}.pkl").read_bytes())
            for name, size in whole.items():
                first = -(-size // WORLD_SIZE)
                assert rows[name] == (first if rank == 0 else size - first), name
