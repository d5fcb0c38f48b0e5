"""Cost of the item-id level against the catalogue size: ``model.item_head`` dense against prefix, as JSON lines.

A dense item level is a linear layer over every item: a training step scores [B M, I] logits and a beam-search
step [users x beams, D] x [D, I] for the normaliser, and its weights ([I, D + 1]) are copied on every rank. The
prefix head keeps the output rows in a TorchRec table and scores only the items under each target's or beam's
cluster. For each catalogue size I (``--items``; C = I / ``--per-cluster`` clusters, then the item id), both heads
are timed side by side in this process on the same random model shape and data:

- ``train_step``: median wall seconds of a forward and backward pass of ``OneRecModel`` on a batch of ``--batch``
  samples with M = 5 target items (``samples_per_s``), and the host's peak resident memory over those steps;
- ``beam_search``: median seconds of a constrained beam search (beam ``--beam``, ``--users`` users, sessions of
  ``--session-items`` items; ``users_per_s``), and its peak memory;
- ``candidate_log_prob``: median seconds of ``OneRecModel.log_prob`` over ``--candidates`` sessions of each of
  ``--users`` users (what alignment's reference model scores per batch of candidates; no gradient), and its peak;
- ``dense_parameters``: the parameters outside the tables (what every rank holds whole), per head.

``prefix_sampled`` is the prefix head trained with a sampled softmax within the cluster (``train.sampled_siblings``
= ``--sampled-siblings``): its ``train_step`` only (generation and log-probabilities are the prefix head's).
Then one ``ratio`` line per size and measurement: dense seconds over prefix seconds, and prefix train-step
seconds over prefix_sampled's. The model is random (speed
does not depend on the weights), the cluster of each item drawn at random, balanced.

    nice .venv/bin/python benchmarks/item_head.py --items 10000 100000 1000000 --threads 1
    nice .venv/bin/python benchmarks/item_head.py --items 1000000 --per-cluster 2000 --heads prefix prefix_sampled
"""

from __future__ import annotations

import argparse
import json
from typing import Callable, Dict, List

import torch

from generation import _time as median_seconds  # this folder's generation benchmark, beside this script
from torchrec_onerec.generation.beam_search import constrained_beam_search
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel, count_parameters
from torchrec_onerec.models.testing import cluster_leaf_codes, random_batch
from torchrec_onerec.peak_memory import peak_memory, reset_peak_memory
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex

HEADS = ("dense", "prefix", "prefix_sampled")
RATIOS = (("dense", "prefix"), ("prefix", "prefix_sampled"))


def _measure(fn: Callable[[], object], repeats: int) -> Dict[str, float]:
    """Seconds and the host peak (MiB) of the calls."""
    since_reset = reset_peak_memory()
    seconds = median_seconds(fn, repeats)
    return {"seconds": round(seconds, 4), "peak_host_mib": float(peak_memory(since_reset)["host_peak_mib"])}


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    """Every size, both heads; returns the JSON records (also printed)."""
    torch.set_num_threads(args.threads)
    records: List[Dict[str, object]] = []
    for items in args.items:
        clusters = max(2, items // args.per_cluster)
        codes, sizes = cluster_leaf_codes(items, clusters)
        index = PrefixIndex(codes, vocab_sizes=sizes)
        common = {"items": items, "clusters": clusters, "threads": torch.get_num_threads(), "device": "cpu"}
        seconds: Dict[str, Dict[str, float]] = {}
        for head in args.heads:
            generator = torch.Generator().manual_seed(1)
            sampled = args.sampled_siblings if head == "prefix_sampled" else 0
            item_head = "prefix" if head == "prefix_sampled" else head
            config = model_size(args.size, dropout=0.0, session_items=args.session_items, item_head=item_head)
            torch.manual_seed(0)
            model = OneRecModel(config, sizes)
            batch, users = (
                random_batch(
                    codes,
                    size,
                    max_history=config.max_history,
                    session_items=config.session_items,
                    seed=seed,
                    siblings=config.reads_siblings,
                    sampled_siblings=sampled if seed == 0 else 0,  # the training batch only
                )
                for seed, size in enumerate((args.batch, args.users))
            )

            def train_step() -> None:
                model.zero_grad(set_to_none=True)
                model(batch).loss.backward()

            def search() -> None:
                constrained_beam_search(model.eval(), users, prefix_index=index, beam_size=args.beam, num_return=10)
                model.train()

            picks = torch.randint(items, (args.users, args.candidates, args.session_items), generator=generator)

            @torch.no_grad()
            def score_candidates() -> None:
                model.eval().log_prob(users, codes[picks], prefix_index=index)
                model.train()

            counts = count_parameters(config, sizes)
            base = {**common, "item_head": head, "params": counts["total"], "dense_parameters": counts["dense"]}
            if sampled:
                base["sampled_siblings"] = sampled
            measurements = [
                ("train_step", train_step, "samples_per_s", args.batch),
                ("beam_search", search, "users_per_s", args.users),
                ("candidate_log_prob", score_candidates, "users_per_s", args.users),
            ]
            for what, fn, rate, per in measurements[:1] if sampled else measurements:
                measured = _measure(fn, args.repeats)
                seconds.setdefault(what, {})[head] = measured["seconds"]
                sizes_of = {
                    "train_step": {"batch": args.batch},
                    "beam_search": {"users": args.users, "beam": args.beam},
                    "candidate_log_prob": {"users": args.users, "candidates": args.candidates},
                }[what]
                records.append(
                    {
                        "bench": "item_head",
                        "what": what,
                        **base,
                        **sizes_of,
                        **measured,
                        rate: round(per / measured["seconds"], 2),
                    }
                )
                print(json.dumps(records[-1]), flush=True)
        for what, by_head in seconds.items():
            for slower, faster in RATIOS:
                if slower not in by_head or faster not in by_head:
                    continue
                records.append(
                    {
                        "bench": "item_head",
                        "ratio": f"{what} seconds, {slower} / {faster}",
                        **common,
                        "value": round(by_head[slower] / by_head[faster], 2),
                    }
                )
                print(json.dumps(records[-1]), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10000, 100000], help="catalogue sizes I")
    parser.add_argument("--per-cluster", type=int, default=100, help="items per cluster (I / C)")
    parser.add_argument("--size", default="default", help="a name in torchrec_onerec.models.config.MODEL_SIZES")
    parser.add_argument("--batch", type=int, default=64, help="training samples per step")
    parser.add_argument("--users", type=int, default=64, help="users per beam search")
    parser.add_argument("--beam", type=int, default=20, help="beam width")
    parser.add_argument("--session-items", type=int, default=5, help="M")
    parser.add_argument("--candidates", type=int, default=32, help="sessions per user scored by log_prob")
    parser.add_argument("--heads", nargs="+", default=list(HEADS[:2]), choices=HEADS, help="the item heads to measure")
    parser.add_argument("--sampled-siblings", type=int, default=64, help="rows drawn per cluster (prefix_sampled)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
