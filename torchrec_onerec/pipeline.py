"""``onerec run``: the stages in order, each skipped when it completed with the same inputs.

The stages (``stages.STAGE_LIST``: what each does, its config sections, the stages it reads, whether every
torchrun rank takes part) form a small graph: a stage's inputs are its own config sections plus every stage it
reads, and its fingerprint hashes both, so changing the
cascade's config redoes the cascade and the comparison but not the generative model.

    data --> tokenize --> train ----------> align --+
     |          |--> train-reward -------^  ^          |
     |--> cascade --------------------------+----------+--> evaluate --> compare
     |--> sasrec ------------------------------------------^

(alignment reads the cascade's ranker under ``align.reward_source=ranker`` or ``mix``.)

A stage is skipped when its ``done.json`` fingerprint matches, unless forced; a stage that was interrupted
resumes its own partial work (training checkpoints) only when ``started.json`` matches.

Under ``torchrun`` (WORLD_SIZE > 1) every rank runs the training stages and the evaluation (each rank searches
a share of the users); the other stages run on rank 0 only,
and ``data``/``tokenize`` must already be complete (run ``onerec tokenize CONFIG`` in one process first), so
that no two processes write the same files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, Tuple

from torchrec_onerec.config import OneRecConfig, to_yaml
from torchrec_onerec.context import PipelineContext, rank, world_size
from torchrec_onerec.run_dir import RunDir, fingerprint
from torchrec_onerec.runtime import resolve_device, seed_everything
from torchrec_onerec.sizing import with_sizes_from_data
from torchrec_onerec.stages import STAGE_LIST
from torchrec_onerec.peak_memory import peak_memory, reset_peak_memory
from torchrec_onerec.tokenizer.config import LATER_KEYS as TOKENIZER_LATER_KEYS
from torchrec_onerec.tokenizer.config import fingerprint_settings
from torchrec_onerec.train.config import STACK_KEYS
from torchrec_onerec.train.distributed import (
    all_gather_object,
    barrier,
    broadcast_object,
    init_distributed,
    teardown_distributed,
)

LOG = logging.getLogger("torchrec_onerec")
# Views of the one stage list (stages.STAGE_LIST), by name.
STAGES = tuple(stage.name for stage in STAGE_LIST)
STAGE_BY_NAME = {stage.name: stage for stage in STAGE_LIST}
STAGE_SECTIONS: Dict[str, Tuple[str, ...]] = {stage.name: stage.sections for stage in STAGE_LIST}
STAGE_INPUTS: Dict[str, Tuple[str, ...]] = {stage.name: stage.inputs for stage in STAGE_LIST}
COLLECTIVE_STAGES = tuple(stage.name for stage in STAGE_LIST if stage.collective)
RANKER_REWARDS = ("ranker", "mix")  # the align.reward_source values that read the cascade's ranker
# keys added to a section after runs existed: they count in a fingerprint only away from their old-behaviour
# value, so adding one does not redo the stages of an existing run directory
LATER_KEYS: Dict[str, Dict[str, object]] = {
    "tokenizer": TOKENIZER_LATER_KEYS,
    "train": {"random_exposures": "all", "sampled_siblings": 0},
}


def stage_inputs(stage: str, config: Optional[OneRecConfig] = None) -> Tuple[str, ...]:
    """The stages ``stage`` reads directly: ``STAGE_INPUTS``, less the cascade for an alignment that does not
    use its ranker (``align.reward_source`` other than ``ranker`` / ``mix``), so that tuning the cascade does not
    redo alignment. Without a config, every possible input.

    Example:
        >>> from torchrec_onerec.config import OneRecConfig
        >>> stage_inputs("align", OneRecConfig())
        ('train', 'train-reward')
    """
    inputs = STAGE_INPUTS[stage]
    if stage == "align" and config is not None and config.align.reward_source not in RANKER_REWARDS:
        inputs = tuple(s for s in inputs if s != "cascade")
    return inputs


def stage_closure(stage: str, config: Optional[OneRecConfig] = None) -> List[str]:
    """``stage`` and every stage it reads, directly or not, in pipeline order (``stage_inputs``).

    Example:
        >>> stage_closure("train")
        ['data', 'tokenize', 'train']
    """
    needed = {stage}
    frontier = [stage]
    while frontier:
        for earlier in stage_inputs(frontier.pop(), config):
            if earlier not in needed:
                needed.add(earlier)
                frontier.append(earlier)
    return [s for s in STAGES if s in needed]


def stage_fingerprint(config: OneRecConfig, stage: str) -> str:
    """Hash of the config sections that ``stage`` and every stage it reads depend on."""
    sections: Dict[str, object] = {}
    for earlier in stage_closure(stage, config):
        for name in STAGE_SECTIONS[earlier]:
            if name == "train.stack":
                sections[name] = {key: getattr(config.train, key) for key in STACK_KEYS}
                continue
            value = getattr(config, name)
            settings = value if isinstance(value, int) else asdict(value)
            sections[name] = fingerprint_settings(settings, LATER_KEYS.get(name, {}))
        skip_when = STAGE_BY_NAME[earlier].skip_when
        why = skip_when(config) if skip_when is not None else ""
        if why:  # a stage that applies keeps the fingerprint it had before skip_when existed
            sections[f"{earlier}:skipped"] = why
    return fingerprint(sections)


def run_pipeline(
    config: OneRecConfig, *, stages: Sequence[str] = STAGES, force: Sequence[str] = (), redo_if_done: Sequence[str] = ()
) -> Dict[str, object]:
    """Run ``stages`` in order in ``config.run_dir``; skip completed ones whose inputs did not change.

    The keys of ``config.sizes_from_data`` are set from the data first (``torchrec_onerec.sizing``), so the
    fingerprints, the artefacts and the run's ``config.yaml`` all follow the values used.

    Args:
        config: the resolved config.
        stages: names from ``STAGES``, in pipeline order.
        force: stages to redo even when complete.
        redo_if_done: stages to redo when they completed with the same inputs (and to resume, not restart, when
            they were interrupted): what ``onerec STAGE`` asks for.

    Returns:
        ``{"run_dir": ..., "stages": {stage: summary}, "skipped": [...], "seconds": {stage: wall time},
        "config": the config the stages ran with (``sizes_from_data`` set)}``.
    """
    unknown = [s for s in (*stages, *force) if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    run = RunDir(config.run_dir)
    lead = rank() == 0
    handler = run.attach_log() if lead else None
    # Under torchrun one process group serves every stage: torchrun's store cannot host a second default group.
    group = init_distributed(resolve_device(config.device), timeout_s=config.train.collective_timeout_s)
    try:
        ctx = PipelineContext(config, run)
        if config.sizes_from_data:
            config, derived = with_sizes_from_data(config, ctx.data)
            ctx.config = config
            if lead:
                run.write_json("sizes_from_data.json", derived)
        force = [*force, *(s for s in redo_if_done if run.is_done(s, stage_fingerprint(config, s)))]
        if lead:
            run.write_text("config.yaml", to_yaml(config))
        seed_everything(config.seed)
        summaries: Dict[str, object] = {}
        skipped: List[str] = []
        seconds: Dict[str, float] = {}
        for stage in stages:
            fp = stage_fingerprint(config, stage)
            # Rank 0 decides whether to skip and whether to resume, so that every rank takes the same path.
            done, fresh = broadcast_object(
                (stage not in force and run.is_done(stage, fp), stage in force or not run.was_started(stage, fp)), group
            )
            if done:
                LOG.info("stage %s: complete with the same inputs, skipped (--force %s redoes it)", stage, stage)
                summaries[stage] = run.read_json(f"{stage}/summary.json")
                skipped.append(stage)
                continue
            if world_size() > 1 and stage in ("data", "tokenize"):
                raise ValueError(
                    f"stage {stage!r} is not complete in {run.path}; under torchrun run "
                    f"`onerec tokenize CONFIG` in one process first"
                )
            if not lead and stage not in COLLECTIVE_STAGES:
                continue
            # An interrupted stage resumes its own partial work only when it was started with the same inputs.
            ctx.fresh = fresh
            if lead:
                run.clear_done(stage)
                run.mark_started(stage, fp)
            skip_when = STAGE_BY_NAME[stage].skip_when
            why = skip_when(config) if skip_when is not None else ""
            LOG.info("stage %s: %s", stage, f"not applicable: {why}" if why else "running" if ctx.fresh else "resuming")
            since_reset = reset_peak_memory()
            start = time.perf_counter()
            summaries[stage] = {"not_applicable": why} if why else STAGE_BY_NAME[stage].run(ctx)
            seconds[stage] = round(time.perf_counter() - start, 3)
            peaks = peak_memory(since_reset)
            # per rank, in rank order (a collective stage's ranks all get here; rank 0 alone runs the others)
            memory = all_gather_object(peaks, group) if stage in COLLECTIVE_STAGES else [peaks]
            if lead:
                run.write_json(f"{stage}/summary.json", summaries[stage])
                # the run's config.yaml is the last command's; this copy is the one the stage's artefacts follow
                run.write_text(f"{stage}/config.yaml", to_yaml(config))
                run.log_metrics(stage, {"seconds": seconds[stage], "peak_memory": memory})
                run.mark_done(stage, fp)
            LOG.info("stage %s: done in %.1f s, peak %.0f MiB", stage, seconds[stage], peaks["host_peak_mib"])
        # The other ranks skip rank 0's last stages; tearing the group down while rank 0 still works on them
        # could abort a rank in gloo's teardown, so every rank leaves together.
        barrier(group)
        return {"run_dir": str(run.path), "stages": summaries, "skipped": skipped, "seconds": seconds, "config": config}
    finally:
        teardown_distributed(group)
        if handler is not None:
            LOG.removeHandler(handler)
            handler.close()
