"""The stages ``onerec run`` chains, each a typed function of the config that reads and writes the run directory.

    data      load -> validate -> split (EVAL.md protocols A/B); statistics to ``data/stats.json``
    tokenize  item embeddings -> semantic IDs (ONEREC.md section 1); ``tokenize/codebook.pt`` + report

Each stage is skipped when its ``done.json`` fingerprint (the config sections it reads) matches, unless forced.
Stages that need the data re-load it (seconds, deterministic per seed) rather than pickling it between runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Union

from torchrec_onerec.config import OneRecConfig, to_yaml
from torchrec_onerec.data.splits import SplitA, SplitB, split_data
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.run_dir import RunDir, fingerprint
from torchrec_onerec.runtime import resolve_device, seed_everything
from torchrec_onerec.tokenizer.embeddings import item_embeddings
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer

LOG = logging.getLogger("torchrec_onerec")
STAGES = ("data", "tokenize")


class PipelineContext:
    """What the stages of one invocation share: the config, the run directory and the loaded data (lazily)."""

    def __init__(self, config: OneRecConfig, run: RunDir) -> None:
        self.config = config
        self.run = run
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


def stage_fingerprint(config: OneRecConfig, stage: str) -> str:
    """Hash of the config sections ``stage`` (and every stage before it) reads."""
    sections: Dict[str, object] = {"seed": config.seed, "data": asdict(config.data), "split": asdict(config.split)}
    if STAGES.index(stage) >= STAGES.index("tokenize"):
        sections["tokenizer"] = asdict(config.tokenizer)
    return fingerprint(sections)


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


STAGE_FUNCTIONS: Dict[str, Callable[[PipelineContext], Dict[str, object]]] = {
    "data": data_stage,
    "tokenize": tokenize_stage,
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
    handler = run.attach_log()
    try:
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
            run.clear_done(stage)
            LOG.info("stage %s: running", stage)
            start = time.perf_counter()
            summaries[stage] = STAGE_FUNCTIONS[stage](ctx)
            seconds[stage] = round(time.perf_counter() - start, 3)
            run.write_json(f"{stage}/summary.json", summaries[stage])
            run.log_metrics(stage, {"seconds": seconds[stage]})
            run.mark_done(stage, fp)
            LOG.info("stage %s: done in %.1f s", stage, seconds[stage])
        return {"run_dir": str(run.path), "stages": summaries, "skipped": skipped, "seconds": seconds}
    finally:
        logging.getLogger("torchrec_onerec").removeHandler(handler)
        handler.close()
