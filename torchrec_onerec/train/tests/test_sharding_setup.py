"""DMP setup of OneRec training: planner, fused sparse optimiser, clipped AdamW, seed-only initial weights."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch
import torch.distributed as dist
from torchrec.optim.keyed import CombinedOptimizer

from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, init_distributed, teardown_distributed
from torchrec_onerec.train.export import gather_model_state
from torchrec_onerec.train.init_weights import table_rows
from torchrec_onerec.train.sharding import build_sharded_training, sparse_optimizer_args
from torchrec_onerec.optim_config import OptimConfig

CPU = torch.device("cpu")
CODES, SIZES = random_codes(40, [4, 4], seed=0)
CONFIG = model_size("tiny", num_users=50)


@pytest.fixture
def ctx() -> Iterator[DistContext]:
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    context = init_distributed(CPU, timeout_s=60)
    yield context
    teardown_distributed(context)


def test_sparse_optimizer_args_are_fresh_and_reject_adam_on_cpu() -> None:
    _, first = sparse_optimizer_args("adagrad", 0.1, CPU)
    first["lr"] = 99.0  # DMP rewrites the dict it is given; the next call must not see that
    assert sparse_optimizer_args("adagrad", 0.1, CPU)[1] == {"lr": 0.1, "eps": 1e-8}
    assert sparse_optimizer_args("sgd", 0.1, CPU)[1] == {"lr": 0.1}
    with pytest.raises(ValueError, match="not fused by fbgemm on CPU"):
        sparse_optimizer_args("adam", 0.1, CPU)


def test_train_config_rejects_data_parallel_and_unknown_optimiser() -> None:
    with pytest.raises(ValueError, match="data_parallel fails on CPU"):
        TrainConfig(sharding_type="data_parallel")
    with pytest.raises(ValueError, match="sparse_optimizer"):
        TrainConfig(sparse_optimizer="adamw")


def test_fused_tables_and_clipped_adamw_for_the_dense_part(ctx: DistContext) -> None:
    training = build_sharded_training(
        CONFIG,
        SIZES,
        TrainConfig(
            sharding_type="table_wise",
            optim=OptimConfig(weight_decay=0.1, learning_rate=0.01, sparse_learning_rate=0.2),
        ),
        ctx,
        seed=0,
    )
    assert {p["sharding_type"] for p in training.plan.values()} == {"table_wise"}
    assert set(training.plan) == {"code_0", "code_1", "code_2", "user_id"}
    assert isinstance(training.optimizer, CombinedOptimizer)
    dense_names = set(training.dense_optimizer.params)
    assert dense_names and not any("embedding.ec" in name for name in dense_names)
    adamw = training.dense_optimizer.param_groups[0]
    assert adamw["weight_decay"] == 0.1 and adamw["lr"] == 0.01
    training.set_lr_multiplier(0.5)
    assert training.dense_optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    assert all(group["lr"] == pytest.approx(0.1) for group in training.sparse_optimizer.param_groups)
    state = training.sparse_optimizer.state_dict()["state"]
    assert any("momentum1" in key for table in state.values() for key in table)  # RowWiseAdagrad accumulators


def test_optimizer_step_moves_tables_in_backward_and_dense_in_step(ctx: DistContext) -> None:
    training = build_sharded_training(CONFIG, SIZES, TrainConfig(grad_clip=1e-3), ctx, seed=0)
    batch = random_batch(CODES, 4, max_history=CONFIG.max_history, session_items=CONFIG.session_items, num_users=50)
    before = gather_model_state(training.dmp, ctx)
    training.optimizer.zero_grad()
    loss, _ = training.dmp(batch)
    loss.backward()
    after_backward = gather_model_state(training.dmp, ctx)
    training.optimizer.step()
    after_step = gather_model_state(training.dmp, ctx)
    assert before is not None and after_backward is not None and after_step is not None
    table, head = "embedding.ec.embeddings.code_0.weight", "heads.0.weight"
    assert not torch.equal(before[table], after_backward[table])  # fused update inside backward
    assert torch.equal(before[head], after_backward[head]) and not torch.equal(before[head], after_step[head])
    assert training.last_grad_norm > 1e-3  # the norm before clipping is logged


def test_initial_weights_depend_on_the_seed_only(ctx: DistContext) -> None:
    states = []
    for sharding in ("table_wise", "row_wise", "column_wise"):
        training = build_sharded_training(CONFIG, SIZES, TrainConfig(sharding_type=sharding), ctx, seed=7)
        states.append(gather_model_state(training.dmp, ctx))
    assert states[0] is not None
    for state in states[1:]:
        assert state is not None and state.keys() == states[0].keys()
        assert all(torch.equal(state[key], states[0][key]) for key in state)
    meta_model = OneRecModel(CONFIG, SIZES, device=torch.device("meta"))
    tables = {t.name: t for t in meta_model.embedding.ec.embedding_configs()}
    assert torch.equal(states[0]["embedding.ec.embeddings.user_id.weight"], table_rows(tables["user_id"], 7, 0, 50))
    other = gather_model_state(build_sharded_training(CONFIG, SIZES, TrainConfig(), ctx, seed=8).dmp, ctx)
    assert other is not None and not torch.equal(other["heads.0.weight"], states[0]["heads.0.weight"])


def test_a_composite_modules_own_initialisation_of_its_parts_stands(ctx: DistContext) -> None:
    # SemanticTokenEmbedding draws its position tables at std 0.02; their own nn.Embedding default is std 1, which
    # swamped the item codes' rows (about +-0.5 for 4 rows) until the composite was reset after its parts.
    state = gather_model_state(build_sharded_training(CONFIG, SIZES, TrainConfig(), ctx, seed=0).dmp, ctx)
    assert state is not None
    for name in ("recency", "level", "decoder_position"):
        std = float(state[f"embedding.{name}.weight"].std())
        assert 0.01 < std < 0.04, (name, std)
