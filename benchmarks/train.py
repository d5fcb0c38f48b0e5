"""Training throughput of OneRec on TorchRec (docs/METHOD.md section 2; DMP + TrainPipelineSparseDist), as JSON lines.

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

With ``--device cuda`` it trains on the GPUs instead (NCCL; 1 process, then one per GPU when there are several)
and adds ``peak_gpu_mib`` and the model FLOP utilisation: ``flops_per_step`` is counted by
``torch.utils.flop_counter.FlopCounterMode`` over the forward and backward pass of the unsharded model on one
global batch (matrix products and attention; the optimiser is not counted), ``model_tflops_per_s`` =
flops_per_step x steps/s, and ``mfu`` = that over the GPU's dense peak (``--peak-tflops``, or the datasheet
figure of a known GPU for the ``--amp`` dtype).

``--unsharded`` times the unsharded ``OneRecTrainStep`` instead: forward, backward and a fused AdamW step over
every parameter (tables included) in this process, without DMP or the train pipeline. Its compute is the same
model's, so it measures the MFU where TorchRec's sharded CUDA kernels are not installed (the CUDA fbgemm-gpu
build must match the torch release exactly).

The items are random unique code tuples and the samples random sessions, one user each (the user-id table has
a row per sample); speed does not depend on them.

``--prefix-clusters C`` trains the item level scored per cluster instead (``model.item_head=prefix``: C random
balanced clusters, then the item id), once per ``--sampled-siblings`` value (``train.sampled_siblings``; 0 scores
every sibling), 1 process with 1 thread each, then the speed-up of each sampled setting over the full one.

    nice .venv/bin/python benchmarks/train.py [--size small] [--steps 20] [--cores 2]
    nice .venv/bin/python benchmarks/train.py --items 1000000 --prefix-clusters 500 --sampled-siblings 0 64
    python benchmarks/train.py --device cuda --amp bf16 --size 1b --batch 96 --history 256 --steps 15 \
        --items 100000 --codebook 1024
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
import torch.multiprocessing as mp
import torchrec
from torch.utils.flop_counter import FlopCounterMode

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.modules.moe import DISPATCH_MODES, forced_dispatch
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, to_semantic_batch
from torchrec_onerec.models.config import MODEL_SIZES
from torchrec_onerec.models.onerec import OneRecModel, count_parameters
from torchrec_onerec.models.testing import cluster_leaf_codes, random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.loop import train_generative
from torchrec_onerec.train.config import AMP_MODES
from torchrec_onerec.train.testing import random_samples, tiny_config
from torchrec_onerec.train.train_module import OneRecTrainStep
from torchrec_onerec.context import generative_validator
from torchrec_onerec.train.testing import as_torchrun_rank, free_port

SIZES: Dict[str, Dict[str, Any]] = {
    "small": {
        "d_model": 64,
        "num_heads": 4,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "ffn_hidden": 256,
        "num_experts": 8,
        "top_k": 2,
        "expert_hidden": 128,
        "dropout": 0.1,
    },
    "tiny": {},
    "1b": {
        name: getattr(MODEL_SIZES["1b"], name)
        for name in (
            "d_model",
            "num_heads",
            "encoder_layers",
            "decoder_layers",
            "ffn_hidden",
            "num_experts",
            "top_k",
            "expert_hidden",
            "dropout",
        )
    },
}
# dense bf16 / float32 (no TF32) datasheet peaks in TFLOP/s of the SXM parts, by a word of the device name
PEAK_TFLOPS: Dict[str, Dict[str, float]] = {
    "H100": {"bf16": 989.4, "none": 66.9},
    "H200": {"bf16": 989.4, "none": 66.9},
    "A100": {"bf16": 312.0, "none": 19.5},
}


def _setting(args: argparse.Namespace) -> Dict[str, Any]:
    """Everything both world sizes share (built identically in every worker from the seed)."""
    model = {**SIZES[args.size], "history_tokens": args.history_tokens}
    if args.prefix_clusters:
        codes, vocab = cluster_leaf_codes(args.items, args.prefix_clusters)
        model["item_head"] = "prefix"
    else:
        codes, vocab = random_codes(args.items, [args.codebook] * 2, seed=0)
    config = tiny_config(
        batch_size=args.batch,
        num_users=args.batch * args.steps,
        max_history=args.history,
        session_items=args.session,
        model=model,
        epochs=1,
        log_every_steps=args.log_every,
        warmup_steps=5,
        amp=args.amp,
        sampled_siblings=args.sampled,
    )
    samples = random_samples(
        args.batch * args.steps, args.items, max_history=args.history, session_items=args.session, seed=0
    )
    return {"codes": codes, "vocab": vocab, "config": config, "samples": samples}


def _worker(rank: int, world_size: int, threads: int, port: int, args: argparse.Namespace, folder: str) -> None:
    with forced_dispatch(DISPATCH_MODES[args.moe_dispatch]):
        _train(rank, world_size, threads, port, args, folder)


def _train(rank: int, world_size: int, threads: int, port: int, args: argparse.Namespace, folder: str) -> None:
    as_torchrun_rank(rank, world_size, port, threads=threads)
    setting = _setting(args)
    config = setting["config"]
    result = train_generative(
        config.model,
        config.train,
        config.loader,
        setting["samples"],
        SampleSet.empty(args.session, ["click"]),
        setting["codes"],
        setting["vocab"],
        Path(folder) / "run",
        validator=generative_validator(config, setting["codes"], PrefixIndex(setting["codes"]), progress=False),
        seed=config.seed,
        device=torch.device(args.device),
        resume=False,
        progress=False,
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_mib = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    Path(folder, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "result": result.__dict__,
                "peak_rss_mb": peak_mb,
                "peak_gpu_mib": gpu_mib,
                "threads": torch.get_num_threads(),
            }
        )
    )


def measure(world_size: int, threads: int, args: argparse.Namespace) -> Dict[str, Any]:
    """Train ``args.steps`` steps with ``world_size`` processes of ``threads`` threads; returns the JSON record."""
    load_before = os.getloadavg()[0]  # the machine may be shared: a busy core slows multi-threaded settings most
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _worker, args=(world_size, threads, free_port(), args, folder), nprocs=world_size, start_method="spawn"
        )
        reports = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(world_size)]
        with open(Path(folder) / "run" / "train" / "metrics.csv") as f:
            windows = list(csv.DictReader(f))[1:]
    result = reports[0]["result"]
    setting = _setting(args)
    return {
        "bench": "train",
        "device": _device_name(args.device),
        "amp": args.amp,
        "moe_dispatch": args.moe_dispatch,
        "world_size": world_size,
        "threads_per_process": reports[0]["threads"],
        "model": args.size,
        "history_tokens": args.history_tokens,
        "item_head": setting["config"].model.item_head,
        "sampled_siblings": args.sampled,
        "params": count_parameters(setting["config"].model, setting["vocab"])["total"],
        "vocab_sizes": setting["vocab"],
        "max_history": args.history,
        "session_items": args.session,
        "global_batch": args.batch,
        "steps": result["steps"],
        "plan": sorted({p["sharding_type"] for p in result["plan"].values()}),
        "samples_per_s": statistics.median(float(w["samples_per_s"]) for w in windows),
        "tokens_per_s": statistics.median(float(w["tokens_per_s"]) for w in windows),
        "samples_per_s_overall": result["samples_per_s"],
        "tokens_per_s_overall": result["tokens_per_s"],
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in reports],
        "load_avg_before": load_before,
        "peak_gpu_mib": [None if r["peak_gpu_mib"] is None else round(r["peak_gpu_mib"]) for r in reports],
        "torch": torch.__version__,
        "torchrec": torchrec.__version__,
    }


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def _unsharded_step(args: argparse.Namespace) -> Tuple[Dict[str, Any], torch.device, OneRecTrainStep]:
    """The setting, the device and a freshly seeded unsharded ``OneRecTrainStep`` on it."""
    setting = _setting(args)
    device = torch.device(args.device)
    torch.manual_seed(0)
    step = OneRecTrainStep(
        OneRecModel(setting["config"].model, setting["vocab"], device=device), amp=args.amp, device_type=device.type
    )
    return setting, device, step


def _batch(setting: Dict[str, Any], index: int, size: int, device: torch.device) -> SemanticIdBatch:
    """Global batch number ``index`` of the setting's samples, on ``device``."""
    rows = setting["samples"].subset(range(index * size, (index + 1) * size))
    return to_semantic_batch(collate_samples(rows), setting["codes"]).to(device)


def step_flops(args: argparse.Namespace) -> int:
    """FLOPs of one training step's forward and backward pass over one global batch (unsharded model)."""
    setting, device, step = _unsharded_step(args)
    batch = _batch(setting, 0, args.batch, device)
    counter = FlopCounterMode(display=False)
    with counter, forced_dispatch(False):  # the counter has a formula for every product of the loop
        loss, _ = step(batch)
        loss.backward()
    del step, batch, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return counter.get_total_flops()


def utilisation(record: Dict[str, Any], flops: int, args: argparse.Namespace) -> Dict[str, Any]:
    """The MFU line of one measured CUDA setting."""
    peak = args.peak_tflops or next((p[args.amp] for word, p in PEAK_TFLOPS.items() if word in record["device"]), 0.0)
    achieved = flops * record["samples_per_s"] / record["global_batch"] / 1e12
    return {
        "bench": "train_mfu",
        "device": record["device"],
        "amp": args.amp,
        "world_size": record["world_size"],
        "model": args.size,
        "params": record["params"],
        "global_batch": args.batch,
        "flops_per_step": flops,
        "model_tflops_per_s": round(achieved, 2),
        "peak_tflops_per_gpu": peak or None,
        "mfu": round(achieved / (peak * record["world_size"]), 4) if peak else None,
        "target": ">= 0.25",
    }


def measure_unsharded(args: argparse.Namespace) -> Dict[str, Any]:
    """Forward, backward and AdamW step of the unsharded model, one process; median over steps after the first 3."""
    setting, device, step = _unsharded_step(args)
    optimizer = torch.optim.AdamW(step.parameters(), lr=1e-4, fused=device.type == "cuda")
    B = args.batch
    batches = [_batch(setting, i, B, device) for i in range(args.steps)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        loss, _ = step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds[3:] or seconds)
    return {
        "bench": "train_unsharded",
        "device": _device_name(args.device),
        "amp": args.amp,
        "world_size": 1,
        "model": args.size,
        "history_tokens": args.history_tokens,
        "params": count_parameters(setting["config"].model, setting["vocab"])["total"],
        "vocab_sizes": setting["vocab"],
        "max_history": args.history,
        "session_items": args.session,
        "global_batch": B,
        "steps": args.steps,
        "seconds_per_step": round(median, 5),
        "samples_per_s": B / median,
        "final_loss": float(loss.detach()),
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "torchrec": torchrec.__version__,
    }


def main_mfu(args: argparse.Namespace) -> None:
    """1 process on 1 GPU, then one per GPU (or the unsharded step, on any device); each with its MFU line."""
    flops = step_flops(args)
    if args.unsharded:
        with forced_dispatch(DISPATCH_MODES[args.moe_dispatch]):
            records = [measure_unsharded(args)]
    else:
        records = [measure(world_size, 1, args) for world_size in sorted({1, torch.cuda.device_count()})]
    for record in records:
        print(json.dumps(record), flush=True)
        print(json.dumps(utilisation(record, flops, args)), flush=True)


def main_sampled(args: argparse.Namespace) -> None:
    """The prefix-scored item level, once per ``--sampled-siblings`` value, 1 process x 1 thread each."""
    records = []
    for sampled in args.sampled_siblings:
        records.append(measure(1, 1, argparse.Namespace(**{**vars(args), "sampled": sampled})))
        print(json.dumps(records[-1]), flush=True)
    full = next((r for r in records if r["sampled_siblings"] == 0), None)
    for record in records:
        if full is not None and record is not full:
            ratio = {
                "bench": "train_sampled_siblings",
                "ratio": f"samples/s, sampled_siblings {record['sampled_siblings']} / every sibling",
                "items": args.items,
                "clusters": args.prefix_clusters,
                "samples_per_s": round(record["samples_per_s"] / full["samples_per_s"], 2),
            }
            print(json.dumps(ratio), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=20, help="global batches trained per world size")
    parser.add_argument("--batch", type=int, default=64, help="global batch (samples per step, all ranks)")
    parser.add_argument("--history", type=int, default=50, help="n, history items per sample")
    parser.add_argument("--session", type=int, default=5, help="M, target items per sample")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--codebook", type=int, default=64, help="K of each of the 2 quantised levels")
    parser.add_argument(
        "--cores",
        type=int,
        default=2,
        help="threads of the wide 1-process setting = processes of the multi-process setting",
    )
    parser.add_argument("--log-every", type=int, default=5, help="steps per throughput window")
    parser.add_argument("--prefix-clusters", type=int, default=0, help="C: train model.item_head=prefix (0: dense)")
    parser.add_argument(
        "--sampled-siblings", type=int, nargs="+", default=[0, 64], help="train.sampled_siblings, one run each"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", choices=AMP_MODES, default="none", help="train.amp")
    parser.add_argument("--history-tokens", choices=["codes", "items"], default="codes", help="model.history_tokens")
    parser.add_argument(
        "--moe-dispatch",
        choices=list(DISPATCH_MODES),
        default="auto",
        help="auto: the grouped GEMM on CUDA in bf16, else the per-expert loop; loop: the loop everywhere",
    )
    parser.add_argument(
        "--unsharded",
        action="store_true",
        help="time the unsharded train step (no DMP), e.g. "
        "on a GPU machine without TorchRec's CUDA kernels; prints its MFU line",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="dense peak TFLOP/s of one GPU for --amp "
        f"(default: the datasheet figure of a GPU named {sorted(PEAK_TFLOPS)})",
    )
    args = parser.parse_args()
    args.sampled = 0  # the setting measured; main_sampled varies it
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.device == "cuda" or args.unsharded:
        main_mfu(args)
        return
    if args.steps < 2 * args.log_every:
        parser.error(
            f"--steps {args.steps} with --log-every {args.log_every} gives {args.steps // args.log_every} throughput "
            f"window(s), and the first is warm-up: use --steps >= {2 * args.log_every} or a smaller --log-every"
        )
    if args.prefix_clusters:
        main_sampled(args)
        return
    if args.history_tokens != "codes":
        parser.error("--history-tokens: the CPU run measures both settings itself; leave it at codes")
    records: List[Dict[str, Any]] = []
    for world_size, threads in ((1, 1), (1, args.cores), (args.cores, 1)):
        records.append(measure(world_size, threads, args))
        print(json.dumps(records[-1]), flush=True)
    best = max(records[:2], key=lambda r: r["tokens_per_s"])
    print(
        json.dumps(
            {
                "bench": "train_scaling",
                "ratio": f"{args.cores} processes x 1 thread / 1 process x {best['threads_per_process']} threads",
                "tokens_per_s": records[2]["tokens_per_s"] / best["tokens_per_s"],
            }
        ),
        flush=True,
    )
    items = measure(1, 1, argparse.Namespace(**{**vars(args), "history_tokens": "items"}))
    print(json.dumps(items), flush=True)
    print(
        json.dumps(
            {
                "bench": "train_history_tokens",
                "ratio": "history_tokens items / codes, 1 process x 1 thread",
                "samples_per_s": items["samples_per_s"] / records[0]["samples_per_s"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
