"""Training metrics, written by rank 0: the generative model's per-step windows (``TrainLogger``) and every
``trainer.fit`` model's epoch records (``MetricsWriter``: ``metrics.jsonl`` and ``<model>.csv`` of its folder).

Every ``train.log_every_steps`` steps each rank contributes its sums (losses, tokens, samples, expert load,
seconds in steps); one all-reduce combines them and rank 0 appends a record to the run directory's
``metrics.jsonl`` (stage ``train``) and a row to ``train/metrics.csv``. Each epoch gets a summary record (stage
``train/epoch``, with the per-layer expert load) and each validation one (stage ``train/valid``). Losses are
means over steps and ranks (each rank's loss is a mean over its own target codes, as DDP averages). ``tokens``
counts the history and target code tokens the model read; throughput is per wall second spent in training steps
(validation and checkpoints excluded). Expert utilisation is ``E * share`` of each expert (1 = perfectly
balanced): ``expert_load_max`` / ``expert_load_min`` over experts and decoder layers.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from torchrec_onerec.data.batch import USER_KEY
from torchrec_onerec.data.semantic_batch import SIBLINGS_KEY, SemanticIdBatch
from torchrec_onerec.run_dir import RunDir, atomic_write_text
from torchrec_onerec.train.distributed import DistContext, all_reduce_sum
from torchrec_onerec.train.train_module import StepMetrics

STEP_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "ntp_loss",
    "aux_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "samples_per_s",
    "expert_load_max",
    "expert_load_min",
)


def batch_sizes(batch: SemanticIdBatch) -> tuple[int, int]:
    """(samples, history + target code tokens) of a semantic batch (the user ids and the output rows of the
    item level's siblings left out: neither is a token the model reads)."""
    lengths = dict(zip(batch.features.keys(), batch.features.length_per_key()))
    return batch.batch_size, int(sum(n for key, n in lengths.items() if key not in (USER_KEY, SIBLINGS_KEY)))


class StepAccumulator:
    """Sums of one rank's step metrics since the last flush.

    Example:
        >>> acc = StepAccumulator()
        >>> acc.add(StepMetrics(*(torch.tensor(v) for v in (2.0, 1.5, 1.0)), torch.tensor([[0.5, 0.5]])), 0.5,
        ...         samples=4, tokens=40)
        >>> ctx = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False)
        >>> record = acc.flush(ctx)
        >>> record["loss"], record["tokens_per_s"], record["expert_load_max"]
        (2.0, 80.0, 1.0)
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.steps, self.seconds, self.samples, self.tokens = 0, 0.0, 0, 0
        self.loss = self.ntp = self.aux = 0.0
        self.load: Optional[torch.Tensor] = None

    def add(self, metrics: StepMetrics, seconds: float, *, samples: int, tokens: int) -> None:
        """Add one step: its detached metrics, wall time, and this rank's samples and tokens."""
        self.steps += 1
        self.seconds += seconds
        self.samples += samples
        self.tokens += tokens
        self.loss += float(metrics.loss)
        self.ntp += float(metrics.ntp_loss)
        self.aux += float(metrics.aux_loss)
        load = metrics.expert_load.float().cpu()
        self.load = load if self.load is None else self.load + load

    def flush(self, ctx: DistContext) -> Dict[str, Any]:
        """Combine the window over ranks (a collective) and reset."""
        load = self.load if self.load is not None else torch.zeros(0)
        sums = all_reduce_sum(
            [self.steps, self.loss, self.ntp, self.aux, self.samples, self.tokens, *load.flatten().tolist()], ctx
        )
        steps = max(sums[0], 1.0)
        seconds = max(self.seconds, 1e-9)  # ranks step in lockstep: rank 0's clock is the job's
        record: Dict[str, Any] = {
            "loss": sums[1] / steps,
            "ntp_loss": sums[2] / steps,
            "aux_loss": sums[3] / steps,
            "samples_per_s": sums[4] / seconds,
            "tokens_per_s": sums[5] / seconds,
        }
        if load.numel():
            share = torch.tensor(sums[6:]).view(load.shape) / steps  # [layers, E], each row sums to 1
            utilisation = share * share.shape[-1]
            record.update(
                expert_load_max=float(utilisation.max()),
                expert_load_min=float(utilisation.min()),
                expert_load=share.tolist(),
            )
        self.reset()
        return record


class TrainLogger:
    """Rank 0's writer of training records (``metrics.jsonl`` and ``train/metrics.csv``).

    Args:
        run (RunDir): the run directory.
        ctx (DistContext): this rank (only rank 0 writes).
        resume_step (int): the step training resumes from: CSV rows after it (from an interrupted run) are
            dropped, so the CSV reads as one run.
    """

    def __init__(self, run: RunDir, ctx: DistContext, *, resume_step: int) -> None:
        self.run, self.ctx = run, ctx
        self.csv_path: Path = run.path / "train" / "metrics.csv"
        if ctx.is_rank0:
            self._truncate(resume_step)

    def _truncate(self, step: int) -> None:
        if not self.csv_path.is_file():
            return
        rows = [row for row in csv.DictReader(io.StringIO(self.csv_path.read_text())) if int(row["step"]) <= step]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=STEP_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, out.getvalue())

    def log_step(self, record: Dict[str, Any], *, step: int) -> None:
        """Write one training-window record."""
        if not self.ctx.is_rank0:
            return
        self.run.log_metrics("train", record, step=step)
        new = not self.csv_path.is_file()
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({"step": step, **record})

    def log_epoch(self, record: Dict[str, Any], *, epoch: int, step: int) -> None:
        """Write an epoch's training summary (``stage`` = ``train/epoch``; per-layer expert load included; after a
        resume, the steps since the resume)."""
        if self.ctx.is_rank0:
            self.run.log_metrics("train/epoch", {"epoch": epoch, **record}, step=step)

    def log_validation(self, metrics: Dict[str, float], *, epoch: int, step: int, best: bool) -> None:
        """Write one validation record (``stage`` = ``train/valid``)."""
        if self.ctx.is_rank0:
            self.run.log_metrics("train/valid", {"epoch": epoch, "best": best, **metrics}, step=step)


def summary_rows(history: List[Dict[str, Any]]) -> str:
    """Records as CSV text, one column per key any record has (``train/validation.csv``, ``<model>.csv``)."""
    columns = list(dict.fromkeys(key for row in history for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()


class MetricsWriter:
    """Rank 0's epoch records: ``metrics.jsonl`` (emptied when the writer is made, then appended) and
    ``<model>.csv`` (rewritten after every epoch)."""

    def __init__(self, folder: Path, ctx: DistContext) -> None:
        self.folder, self.ctx = folder, ctx
        if ctx.is_rank0:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metrics.jsonl").write_text("")

    def record(self, record: Dict[str, Any]) -> None:
        if self.ctx.is_rank0:
            with open(self.folder / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")

    def table(self, name: str, rows: List[Dict[str, Any]]) -> None:
        if self.ctx.is_rank0:
            atomic_write_text(self.folder / f"{name}.csv", summary_rows(rows))
