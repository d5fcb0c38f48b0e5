"""Quality of the cascade baseline (two-tower -> DLRM ranker -> top-m) beside the popularity arm, as JSON lines.

Loads a run config (default: the synthetic world, docs/EVAL.md protocol B), trains the cascade on TorchRec with
``train_cascade`` (DMP, TrainPipelineSparseDist; one process), then scores the test split with
``evaluate_cascade`` and ``evaluate_popularity`` on the same users. Lines: ``train`` (per-model epochs, best
validation value, seconds, ranker AUCs per task on validation and test), then one ``evaluate`` line per arm
(every metric of ``eval.protocols`` and the settings), and ``wall`` (the whole script).

    nice .venv/bin/python benchmarks/cascade_quality.py [--config configs/synthetic.yaml] [--threads 1] \\
        [--set key=value ...] [--cascade retrieval.optim.epochs=5 ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from typing import Any, Dict

import torch
import torchrec
from omegaconf import OmegaConf

from torchrec_onerec.config import load_config
from torchrec_onerec.data.splits import split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.eval.baselines import evaluate_popularity
from torchrec_onerec.eval.cascade import evaluate_cascade
from torchrec_onerec.models.cascade import load_cascade
from torchrec_onerec.models.cascade_config import CascadeConfig
from torchrec_onerec.train.cascade_training import train_cascade


def _emit(record: Dict[str, Any]) -> None:
    print(json.dumps(record, sort_keys=True, default=float), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="run-config overrides, e.g. split.max_history=20")
    parser.add_argument(
        "--cascade", nargs="*", default=[], help="cascade-section overrides, e.g. ranker.optim.epochs=2"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these sizes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cfg = load_config(args.config, args.set)
    cascade = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(CascadeConfig), OmegaConf.from_dotlist(args.cascade))
    )
    assert isinstance(cascade, CascadeConfig)
    data = load_dataset(cfg.data, seed=cfg.seed)
    split = split_data(data, cfg.split)
    setting = {
        "config": args.config,
        "overrides": args.set,
        "cascade": OmegaConf.to_container(OmegaConf.structured(cascade)),
        "threads": args.threads,
        "torch": torch.__version__,
        "torchrec": torchrec.__version__,
        "machine": platform.machine(),
        "protocol": cfg.split.protocol,
        "users": data.num_users,
        "items": data.num_items,
    }
    with tempfile.TemporaryDirectory() as folder:
        result = train_cascade(
            cascade,
            split,
            data,
            train_config=cfg.train,
            max_history=cfg.split.max_history,
            out_dir=folder,
            device=torch.device("cpu"),
            seed=cfg.seed,
            progress=False,
        )
        _emit(
            {
                "what": "train",
                **setting,
                "tasks": result.tasks,
                "ranker_valid_auc": result.ranker_valid_auc,
                "ranker_test_auc": result.ranker_test_auc,
                **{
                    f"{m.model}_{key}": getattr(m, key)
                    for m in (result.two_tower, result.ranker)
                    for key in (
                        "epochs",
                        "steps",
                        "selection_metric",
                        "best_epoch",
                        "best_value",
                        "train_seconds",
                        "samples_per_s",
                        "history",
                    )
                },
            }
        )
        recommender = load_cascade(folder)
    arms = {
        "cascade": evaluate_cascade(
            recommender, split.test, config=cfg.eval, protocol=cfg.split.protocol, num_items=data.num_items
        ),
        "popularity": evaluate_popularity(
            split.test, split.train_sequences, data.num_items, config=cfg.eval, protocol=cfg.split.protocol
        ),
    }
    for name, arm in arms.items():
        _emit({"what": "evaluate", "arm": name, "split": "test", "metrics": arm.metrics, "info": arm.info})
    _emit(
        {
            "what": "wall",
            "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


if __name__ == "__main__":
    main()
