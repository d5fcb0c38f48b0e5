"""The session reward model: shapes, masking, the loss by hand, reward weights, the scoring API, and the
TorchRec contract (DMP + TrainPipelineSparseDist give the plain loop's losses)."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.models.reward import RewardTrainModule, SessionRewardModel
from torchrec_onerec.models.reward_batch import (
    RewardBatch,
    RewardTransform,
    code_tokens,
    session_labels,
    to_reward_batch,
)
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.models.reward_scoring import score_sessions, session_rewards
from torchrec_onerec.optim_config import OptimConfig

SIGNALS = ["swt", "vtr", "ltr"]
NUM_USERS, NUM_ITEMS = 6, 12
CPU = torch.device("cpu")
# two code levels: items 0-5 share first code 0, items 6-11 first code 1; the second code tells items apart
CODES = torch.stack([torch.arange(NUM_ITEMS) // 6, torch.arange(NUM_ITEMS) % 6], dim=1)


def _samples(num: int, session_items: int, seed: int = 0) -> SampleSet:
    """Random samples: histories of 0-4 items, sessions of 1..M real items first, 0/1 labels."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        target = rng.choice(NUM_ITEMS, size=session_items, replace=False)
        target[rng.integers(1, session_items + 1) :] = -1
        labels = (rng.random((session_items, len(SIGNALS))) < 0.5).astype(np.float32) * (target >= 0)[:, None]
        out.append(
            Sample(int(rng.integers(NUM_USERS)), rng.integers(NUM_ITEMS, size=rng.integers(0, 5)), target, labels)
        )
    return SampleSet.from_samples(out, SIGNALS)


def _model(pooling: str = "attention", **config: object) -> SessionRewardModel:
    """A model with tables drawn from N(0, 1); id-only unless ``semantic_ids=True`` (then with ``CODES``)."""
    torch.manual_seed(0)
    config = {"semantic_ids": False, **config}
    model = SessionRewardModel(
        RewardModelConfig(embedding_dim=8, pooling=pooling, **config),
        NUM_USERS,
        NUM_ITEMS,
        SIGNALS,
        item_codes=CODES if config["semantic_ids"] else None,
    )
    with torch.no_grad():  # TorchRec's default table init is tiny; larger rows make every difference visible
        for table in model.ec.embeddings.values():
            table.weight.normal_()
    return model.eval()


def _batch(samples: SampleSet, rule: str = "mean", model: Optional[SessionRewardModel] = None) -> RewardBatch:
    return to_reward_batch(
        collate_samples(samples), session_label=rule, item_tokens=None if model is None else model.item_tokens
    )


@pytest.mark.parametrize("pooling", ["attention", "sum", "mean"])
def test_shapes(pooling: str) -> None:
    model = _model(pooling)
    out = model(_batch(_samples(5, 4)))
    assert out.logits.shape == out.probabilities.shape == out.labels.shape == (5, 3)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert ((out.probabilities > 0) & (out.probabilities < 1)).all()
    assert model.reward(out.probabilities).shape == (5,)


def test_batch_holds_the_session_items_in_the_feature_kjt() -> None:
    samples = _samples(3, 4)
    batch = RewardTransform("any")(collate_samples(samples))
    assert batch.features.keys() == ["history_item", "user_id", "session_item"]
    assert batch.features["session_item"].values().tolist() == samples.target[samples.target >= 0].tolist()
    assert batch.features["session_item"].lengths().tolist() == samples.target_lengths.tolist()
    assert batch.labels.tolist() == (samples.labels > 0).any(axis=1).astype(np.float32).tolist()
    assert batch.item_labels.shape == (3, 4, 3)


def test_session_labels_by_hand() -> None:
    item_labels = torch.tensor([[[1.0], [1.0], [0.0], [0.0]], [[0.0], [0.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert session_labels(item_labels, mask, "mean").flatten().tolist() == pytest.approx([2 / 3, 0.0])
    assert session_labels(item_labels, mask, "any").tolist() == [[1.0], [0.0]]
    with pytest.raises(ValueError, match="rule='sum'"):
        session_labels(item_labels, mask, "sum")


@pytest.mark.parametrize("pooling", ["attention", "sum", "mean"])
def test_padding_and_item_order_do_not_change_the_output(pooling: str) -> None:
    model = _model(pooling)
    base = SampleSet.from_samples(
        [Sample(1, np.array([3, 4]), np.array([5, 7, 2]), np.zeros((3, 3), np.float32))], SIGNALS
    )
    variants = [np.array([[5, 7, 2, -1, -1]]), np.array([[-1, 5, -1, 7, 2]]), np.array([[2, 5, 7]])]
    expected = score_sessions(model, base, base.target[:, None, :], batch_size=4, device=CPU)
    for sessions in variants:
        got = score_sessions(model, base, sessions[:, None, :], batch_size=4, device=CPU)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_an_empty_session_scores_finite() -> None:
    model = _model("attention")
    got = score_sessions(model, _samples(1, 2), np.array([[[-1, -1], [3, -1]]]), batch_size=4, device=CPU)
    assert np.isfinite(got).all()


def _pooled(model: SessionRewardModel, samples: SampleSet, sessions: np.ndarray) -> torch.Tensor:
    """The pooled session vectors [N, D] of sample 0's user with each row of ``sessions`` [N, M]."""
    batch = collate_samples(samples, np.zeros(len(sessions), np.int64))
    target = torch.from_numpy(sessions)
    batch = dataclasses.replace(
        batch, target=target, target_mask=target >= 0, labels=torch.zeros(*sessions.shape, len(samples.signals))
    )
    with torch.no_grad():
        return model.session_vectors(to_reward_batch(batch, session_label="mean"))


def test_attention_lets_items_interact_where_sum_pooling_adds_them() -> None:
    sessions = np.array([[3, -1], [8, -1], [3, 8]])  # {a}, {b}, {a, b}
    for pooling, additive in (("sum", True), ("attention", False)):
        pooled = _pooled(_model(pooling), _samples(1, 1), sessions)
        difference = (pooled[0] + pooled[1] - pooled[2]).abs().max().item()
        assert (difference < 1e-5) == additive, (pooling, difference)


def test_loss_is_the_sum_of_tower_bces_by_hand() -> None:
    model = _model("attention")
    probabilities = [0.75, 0.5, 0.2]
    with torch.no_grad():  # every tower outputs a constant logit log(p / (1 - p))
        for tower, p in zip(model.towers, probabilities):
            tower[-1].weight.zero_()
            tower[-1].bias.fill_(math.log(p / (1 - p)))
    labels = np.array([[[1, 0, 0], [0, 1, 0]], [[1, 1, 1], [0, 0, 0]]], np.float32)  # 2 sessions of 2 items
    samples = SampleSet.from_samples(
        [
            Sample(0, np.array([1]), np.array([2, 3]), labels[0]),
            Sample(1, np.array([], np.int64), np.array([4, 5]), labels[1]),
        ],
        SIGNALS,
    )
    out = model(_batch(samples, "mean"))
    # mean labels: swt [0.5, 0.5], vtr [0.5, 0.5], ltr [0, 0.5]; BCE(y, p) = -(y ln p + (1 - y) ln(1 - p))
    swt = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))  # 0.8370, both sessions
    vtr = math.log(2.0)  # 0.6931, both sessions
    ltr = (-math.log(0.8) - (0.5 * math.log(0.2) + 0.5 * math.log(0.8))) / 2  # (0.2231 + 0.9163) / 2
    assert out.loss.item() == pytest.approx(swt + vtr + ltr, rel=1e-5)
    assert out.loss.item() == pytest.approx(2.0998, abs=1e-4)
    assert out.probabilities.tolist() == [pytest.approx(probabilities)] * 2


def test_item_level_towers_score_each_item_against_its_own_labels() -> None:
    model = _model("attention", tower_level="item")
    labels = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]], [[1, 1, 1], [0, 0, 0], [0, 0, 0]]], np.float32)
    samples = SampleSet.from_samples(
        [
            Sample(0, np.array([1]), np.array([2, 3, 6]), labels[0]),
            Sample(1, np.array([], np.int64), np.array([4, 5, -1]), labels[1]),
        ],
        SIGNALS,
    )
    batch = _batch(samples, "mean")
    out = model(batch)
    with torch.no_grad():  # the same slots by hand: the towers over h = e + attention(e)
        h = model.contextualise(model.fused_items(batch), batch.session_mask)
        item_logits = torch.cat([tower(h) for tower in model.towers], dim=2)  # (2, 3, 3)
    real = batch.session_mask
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        item_logits[real], batch.item_labels[real], reduction="none"
    )  # (5 real items, 3)
    assert out.loss.item() == pytest.approx(bce.mean(dim=0).sum().item(), rel=1e-5)
    expected = [torch.sigmoid(item_logits[b][real[b]]).mean(dim=0).tolist() for b in range(2)]
    assert out.probabilities.tolist() == [pytest.approx(row, rel=1e-5) for row in expected]
    assert torch.sigmoid(out.logits).tolist() == [pytest.approx(row, rel=1e-4) for row in expected]
    # the second session's padded slot is neither in the loss nor in its probability: padding moves nothing
    moved = SampleSet.from_samples(
        [Sample(1, np.array([], np.int64), np.array([-1, 4, 5]), labels[1][[2, 0, 1]])], SIGNALS
    )
    assert model(_batch(moved, "mean")).probabilities[0].tolist() == pytest.approx(expected[1], rel=1e-5)
    with pytest.raises(ConfigError, match="reward.tower_level=item"):
        RewardModelConfig(tower_level="item", session_label="any")
    with pytest.raises(ConfigError, match="reward.tower_level='slot'"):
        RewardModelConfig(tower_level="slot")


def test_reward_weights() -> None:
    probabilities = torch.tensor([[0.2, 0.4, 0.1], [0.5, 0.0, 1.0]])
    plain = _model("mean")
    assert plain.reward(probabilities).tolist() == pytest.approx([0.7, 1.5])
    weighted = _model("mean", weights={"vtr": 2.0, "ltr": -1.0})  # swt left out: weight 0
    assert weighted.reward(probabilities).tolist() == pytest.approx([0.7, -1.0])
    with pytest.raises(ValueError, match="'follow'"):
        _model("mean", weights={"follow": 1.0})


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="reward.pooling='max'"):
        RewardModelConfig(pooling="max")
    with pytest.raises(ConfigError, match="reward.session_label"):
        RewardModelConfig(session_label="sum")
    with pytest.raises(ConfigError, match="reward.optim.learning_rate"):
        RewardModelConfig(optim=OptimConfig(learning_rate=0.0))
    with pytest.raises(ConfigError, match="reward.weights"):
        RewardModelConfig(weights={"vtr": float("nan")})


def test_score_sessions_equals_forward_and_batches_users() -> None:
    model = _model("attention")
    samples = _samples(5, 3, seed=1)
    with torch.no_grad():
        expected = model(_batch(samples)).probabilities.numpy()
    sessions = np.stack([samples.target, samples.target[::-1]], axis=1)  # [U=5, N=2, M=3]
    for batch_size in (1, 3, 100):  # 1 and 3: fewer sessions per pass than N or than all users
        got = score_sessions(model, samples, sessions, batch_size=batch_size, device=CPU)
        assert got.shape == (5, 2, 3)
        np.testing.assert_allclose(got[:, 0], expected, rtol=1e-5, atol=1e-6)
    rewards = session_rewards(model, samples, sessions, batch_size=4, device=CPU)
    np.testing.assert_allclose(rewards, got.sum(axis=-1), rtol=1e-5)


def test_score_sessions_rejects_bad_input() -> None:
    model = _model("mean")
    samples = _samples(2, 2)
    with pytest.raises(ValueError, match="ids in"):
        score_sessions(model, samples, np.array([[[0, NUM_ITEMS]], [[1, 2]]]), batch_size=4, device=CPU)
    with pytest.raises(ValueError, match=r"\[U=2, N, M\]"):
        score_sessions(model, samples, np.zeros((3, 1, 2), np.int64), batch_size=4, device=CPU)
    stranger = SampleSet.from_samples([Sample(NUM_USERS, np.array([1]), np.array([2, -1]), np.zeros((2, 3)))], SIGNALS)
    with pytest.raises(ValueError, match=f"samples hold user id {NUM_USERS} but the reward model has {NUM_USERS}"):
        score_sessions(model, stranger, np.zeros((1, 1, 2), np.int64), batch_size=4, device=CPU)


def test_without_user_id_table_the_user_feature_is_ignored() -> None:
    model = _model("attention", user_id_embedding=False)
    assert list(model.ec.embeddings) == ["reward_item"]
    samples = _samples(3, 2)
    other_users = SampleSet(
        samples.user[::-1].copy(),
        samples.history_values,
        samples.history_offsets,
        samples.target,
        samples.labels,
        SIGNALS,
    )
    with torch.no_grad():
        torch.testing.assert_close(model(_batch(samples)).logits, model(_batch(other_users)).logits)


def test_code_tokens_and_the_code_keys_of_a_batch_by_hand() -> None:
    tokens = code_tokens(CODES)  # level 0 has codes 0-1, so level 1's codes start at 2
    assert tokens[[0, 5, 6, 11]].tolist() == [[0, 2], [0, 7], [1, 2], [1, 7]]
    samples = SampleSet.from_samples(
        [
            Sample(0, np.array([6, 1]), np.array([11, -1, 0]), np.zeros((3, 3), np.float32)),
            Sample(1, np.array([], np.int64), np.array([7, 8, -1]), np.zeros((3, 3), np.float32)),
        ],
        SIGNALS,
    )
    batch = RewardTransform("mean", tokens)(collate_samples(samples))
    assert batch.features.keys() == ["history_item", "user_id", "session_item", "history_code", "session_code"]
    assert batch.features["history_code"].values().tolist() == [1, 2, 0, 3]
    assert batch.features["history_code"].lengths().tolist() == [4, 0]
    assert batch.features["session_code"].values().tolist() == [1, 7, 0, 2, 1, 3, 1, 4]
    assert batch.features["session_code"].lengths().tolist() == [4, 4]
    for bad in (torch.tensor([0, 1]), torch.tensor([[0, -1]])):
        with pytest.raises(ValueError, match="item_codes must be"):
            code_tokens(bad)


def test_an_item_vector_is_its_id_row_plus_its_code_rows() -> None:
    model = _model("attention", semantic_ids=True)
    samples = SampleSet.from_samples(
        [Sample(2, np.array([3]), np.array([6, 11]), np.zeros((2, 3), np.float32))], SIGNALS
    )
    with torch.no_grad():
        embedded = model.ec(_batch(samples, model=model).features)
        vectors = model.item_vectors(embedded, "session_item", "session_code")
    items, codes = model.ec.embeddings["reward_item"].weight, model.ec.embeddings["reward_code"].weight
    tokens = model.item_tokens
    for row, item in enumerate((6, 11)):
        expected = items[item] + codes[tokens[item, 0]] + codes[tokens[item, 1]]
        torch.testing.assert_close(vectors[row], expected)


def test_items_with_the_same_codes_share_what_the_model_learns() -> None:
    """With the id rows zeroed, two items with equal codes score alike and items with other codes do not."""
    codes = CODES.clone()
    codes[9] = codes[2]  # item 9 now has item 2's codes
    torch.manual_seed(0)
    model = SessionRewardModel(
        RewardModelConfig(embedding_dim=8), NUM_USERS, NUM_ITEMS, SIGNALS, item_codes=codes
    ).eval()
    with torch.no_grad():
        for table in model.ec.embeddings.values():
            table.weight.normal_()
        model.ec.embeddings["reward_item"].weight.zero_()
    samples = _samples(1, 1)
    got = score_sessions(model, samples, np.array([[[2], [9], [3]]]), batch_size=4, device=CPU)[0]
    np.testing.assert_allclose(got[0], got[1], rtol=1e-6)
    assert np.abs(got[0] - got[2]).max() > 1e-4


def test_score_sessions_of_a_semantic_id_model_equals_forward() -> None:
    model = _model("attention", semantic_ids=True)
    samples = _samples(4, 3, seed=2)
    with torch.no_grad():
        expected = model(_batch(samples, model=model)).probabilities.numpy()
    got = score_sessions(model, samples, samples.target[:, None, :], batch_size=2, device=CPU)[:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_semantic_ids_need_the_codes_of_every_item() -> None:
    with pytest.raises(ValueError, match="no item_codes were given"):
        SessionRewardModel(RewardModelConfig(embedding_dim=8), NUM_USERS, NUM_ITEMS, SIGNALS)
    with pytest.raises(ValueError, match="item_codes has 11 rows but num_items=12"):
        SessionRewardModel(RewardModelConfig(embedding_dim=8), NUM_USERS, NUM_ITEMS, SIGNALS, item_codes=CODES[:11])
    assert _model("mean").item_tokens is None and "reward_code" not in _model("mean").ec.embeddings


def test_embedding_init_sets_the_range_of_every_table() -> None:
    torch.manual_seed(0)
    model = SessionRewardModel(
        RewardModelConfig(embedding_dim=8, user_id_embedding=True, embedding_init=0.3),
        NUM_USERS,
        NUM_ITEMS,
        SIGNALS,
        item_codes=CODES,
    )
    for name, table in model.ec.embeddings.items():
        assert table.weight.abs().max() <= 0.3 and table.weight.abs().max() > 0.15, name
    default = SessionRewardModel(
        RewardModelConfig(embedding_dim=8, embedding_init=0.0, semantic_ids=False), NUM_USERS, NUM_ITEMS, SIGNALS
    )
    assert default.ec.embeddings["reward_item"].weight.abs().max() <= math.sqrt(1 / NUM_ITEMS)
    with pytest.raises(ConfigError, match="reward.embedding_init=-0.1"):
        RewardModelConfig(embedding_init=-0.1)


def _plain_losses(module: RewardTrainModule, batches: List[RewardBatch], lr: float) -> List[float]:
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    losses = []
    for batch in batches:
        loss, _ = module(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("semantic_ids", [False, True])
def test_dmp_sparse_dist_pipeline_matches_plain_loop(tmp_path: Path, semantic_ids: bool) -> None:
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    lr = 0.1
    module = RewardTrainModule(_model("attention", semantic_ids=semantic_ids).train())
    batches = [_batch(_samples(6, 3, seed=seed), model=module.model) for seed in range(4)]
    expected = _plain_losses(copy.deepcopy(module), batches, lr)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        apply_optimizer_in_backward(torch.optim.SGD, module.model.ec.parameters(), {"lr": lr})
        sharders = [EmbeddingCollectionSharder()]
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu"))
        plan = planner.collective_plan(module, sharders, dist.GroupMember.WORLD)
        dmp = DistributedModelParallel(module, device=CPU, plan=plan, sharders=sharders)
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda params: torch.optim.SGD(params, lr=lr)
        )
        pipeline = TrainPipelineSparseDist(
            dmp, CombinedOptimizer([dmp.fused_optimizer, dense]), device=CPU, execute_all_batches=True
        )
        losses, feed = [], iter(batches)
        while True:
            try:
                losses.append(pipeline.progress(feed)[0].item())
            except StopIteration:
                break
        assert losses == pytest.approx(expected, rel=1e-5)
        assert len(pipeline._pipelined_modules) == 1  # the EmbeddingCollection's input_dist was pipelined
    finally:
        dist.destroy_process_group()
