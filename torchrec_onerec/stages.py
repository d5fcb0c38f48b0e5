"""What each stage of ``onerec run`` does: a typed function of the shared ``PipelineContext`` that reads the run
directory and writes its own folder in it. ``pipeline.py`` orders the stages, fingerprints their inputs and
skips the completed ones.

    data      load -> validate -> split (docs/EVAL.md protocols A/B); statistics to ``data/stats.json``
    tokenize  item embeddings -> semantic IDs (docs/METHOD.md section 1); ``tokenize/codebook.pt`` + report
    train     the generative model on TorchRec (DMP, TrainPipelineSparseDist, DCP checkpoints); ``train/``
    train-reward  the session reward model on the training days (protocol B; items read with the tokenize
                  stage's semantic IDs), per-tower test AUC; ``train-reward/``
    align     iterative preference alignment (DPO) of the trained model to the reward model; ``align/``
    cascade   the baseline: two-tower retrieval -> DLRM multi-task ranker -> top-m session; ``cascade/``
    evaluate  every arm of compare.arms (``arms.ARMS``) on the test split, the same users for all;
              ``evaluate/arms/<arm>.npz``
    compare   intervals and lifts over the baseline arm, ``compare/report.md`` with figures

What the stages share (config, run directory, data) is ``context.PipelineContext``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from torchrec_onerec.alignment.ipa import align_iteratively
from torchrec_onerec.arms import arm_file, arm_for, evaluate_arm
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.context import PipelineContext, rank, world_size
from torchrec_onerec.reward_stage import train_reward_stage
from torchrec_onerec.data.impression_targets import impression_training_samples
from torchrec_onerec.data.splits import SplitB
from torchrec_onerec.datasets.interactions import DataError
from torchrec_onerec.eval.compare import compare_arms
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.report import (
    evaluation_markdown,
    protocol_deviations,
    stage_sections,
    training_curves,
    write_comparison_report,
)
from torchrec_onerec.eval.reward_estimates import add_reward_estimates
from torchrec_onerec.eval.simulated import add_true_rewards
from torchrec_onerec.eval.world_diagnostics import diagnostics_markdown, world_diagnostics
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.runtime import resolve_device
from torchrec_onerec.tokenizer.embeddings import item_embeddings
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer
from torchrec_onerec.train.cascade_training import train_cascade
from torchrec_onerec.train.export import load_exported
from torchrec_onerec.train.loop import train_generative
from torchrec_onerec.train.sasrec_training import train_sasrec

LOG = logging.getLogger("torchrec_onerec")


def data_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Load, validate and split; write ``data/stats.json`` and return the statistics.

    Raises:
        DataError: the split leaves no training or no test samples (nothing later stages could use).
    """
    empty = [
        f"0 {what} samples"
        for window, what in (("train", "training"), ("test", "test"))
        if len(getattr(ctx.split, window)) == 0
    ]
    if empty:
        raise DataError(
            f"{ctx.data.name}: split.protocol={ctx.config.split.protocol} gives {' and '.join(empty)} "
            f"(left out: {ctx.split.dropped}); the data needs more interactions per user, or a lower "
            "split.min_history"
        )
    stats: Dict[str, object] = {"dataset": ctx.data.summary(), "split": ctx.split.summary()}
    ctx.run.write_json("data/stats.json", stats)
    return stats


def tokenize_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Item embeddings -> codebook; write ``tokenize/codebook.pt``, ``report.json`` and ``report.md``."""
    cfg = ctx.config
    embeddings = item_embeddings(ctx.data, cfg.tokenizer, train_interactions=ctx.split.train_sequences, seed=cfg.seed)
    codebook, report = fit_tokenizer(
        embeddings, cfg.tokenizer, seed=cfg.seed, device=resolve_device(cfg.device), item_ids=ctx.data.raw_item_ids
    )
    folder = ctx.run.stage_dir("tokenize")
    codebook.save(folder / "codebook.pt")
    ctx.run.write_json("tokenize/report.json", report.to_json())
    ctx.run.write_text("tokenize/report.md", report.to_markdown())
    return report.to_json()


def train_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Train the generative model (every torchrun rank takes part); artefacts under ``train/``."""
    cfg = ctx.config
    book = ctx.codebook
    samples = ctx.split.train
    if cfg.train.targets == "impressions":
        split = ctx.split
        if not isinstance(split, SplitB):
            raise ConfigError(
                "train.targets='impressions' needs protocol B data (impressions with feedback); "
                f"split.protocol={cfg.split.protocol!r}: set train.targets=positives"
            )
        samples, short, skipped = impression_training_samples(
            split, cfg.split, ctx.data.num_users, random_exposures=cfg.train.random_exposures
        )
        LOG.info(
            "train: %d impression runs as targets (%d dropped: history below split.min_history; %d unengaged "
            "random exposures left out, train.random_exposures=%s)",
            len(samples),
            short,
            skipped,
            cfg.train.random_exposures,
        )
    result = train_generative(
        cfg.model,
        cfg.train,
        cfg.loader,
        samples,
        ctx.split.valid,
        book.codes,
        book.vocab_sizes,
        ctx.run.path,
        validator=ctx.generative_validator(),
        seed=cfg.seed,
        device=resolve_device(cfg.device),
        resume=not ctx.fresh,
        progress=rank() == 0,
    )
    return asdict(result)


def _unless_feedback(config: OneRecConfig) -> str:
    """A ``Stage.skip_when`` for the stages that learn from per-impression feedback (protocol B data only)."""
    if config.split.protocol == "B":
        return ""
    return (
        "protocol A data has no per-impression feedback, so there is no session reward to learn or align to; "
        "use split.protocol=B data (KuaiRand, the synthetic world, a table with feedback columns)"
    )


def align_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Iterative preference alignment (docs/METHOD.md section 4) of the trained model to ``align.reward_source``
    (the session reward model by default); every torchrun rank takes part; artefacts under ``align/``."""
    cfg = ctx.config
    book = ctx.codebook
    reward_fn = ctx.alignment_reward()
    trained = ctx.run.read_json("train/summary.json")
    # Loaded on the CPU: under torchrun each rank moves it to its own device.
    model = load_exported(ctx.run.recorded_file("train", trained["best_model_path"]), cfg.model, book.vocab_sizes)
    train = ctx.split.train
    if cfg.align.train_fraction < 1.0:
        rng = np.random.default_rng([cfg.seed, len(train)])
        keep = max(1, round(cfg.align.train_fraction * len(train)))
        train = train.subset(np.sort(rng.choice(len(train), size=keep, replace=False)))
    result = align_iteratively(
        cfg.align,
        model,
        train,
        ctx.split.valid,
        reward_fn,
        codes=book.codes,
        prefix_index=book.prefix_index(),
        train_config=cfg.train,
        out_dir=ctx.run.path / "align",
        seed=cfg.seed,
        device=resolve_device(cfg.device),
        resume=not ctx.fresh,
        progress=rank() == 0,
    )
    return asdict(result)


def cascade_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Train the cascade baseline (every torchrun rank takes part); artefacts under ``cascade/``."""
    cfg = ctx.config
    result = train_cascade(
        cfg.cascade,
        ctx.split,
        ctx.data,
        train_config=cfg.train,
        max_history=cfg.split.max_history,
        out_dir=ctx.run.path / "cascade",
        device=resolve_device(cfg.device),
        seed=cfg.seed,
        num_workers=cfg.loader.num_workers,
        progress=rank() == 0,
    )
    return asdict(result)


def sasrec_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Train the SASRec baseline arm (every torchrun rank takes part); artefacts under ``sasrec/``."""
    cfg = ctx.config
    result = train_sasrec(
        cfg.sasrec,
        ctx.split,
        num_items=ctx.data.num_items,
        max_history=cfg.split.max_history,
        train_config=cfg.train,
        out_dir=ctx.run.path / "sasrec",
        device=resolve_device(cfg.device),
        seed=cfg.seed,
        num_workers=cfg.loader.num_workers,
        progress=rank() == 0,
    )
    return {**asdict(result), "world_size": world_size()}


def _unless_listed(arm: str) -> Callable[[OneRecConfig], str]:
    """A ``Stage.skip_when`` for a stage that only an arm of ``compare.arms`` needs."""

    def skip_when(config: OneRecConfig) -> str:
        return "" if arm in config.compare.arms else f"compare.arms does not list {arm!r}"

    return skip_when


def evaluate_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Score every configured arm on the same test users; protocol C's true reward on the synthetic world.

    Under torchrun every rank runs it: each generative arm's users are split across the ranks
    (``eval.user_shards``) and merged, the other arms are scored on every rank alike, and rank 0 writes."""
    cfg = ctx.config
    results: Dict[str, EvalResult] = {}
    unavailable: Dict[str, str] = {}
    no_reward_model = _unless_feedback(cfg)
    if no_reward_model:
        LOG.info("evaluate: no reward estimates: %s", no_reward_model)
    reward_model = None if no_reward_model else ctx.reward_model()
    for arm in cfg.compare.arms:
        result, why = evaluate_arm(ctx, arm, reward_model)
        if result is None:
            unavailable[arm] = why
            LOG.info("evaluate: arm %s left out: %s", arm, why)
            continue
        if ctx.ab_world is not None:
            add_true_rewards(ctx.ab_world, ctx.data, result)
        if reward_model is not None:
            add_reward_estimates(reward_model, ctx.scored_samples, result, batch_size=cfg.eval.batch_size)
        results[arm] = result
        if rank() == 0:
            result.save(ctx.run.stage_dir("evaluate") / "arms" / f"{arm_file(arm)}.npz")
    summary: Dict[str, object] = {
        "arms": {a: {"metrics": r.metrics, "info": r.info} for a, r in results.items()},
        "unavailable": unavailable,
    }
    if rank() == 0:
        ctx.run.write_json("evaluate/metrics.json", summary)
        ctx.run.write_text(
            "evaluate/report.md",
            evaluation_markdown(cfg.name, cfg.split, cfg.eval, {k: r.metrics for k, r in results.items()}),
        )
    return summary


def compare_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Intervals, lifts over the baseline and the report (``compare/report.md``, figures, ``comparison.json``)."""
    cfg = ctx.config
    evaluated = ctx.run.read_json("evaluate/metrics.json")
    arms = [a for a in cfg.compare.arms if a in evaluated["arms"]]
    if cfg.compare.baseline not in arms:
        raise ValueError(
            f"compare.baseline={cfg.compare.baseline!r} was not evaluated "
            f"({evaluated['unavailable'].get(cfg.compare.baseline, 'not among the evaluated arms')}); "
            f"evaluated arms: {arms}"
        )
    results = {a: EvalResult.load(ctx.run.path / "evaluate" / "arms" / f"{arm_file(a)}.npz") for a in arms}
    comparison = compare_arms(
        results, baseline=cfg.compare.baseline, resamples=cfg.compare.resamples, level=cfg.compare.level, seed=cfg.seed
    )
    curves, x_labels = training_curves(ctx.run.path, cfg.train.selection_metric)
    protocols = [cfg.split.protocol] + (["C"] if ctx.ab_world is not None else [])
    settings = {
        "data": cfg.data.source,
        "split scored": cfg.eval.split,
        "users compared": comparison.num_users,
        "history n": cfg.split.max_history,
        "session m": cfg.split.session_items,
        "beam / returned": f"{cfg.eval.beam_size} / {cfg.eval.num_return}",
        "ks": list(cfg.eval.ks),
        "seed": cfg.seed,
    }
    unavailable = evaluated["unavailable"]
    extra = stage_sections(ctx.run.path)
    if ctx.ab_world is not None:
        diagnostics = world_diagnostics(ctx.ab_world, ctx.data, results, ctx.scored_samples, seed=cfg.seed)
        rows = [{"sessions": name, **row} for name, row in diagnostics.items()]
        ctx.run.write_json("compare/world_diagnostics.json", {"rows": rows})
        extra["Protocol C: where the sessions stand"] = diagnostics_markdown(diagnostics)
    extra["How each arm was chosen"] = "\n".join(
        f"- {a}: {arm_for(a).chosen(cfg, evaluated['arms'][a]['info'])}" for a in arms
    )
    if unavailable:
        extra["Arms left out"] = "\n".join(f"- {a}: {why}" for a, why in unavailable.items())
    report = write_comparison_report(
        ctx.run.stage_dir("compare"),
        title=f"A/B comparison: {cfg.name}",
        comparison=comparison,
        protocols=protocols,
        settings=settings,
        deviations=protocol_deviations(cfg.split, cfg.eval),
        data_source=cfg.data.source,
        per_user={a: r.per_user for a, r in results.items()},
        curves=curves,
        curve_x_labels=x_labels,
        extra_sections=extra,
    )
    LOG.info("compare: report written to %s", report)
    return {"report": str(report), **comparison.to_json()}


@dataclass(frozen=True)
class Stage:
    """One stage of ``onerec run``, as the runner, the fingerprints and the command line all read it.

    Args:
        name: the stage's name (its folder in the run directory and its ``onerec`` subcommand).
        run: what it does, a function of the shared ``PipelineContext`` returning its summary.
        sections: the config sections its fingerprint hashes (with those of every stage it reads); ``train.stack``
            is the part of the ``train`` section every model's training reads (``train.config.STACK_KEYS``).
        inputs: the stages whose artefacts it reads (``pipeline.stage_inputs`` may drop one for a config).
        collective: every torchrun rank takes part (the training stages, evaluation); else rank 0 alone runs it.
        help: one line for ``onerec --help``.
        skip_when: config -> why the stage does not apply to it ("" when it does); the runner then records that
            reason as the stage's ``not_applicable`` summary instead of running it, and a reason is part of the
            fingerprint of the stage and of what reads it. None: the stage always runs.
    """

    name: str
    run: Callable[[PipelineContext], Dict[str, object]]
    sections: Tuple[str, ...]
    inputs: Tuple[str, ...]
    collective: bool
    help: str
    skip_when: Optional[Callable[[OneRecConfig], str]] = None


# In pipeline order: every stage comes after the stages it reads.
STAGE_LIST: Tuple[Stage, ...] = (
    Stage(
        "data", data_stage, ("seed", "data", "split"), (), False, "load, validate and split the data; write statistics"
    ),
    Stage(
        "tokenize",
        tokenize_stage,
        ("tokenizer",),
        ("data",),
        False,
        "item embeddings -> semantic IDs, with a quality report",
    ),
    Stage(
        "train",
        train_stage,
        ("model", "train", "loader"),
        ("tokenize",),
        True,
        "train the generative model (also under torchrun)",
    ),
    Stage(
        "train-reward",
        train_reward_stage,
        ("reward", "train.stack"),
        ("tokenize",),
        True,
        "train the session reward model on the training days; per-tower test AUC",
        skip_when=_unless_feedback,
    ),
    Stage(
        "cascade",
        cascade_stage,
        ("cascade", "train.stack", "loader"),
        ("data",),
        True,
        "train the cascade baseline: two-tower retrieval -> DLRM ranker (also torchrun)",
    ),
    Stage(
        "align",
        align_stage,
        ("align", "train"),
        ("train", "train-reward", "cascade"),
        True,
        "align the trained model to align.reward_source (IPA with DPO; also under torchrun)",
        skip_when=_unless_feedback,
    ),
    Stage(
        "sasrec",
        sasrec_stage,
        ("sasrec", "train.stack", "loader"),
        ("data",),
        True,
        "train the SASRec baseline arm when compare.arms lists it (also under torchrun)",
        skip_when=_unless_listed("sasrec"),
    ),
    Stage(
        "evaluate",
        evaluate_stage,
        ("eval", "compare"),
        ("train", "train-reward", "align", "cascade", "sasrec"),
        True,
        "score every arm of compare.arms on the test split (or eval.split; torchrun splits the users)",
    ),
    Stage(
        "compare",
        compare_stage,
        ("compare",),
        ("evaluate",),
        False,
        "A/B report: intervals and lifts of each arm over compare.baseline",
    ),
)
