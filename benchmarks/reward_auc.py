"""Test-day AUC of the session reward model (docs/METHOD.md section 3; docs/EVAL.md protocol B), attention against the
pooling baselines, as JSON lines.

For each ``--pooling`` the model is trained with ``train_reward_model`` (DMP + TrainPipelineSparseDist, the
``reward`` defaults plus ``--set`` overrides; item semantic IDs from the config's tokenizer, fitted here as the
``tokenize`` stage does) on the training days' sessions of m impressions (and every training impression as a
1-item session), selected on the validation days, and scored on the test days:
- ``session_auc``: per tower, each test session of m impressions against "some item has the signal";
- ``session_auc_same_length``: the same, counting only pairs of sessions with the same number of items;
- ``impression_auc``: every test impression scored as a 1-item session against its own label.
On the synthetic world a first line gives the ceiling: the same AUCs of the world's true probabilities (each
impression's true P given its logged session, and 1 - prod(1 - P) for a session).

    nice .venv/bin/python benchmarks/reward_auc.py [--config configs/synthetic.yaml] [--pooling attention sum mean]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
from omegaconf import OmegaConf

from torchrec_onerec.config import OneRecConfig, load_config
from torchrec_onerec.data.impressions import impression_samples
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.splits import SplitB, split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.datasets.synthetic import load_synthetic
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.tokenizer.embeddings import item_embeddings
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer
from torchrec_onerec.eval.reward_auc import auc, auc_within_groups, evaluate_reward_model
from torchrec_onerec.train.reward_io import load_reward_model
from torchrec_onerec.train.reward_training import train_reward_model
from torchrec_onerec.train.config import TrainConfig


def _rounded(metrics: Dict[str, Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    return {key: {name: round(value, 4) for name, value in values.items()} for key, values in metrics.items()}


def _oracle(cfg: OneRecConfig, split: SplitB, sessions: SampleSet, impressions: SampleSet) -> Dict[str, Any]:
    """AUCs of the synthetic world's true probabilities on the test days (the ceiling of any reward model)."""
    data, world = load_synthetic(cfg.data.synthetic, seed=cfg.seed)
    frame = data.interactions
    width = cfg.data.synthetic.impressions_per_session  # the log is session by session, ``width`` rows each
    truth = world.item_probabilities(
        frame["user_id"].to_numpy().reshape(-1, width)[:, 0], frame["item_id"].to_numpy().reshape(-1, width)
    )
    keys = ["user_id", "item_id", "timestamp"]
    table = frame[keys].assign(**{f"p_{name}": values.reshape(-1) for name, values in truth.items()})
    test = split.impressions["test"].merge(table, on=keys, how="left", validate="one_to_one")
    out: Dict[str, Dict[str, float]] = {}
    for signal, column in cfg.split.labels.items():
        p = test[f"p_{column}"].to_numpy()  # rows in (user, time) order, as impression_samples reads them
        per_slot = np.zeros(sessions.target.shape)
        per_slot[sessions.target >= 0] = p
        any_positive = 1.0 - np.prod(1.0 - per_slot, axis=1)
        s = list(sessions.signals).index(signal)
        labels = (sessions.labels[..., s] > 0).any(axis=1)
        out[signal] = {
            "session_auc": auc(any_positive, labels),
            "session_auc_same_length": auc_within_groups(any_positive, labels, sessions.target_lengths),
            "impression_auc": auc(p, impressions.labels[:, 0, s]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--pooling", nargs="+", default=["attention", "sum", "mean"])
    parser.add_argument("--set", nargs="*", default=[], help="reward config overrides, e.g. optim.epochs=3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 was fastest for this small model)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = load_config(args.config, ["split.protocol=B"])
    data = load_dataset(cfg.data, seed=cfg.seed)
    split = split_data(data, cfg.split)
    assert isinstance(split, SplitB)
    m, n = cfg.split.session_items, cfg.split.max_history

    def samples(window: str, items: int) -> SampleSet:
        return impression_samples(split, window, num_users=data.num_users, items_per_sample=items, max_history=n)

    train, train_impressions, valid = samples("train", m), samples("train", 1), samples("valid", m)
    embeddings = item_embeddings(data, cfg.tokenizer, train_interactions=split.train_sequences, seed=cfg.seed)
    codebook, _ = fit_tokenizer(
        embeddings, cfg.tokenizer, seed=cfg.seed, device=torch.device("cpu"), item_ids=data.raw_item_ids
    )
    test, test_impressions = samples("test", m), samples("test", 1)
    common = {
        "config": args.config,
        "m": m,
        "n": n,
        "users": data.num_users,
        "items": data.num_items,
        "train_sessions": len(train),
        "train_impressions": len(train_impressions),
        "test_sessions": len(test),
        "test_impressions": len(test_impressions),
        "device": "cpu",
        "threads": args.threads,
        "machine": platform.machine(),
    }
    print(json.dumps({"what": "data", **common, "seconds": round(time.perf_counter() - start, 2)}), flush=True)
    if cfg.data.source == "synthetic":
        oracle = _oracle(cfg, split, test, test_impressions)
        print(
            json.dumps({"what": "oracle: the world's true probabilities", **common, "test": _rounded(oracle)}),
            flush=True,
        )
    overrides = OmegaConf.to_container(OmegaConf.from_dotlist(list(args.set)))
    for pooling in args.pooling:
        merged = OmegaConf.merge(OmegaConf.structured(RewardModelConfig), overrides, {"pooling": pooling})
        config = OmegaConf.to_object(merged)
        assert isinstance(config, RewardModelConfig)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            result = train_reward_model(
                config,
                train,
                valid,
                num_users=data.num_users,
                num_items=data.num_items,
                out_dir=Path(folder),
                train_config=TrainConfig(),
                seed=args.seed,
                device=torch.device("cpu"),
                train_impressions=train_impressions,
                item_codes=codebook.codes,
                progress=False,
            )
            model = load_reward_model(Path(folder) / "reward_model.pt", num_items=data.num_items, signals=train.signals)
        metrics = evaluate_reward_model(model, test, test_impressions, batch_size=1024, device=torch.device("cpu"))
        line = {
            "what": f"reward model, pooling={pooling}",
            **common,
            "reward": asdict(config),
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs,
            "steps": result.steps,
            "valid_selection_auc": round(result.best_value or float("nan"), 4),
            "train_seconds": round(result.train_seconds, 2),
            "seconds": round(time.perf_counter() - start, 2),
            "parameters": sum(p.numel() for p in model.parameters()),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "test": _rounded(metrics),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
