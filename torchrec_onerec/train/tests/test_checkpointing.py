"""DCP checkpoints of sharded training: exact round trip (weights, optimiser state, RNG), atomicity, refusal of
a foreign checkpoint, and the plain-model exports generation runs on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator

import pytest
import torch
import torch.distributed as dist

from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.train.checkpoint import (
    CheckpointCorruptError,
    CheckpointMeta,
    CheckpointMismatchError,
    CheckpointStore,
    training_fingerprint,
)
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, init_distributed, teardown_distributed
from torchrec_onerec.train.export import gather_model_state, load_checkpoint_model, load_exported, save_exported
from torchrec_onerec.train.sharding import ShardedTraining, build_sharded_training
from torchrec_onerec.optim_config import OptimConfig

CODES, SIZES = random_codes(40, [4, 4], seed=0)
CONFIG = model_size("tiny", num_users=50)
TRAIN = TrainConfig(optim=OptimConfig(learning_rate=0.01))
FINGERPRINT = training_fingerprint(CONFIG, SIZES, CODES, TRAIN.sparse_optimizer)
BATCHES = [random_batch(CODES, 4, max_history=8, session_items=2, num_users=50, seed=s) for s in range(4)]


@pytest.fixture
def ctx() -> Iterator[DistContext]:
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    context = init_distributed(torch.device("cpu"), timeout_s=60)
    yield context
    teardown_distributed(context)


def _step(training: ShardedTraining, index: int) -> float:
    training.optimizer.zero_grad()
    loss, _ = training.dmp(BATCHES[index])
    loss.backward()
    training.optimizer.step()
    return float(loss.detach())


def _state(training: ShardedTraining, ctx: DistContext) -> Dict[str, torch.Tensor]:
    state = gather_model_state(training.dmp, ctx)
    assert state is not None
    return state


def _assert_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, different


def test_round_trip_restores_weights_optimiser_state_and_rng(ctx: DistContext, tmp_path: Path) -> None:
    training = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=0)
    for index in range(2):
        _step(training, index)
    store = CheckpointStore(tmp_path, ctx, FINGERPRINT)
    path = store.save(training, CheckpointMeta(fingerprint=FINGERPRINT, step=2, epoch=0, batch_in_epoch=2))
    after_save = torch.rand(3)
    restored = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=1)  # other initial weights
    meta = store.load(path, restored, seed=0)
    assert (meta.step, meta.batch_in_epoch, meta.world_size) == (2, 2, 1)
    assert torch.equal(torch.rand(3), after_save)
    _assert_equal(_state(restored, ctx), _state(training, ctx))
    # identical AdamW moments and RowWiseAdagrad accumulators: the next steps match exactly
    assert [_step(restored, i) for i in (2, 3)] == [_step(training, i) for i in (2, 3)]
    _assert_equal(_state(restored, ctx), _state(training, ctx))


def test_one_process_saves_loads_and_gathers_without_a_collective(
    ctx: DistContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # gloo runs a collective's copies on its own thread, where ATen opens a second OpenMP team that slows every
    # later multi-threaded op of the process (export.local_shards_assembled); one process must not start one
    training = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=0)
    _step(training, 0)
    before = _state(training, ctx)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a collective ran in a one-process group")

    for name in ("gather", "gather_object", "all_gather", "broadcast", "scatter_object_list", "broadcast_object_list"):
        monkeypatch.setattr(dist, name, refuse)
        monkeypatch.setattr(dist.distributed_c10d, name, refuse)
    gathered = _state(training, ctx)
    store = CheckpointStore(tmp_path, ctx, FINGERPRINT)
    path = store.save(training, CheckpointMeta(fingerprint=FINGERPRINT, step=1, epoch=0, batch_in_epoch=1))
    restored = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=1)
    store.load(path, restored, seed=0)
    monkeypatch.undo()
    _assert_equal(gathered, before)
    _assert_equal(_state(restored, ctx), before)


def test_partial_saves_are_ignored_and_old_checkpoints_pruned(ctx: DistContext, tmp_path: Path) -> None:
    training = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=0)
    store = CheckpointStore(tmp_path, ctx, FINGERPRINT)
    first = store.save(training, CheckpointMeta(fingerprint=FINGERPRINT, step=1, batch_in_epoch=1))
    second = store.save(training, CheckpointMeta(fingerprint=FINGERPRINT, step=2, batch_in_epoch=2), keep=[first.name])
    (tmp_path / ".tmp-step-000000009-epoch-00000-batch-0000009").mkdir()  # a save interrupted before its rename
    (tmp_path / "step-000000008-epoch-00000-batch-0000008").mkdir()  # no meta.json: not complete
    assert store.latest() == second and store.complete() == [first, second]
    third = store.save(training, CheckpointMeta(fingerprint=FINGERPRINT, step=3, batch_in_epoch=3), keep=[first.name])
    assert store.complete() == [first, third]


def test_a_checkpoint_of_another_codebook_or_config_is_refused(ctx: DistContext, tmp_path: Path) -> None:
    training = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=0)
    path = CheckpointStore(tmp_path, ctx, FINGERPRINT).save(training, CheckpointMeta(fingerprint=FINGERPRINT, step=1))
    other_codes = training_fingerprint(CONFIG, SIZES, CODES.flip(0), TRAIN.sparse_optimizer)
    other_model = training_fingerprint(model_size("tiny", num_users=50, d_model=32), SIZES, CODES, "rowwise_adagrad")
    for fingerprint in (other_codes, other_model):
        with pytest.raises(CheckpointMismatchError, match="another model config, codebook"):
            CheckpointStore(tmp_path, ctx, fingerprint).load(path, training, seed=0)


def test_a_checkpoint_with_a_file_cut_short_or_missing_is_named(ctx: DistContext, tmp_path: Path) -> None:
    training = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=0)
    _step(training, 0)
    store = CheckpointStore(tmp_path, ctx, FINGERPRINT)
    path = store.save(training, CheckpointMeta(fingerprint=FINGERPRINT, step=1))
    (shard,) = path.glob("*.distcp")
    with open(shard, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointCorruptError, match=f"{path} is incomplete or corrupt .*--force train"):
        store.load(path, training, seed=0)
    shard.unlink()
    with pytest.raises(CheckpointCorruptError, match=f"FileNotFoundError: .*{shard.name}"):
        store.load(path, training, seed=0)


def test_plain_models_from_a_checkpoint_and_from_an_export(ctx: DistContext, tmp_path: Path) -> None:
    training = build_sharded_training(CONFIG, SIZES, TRAIN, ctx, seed=0)
    _step(training, 0)
    path = CheckpointStore(tmp_path / "ckpt", ctx, FINGERPRINT).save(
        training, CheckpointMeta(fingerprint=FINGERPRINT, step=1)
    )
    state = _state(training, ctx)
    _assert_equal(load_checkpoint_model(path, CONFIG, SIZES).state_dict(), state)
    save_exported(tmp_path / "best.pt", state, CONFIG, SIZES, FINGERPRINT)
    model = load_exported(tmp_path / "best.pt", CONFIG, SIZES)
    _assert_equal(model.state_dict(), state)
    loss, _ = training.dmp(BATCHES[1])
    assert float(model(BATCHES[1]).loss.detach()) == pytest.approx(float(loss.detach()), rel=1e-6)
    with pytest.raises(ValueError, match="load it with the config and codebook it was trained with"):
        load_exported(tmp_path / "best.pt", CONFIG, [4, 4, 7])


def test_an_export_older_than_a_model_config_key_loads_with_the_key_s_default(tmp_path: Path) -> None:
    model = OneRecModel(CONFIG, SIZES)
    save_exported(tmp_path / "best.pt", model.state_dict(), CONFIG, SIZES, FINGERPRINT)
    data = torch.load(tmp_path / "best.pt", weights_only=False)
    del data["model_config"]["history_tokens"]  # written before the key existed
    data["model_config"]["no_such_key"] = 1
    torch.save(data, tmp_path / "newer.pt")
    del data["model_config"]["no_such_key"]
    torch.save(data, tmp_path / "older.pt")
    _assert_equal(load_exported(tmp_path / "older.pt", CONFIG, SIZES).state_dict(), model.state_dict())
    with pytest.raises(ValueError, match="history_tokens"):  # the default is not what is in use
        load_exported(tmp_path / "older.pt", replace(CONFIG, history_tokens="items"), SIZES)
    with pytest.raises(ValueError, match="model config this version does not know .*no_such_key"):
        load_exported(tmp_path / "newer.pt", CONFIG, SIZES)
