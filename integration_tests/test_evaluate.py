"""End to end on ``configs/tiny.yaml``: data -> split -> tokenizer -> an untrained tiny model -> protocol A and B
evaluation (docs/EVAL.md) and the popularity floor, every metric key present, in a few seconds."""

from __future__ import annotations

import time
from typing import Dict, Tuple, Union

import numpy as np
import pytest
import torch

from torchrec_onerec.config import OneRecConfig, load_config
from torchrec_onerec.data.splits import SplitA, SplitB, split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.eval.baselines import evaluate_popularity
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer import Codebook, fit_tokenizer, item_embeddings

COMMON = {
    "legality",
    "repeat_rate",
    "repeat_slot_rate",
    "filler_rate",
    "list_length",
    "num_users",
    "recall@5",
    "recall@10",
    "ndcg@5",
    "ndcg@10",
    "coverage@5",
    "coverage@10",
}
EXPECTED = {"A": COMMON, "B": COMMON | {"recall@m", "ndcg@m", "coverage@m"}}


def _pipeline(protocol: str) -> Tuple[OneRecConfig, Union[SplitA, SplitB], Codebook, int]:
    cfg = load_config("configs/tiny.yaml", [f"split.protocol={protocol}"])
    data = load_dataset(cfg.data, seed=cfg.seed)
    split = split_data(data, cfg.split)
    embeddings = item_embeddings(data, cfg.tokenizer, train_interactions=split.train_sequences, seed=cfg.seed)
    book, _ = fit_tokenizer(embeddings, cfg.tokenizer, seed=cfg.seed, item_ids=data.raw_item_ids)
    return cfg, split, book, data.num_items


@pytest.mark.parametrize("protocol", ["A", "B"])
def test_evaluation_end_to_end(protocol: str) -> None:
    cfg, split, book, num_items = _pipeline(protocol)
    torch.manual_seed(cfg.seed)
    config = model_size("tiny", max_history=cfg.split.max_history, session_items=cfg.split.session_items)
    model = OneRecModel(config, book.vocab_sizes)
    eval_config = EvalConfig(beam_size=10, num_return=10, ks=[5, 10], batch_size=64)
    start = time.perf_counter()
    result = evaluate_generative(
        model,
        split.test,
        codes=book.codes,
        prefix_index=book.prefix_index(),
        config=eval_config,
        protocol=protocol,
        max_history=cfg.split.max_history,
        progress=False,
    )
    seconds = time.perf_counter() - start
    floor = evaluate_popularity(split.test, split.train_sequences, num_items, config=eval_config, protocol=protocol)
    assert seconds < 60.0  # about 1 s alone on one CPU core; generous for a shared machine
    for outcome in (result, floor):
        assert set(outcome.metrics) == EXPECTED[protocol]
        assert outcome.metrics["num_users"] == len(split.test) - outcome.info["users_without_target"]
        for name, value in outcome.metrics.items():
            if name not in ("num_users", "list_length"):
                assert 0.0 <= value <= 1.0, (name, value)
        assert all(len(values) == outcome.metrics["num_users"] for values in outcome.per_user.values())
        assert np.array_equal(outcome.per_user["sample"], result.per_user["sample"])  # the same users
    M = 1 if protocol == "A" else cfg.split.session_items
    assert result.sessions.shape == (len(split.test), 10, M) and result.metrics["legality"] == 1.0
    assert result.metrics["repeat_rate"] == 0.0 and result.info["protocol"] == protocol
    metrics: Dict[str, float] = {k: round(v, 4) for k, v in result.metrics.items()}
    print(
        f"protocol {protocol}: {seconds:.2f}s model {metrics} popularity "
        f"ndcg@10={floor.metrics['ndcg@10']:.4f} recall@10={floor.metrics['recall@10']:.4f}"
    )
