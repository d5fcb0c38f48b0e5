"""Data-pipeline benchmarks: one function per measurement, each returning one JSON-ready record; ``main`` runs
them and prints one JSON line per record (docs/EVAL.md, "Speed and cost").

Run from the repository root: ``python benchmarks/data.py [--kuairand PATH] [--repeats N]``. KuaiRand-Pure: Gao
et al., CIKM 2022, licence CC BY-SA 4.0.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, TypeVar

from torchrec_onerec.config import LoaderConfig, load_config
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.splits import protocol_b_split
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.kuairand import load_kuairand
from torchrec_onerec.data.batch import make_dataloader

T = TypeVar("T")
DEFAULT_KUAIRAND = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "kuairand-pure"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def threads() -> int:
    """CPU threads this process may run on."""
    return len(os.sched_getaffinity(0))


def timed(fn: Callable[[], T], repeats: int) -> Tuple[float, T]:
    """Best wall time of ``repeats`` (>= 1) calls of ``fn`` (seconds) and the last call's result.

    Earlier results are freed at once, so peak memory reflects one call, not ``repeats`` live copies.
    """
    walls = []
    for _ in range(repeats - 1):
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
    start = time.perf_counter()
    result = fn()
    walls.append(time.perf_counter() - start)
    return min(walls), result


def _record(what: str, wall: float, count: int, unit: str, **sizes: object) -> Dict[str, object]:
    return {
        "what": what,
        **sizes,
        "wall_s": round(wall, 4),
        f"{unit}_per_s": round(count / wall),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": "cpu",
        "threads": threads(),
    }


def measure_protocol_b(data: InteractionData, repeats: int) -> Tuple[Dict[str, object], SampleSet]:
    """Build protocol-B samples (configs/kuairand.yaml's split) from loaded KuaiRand.

    Returns:
        The record (``rows_per_s`` counts log impressions plus pre-period history rows consumed) and the training
        samples, for the DataLoader measurement.
    """
    split_cfg = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "kuairand.yaml")).split
    wall, split = timed(lambda: protocol_b_split(data, split_cfg), repeats)
    rows = len(data.interactions) + (0 if data.histories is None else len(data.histories))
    record = _record(
        "protocol_b_split_kuairand",
        wall,
        rows,
        "rows",
        rows=rows,
        train_samples=len(split.train),
        valid_targets=len(split.valid),
        test_targets=len(split.test),
    )
    return record, split.train


def measure_dataloader(samples: SampleSet, batch_size: int, repeats: int) -> Dict[str, object]:
    """One shuffled epoch of ``samples`` through ``make_dataloader`` into ``OneRecBatch``es (main process)."""
    config = LoaderConfig(batch_size=batch_size, num_workers=0, shuffle=True)

    def epoch() -> int:
        return sum(batch.users.numel() for batch in make_dataloader(samples, config, seed=0))

    wall, count = timed(epoch, repeats)
    return _record(
        "dataloader_epoch",
        wall,
        count,
        "samples",
        samples=count,
        batch_size=batch_size,
        batches=-(-count // batch_size),
    )


def measure_load_kuairand(path: Path, repeats: int) -> Tuple[Dict[str, object], InteractionData]:
    """Load the KuaiRand-Pure folder (log, histories, video and user features) into canonical form.

    Args:
        path: the KuaiRand-Pure folder.
        repeats: loads timed; the best is reported.

    Returns:
        ``({"what", "rows", "history_rows", "wall_s", "rows_per_s", "peak_rss_mb", "device", "threads"}, data)``;
        rows are log impressions, ``rows_per_s`` counts them.
    """
    wall, data = timed(lambda: load_kuairand(str(path)), repeats)
    rows = len(data.interactions)
    history_rows = 0 if data.histories is None else len(data.histories)
    return _record("load_kuairand", wall, rows, "rows", rows=rows, history_rows=history_rows), data


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every measurement and print one JSON line each; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kuairand", type=Path, default=DEFAULT_KUAIRAND, help="KuaiRand-Pure folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best reported)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 2048], help="DataLoader batch sizes")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if not args.kuairand.is_dir():
        print(f"KuaiRand-Pure folder {args.kuairand} is absent; pass --kuairand PATH", file=sys.stderr)
        return 2
    load_record, data = measure_load_kuairand(args.kuairand, args.repeats)
    print(json.dumps(load_record), flush=True)
    split_record, train = measure_protocol_b(data, args.repeats)
    print(json.dumps(split_record), flush=True)
    for batch_size in args.batch_sizes:
        print(json.dumps(measure_dataloader(train, batch_size, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
