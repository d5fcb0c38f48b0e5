"""Iterative preference alignment on the synthetic world with its true reward (docs/METHOD.md section 4), as JSON lines.

Runs the pipeline's ``data``, ``tokenize`` and ``train`` stages of a config (default ``configs/tiny.yaml``,
protocol B) in a run directory, then ``align_iteratively`` with the world's true expected session reward
(``SyntheticWorld.session_reward``, weights click 1, long_view 1, like 2) as the reward function: the pairs are
chosen by the truth, so the only question is whether DPO moves generation towards it. Lines:

- ``setup``: sizes, the trained model, timings;
- one ``iteration`` line per alignment iteration (pairs, DPO accuracy, KL to the reference, held-out rewards
  before and after; the held-out users are ``--eval-users`` validation samples);
- ``test``: on the test split's users, the true reward of the most probable generated session (``reward_top``),
  the mean and the best over the N beams, for the trained model and for the aligned one.

    nice .venv/bin/python benchmarks/ipa_synthetic.py [--iterations 3] [--candidates 16] [--fraction 0.25]
        [--dpo-weight 0 (the control: the same extra NTP training without DPO)] [config overrides key=value]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

import torch

from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.alignment.ipa import align_iteratively
from torchrec_onerec.alignment.ipa_stats import generation_stats
from torchrec_onerec.config import load_config
from torchrec_onerec.datasets.synthetic import load_synthetic
from torchrec_onerec.eval.protocols import evaluation_users
from torchrec_onerec.eval.simulated import world_reward_fn
from torchrec_onerec.pipeline import run_pipeline
from torchrec_onerec.context import PipelineContext
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.train.distributed import DistContext
from torchrec_onerec.train.export import load_exported
from torchrec_onerec.optim_config import OptimConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--run-dir", default="", help="default: a temporary folder")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=16, help="N beams per sampled user")
    parser.add_argument("--fraction", type=float, default=0.25, help="r_DPO")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--dpo-weight", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sparse-lr", type=float, default=0.01)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per iteration")
    parser.add_argument("--eval-users", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = args.run_dir or tempfile.mkdtemp(prefix="ipa-")
    config = load_config(args.config, [f"run_dir={run_dir}", "device=cpu", *args.overrides])
    start = time.perf_counter()
    summary = run_pipeline(config, stages=("data", "tokenize", "train"))
    setup_seconds = time.perf_counter() - start
    ctx = PipelineContext(config, RunDir(run_dir))
    _, world = load_synthetic(config.data.synthetic, seed=config.seed)
    book = ctx.codebook
    model = load_exported(Path(summary["stages"]["train"]["best_model_path"]), config.model, book.vocab_sizes)
    reward = world_reward_fn(world, ctx.data)
    align = AlignConfig(
        iterations=args.iterations,
        sample_fraction=args.fraction,
        num_candidates=args.candidates,
        beta=args.beta,
        dpo_weight=args.dpo_weight,
        batch_size=config.loader.batch_size,
        optim=OptimConfig(
            epochs=args.epochs,
            learning_rate=args.lr,
            sparse_learning_rate=args.sparse_lr,
            weight_decay=config.train.optim.weight_decay,
        ),
        eval_users=args.eval_users,
    )
    split = ctx.split
    print(
        json.dumps(
            {
                "bench": "ipa_synthetic",
                "line": "setup",
                "config": args.config,
                "run_dir": run_dir,
                "train_samples": len(split.train),
                "valid_samples": len(split.valid),
                "test_samples": len(split.test),
                "items": world.num_items,
                "session_items": split.train.session_items,
                "align": align.__dict__,
                "threads": args.threads,
                "setup_seconds": round(setup_seconds, 1),
                "load_avg": os.getloadavg()[0],
            }
        ),
        flush=True,
    )
    start = time.perf_counter()
    result = align_iteratively(
        align,
        model,
        split.train,
        split.valid,
        reward,
        codes=book.codes,
        prefix_index=book.prefix_index(),
        train_config=config.train,
        out_dir=Path(run_dir) / "align",
        seed=config.seed,
        device=torch.device("cpu"),
        resume=False,
    )
    align_seconds = time.perf_counter() - start
    for record in result.records:
        print(json.dumps({"bench": "ipa_synthetic", "line": "iteration", **record}), flush=True)
    rows, _ = evaluation_users(split.test)
    test = split.test.subset(rows)
    local = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False)
    index = book.prefix_index()
    aligned = load_exported(Path(result.model_path), config.model, book.vocab_sizes)
    line: Dict[str, Any] = {
        "bench": "ipa_synthetic",
        "line": "test",
        "users": len(test),
        "align_seconds": round(align_seconds, 1),
    }
    for name, candidate in (("trained", model), ("aligned", aligned)):
        stats = generation_stats(candidate, test, reward, codes=book.codes, prefix_index=index, align=align, ctx=local)
        line.update({f"{name}_{key}": value for key, value in stats.items() if key.startswith("reward")})
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
