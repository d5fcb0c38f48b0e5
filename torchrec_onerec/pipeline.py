"""The stages ``onerec run`` chains, each a typed function of the config that reads and writes the run directory.

    data      load -> validate -> split (EVAL.md protocols A/B); statistics to ``data/stats.json``
    tokenize  item embeddings -> semantic IDs (ONEREC.md section 1); ``tokenize/codebook.pt`` + report
    train     the generative model on TorchRec (DMP, TrainPipelineSparseDist, DCP checkpoints); ``train/``
    evaluate  the selected model on the test split (EVAL.md A or B) beside a popularity floor; ``evaluate/``

Each stage is skipped when its ``done.json`` fingerprint (the config sections it reads) matches, unless forced.
Stages that need the data re-load it (seconds, deterministic per seed) rather than pickling it between runs.

Under ``torchrun`` (WORLD_SIZE > 1) every rank runs ``train``; the other stages run on rank 0 only, and
``data``/``tokenize`` must already be complete (run ``onerec tokenize CONFIG`` in one process first), so that
no two processes write the same files.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Union

from torchrec_onerec.config import OneRecConfig, to_yaml
from torchrec_onerec.data.splits import SplitA, SplitB, split_data
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.eval.baselines import evaluate_popularity
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.run_dir import RunDir, fingerprint
from torchrec_onerec.runtime import resolve_device, seed_everything
from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.tokenizer.embeddings import item_embeddings
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer
from torchrec_onerec.train.export import load_exported
from torchrec_onerec.train.loop import train_generative

LOG = logging.getLogger("torchrec_onerec")
STAGES = ("data", "tokenize", "train", "evaluate")
STAGE_SECTIONS = {"data": ("seed", "data", "split"), "tokenize": ("tokenizer",), "train": ("model", "train", "loader"),
                  "evaluate": ("eval",)}
COLLECTIVE_STAGES = ("train",)


class PipelineContext:
    """What the stages of one invocation share: the config, the run directory and the loaded data (lazily)."""

    def __init__(self, config: OneRecConfig, run: RunDir) -> None:
        self.config = config
        self.run = run
        self.fresh = True  # the running stage starts over (vs. resuming its own partial work)
        self._data: Optional[InteractionData] = None
        self._split: Optional[Union[SplitA, SplitB]] = None

    @property
    def data(self) -> InteractionData:
        if self._data is None:
            self._data = load_dataset(self.config.data, seed=self.config.seed)
        return self._data

    @property
    def split(self) -> Union[SplitA, SplitB]:
        if self._split is None:
            self._split = split_data(self.data, self.config.split)
        return self._split

    @property
    def codebook(self) -> Codebook:
        """The tokenize stage's codebook, refused if it belongs to another catalogue or tokenizer config."""
        cfg = self.config
        return Codebook.load(self.run.path / "tokenize" / "codebook.pt", num_items=self.data.num_items,
                             fingerprint=catalogue_fingerprint(self.data.raw_item_ids, cfg.tokenizer, seed=cfg.seed))


def stage_fingerprint(config: OneRecConfig, stage: str) -> str:
    """Hash of the config sections ``stage`` and every stage before it read."""
    sections: Dict[str, object] = {}
    for earlier in STAGES[: STAGES.index(stage) + 1]:
        for name in STAGE_SECTIONS[earlier]:
            value = getattr(config, name)
            sections[name] = value if isinstance(value, int) else asdict(value)
    return fingerprint(sections)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def data_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Load, validate and split; write ``data/stats.json`` and return the statistics."""
    stats = {"dataset": ctx.data.summary(), "split": ctx.split.summary()}
    ctx.run.write_json("data/stats.json", stats)
    return stats


def tokenize_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Item embeddings -> codebook; write ``tokenize/codebook.pt``, ``report.json`` and ``report.md``."""
    cfg = ctx.config
    embeddings = item_embeddings(ctx.data, cfg.tokenizer, train_interactions=ctx.split.train_sequences, seed=cfg.seed)
    codebook, report = fit_tokenizer(embeddings, cfg.tokenizer, seed=cfg.seed, device=resolve_device(cfg.device),
                                     item_ids=ctx.data.raw_item_ids)
    folder = ctx.run.stage_dir("tokenize")
    codebook.save(folder / "codebook.pt")
    ctx.run.write_json("tokenize/report.json", report.to_json())
    ctx.run.write_text("tokenize/report.md", report.to_markdown())
    return report.to_json()


def train_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Train the generative model (every torchrun rank takes part); artefacts under ``train/``."""
    cfg = ctx.config
    book = ctx.codebook
    result = train_generative(cfg, ctx.split.train, ctx.split.valid, book.codes, book.vocab_sizes, ctx.run.path,
                              prefix_index=book.prefix_index(), device=resolve_device(cfg.device),
                              resume=not ctx.fresh, progress=_rank() == 0)
    return asdict(result)


def evaluate_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Score the selected model on the test split beside the popularity floor, on the same users."""
    cfg = ctx.config
    book = ctx.codebook
    device = resolve_device(cfg.device)
    trained = ctx.run.read_json("train/summary.json")
    model = load_exported(Path(trained["best_model_path"]), cfg.model, book.vocab_sizes, device=device)
    protocol = cfg.split.protocol
    test = ctx.split.test
    arms = {
        "onerec": evaluate_generative(model, test, codes=book.codes, prefix_index=book.prefix_index(), config=cfg.eval,
                                      protocol=protocol, max_history=cfg.model.max_history, device=device),
        "popularity": evaluate_popularity(test, ctx.split.train_sequences, ctx.data.num_items, config=cfg.eval,
                                          protocol=protocol),
    }
    summary: Dict[str, object] = {name: {"metrics": arm.metrics, "info": arm.info} for name, arm in arms.items()}
    ctx.run.write_json("evaluate/metrics.json", summary)
    ctx.run.write_text("evaluate/report.md", evaluation_markdown(cfg, {k: a.metrics for k, a in arms.items()}))
    return summary


def evaluation_markdown(config: OneRecConfig, metrics: Dict[str, Dict[str, float]]) -> str:
    """A table of every arm's test metrics, with the protocol it was measured under."""
    keys = [k for k in next(iter(metrics.values())) if "@" in k]
    lines = [f"## Test metrics ({config.name}, EVAL.md protocol {config.split.protocol})", "",
             f"history n = {config.split.max_history}, session m = {config.split.session_items}, "
             f"beam {config.eval.beam_size}, returned {config.eval.num_return}, "
             f"history items {'excluded' if config.eval.exclude_history else 'kept'} in generation", "",
             "| arm | users | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for arm, values in metrics.items():
        lines.append(f"| {arm} | {int(values['num_users'])} | " + " | ".join(f"{values[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


STAGE_FUNCTIONS: Dict[str, Callable[[PipelineContext], Dict[str, object]]] = {
    "data": data_stage,
    "tokenize": tokenize_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
}


def run_pipeline(config: OneRecConfig, *, stages: Sequence[str] = STAGES, force: Sequence[str] = ()) -> Dict[str, object]:
    """Run ``stages`` in order in ``config.run_dir``; skip completed ones whose inputs did not change.

    Args:
        config: the resolved config.
        stages: names from ``STAGES``, in pipeline order.
        force: stages to redo even when complete.

    Returns:
        ``{"run_dir": ..., "stages": {stage: summary}, "skipped": [...], "seconds": {stage: wall time}}``.
    """
    unknown = [s for s in (*stages, *force) if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    run = RunDir(config.run_dir)
    lead = _rank() == 0
    handler = run.attach_log() if lead else None
    try:
        if lead:
            run.write_text("config.yaml", to_yaml(config))
        seed_everything(config.seed)
        ctx = PipelineContext(config, run)
        summaries: Dict[str, object] = {}
        skipped: List[str] = []
        seconds: Dict[str, float] = {}
        for stage in stages:
            fp = stage_fingerprint(config, stage)
            if stage not in force and run.is_done(stage, fp):
                LOG.info("stage %s: complete with the same inputs, skipped (--force %s redoes it)", stage, stage)
                summaries[stage] = run.read_json(f"{stage}/summary.json")
                skipped.append(stage)
                continue
            if _world_size() > 1 and stage in ("data", "tokenize"):
                raise ValueError(f"stage {stage!r} is not complete in {run.path}; under torchrun run "
                                 f"`onerec tokenize CONFIG` in one process first")
            if not lead and stage not in COLLECTIVE_STAGES:
                continue
            # An interrupted stage resumes its own partial work only when it was started with the same inputs.
            ctx.fresh = stage in force or not run.was_started(stage, fp)
            if lead:
                run.clear_done(stage)
                run.mark_started(stage, fp)
            LOG.info("stage %s: %s", stage, "running" if ctx.fresh else "resuming")
            start = time.perf_counter()
            summaries[stage] = STAGE_FUNCTIONS[stage](ctx)
            seconds[stage] = round(time.perf_counter() - start, 3)
            if lead:
                run.write_json(f"{stage}/summary.json", summaries[stage])
                run.log_metrics(stage, {"seconds": seconds[stage]})
                run.mark_done(stage, fp)
            LOG.info("stage %s: done in %.1f s", stage, seconds[stage])
        return {"run_dir": str(run.path), "stages": summaries, "skipped": skipped, "seconds": seconds}
    finally:
        if handler is not None:
            LOG.removeHandler(handler)
            handler.close()
