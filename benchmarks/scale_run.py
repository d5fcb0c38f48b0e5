"""Scale run: the whole `onerec run` pipeline on the synthetic world at growing catalogue sizes, under torchrun.

For each ``--items`` size N the world gets N items and ``--users-per-item`` x N users (the default world has 2.5),
or the ``--users`` given (one count for every size, or one per size: the simulator's logging policy costs
users x items, so the largest catalogues need fewer users to fit a session),
``onerec tokenize`` runs in one process (torchrun refuses it: every rank would write the same files), then
``torchrun --standalone --nproc_per_node=--procs -m torchrec_onerec run`` runs every other stage, each training
stage on every rank with its tables sharded, evaluation with the users split across the ranks. ``--set`` adds
config overrides to every size (e.g. fewer epochs, so that the large sizes fit the time there is).

Output, as JSON lines (also appended to ``--out``): one line per size and stage with its wall time and, per rank,
its peak host memory (and CUDA memory), read from the run's ``metrics.jsonl``; then, per stage, the log-log slope
of wall time against N between each pair of consecutive sizes (1: linear; above 1: the stage grows faster than
the catalogue). ``--plot`` draws wall time and peak memory per stage against N on log-log axes.

    python benchmarks/scale_run.py --items 2000 5000 10000 --procs 2 \
        --set train.optim.epochs=1 align.iterations=1 --plot runs/scale/scale.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]


def _run(command: Sequence[str], log: Path, threads: int) -> None:
    """Run ``command`` from the repository root, output to ``log`` (raises on failure); the stages' own wall times
    come from the run's ``metrics.jsonl``."""
    with open(log, "a") as out:
        proc = subprocess.run(
            list(command),
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {proc.returncode}; see {log}")


def stage_records(run_dir: Path) -> Dict[str, Dict[str, object]]:
    """The last per-stage record (wall time, peak memory per rank) of each stage in ``run_dir/metrics.jsonl``."""
    records: Dict[str, Dict[str, object]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "peak_memory" in record:
            records[record["stage"]] = record
    # a stage that did not apply (the SASRec arm not listed, ...) did no work to measure
    return {
        stage: record
        for stage, record in records.items()
        if "not_applicable" not in json.loads((run_dir / stage / "summary.json").read_text())
    }


def slopes(sizes: Sequence[int], seconds: Sequence[float]) -> List[float]:
    """log(t_{k+1} / t_k) / log(N_{k+1} / N_k) between consecutive sizes (the exponent of t ~ N^s).

    Example:
        >>> [round(s, 2) for s in slopes([10, 100, 1000], [1.0, 10.0, 1000.0])]
        [1.0, 2.0]
    """
    return [
        math.log(max(seconds[k + 1], 1e-9) / max(seconds[k], 1e-9)) / math.log(sizes[k + 1] / sizes[k])
        for k in range(len(sizes) - 1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 5000, 10000], help="catalogue sizes N")
    parser.add_argument("--users-per-item", type=float, default=2.5, help="users = this x N")
    parser.add_argument("--users", type=int, nargs="*", default=[], help="users per size (one for all, or one each)")
    parser.add_argument("--procs", type=int, default=2, help="torchrun processes (one thread each)")
    parser.add_argument("--config", default="configs/synthetic.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every size")
    parser.add_argument("--root", default="runs/scale", help="one run directory per size under it")
    parser.add_argument("--out", default="", help="also append the JSON lines here")
    parser.add_argument("--plot", default="", help="write the log-log figure here")
    parser.add_argument("--replot", default="", help="only draw --plot from this file of JSON lines (an --out)")
    args = parser.parse_args()
    if args.replot:
        replot(args.replot, args.plot or "scale.png")
        return
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        raise SystemExit("torchrun is not installed beside this Python")
    sizes = sorted(args.items)
    if args.users and len(args.users) not in (1, len(sizes)):
        raise SystemExit(f"--users takes one count or one per size ({len(sizes)}); got {args.users}")
    fixed = dict(zip(sizes, args.users * len(sizes) if len(args.users) == 1 else args.users))
    lines: List[Dict[str, object]] = []
    per_stage: Dict[str, Dict[int, Dict[str, object]]] = {}
    for items in sizes:
        users = fixed.get(items, int(round(args.users_per_item * items)))
        run_dir = REPO / args.root / f"items-{items}"
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = [
            f"run_dir={run_dir}",
            f"data.synthetic.num_items={items}",
            f"data.synthetic.num_users={users}",
            *args.set,
        ]
        log = run_dir / "scale_run.log"
        start = time.perf_counter()
        _run([sys.executable, "-m", "torchrec_onerec", "tokenize", args.config, *overrides], log, args.procs)
        middle = time.perf_counter()
        _run(
            [torchrun, "--standalone", f"--nproc_per_node={args.procs}", "-m", "torchrec_onerec", "run", args.config]
            + overrides,
            log,
            1,
        )
        # whole commands: with sizes_from_data the world is built and split before the first stage's clock starts
        commands = {
            "tokenize command (world, split, codes)": {"seconds": middle - start, "peak_memory": []},
            "torchrun command (every rank loads the world)": {
                "seconds": time.perf_counter() - middle,
                "peak_memory": [],
            },
        }
        for stage, record in {**stage_records(run_dir), **commands}.items():
            memory = record["peak_memory"]
            line = {
                "bench": "scale_run",
                "items": items,
                "users": users,
                "procs": args.procs,
                "stage": stage,
                "seconds": record["seconds"],
                "peak_host_mib_per_rank": [m["host_peak_mib"] for m in memory],  # type: ignore[attr-defined]
                "peak_cuda_mib_per_rank": [m.get("cuda_peak_mib") for m in memory],  # type: ignore[attr-defined]
                "overrides": args.set,
            }
            lines.append(line)
            per_stage.setdefault(stage, {})[items] = line
    for stage, by_size in per_stage.items():
        measured = [n for n in sizes if n in by_size]
        if len(measured) > 1:
            seconds = [float(by_size[n]["seconds"]) for n in measured]  # type: ignore[arg-type]
            lines.append(
                {
                    "bench": "scale_run",
                    "stage": stage,
                    "items": measured,
                    "loglog_slope_seconds": [round(s, 2) for s in slopes(measured, seconds)],
                }
            )
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
    if args.plot:
        who = f"users {args.users}" if args.users else f"users = {args.users_per_item} N"
        plot(per_stage, args.plot, f"onerec run on the synthetic world, {args.procs} processes, {who}")


def plot(per_stage: Dict[str, Dict[int, Dict[str, object]]], path: str, title: str) -> None:
    """Wall time and peak memory per stage against N, log-log; a stage under 0.1 s at every size (one that only
    read what an earlier command built) is left out of the time panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for color, (stage, by_size) in enumerate(per_stage.items()):
        measured = sorted(by_size)
        seconds = [float(by_size[n]["seconds"]) for n in measured]  # type: ignore[arg-type]
        if max(seconds) >= 0.1:
            left.plot(measured, seconds, marker="o", label=stage, color=f"C{color % 10}")
        if all(by_size[n]["peak_host_mib_per_rank"] for n in measured):  # the commands have no per-rank peak
            peaks = [max(by_size[n]["peak_host_mib_per_rank"]) for n in measured]  # type: ignore[call-overload]
            right.plot(measured, peaks, marker="o", label=stage, color=f"C{color % 10}")
    for axis, what in ((left, "wall time (s)"), (right, "peak host memory, largest rank (MiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("catalogue size N (items)")
        axis.set_ylabel(what)
        axis.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    right.legend(fontsize=8)  # the same colours; data appears here only (its time is ~0, the world built before)
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def replot(jsonl: str, path: str) -> None:
    """The figure again from the JSON lines a run appended to ``--out`` (nothing is run)."""
    per_stage: Dict[str, Dict[int, Dict[str, object]]] = {}
    records = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    for record in records:
        if "seconds" in record:
            per_stage.setdefault(record["stage"], {})[record["items"]] = record
    first = next(r for r in records if "seconds" in r)
    users = sorted({r["users"] for r in records if "seconds" in r})
    plot(per_stage, path, f"onerec run on the synthetic world, {first['procs']} processes, users {users}")


if __name__ == "__main__":
    main()
