"""Data-pipeline benchmarks: one function per measurement, each returning one JSON-ready record; ``main`` runs
them and prints one JSON line per record (EVAL.md, "Speed and cost").

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
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from torchrec_onerec.datasets.kuairand import load_kuairand

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


def measure_load_kuairand(path: Path, repeats: int) -> Dict[str, object]:
    """Load the KuaiRand-Pure folder (log, histories, video and user features) into canonical form.

    Args:
        path: the KuaiRand-Pure folder.
        repeats: loads timed; the best is reported.

    Returns:
        ``{"what", "rows", "history_rows", "wall_s", "rows_per_s", "peak_rss_mb", "device", "threads"}``; rows
        are log impressions, ``rows_per_s`` counts them.
    """
    wall, data = timed(lambda: load_kuairand(str(path)), repeats)
    rows = len(data.interactions)
    history = data.histories
    return {
        "what": "load_kuairand",
        "rows": rows,
        "history_rows": 0 if history is None else len(history),
        "wall_s": round(wall, 4),
        "rows_per_s": round(rows / wall),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": "cpu",
        "threads": threads(),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run every measurement and print one JSON line each; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kuairand", type=Path, default=DEFAULT_KUAIRAND, help="KuaiRand-Pure folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best reported)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if not args.kuairand.is_dir():
        print(f"KuaiRand-Pure folder {args.kuairand} is absent; pass --kuairand PATH", file=sys.stderr)
        return 2
    records: List[Dict[str, object]] = [measure_load_kuairand(args.kuairand, args.repeats)]
    for record in records:
        print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
