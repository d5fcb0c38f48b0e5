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

Then one ``ratio`` line per size and measurement: dense seconds over prefix seconds. The model is random (speed
does not depend on the weights), the cluster of each item drawn at random, balanced.

    nice .venv/bin/python benchmarks/item_head.py --items 10000 100000 1000000 --threads 1
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
from torchrec_onerec.models.testing import random_batch
from torchrec_onerec.peak_memory import peak_memory, reset_peak_memory
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex

HEADS = ("dense", "prefix")


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
        cluster = torch.randperm(items, generator=torch.Generator().manual_seed(0)) % clusters
        codes, sizes = torch.stack([cluster, torch.arange(items)], dim=1), [clusters, items]
        index = PrefixIndex(codes, vocab_sizes=sizes)
        common = {"items": items, "clusters": clusters, "threads": torch.get_num_threads(), "device": "cpu"}
        seconds: Dict[str, Dict[str, float]] = {}
        for head in args.heads:
            generator = torch.Generator().manual_seed(1)
            config = model_size(args.size, dropout=0.0, session_items=args.session_items, item_head=head)
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
            for what, fn, rate, per in (
                ("train_step", train_step, "samples_per_s", args.batch),
                ("beam_search", search, "users_per_s", args.users),
                ("candidate_log_prob", score_candidates, "users_per_s", args.users),
            ):
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
            if len(by_head) < 2:
                continue
            records.append(
                {
                    "bench": "item_head",
                    "ratio": f"{what} seconds, dense / prefix",
                    **common,
                    "value": round(by_head["dense"] / by_head["prefix"], 2),
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
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS, help="the item heads to measure")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
