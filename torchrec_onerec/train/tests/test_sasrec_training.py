"""SASRec training on TorchRec's stack (``train.trainer.fit``) on the tiny synthetic world."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from torchrec_onerec.config import load_config
from torchrec_onerec.data.splits import split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.eval.baselines import evaluate_popularity
from torchrec_onerec.eval.sasrec import evaluate_sasrec
from torchrec_onerec.models.sasrec import load_sasrec
from torchrec_onerec.models.sasrec_config import SASRecConfig
from torchrec_onerec.train.sasrec_training import SASREC_FILE, train_sasrec
from torchrec_onerec.optim_config import OptimConfig

CPU = torch.device("cpu")
SMALL = SASRecConfig(
    embedding_dim=32,
    num_heads=2,
    ffn_hidden=64,
    dropout=0.1,
    batch_size=128,
    optim=OptimConfig(epochs=6, learning_rate=3e-3, sparse_learning_rate=0.1),
)


def _split(protocol: str):
    overrides = ["split.protocol=A", "split.session_items=1"] if protocol == "A" else ["split.min_history=0"]
    cfg = load_config("configs/tiny.yaml", overrides)
    data = load_dataset(cfg.data, seed=0)
    return cfg, data, split_data(data, cfg.split)


def _train(tmp_path_factory, protocol: str, config: SASRecConfig = SMALL):
    cfg, data, split = _split(protocol)
    folder = tmp_path_factory.mktemp(f"sasrec_{protocol}")
    result = train_sasrec(
        config,
        split,
        num_items=data.num_items,
        max_history=cfg.split.max_history,
        train_config=cfg.train,
        out_dir=folder,
        device=CPU,
        seed=0,
        progress=False,
    )
    return cfg, data, split, folder, result


@pytest.fixture(scope="module")
def protocol_a(tmp_path_factory):
    return _train(tmp_path_factory, "A")


def test_protocol_a_sasrec_keeps_its_best_epoch_and_beats_popularity(protocol_a):
    cfg, data, split, folder, result = protocol_a
    rows = list(csv.DictReader(open(folder / "sasrec.csv")))
    assert len(rows) == result.epochs == SMALL.optim.epochs and result.selection_metric == "ndcg@10"
    values = [float(row["ndcg@10"]) for row in rows]
    assert result.best_value == max(values) and result.best_epoch == 1 + int(np.argmax(values))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert json.loads((folder / "result.json").read_text())["world_size"] == 1
    model = load_sasrec(folder / SASREC_FILE)
    scored = evaluate_sasrec(model, split.test, config=cfg.eval, protocol="A", num_items=data.num_items)
    floor = evaluate_popularity(split.test, split.train_sequences, data.num_items, config=cfg.eval, protocol="A")
    assert np.array_equal(scored.per_user["sample"], floor.per_user["sample"])
    assert scored.metrics["ndcg@10"] > floor.metrics["ndcg@10"] and scored.metrics["legality"] == 1.0


def test_protocol_b_sessions_are_the_ranking_in_order(tmp_path_factory):
    cfg, data, split, folder, result = _train(
        tmp_path_factory, "B", replace(SMALL, optim=OptimConfig(epochs=1, learning_rate=3e-3, sparse_learning_rate=0.1))
    )
    scored = evaluate_sasrec(
        load_sasrec(folder / SASREC_FILE), split.test, config=cfg.eval, protocol="B", num_items=data.num_items
    )
    U, R, M = scored.sessions.shape
    assert M == cfg.split.session_items and R * M >= max(cfg.eval.ks)
    assert np.all(np.diff(scored.scores, axis=1) <= 0)  # sessions in ranking order
    assert len(np.unique(scored.sessions[0])) == R * M  # no item twice


def test_training_is_deterministic_for_a_seed(tmp_path_factory):
    one_epoch = replace(SMALL, optim=OptimConfig(epochs=1, learning_rate=3e-3, sparse_learning_rate=0.1))
    first, second = (_train(tmp_path_factory, "A", one_epoch)[3] for _ in range(2))
    a, b = (torch.load(folder / SASREC_FILE, weights_only=True)["state_dict"] for folder in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
