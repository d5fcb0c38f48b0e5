"""Cascade training on TorchRec's stack (DMP, TrainPipelineSparseDist) on the tiny synthetic world, protocols B, A."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from torchrec_onerec.config import load_config
from torchrec_onerec.data.splits import SplitA, SplitB, split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.eval.baselines import evaluate_popularity, popularity_ranking
from torchrec_onerec.eval.cascade import evaluate_cascade
from torchrec_onerec.eval.metrics import ranking_metrics
from torchrec_onerec.eval.protocols import evaluation_users
from torchrec_onerec.models.cascade import load_cascade
from torchrec_onerec.models.cascade_config import CascadeConfig, RankerConfig, RetrievalConfig
from torchrec_onerec.train.cascade_training import train_cascade
from torchrec_onerec.train.trainer import baseline_stack
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.optim_config import OptimConfig

CANDIDATES = 30


def _train(tmp_path_factory, overrides, cascade: CascadeConfig):
    cfg = load_config("configs/tiny.yaml", overrides)
    data = load_dataset(cfg.data, seed=0)
    split = split_data(data, cfg.split)
    folder = tmp_path_factory.mktemp("cascade")
    result = train_cascade(
        cascade,
        split,
        data,
        train_config=cfg.train,
        max_history=cfg.split.max_history,
        out_dir=folder,
        device=torch.device("cpu"),
        seed=0,
        progress=False,
    )
    return cfg, data, split, folder, result


@pytest.fixture(scope="module")
def protocol_b(tmp_path_factory):
    cascade = CascadeConfig(
        RetrievalConfig(optim=OptimConfig(epochs=3, learning_rate=3e-3), batch_size=128, num_candidates=CANDIDATES),
        RankerConfig(optim=OptimConfig(epochs=5, learning_rate=3e-3), batch_size=256),
    )
    return _train(tmp_path_factory, ["split.protocol=B", "split.min_history=0"], cascade)


@pytest.fixture(scope="module")
def protocol_a(tmp_path_factory):
    cascade = CascadeConfig(
        RetrievalConfig(optim=OptimConfig(epochs=2, learning_rate=3e-3), batch_size=256, num_candidates=CANDIDATES),
        RankerConfig(optim=OptimConfig(epochs=2, learning_rate=3e-3), batch_size=256, negatives_per_positive=2),
    )
    return _train(tmp_path_factory, ["split.protocol=A", "split.session_items=1"], cascade)


def test_protocol_b_cascade_beats_the_popularity_arm(protocol_b):
    cfg, data, split, folder, _ = protocol_b
    assert isinstance(split, SplitB)
    cascade = evaluate_cascade(
        load_cascade(folder), split.test, config=cfg.eval, protocol="B", num_items=data.num_items
    )
    floor = evaluate_popularity(split.test, split.train_sequences, data.num_items, config=cfg.eval, protocol="B")
    assert np.array_equal(cascade.per_user["sample"], floor.per_user["sample"])
    for metric in ("recall@10", "ndcg@10", "recall@m", "ndcg@m"):
        assert cascade.metrics[metric] > floor.metrics[metric], metric


def test_ranker_auc_is_well_above_chance_on_every_task(protocol_b):
    _, _, split, _, result = protocol_b
    assert result.tasks == list(split.train.signals) == ["swt", "vtr", "ltr"]
    assert result.ranker_test_auc["auc_mean"] > 0.56
    assert min(result.ranker_test_auc[f"auc_{task}"] for task in result.tasks) > 0.53


def test_retrieval_finds_more_validation_positives_than_the_most_popular_items(protocol_b):
    _, data, split, _, result = protocol_b
    valid = split.valid.subset(evaluation_users(split.valid)[0])
    popular = np.broadcast_to(
        popularity_ranking(split.train_sequences, data.num_items, CANDIDATES), (len(valid), CANDIDATES)
    )
    floor = float(ranking_metrics(popular, valid.target, [CANDIDATES])[f"recall@{CANDIDATES}"].mean())
    assert result.two_tower.best_value > floor + 0.05


def test_the_folder_records_every_epoch_and_keeps_the_best_one(protocol_b):
    _, _, _, folder, result = protocol_b
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["model"] == "two_tower"] == [1, 2, 3]
    assert [r["epoch"] for r in records if r["model"] == "ranker" and "epoch" in r] == [1, 2, 3, 4, 5]
    assert len(list(csv.DictReader(open(folder / "ranker.csv")))) == 5
    for model in (result.two_tower, result.ranker):
        values = [record[model.selection_metric] for record in model.history]
        assert model.best_epoch == int(np.argmax(values)) + 1 and model.best_value == max(values)
        assert model.plan and all(p["sharding_type"] == "table_wise" for p in model.plan.values())
    assert result.ranker_valid_auc["auc_mean"] == pytest.approx(result.ranker.best_value)  # the kept model is saved
    assert json.loads((folder / "result.json").read_text())["tasks"] == result.tasks
    assert set(json.loads((folder / "sharding_plan.json").read_text())["ranker"]) == {"rank_user", "rank_item"}


def test_protocol_a_trains_positives_against_sampled_negatives(protocol_a):
    cfg, data, split, folder, result = protocol_a
    assert isinstance(split, SplitA)
    assert result.tasks == ["positive"] and result.ranker_test_auc["auc_positive"] > 0.65
    cascade = evaluate_cascade(
        load_cascade(folder), split.test, config=cfg.eval, protocol="A", num_items=data.num_items
    )
    assert cascade.sessions.shape[1:] == (10, 1)
    assert cascade.metrics["recall@10"] > 2 * 10 / data.num_items  # twice a random ranking's


def test_row_wise_sharding_is_refused_on_cpu():
    with pytest.raises(ValueError, match="row-wise on CUDA only"):
        baseline_stack(TrainConfig(sharding_type="row_wise"), torch.device("cpu"))


def test_training_is_deterministic_for_a_seed(tmp_path_factory):
    cascade = CascadeConfig(
        RetrievalConfig(optim=OptimConfig(epochs=1, learning_rate=3e-3), batch_size=256, num_candidates=CANDIDATES),
        RankerConfig(optim=OptimConfig(epochs=1, learning_rate=3e-3), batch_size=512),
    )
    overrides = ["split.protocol=B", "split.min_history=0"]
    first, second = (_train(tmp_path_factory, overrides, cascade)[3] for _ in range(2))
    for name in ("two_tower.pt", "ranker.pt"):
        a = torch.load(first / name, weights_only=True)["state_dict"]
        b = torch.load(second / name, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
