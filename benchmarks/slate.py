"""Slate filling speed (``generation.slate.slate_sessions`` against its plain reference), as JSON lines.

A slate arm fills R sessions of M items per user greedily from the next-item scores over the catalogue, with a
penalty per earlier session item under the same first code. ``slate_sessions`` recomputes after each pick only
the picked code's items; ``slate_sessions_reference`` recomputes every item's value at every slot. Both give the
same sessions bit for bit (tests/test_slate.py); this prints, per catalogue size, each one's median seconds per
call of ``--users`` users, users per second and the host peak, then a ``ratio`` line (reference / fast). The
default sizes are the synthetic config's (2,000 items, 32 first codes, R = 20, M = 5, penalty 2).

    nice .venv/bin/python benchmarks/slate.py [--items 2000 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from typing import Callable, Dict, List

import torch
from item_head import _measure  # median seconds and host peak, from the item-head benchmark beside this script

from torchrec_onerec.generation.slate import slate_sessions, slate_sessions_reference

FILLS: Dict[str, Callable[..., object]] = {"reference": slate_sessions_reference, "fast": slate_sessions}


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    """Both fills at every catalogue size; returns the JSON records (also printed)."""
    torch.set_num_threads(args.threads)
    records: List[Dict[str, object]] = []
    for items in args.items:
        generator = torch.Generator().manual_seed(0)
        scores = torch.randn(args.users, items, generator=generator).log_softmax(dim=1)
        first_codes = torch.randint(0, args.codes, (items,), generator=generator)
        sizes = {"users": args.users, "items": items, "first_codes": args.codes, "R": args.sessions, "M": args.m}
        seconds = {}
        for name, fill in FILLS.items():
            measured = _measure(
                lambda: fill(
                    scores, first_codes, penalty=args.penalty, num_sessions=args.sessions, session_items=args.m
                ),
                args.repeats,
            )
            seconds[name] = measured["seconds"]
            record = {"what": f"slate_sessions_{name}", "sizes": sizes, "wall_s": measured["seconds"]}
            record.update(
                users_per_s=round(args.users / measured["seconds"], 1),
                peak_host_mib=measured["peak_host_mib"],
                device="cpu",
                threads=torch.get_num_threads(),
            )
            records.append(record)
        records.append(
            {"what": "ratio", "sizes": sizes, "reference_over_fast": round(seconds["reference"] / seconds["fast"], 2)}
        )
    for record in records:
        print(json.dumps(record), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[2000], help="catalogue sizes")
    parser.add_argument("--codes", type=int, default=32, help="first codes (clusters)")
    parser.add_argument("--users", type=int, default=256, help="users per call (the evaluation's batch)")
    parser.add_argument("--sessions", type=int, default=20, help="R sessions per user")
    parser.add_argument("--m", type=int, default=5, help="M items per session")
    parser.add_argument("--penalty", type=float, default=2.0, help="per earlier item under the same first code")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
