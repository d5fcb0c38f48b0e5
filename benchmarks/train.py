"""Training throughput of OneRec on TorchRec (ONEREC.md section 2; DMP + TrainPipelineSparseDist), as JSON lines.

One line per setting: 1 process with 1 thread, 1 process with ``--cores`` threads, and ``--cores`` processes
with 1 thread each (gloo on CPU, started with torch.multiprocessing the way torchrun starts them). Each line has
the device, world size, torch threads per process, model size, global batch, steps, and
- ``samples_per_s`` / ``tokens_per_s``: median over logging windows after the first (steady state; the first
  window pays for the pipeline's fx tracing), tokens = history + target code tokens read;
- ``samples_per_s_overall`` / ``tokens_per_s_overall``: over every step, from ``TrainResult``;
- ``peak_rss_mb``: peak resident memory of each process.
Then the ratio of the multi-process setting to the best 1-process one, and a 1-process 1-thread setting with
``model.history_tokens=items`` (one encoder token per history item instead of one per code) with its speed-up
over the same setting with ``codes``. Every setting trains the same global batches of the same data.

The items are random unique code tuples and the samples random sessions, one user each (the user-id table has
a row per sample); speed does not depend on them.

    nice .venv/bin/python benchmarks/train.py [--size small] [--steps 20] [--cores 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import socket
import statistics
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.multiprocessing as mp
import torchrec

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.models.onerec import count_parameters
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.loop import train_generative
from torchrec_onerec.train.testing import random_samples, tiny_config

SIZES: Dict[str, Dict[str, Any]] = {
    "small": {"d_model": 64, "num_heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ffn_hidden": 256,
              "num_experts": 8, "top_k": 2, "expert_hidden": 128, "dropout": 0.1},
    "tiny": {},
}


def _setting(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything both world sizes share (built identically in every worker from the seed)."""
    codes, vocab = random_codes(args.items, [args.codebook] * 2, seed=0)
    config = tiny_config(batch_size=args.batch, num_users=args.batch * args.steps, max_history=args.history,
                         session_items=args.session, model={**SIZES[args.size], "history_tokens": args.history_tokens},
                         epochs=1, log_every_steps=args.log_every, warmup_steps=5)
    samples = random_samples(args.batch * args.steps, args.items, max_history=args.history,
                             session_items=args.session, seed=0)
    return {"codes": codes, "vocab": vocab, "config": config, "samples": samples}


def _worker(rank: int, world_size: int, threads: int, port: int, args: argparse.Namespace, folder: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    setting = _setting(args)
    result = train_generative(setting["config"], setting["samples"], SampleSet.empty(args.session, ["click"]), setting["codes"], setting["vocab"],
                              Path(folder) / "run", prefix_index=PrefixIndex(setting["codes"]),
                              device=torch.device("cpu"), resume=False, progress=False)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(folder, f"rank{rank}.json").write_text(json.dumps({"result": result.__dict__, "peak_rss_mb": peak_mb,
                                                            "threads": torch.get_num_threads()}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world_size: int, threads: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Train ``args.steps`` steps with ``world_size`` processes of ``threads`` threads; returns the JSON record."""
    load_before = os.getloadavg()[0]  # the machine may be shared: a busy core slows multi-threaded settings most
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(_worker, args=(world_size, threads, _free_port(), args, folder), nprocs=world_size,
                           start_method="spawn")
        reports = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(world_size)]
        with open(Path(folder) / "run" / "train" / "metrics.csv") as f:
            windows = list(csv.DictReader(f))[1:]
    result = reports[0]["result"]
    setting = _setting(args)
    return {
        "bench": "train", "device": "cpu", "world_size": world_size, "threads_per_process": reports[0]["threads"],
        "model": args.size, "history_tokens": args.history_tokens,
        "params": count_parameters(setting["config"].model, setting["vocab"])["total"],
        "vocab_sizes": setting["vocab"], "max_history": args.history, "session_items": args.session,
        "global_batch": args.batch, "steps": result["steps"], "plan": sorted({p["sharding_type"]
                                                                              for p in result["plan"].values()}),
        "samples_per_s": statistics.median(float(w["samples_per_s"]) for w in windows),
        "tokens_per_s": statistics.median(float(w["tokens_per_s"]) for w in windows),
        "samples_per_s_overall": result["samples_per_s"], "tokens_per_s_overall": result["tokens_per_s"],
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in reports], "load_avg_before": load_before,
        "torch": torch.__version__, "torchrec": torchrec.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=20, help="global batches trained per world size")
    parser.add_argument("--batch", type=int, default=64, help="global batch (samples per step, all ranks)")
    parser.add_argument("--history", type=int, default=50, help="n, history items per sample")
    parser.add_argument("--session", type=int, default=5, help="M, target items per sample")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--codebook", type=int, default=64, help="K of each of the 2 quantised levels")
    parser.add_argument("--cores", type=int, default=2, help="threads of the wide 1-process setting = processes of "
                        "the multi-process setting")
    parser.add_argument("--log-every", type=int, default=5, help="steps per throughput window")
    args = parser.parse_args()
    args.history_tokens = "codes"
    records: List[Dict[str, Any]] = []
    for world_size, threads in ((1, 1), (1, args.cores), (args.cores, 1)):
        records.append(measure(world_size, threads, args))
        print(json.dumps(records[-1]), flush=True)
    best = max(records[:2], key=lambda r: r["tokens_per_s"])
    print(json.dumps({"bench": "train_scaling",
                      "ratio": f"{args.cores} processes x 1 thread / 1 process x {best['threads_per_process']} threads",
                      "tokens_per_s": records[2]["tokens_per_s"] / best["tokens_per_s"]}), flush=True)
    items = measure(1, 1, argparse.Namespace(**{**vars(args), "history_tokens": "items"}))
    print(json.dumps(items), flush=True)
    print(json.dumps({"bench": "train_history_tokens", "ratio": "history_tokens items / codes, 1 process x 1 thread",
                      "samples_per_s": items["samples_per_s"] / records[0]["samples_per_s"]}), flush=True)


if __name__ == "__main__":
    main()
