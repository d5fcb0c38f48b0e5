"""Train the OneRec model sharded over several processes with torchrun (gloo on CPUs, nccl on GPUs).

Every rank loads the same data and split (deterministic for a seed); rank 0 fits the semantic-ID codebook and
broadcasts it, so every rank trains on the same codes; then ``train_generative`` shards the embedding tables
over the ranks with TorchRec's planner and trains with ``TrainPipelineSparseDist``, each rank reading its own
slice of every global batch. Rank 0 validates, prints where each table was placed and the final metrics, and
writes ``train/`` (result.json, sharding_plan.json, metrics.csv, best_model.pt) under the run directory.

Run (about 20 s on a 2-core CPU)::

    torchrun --standalone --nproc_per_node=2 examples/torchrun_training.py [--run-dir runs/example_torchrun]
        [--config configs/tiny.yaml] [key=value ...]    # e.g. train.sharding_type=table_wise

With plain ``python`` it runs as a world of one process. ``onerec tokenize CONFIG`` followed by
``torchrun --nproc_per_node=2 -m torchrec_onerec train CONFIG`` does the same through the CLI.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Optional, Sequence

from torchrec_onerec.config import load_config
from torchrec_onerec.data.splits import split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.runtime import resolve_device, seed_everything
from torchrec_onerec.tokenizer import fit_tokenizer, item_embeddings
from torchrec_onerec.train.distributed import broadcast_object, init_distributed, teardown_distributed
from torchrec_onerec.train.loop import TrainResult, train_generative
from torchrec_onerec.context import generative_validator

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def main(argv: Optional[Sequence[str]] = None) -> TrainResult:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(TINY), help="a YAML file of configs/ (default: the tiny world)")
    parser.add_argument("--run-dir", default="runs/example_torchrun", help="where train/ is written")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.sharding_type=table_wise")
    args = parser.parse_args(argv)
    # a loss record every 5 steps, so that the tiny run's curve has a few points (an override can change it)
    cfg = load_config(args.config, ["train.log_every_steps=5", *args.overrides, f"run_dir={args.run_dir}"])
    seed_everything(cfg.seed)

    # One process group for the whole job; train_generative reuses it (and leaves it to us to close).
    ctx = init_distributed(resolve_device(cfg.device), timeout_s=cfg.train.collective_timeout_s)
    try:
        data = load_dataset(cfg.data, seed=cfg.seed)
        split = split_data(data, cfg.split)
        codebook = None
        if ctx.is_rank0:
            embeddings = item_embeddings(data, cfg.tokenizer, train_interactions=split.train_sequences, seed=cfg.seed)
            codebook, _ = fit_tokenizer(embeddings, cfg.tokenizer, seed=cfg.seed, item_ids=data.raw_item_ids)
        codebook = broadcast_object(codebook, ctx)
        if ctx.is_rank0:
            print(
                f"world size {ctx.world_size} ({ctx.backend}); {len(split.train)} training samples, global batch "
                f"{cfg.loader.batch_size}; codes of {codebook.num_levels} levels, sizes {codebook.vocab_sizes}"
            )

        result = train_generative(
            cfg.model,
            cfg.train,
            cfg.loader,
            split.train,
            split.valid,
            codebook.codes,
            codebook.vocab_sizes,
            Path(cfg.run_dir),
            validator=generative_validator(cfg, codebook.codes, codebook.prefix_index(), progress=False),
            seed=cfg.seed,
            device=ctx.device,
            resume=False,
            progress=False,
        )
        if ctx.is_rank0:
            print("sharding plan (table: sharding type, kernel, ranks):")
            for table, placement in result.plan.items():
                print(
                    f"  {table}: {placement['sharding_type']}, {placement['compute_kernel']}, "
                    f"ranks {placement['ranks']}"
                )
            with open(Path(cfg.run_dir) / "train" / "metrics.csv") as f:
                losses = [float(row["loss"]) for row in csv.DictReader(f)]
            print(
                f"trained {result.steps} steps in {result.epochs} epochs ({result.stop_reason}), "
                f"{result.samples_per_s:.0f} samples/s; loss every {cfg.train.log_every_steps} steps: "
                + " ".join(f"{loss:.3f}" for loss in losses)
            )
            if result.best_value is not None:
                last = result.validations[-1]
                print(
                    "last validation: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items()) if k.startswith(("recall@", "ndcg@")))
                )
                print(f"best {result.selection_metric} {result.best_value:.4f} at epoch {result.best_epoch}")
            print(f"artefacts: {Path(cfg.run_dir) / 'train'}")
        return result
    finally:
        teardown_distributed(ctx)


if __name__ == "__main__":
    main()
