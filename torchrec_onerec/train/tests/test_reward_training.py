"""Reward-model training on TorchRec learns on a small synthetic world; evaluation, saving and loading."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
import torch.distributed as dist

from torchrec_onerec.config import load_config
from torchrec_onerec.data.impressions import impression_samples
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.data.splits import SplitB, split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.eval.reward_auc import auc, evaluate_reward_model
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_batch import code_tokens
from torchrec_onerec.models.reward_scoring import score_sessions
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.run_dir import load_tagged, save_tagged
from torchrec_onerec.train.reward_io import REWARD_FORMAT, load_reward_model, save_reward_model
from torchrec_onerec.train.reward_training import single_item_sessions, train_reward_model
from torchrec_onerec.train.trainer import ModelTrainResult
from torchrec_onerec.train.config import TrainConfig

CPU = torch.device("cpu")
# The tiny world with a strong user-topic signal: on the plain tiny world even the users' true interest in an
# item's topic predicts a click with AUC 0.59 only, too little for a seconds-long test to show learning.
WORLD = [
    "data.synthetic.logging_temperature=10",
    "data.synthetic.noise=0",
    "data.synthetic.num_topics=3",
    "data.synthetic.interest_concentration=0.1",
]
CONFIG = RewardModelConfig(
    batch_size=32,
    optim=dataclasses.replace(RewardModelConfig().optim, epochs=6, learning_rate=0.003),
    user_id_embedding=False,
)


@pytest.fixture(scope="module")
def world() -> Dict[str, object]:
    cfg = load_config("configs/tiny.yaml", ["split.protocol=B", "split.min_history=0", *WORLD])
    data = load_dataset(cfg.data, seed=0)
    split = split_data(data, cfg.split)
    assert isinstance(split, SplitB)
    m, n = cfg.split.session_items, cfg.split.max_history

    def samples(window: str, items: int) -> SampleSet:
        return impression_samples(split, window, num_users=data.num_users, items_per_sample=items, max_history=n)

    # semantic IDs by hand: (topic, rank of the item within its topic), unique per item
    topic = data.items.sort_values("item_id")["topic"].to_numpy()
    rank = np.zeros(len(topic), np.int64)
    for t in np.unique(topic):
        rank[topic == t] = np.arange((topic == t).sum())
    codes = torch.from_numpy(np.stack([topic, rank], axis=1).astype(np.int64))
    return {
        "data": data,
        "codes": codes,
        "train": samples("train", m),
        "train_impressions": samples("train", 1),
        "valid": samples("valid", m),
        "test": samples("test", m),
        "test_impressions": samples("test", 1),
    }


def _train(config: RewardModelConfig, world: Dict[str, object], out: Path) -> ModelTrainResult:
    """Train on the world's training days, validate on its validation days, write to ``out``."""
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")
    data = world["data"]
    return train_reward_model(
        config,
        world["train"],
        world["valid"],
        num_users=data.num_users,
        num_items=data.num_items,
        out_dir=out,
        train_config=TrainConfig(),
        seed=0,
        device=CPU,
        train_impressions=world["train_impressions"],
        item_codes=world["codes"],
        progress=False,
    )


@pytest.fixture(scope="module")
def trained(world: Dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> Tuple[ModelTrainResult, Path]:
    out = tmp_path_factory.mktemp("reward")
    return _train(CONFIG, world, out), out


def test_training_beats_chance_on_the_test_days(world: Dict[str, object], trained) -> None:
    result, out = trained
    data = world["data"]
    model = load_reward_model(out / "reward_model.pt", num_items=data.num_items, signals=["swt", "vtr", "ltr"])
    metrics = evaluate_reward_model(model, world["test"], world["test_impressions"], batch_size=256, device=CPU)
    assert metrics["vtr"]["impression_auc"] > 0.6
    assert metrics["vtr"]["session_auc_same_length"] > 0.56
    assert metrics["all"]["impressions"] == len(world["test_impressions"])
    assert metrics["vtr"]["impression_positive_rate"] == pytest.approx(world["test_impressions"].labels[:, 0, 1].mean())
    assert result.best_value is not None and result.best_value > 0.55
    assert result.plan.keys() == {"reward_item", "reward_code"}
    assert torch.equal(model.item_tokens, code_tokens(world["codes"]))  # the file carries the codes it was trained on


def test_training_writes_metrics_and_the_best_model(world: Dict[str, object], trained) -> None:
    result, out = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, result.epochs + 1))
    assert result.epochs == CONFIG.optim.epochs or result.stop_reason == "early_stopping"
    best = [r for r in records if r["best"]]
    assert best[-1]["epoch"] == result.best_epoch
    assert best[-1]["valid_session_auc_same_length"] == result.best_value
    assert records[-1]["loss"] < records[0]["loss"]
    assert json.loads((out / "result.json").read_text())["best_epoch"] == result.best_epoch
    # the saved model is the best epoch's: its validation score is reproduced from the file
    model = load_reward_model(Path(result.model_path))
    metrics = evaluate_reward_model(model, world["valid"], world["valid"], batch_size=256, device=CPU)
    assert metrics["all"]["session_auc_same_length"] == pytest.approx(result.best_value, abs=1e-6)


def test_training_needs_the_impressions_and_codes_it_is_configured_for(
    world: Dict[str, object], tmp_path: Path
) -> None:
    data = world["data"]
    with pytest.raises(ValueError, match="train_on_impressions"):
        train_reward_model(
            CONFIG,
            world["train"],
            world["valid"],
            num_users=data.num_users,
            num_items=data.num_items,
            out_dir=tmp_path,
            train_config=TrainConfig(),
            seed=0,
            device=CPU,
            item_codes=world["codes"],
        )
    with pytest.raises(ValueError, match="semantic_ids is true but no item_codes"):
        train_reward_model(
            CONFIG,
            world["train"],
            world["valid"],
            num_users=data.num_users,
            num_items=data.num_items,
            out_dir=tmp_path,
            train_config=TrainConfig(),
            seed=0,
            device=CPU,
            train_impressions=world["train_impressions"],
        )
    plain = dataclasses.replace(CONFIG, train_on_impressions=False, semantic_ids=False)
    largest_user, largest_item = world["train"].largest_ids()
    for users, items in ((largest_user, data.num_items), (data.num_users, largest_item)):
        with pytest.raises(
            ValueError, match=f"train holds user or item ids beyond num_users={users} / num_items={items}"
        ):
            train_reward_model(
                plain,
                world["train"],
                world["valid"],
                num_users=users,
                num_items=items,
                out_dir=tmp_path,
                train_config=TrainConfig(),
                seed=0,
                device=CPU,
            )


def _toy(path: Path, num_items: int = 5, signals=("vtr",)) -> None:
    model = SessionRewardModel(
        RewardModelConfig(embedding_dim=4, num_heads=1, semantic_ids=False), 3, num_items, list(signals)
    )
    save_reward_model(path, model.state_dict(), model.config, 3, num_items, list(signals))


def test_save_and_load_keep_the_codes_and_old_files_load_id_only(tmp_path: Path) -> None:
    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]])
    torch.manual_seed(0)
    model = SessionRewardModel(RewardModelConfig(embedding_dim=4, num_heads=1), 3, 5, ["vtr"], item_codes=codes)
    save_reward_model(tmp_path / "codes.pt", model.state_dict(), model.config, 3, 5, ["vtr"], codes)
    back = load_reward_model(tmp_path / "codes.pt")
    assert torch.equal(back.item_tokens, model.item_tokens)
    sample = SampleSet.from_samples([Sample(1, np.array([4, 2]), np.array([0]), np.zeros((1, 1), np.float32))], ["vtr"])
    sessions = np.array([[[0, 3], [1, -1]]])
    np.testing.assert_allclose(
        score_sessions(back, sample, sessions, batch_size=4, device=CPU),
        score_sessions(model.eval(), sample, sessions, batch_size=4, device=CPU),
        rtol=1e-6,
    )
    # a file written before reward.semantic_ids existed holds an id-only model and no codes
    _toy(tmp_path / "old.pt")
    data = load_tagged(tmp_path / "old.pt", REWARD_FORMAT, "save_reward_model")
    del data["config"]["semantic_ids"], data["item_codes"]
    save_tagged(tmp_path / "old.pt", REWARD_FORMAT, data)
    old = load_reward_model(tmp_path / "old.pt")
    assert not old.config.semantic_ids and old.item_tokens is None


def test_load_refuses_another_catalogue_or_other_signals(tmp_path: Path) -> None:
    path = tmp_path / "reward_model.pt"
    _toy(path)
    assert load_reward_model(path, num_items=5, num_users=3, signals=["vtr"]).signals == ["vtr"]
    with pytest.raises(ValueError, match="num_items=5, not the num_items=6"):
        load_reward_model(path, num_items=6)
    with pytest.raises(ValueError, match=r"signals=\['vtr'\]"):
        load_reward_model(path, signals=["swt", "vtr"])
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a file written by save_reward_model"):
        load_reward_model(tmp_path / "other.pt")


def test_evaluation_by_hand_and_a_one_class_signal_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "reward_model.pt"
    _toy(path, signals=("vtr", "ltr"))
    model = load_reward_model(path)
    labels = [
        np.array([[1, 0], [0, 0]], np.float32),
        np.zeros((2, 2), np.float32),
        np.array([[0, 0], [1, 0]], np.float32),
    ]
    sessions = SampleSet.from_samples(
        [Sample(u, np.array([4]), np.array([u, 3]), labels[u]) for u in range(3)], ["vtr", "ltr"]
    )
    metrics = evaluate_reward_model(model, sessions, sessions, batch_size=2, device=CPU)
    assert math.isnan(metrics["ltr"]["session_auc"]) and math.isnan(metrics["ltr"]["impression_auc"])
    assert metrics["vtr"]["session_positive_rate"] == pytest.approx(2 / 3)
    assert metrics["vtr"]["impression_positive_rate"] == pytest.approx(2 / 6)
    assert metrics["all"]["session_auc"] == metrics["vtr"]["session_auc"]  # the mean leaves ltr out
    # impression level by hand: each item scored alone, against its own label
    probabilities = np.array([[_alone(model, u, item) for item in (u, 3)] for u in range(3)])
    expected = auc(probabilities.reshape(-1), np.stack([lab[:, 0] for lab in labels]).reshape(-1))
    assert metrics["vtr"]["impression_auc"] == pytest.approx(expected)


def _alone(model: SessionRewardModel, user: int, item: int) -> float:
    """vtr probability of the 1-item session [item] for ``user`` with history [4]."""
    sample = SampleSet.from_samples(
        [Sample(user, np.array([4]), np.array([item]), np.zeros((1, 2), np.float32))], ["vtr", "ltr"]
    )
    return float(score_sessions(model, sample, np.array([[[item]]]), batch_size=1, device=CPU)[0, 0, 0])


def test_single_item_sessions_keep_every_impression(world: Dict[str, object]) -> None:
    impressions = world["train_impressions"]
    out = single_item_sessions(impressions, 3)
    assert len(out) == len(impressions) and out.session_items == 3
    assert (out.target[:, 1:] == -1).all() and np.array_equal(out.target[:, 0], impressions.target[:, 0])
    assert np.array_equal(out.labels[:, 0], impressions.labels[:, 0]) and not out.labels[:, 1:].any()


def test_history_attention_trains_through_the_pipeline_and_round_trips(
    world: Dict[str, object], tmp_path: Path
) -> None:
    data = world["data"]
    _train(dataclasses.replace(CONFIG, history_attention=True), world, tmp_path)
    model = load_reward_model(tmp_path / "reward_model.pt", num_items=data.num_items, signals=["swt", "vtr", "ltr"])
    assert model.history_attention is not None  # the file's config builds the attention back
    metrics = evaluate_reward_model(model, world["test"], world["test_impressions"], batch_size=256, device=CPU)
    assert metrics["vtr"]["impression_auc"] > 0.6
