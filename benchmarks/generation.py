"""Beam-search throughput of the OneRec generator (docs/METHOD.md section 2, serving), as JSON lines.

Each line: the device, torch threads, model size, beam width, users per search call and one measurement:
- ``mode`` = constrained / unconstrained / constrained_no_cache: median seconds per call over ``--repeats``
  calls after one warm-up, and ``sessions_per_s`` = users served per second (each user gets a full beam search
  over M-item sessions; ``num_return`` sessions come back per user);
- ``mode`` = constrained_dense: the constrained search ranking every code of every level (``compact=False``,
  the plain reference), where ``constrained`` ranks only each beam's valid next codes at an item-id level;
- ``ratio`` lines: constrained / unconstrained time (target <= 1.1), no-cache / cache time (target >= 3 at
  beam 32) and dense / compact time;
- with ``--baseline-tree DIR`` (a checkout of an older commit, e.g. ``git worktree add /tmp/old dbb7d7e``), the
  same measurement of ``--modes`` again with that tree's package, in a subprocess right after, and a
  ``speedup`` line per mode: this tree's sessions per second over the baseline's (issue #18's target: >= 10 at
  beam 20). Older trees know only the modes ``constrained``, ``unconstrained`` and ``constrained_no_cache``, and
  only the dense item head (``--baseline-item-head prefix`` for a tree that has the prefix head).

The model is random (speed does not depend on the weights); the items are random unique code tuples, or with
``--item-leaf`` one balanced level of ``--codebook`` clusters then the item id (``tokenizer.disambiguation=item``,
the configs' recipe), whose last level has a row per item; ``--item-head prefix`` scores that level only over each
beam's cluster, from a table (``model.item_head=prefix``; the baseline tree always runs the dense head).

    nice .venv/bin/python benchmarks/generation.py [--beam-128] [--threads 1] [--users 16]
    nice .venv/bin/python benchmarks/generation.py --item-leaf --items 10000 --codebook 64 --session-items 1 \
        --beam 20 --users 256
    nice .venv/bin/python benchmarks/generation.py --item-leaf --items 1682 --codebook 32 --session-items 1 \
        --beam 20 --users 256 --model-config configs/ml-100k.yaml   # the ML-100K config's model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import torch
from omegaconf import OmegaConf

import torchrec_onerec
from torchrec_onerec.generation.beam_search import constrained_beam_search
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel, count_parameters
from torchrec_onerec.models.testing import random_batch, random_codes

try:
    from torchrec_onerec.modules.moe import DISPATCH_MODES, forced_dispatch
except ImportError:  # a --baseline-tree from before the MoE dispatch choice: its only path is the loop
    DISPATCH_MODES = {"auto": None, "loop": None}

    def forced_dispatch(mode: object) -> contextlib.AbstractContextManager:  # type: ignore[misc]
        return contextlib.nullcontext()


from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def _time(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


MODES: Dict[str, Dict[str, bool]] = {
    "constrained": {},
    "unconstrained": {"constrained": False},
    "constrained_no_cache": {"use_cache": False},
    "constrained_dense": {"compact": False},
}
RATIOS = (
    ("constrained/unconstrained", ("constrained", "unconstrained"), lambda beam: "<= 1.1"),
    ("no_cache/cache", ("constrained_no_cache", "constrained"), lambda beam: ">= 3" if beam == 32 else None),
    ("dense/compact", ("constrained_dense", "constrained"), lambda beam: None),
)


def model_overrides(path: str) -> Dict[str, object]:
    """The ``model`` section of the onerec config at ``path`` (and its ``split.max_history``); {} for no path."""
    if not path:
        return {}
    config = OmegaConf.load(path)
    overrides = dict(OmegaConf.to_container(config.get("model", {}), resolve=True))  # type: ignore[arg-type]
    if "max_history" in config.get("split", {}):
        overrides["max_history"] = config.split.max_history
    return overrides


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    """Measure every mode at every beam width; returns the JSON records (also printed)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.item_leaf:
        # models.testing.cluster_leaf_codes, spelled out: a --baseline-tree package may predate it
        cluster = torch.randperm(args.items, generator=torch.Generator().manual_seed(0)) % args.codebook
        codes, sizes = torch.stack([cluster, torch.arange(args.items)], dim=1), [args.codebook, args.items]
    else:
        codes, sizes = random_codes(args.items, [args.codebook] * args.levels, seed=0)
    torch.manual_seed(0)
    extra = {"item_head": args.item_head} if args.item_head != "dense" else {}
    if args.session_items:
        extra["session_items"] = args.session_items
    config = model_size(args.size, **{**model_overrides(args.model_config), **extra, "dropout": 0.0})
    model = OneRecModel(config, sizes).to(device).eval()
    batch = random_batch(
        codes,
        args.users,
        max_history=config.max_history,
        session_items=config.session_items,
        seed=0,
        **({"siblings": True} if args.item_head == "prefix" else {}),  # older trees (--baseline-tree) lack it
    ).to(device)
    index = PrefixIndex(codes, vocab_sizes=sizes, device=device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    common = {
        "bench": "beam_search",
        "package": os.path.dirname(os.path.dirname(os.path.abspath(torchrec_onerec.__file__))),
        "device": name,
        "threads": torch.get_num_threads(),
        "model": args.model_config or args.size,
        "params": count_parameters(config, sizes)["total"],
        "items": args.items,
        "vocab_sizes": sizes,
        "session_items": config.session_items,
        "users": args.users,
        "amp": args.amp,
        "moe_dispatch": args.moe_dispatch,
        "item_head": args.item_head,
    }
    records: List[Dict[str, object]] = []
    for beam in [args.beam] + ([128] if args.beam_128 else []):
        seconds = {}
        for mode, kwargs in MODES.items():
            if mode not in args.modes:
                continue
            with forced_dispatch(DISPATCH_MODES[args.moe_dispatch]):
                seconds[mode] = _time(
                    lambda: constrained_beam_search(
                        model,
                        batch,
                        prefix_index=index,
                        beam_size=beam,
                        num_return=min(10, beam),
                        amp_dtype=amp,
                        **kwargs,
                    ),
                    args.repeats,
                )
            records.append(
                {
                    **common,
                    "beam": beam,
                    "mode": mode,
                    "seconds": round(seconds[mode], 4),
                    "sessions_per_s": round(args.users / seconds[mode], 2),
                }
            )
        for ratio, (top, bottom), target in RATIOS:
            if top in seconds and bottom in seconds:
                value = round(seconds[top] / seconds[bottom], 3)
                records.append({**common, "beam": beam, "ratio": ratio, "value": value, "target": target(beam)})
    for record in records:
        print(json.dumps(record), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--beam", type=int, default=32, help="beam width")
    parser.add_argument("--beam-128", action="store_true", help="also measure beam 128")
    parser.add_argument("--item-leaf", action="store_true", help="one level of --codebook clusters, then the item id")
    parser.add_argument(
        "--item-head", choices=["dense", "prefix"], default="dense", help="how the item level is scored (--item-leaf)"
    )
    parser.add_argument("--session-items", type=int, default=0, help="M (0: the model size's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--users", type=int, default=16, help="users per beam-search call")
    parser.add_argument("--items", type=int, default=5000, help="catalogue size")
    parser.add_argument("--codebook", type=int, default=64, help="K of each quantiser level")
    parser.add_argument("--levels", type=int, default=2, help="quantiser levels L (plus a disambiguation level)")
    parser.add_argument("--size", default="default", help="a name in torchrec_onerec.models.config.MODEL_SIZES")
    parser.add_argument(
        "--model-config",
        default="",
        help="an onerec config (configs/ml-100k.yaml) whose model section and split.max_history override --size's",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    parser.add_argument(
        "--moe-dispatch",
        choices=list(DISPATCH_MODES),
        default="auto",
        help="auto: the MoE grouped GEMM on CUDA in bf16, else the per-expert loop; loop: the loop everywhere",
    )
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="what to time")
    parser.add_argument("--baseline-tree", default="", help="also time --modes with this source tree's package")
    parser.add_argument(
        "--baseline-item-head",
        choices=["dense", "prefix"],
        default="dense",
        help="the baseline tree's --item-head (dense: trees from before the prefix head have no other)",
    )
    args = parser.parse_args()
    if args.item_head != "dense" and not args.item_leaf:
        parser.error(f"--item-head {args.item_head} scores an item-id level: add --item-leaf")
    records = run(args)
    if args.baseline_tree:
        print_speedups(records, baseline(args))


def baseline(args: argparse.Namespace) -> List[Dict[str, object]]:
    """The same measurement with the package of ``args.baseline_tree``, in a subprocess (its JSON lines)."""
    argv = [a for a in sys.argv[1:] if not a.startswith("--baseline-tree")]
    for value in (args.baseline_tree, "--item-head", args.item_head, "--baseline-item-head", args.baseline_item_head):
        if value in argv:
            argv.remove(value)
    if args.baseline_item_head != "dense":  # trees from before the prefix head know only the dense one
        argv += ["--item-head", args.baseline_item_head]
    # the tree's package comes before this one's (installed in the environment) on the subprocess's path
    env = {**os.environ, "PYTHONPATH": os.path.abspath(args.baseline_tree)}
    out = subprocess.run([sys.executable, __file__, *argv], env=env, check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def print_speedups(after: List[Dict[str, object]], before: List[Dict[str, object]]) -> None:
    """One ``speedup`` line per (beam, mode) timed in both: sessions per second, this tree over the baseline's."""
    rates = {(r["beam"], r["mode"]): r["sessions_per_s"] for r in before if "mode" in r}
    for record in after:
        key = (record.get("beam"), record.get("mode"))
        if "mode" in record and key in rates:
            speedup = round(float(record["sessions_per_s"]) / float(rates[key]), 2)  # type: ignore[arg-type]
            print(
                json.dumps(
                    {
                        "bench": "beam_search",
                        "speedup": "sessions_per_s / baseline's",
                        "beam": key[0],
                        "mode": key[1],
                        "value": speedup,
                        "baseline_sessions_per_s": rates[key],
                        "sessions_per_s": record["sessions_per_s"],
                        "items": record["items"],
                        "threads": record["threads"],
                        "target": ">= 10" if key[0] == 20 else None,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
