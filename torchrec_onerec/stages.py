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
    evaluate  every configured arm on the test split, the same users for all; ``evaluate/arms/<arm>.npz``
    compare   intervals and lifts over the baseline arm, ``compare/report.md`` with figures

Stages that need the data re-load it (seconds, deterministic per seed) rather than pickling it between runs.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from torchrec_onerec.alignment.ipa import align_iteratively, model_file
from torchrec_onerec.alignment.pairs import RewardFn
from torchrec_onerec.alignment.rewards import mixed_reward_fn, ranker_reward_fn
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.data.impressions import impression_samples
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.splits import SplitA, SplitB, split_data
from torchrec_onerec.datasets.interactions import DataError, InteractionData
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.datasets.synthetic import SyntheticWorld, load_synthetic
from torchrec_onerec.eval.baselines import evaluate_popularity
from torchrec_onerec.eval.cascade import evaluate_cascade
from torchrec_onerec.eval.compare import compare_arms
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.reward_auc import evaluate_reward_model
from torchrec_onerec.eval.report import (evaluation_markdown, protocol_deviations, selection_notes, stage_sections,
                                          training_curves, write_comparison_report)
from torchrec_onerec.eval.simulated import add_true_rewards, world_reward_fn
from torchrec_onerec.eval.world_diagnostics import diagnostics_markdown, world_diagnostics
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.models.cascade import CascadeRecommender, load_cascade
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_scoring import score_sessions, session_rewards
from torchrec_onerec.runtime import resolve_device
from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.tokenizer.embeddings import item_embeddings
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer
from torchrec_onerec.train.cascade_training import train_cascade
from torchrec_onerec.train.distributed import rank_device
from torchrec_onerec.train.export import load_exported
from torchrec_onerec.train.reward_training import load_reward_model, train_reward_model
from torchrec_onerec.train.loop import train_generative

LOG = logging.getLogger("torchrec_onerec")


def rank() -> int:
    """This process's torchrun rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The torchrun world size (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class PipelineContext:
    """What the stages of one invocation share: the config, the run directory and the loaded data (lazily)."""

    def __init__(self, config: OneRecConfig, run: RunDir) -> None:
        self.config = config
        self.run = run
        self.fresh = True  # the running stage starts over (vs. resuming its own partial work)
        self._data: Optional[InteractionData] = None
        self._split: Optional[Union[SplitA, SplitB]] = None
        self._world: Optional[SyntheticWorld] = None

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
    def world(self) -> Optional[SyntheticWorld]:
        """The synthetic world behind the data (protocol C), or None for logged data."""
        if self.config.data.source != "synthetic":
            return None
        if self._world is None:
            self._world = load_synthetic(self.config.data.synthetic, seed=self.config.seed)[1]
        return self._world

    @property
    def scored_samples(self) -> SampleSet:
        """The samples every arm is scored on: the test split, or the validation split under eval.split=valid."""
        return self.split.test if self.config.eval.split == "test" else self.split.valid

    @property
    def ab_world(self) -> Optional[SyntheticWorld]:
        """The world whose truth scores the A/B (protocol C): only on the test split, never to choose a config."""
        return self.world if self.config.eval.split == "test" else None

    @property
    def codebook(self) -> Codebook:
        """The tokenize stage's codebook, refused if it belongs to another catalogue or tokenizer config."""
        cfg = self.config
        return Codebook.load(self.run.path / "tokenize" / "codebook.pt", num_items=self.data.num_items,
                             fingerprint=catalogue_fingerprint(self.data.raw_item_ids, cfg.tokenizer, seed=cfg.seed))


def data_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Load, validate and split; write ``data/stats.json`` and return the statistics.

    Raises:
        DataError: the split leaves no training or no test samples (nothing later stages could use).
    """
    empty = [f"0 {what} samples" for window, what in (("train", "training"), ("test", "test"))
             if len(getattr(ctx.split, window)) == 0]
    if empty:
        raise DataError(f"{ctx.data.name}: split.protocol={ctx.config.split.protocol} gives {' and '.join(empty)} "
                        f"(left out: {ctx.split.dropped}); the data needs more interactions per user, or a lower "
                        "split.min_history")
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
                              resume=not ctx.fresh, progress=rank() == 0)
    return asdict(result)


def _not_applicable(ctx: PipelineContext, stage: str) -> Optional[Dict[str, object]]:
    """A summary saying why ``stage`` does not apply to protocol-A data (no feedback labels), else None."""
    if isinstance(ctx.split, SplitB):
        return None
    why = ("protocol A data has no per-impression feedback, so there is no session reward to learn or align to; "
           "use split.protocol=B data (KuaiRand, the synthetic world, a table with feedback columns)")
    LOG.info("stage %s: not applicable: %s", stage, why)
    return {"not_applicable": why}


def _window_samples(ctx: PipelineContext, window: str, items_per_sample: int) -> SampleSet:
    assert isinstance(ctx.split, SplitB)
    return impression_samples(ctx.split, window, num_users=ctx.data.num_users, items_per_sample=items_per_sample,
                              max_history=ctx.config.split.max_history)


def train_reward_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Train the session reward model on the training days (every torchrun rank takes part), select it on the
    validation days and measure its per-tower test AUC (docs/EVAL.md protocol B); artefacts under ``train-reward/``."""
    skipped = _not_applicable(ctx, "train-reward")
    if skipped is not None:
        return skipped
    cfg = ctx.config
    m, device = cfg.split.session_items, resolve_device(cfg.device)
    train, valid, impressions = (_window_samples(ctx, "train", m), _window_samples(ctx, "valid", m),
                                 _window_samples(ctx, "train", 1))
    folder = ctx.run.path / "train-reward"
    variants = {cfg.reward.pooling: (cfg.reward, folder)}
    if cfg.reward.baseline_pooling and cfg.reward.baseline_pooling != cfg.reward.pooling:
        variants[cfg.reward.baseline_pooling] = (replace(cfg.reward, pooling=cfg.reward.baseline_pooling),
                                                 folder / "baseline")
    summary: Dict[str, object] = {}
    test: Dict[str, object] = {}
    for pooling, (reward_config, out_dir) in variants.items():
        result = train_reward_model(reward_config, train, valid, num_users=ctx.data.num_users,
                                    num_items=ctx.data.num_items, out_dir=out_dir, seed=cfg.seed, device=device,
                                    train_impressions=impressions, item_codes=ctx.codebook.codes,
                                    progress=rank() == 0)
        summary[pooling] = asdict(result)
        if rank() == 0:
            model = load_reward_model(Path(result.model_path), num_items=ctx.data.num_items,
                                      signals=ctx.split.train.signals, device=device)
            test[pooling] = evaluate_reward_model(model, _window_samples(ctx, "test", m),
                                                  _window_samples(ctx, "test", 1), batch_size=cfg.eval.batch_size,
                                                  device=device)
    summary.update(model_path=summary[cfg.reward.pooling]["model_path"],  # type: ignore[index]
                   world_size=summary[cfg.reward.pooling]["world_size"], test_auc=test)  # type: ignore[index]
    if rank() == 0:
        ctx.run.write_json("train-reward/test_auc.json", test)
    return summary


def _reward_model(ctx: PipelineContext) -> SessionRewardModel:
    """The reward stage's model on this rank's device, refused if it was trained on another catalogue."""
    device = rank_device(resolve_device(ctx.config.device), int(os.environ.get("LOCAL_RANK", "0")))
    return load_reward_model(ctx.run.path / "train-reward" / "reward_model.pt", num_items=ctx.data.num_items,
                             signals=ctx.split.train.signals, device=device)


def _alignment_reward(ctx: PipelineContext) -> RewardFn:
    """The reward function ``align.reward_source`` names (``alignment.config.AlignConfig``)."""
    cfg = ctx.config
    source = cfg.align.reward_source
    if source == "world":
        if ctx.world is None:
            raise ValueError(f"align.reward_source='world' needs the synthetic world (data.source=synthetic), not "
                             f"data.source={cfg.data.source!r}; use align.reward_source=model")
        return world_reward_fn(ctx.world, ctx.data)
    fns: List[RewardFn] = []
    if source in ("model", "mix"):
        reward_model = _reward_model(ctx)
        fns.append(functools.partial(session_rewards, reward_model, batch_size=cfg.eval.batch_size,
                                     device=next(reward_model.parameters()).device))
    if source in ("ranker", "mix"):
        # Loaded on the CPU like the generative model: alignment scores candidates on the host.
        fns.append(ranker_reward_fn(load_cascade(ctx.run.path / "cascade", config=cfg.cascade)))
    if source == "mix":
        return mixed_reward_fn(fns, [1.0 - cfg.align.ranker_weight, cfg.align.ranker_weight])
    return fns[0]


def align_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Iterative preference alignment (docs/METHOD.md section 4) of the trained model to ``align.reward_source``
    (the session reward model by default); every torchrun rank takes part; artefacts under ``align/``."""
    skipped = _not_applicable(ctx, "align")
    if skipped is not None:
        return skipped
    cfg = ctx.config
    book = ctx.codebook
    reward_fn = _alignment_reward(ctx)
    trained = ctx.run.read_json("train/summary.json")
    # Loaded on the CPU: under torchrun each rank moves it to its own device.
    model = load_exported(ctx.run.recorded_file("train", trained["best_model_path"]), cfg.model, book.vocab_sizes)
    train = ctx.split.train
    if cfg.align.train_fraction < 1.0:
        rng = np.random.default_rng([cfg.seed, len(train)])
        keep = max(1, round(cfg.align.train_fraction * len(train)))
        train = train.subset(np.sort(rng.choice(len(train), size=keep, replace=False)))
    result = align_iteratively(cfg.align, model, train, ctx.split.valid, reward_fn, codes=book.codes,
                               prefix_index=book.prefix_index(), train_config=cfg.train,
                               out_dir=ctx.run.path / "align", seed=cfg.seed, device=resolve_device(cfg.device),
                               resume=not ctx.fresh, progress=rank() == 0)
    return asdict(result)


def cascade_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Train the cascade baseline (every torchrun rank takes part); artefacts under ``cascade/``."""
    cfg = ctx.config
    result = train_cascade(cfg.cascade, ctx.split, ctx.data, train_config=cfg.train, max_history=cfg.split.max_history,
                           out_dir=ctx.run.path / "cascade", device=resolve_device(cfg.device), seed=cfg.seed,
                           num_workers=cfg.loader.num_workers, progress=rank() == 0)
    return asdict(result)


def _generative_arm(ctx: PipelineContext, path: Path) -> EvalResult:
    cfg = ctx.config
    book = ctx.codebook
    device = resolve_device(cfg.device)
    model = load_exported(path, cfg.model, book.vocab_sizes, device=device)
    return evaluate_generative(model, ctx.scored_samples, codes=book.codes, prefix_index=book.prefix_index(),
                               config=cfg.eval, protocol=cfg.split.protocol, max_history=cfg.model.max_history,
                               device=device)


def _rerank_weight(ctx: PipelineContext, recommender: CascadeRecommender,
                   reward_model: Optional[SessionRewardModel]) -> Tuple[float, Dict[str, float], str]:
    """The ``cascade_rerank`` arm's diversity weight, chosen on the validation users only: (weight, validation
    score of every weight tried, what the score is)."""
    cfg = ctx.config
    ndcg = f"ndcg@{10 if 10 in cfg.eval.ks else max(cfg.eval.ks)}"
    if reward_model is not None:
        criterion = "validation: the session reward model's estimated reward of the served session"
    else:
        criterion = f"validation {ndcg.upper()}"
    table: Dict[str, float] = {}
    for weight in [0.0] + [w for w in cfg.cascade.ranker.rerank_weights if w > 0]:
        result = evaluate_cascade(recommender, ctx.split.valid, config=cfg.eval, protocol=cfg.split.protocol,
                                  num_items=ctx.data.num_items, diversity_weight=weight)
        if reward_model is not None:
            add_reward_estimates(reward_model, ctx.split.valid, result, batch_size=cfg.eval.batch_size)
            table[str(weight)] = result.metrics["reward_served"]
        else:
            table[str(weight)] = result.metrics[ndcg]
    best = max(table, key=lambda w: (table[w], -float(w)))  # ties: the smaller weight
    LOG.info("evaluate: cascade_rerank weight %s chosen on %s (%s)", best, criterion, table)
    return float(best), table, criterion


def _evaluate_arm(ctx: PipelineContext, arm: str,
                  reward_model: Optional[SessionRewardModel]) -> Tuple[Optional[EvalResult], str]:
    """One arm's evaluation on the scored split (``eval.split``), or (None, why it is not available)."""
    cfg = ctx.config
    if arm == "popularity":
        return evaluate_popularity(ctx.scored_samples, ctx.split.train_sequences, ctx.data.num_items, config=cfg.eval,
                                   protocol=cfg.split.protocol), ""
    if arm in ("cascade", "cascade_rerank"):
        recommender = load_cascade(ctx.run.path / "cascade", config=cfg.cascade, device=resolve_device(cfg.device))
        if arm == "cascade":
            return evaluate_cascade(recommender, ctx.scored_samples, config=cfg.eval, protocol=cfg.split.protocol,
                                    num_items=ctx.data.num_items), ""
        weight, table, criterion = _rerank_weight(ctx, recommender, reward_model)
        result = evaluate_cascade(recommender, ctx.scored_samples, config=cfg.eval, protocol=cfg.split.protocol,
                                  num_items=ctx.data.num_items, diversity_weight=weight)
        result.info.update(rerank_selection=table, selected_on=criterion)
        return result, ""
    if arm == "onerec":
        trained = ctx.run.read_json("train/summary.json")
        return _generative_arm(ctx, ctx.run.recorded_file("train", trained["best_model_path"])), ""
    if arm in ("onerec_dpo", "onerec_ipa"):
        aligned = ctx.run.read_json("align/summary.json")
        if "not_applicable" in aligned:
            return None, f"no alignment: {aligned['not_applicable']}"
        path = (ctx.run.path / "align" / model_file(1) if arm == "onerec_dpo"
                else ctx.run.recorded_file("align", aligned["model_path"]))
        return _generative_arm(ctx, path), ""
    if arm.startswith("model:"):
        path = Path(arm[len("model:"):])
        if not path.is_file():
            raise FileNotFoundError(f"compare.arms names {arm!r} but {path} does not exist")
        return _generative_arm(ctx, path), ""
    return None, f"arm {arm!r} has no stage in this pipeline"


def add_reward_estimates(model: SessionRewardModel, samples: SampleSet, result: EvalResult, *,
                         batch_size: int) -> EvalResult:
    """The reward model's estimate of each signal over an arm's returned sessions (the OneRec paper's offline
    metric): per user, ``reward_<signal>_mean`` and ``reward_<signal>_max`` over its real sessions (fillers left
    out), and ``reward_served``, the model's scalar reward of the session the user is served (the best-scored
    one, as protocol C serves it); added to ``result`` in place."""
    users = samples.subset(result.per_user["sample"])
    probabilities = score_sessions(model, users, result.sessions, batch_size=batch_size,
                                   device=next(model.parameters()).device)  # [U, R, S]
    real = np.isfinite(result.scores)[:, :, None]  # [U, R, 1]
    count = np.maximum(real.sum(axis=1), 1)
    means = np.where(real, probabilities, 0.0).sum(axis=1) / count  # [U, S]
    maxima = np.where(real, probabilities, -np.inf).max(axis=1)
    maxima = np.where(np.isfinite(maxima), maxima, 0.0)
    for s, signal in enumerate(model.signals):
        for name, values in ((f"reward_{signal}_mean", means[:, s]), (f"reward_{signal}_max", maxima[:, s])):
            result.per_user[name] = values.astype(np.float64)
            result.metrics[name] = float(values.mean())
    best = np.argmax(np.where(np.isfinite(result.scores), result.scores, -np.inf), axis=1)
    served = model.reward(torch.from_numpy(probabilities[np.arange(len(best)), best])).numpy().astype(np.float64)
    result.per_user["reward_served"] = served
    result.metrics["reward_served"] = float(served.mean())
    return result


def arm_file(arm: str) -> str:
    """The file stem of an arm's saved evaluation (``model:<path>`` arms get a safe name)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", arm)


def evaluate_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Score every configured arm on the same test users; protocol C's true reward on the synthetic world."""
    cfg = ctx.config
    results: Dict[str, EvalResult] = {}
    unavailable: Dict[str, str] = {}
    reward_model = None if _not_applicable(ctx, "evaluate (reward estimates)") else _reward_model(ctx)
    for arm in cfg.compare.arms:
        result, why = _evaluate_arm(ctx, arm, reward_model)
        if result is None:
            unavailable[arm] = why
            LOG.info("evaluate: arm %s left out: %s", arm, why)
            continue
        if ctx.ab_world is not None:
            add_true_rewards(ctx.ab_world, ctx.data, result)
        if reward_model is not None:
            add_reward_estimates(reward_model, ctx.scored_samples, result, batch_size=cfg.eval.batch_size)
        results[arm] = result
        result.save(ctx.run.stage_dir("evaluate") / "arms" / f"{arm_file(arm)}.npz")
    summary: Dict[str, object] = {"arms": {a: {"metrics": r.metrics, "info": r.info} for a, r in results.items()},
                                  "unavailable": unavailable}
    ctx.run.write_json("evaluate/metrics.json", summary)
    ctx.run.write_text("evaluate/report.md", evaluation_markdown(cfg.name, cfg.split, cfg.eval,
                                                                 {k: r.metrics for k, r in results.items()}))
    return summary


def compare_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Intervals, lifts over the baseline and the report (``compare/report.md``, figures, ``comparison.json``)."""
    cfg = ctx.config
    evaluated = ctx.run.read_json("evaluate/metrics.json")
    arms = [a for a in cfg.compare.arms if a in evaluated["arms"]]
    if cfg.compare.baseline not in arms:
        raise ValueError(f"compare.baseline={cfg.compare.baseline!r} was not evaluated "
                         f"({evaluated['unavailable'].get(cfg.compare.baseline, 'not among the evaluated arms')}); "
                         f"evaluated arms: {arms}")
    results = {a: EvalResult.load(ctx.run.path / "evaluate" / "arms" / f"{arm_file(a)}.npz") for a in arms}
    comparison = compare_arms(results, baseline=cfg.compare.baseline, resamples=cfg.compare.resamples,
                              level=cfg.compare.level, seed=cfg.seed)
    curves, x_labels = training_curves(ctx.run.path, cfg.train.selection_metric)
    protocols = [cfg.split.protocol] + (["C"] if ctx.ab_world is not None else [])
    settings = {"data": cfg.data.source, "split scored": cfg.eval.split, "users compared": comparison.num_users,
                "history n": cfg.split.max_history, "session m": cfg.split.session_items,
                "beam / returned": f"{cfg.eval.beam_size} / {cfg.eval.num_return}", "ks": list(cfg.eval.ks),
                "seed": cfg.seed}
    unavailable = evaluated["unavailable"]
    extra = stage_sections(ctx.run.path)
    if ctx.ab_world is not None:
        diagnostics = world_diagnostics(ctx.ab_world, ctx.data, results, ctx.scored_samples, seed=cfg.seed)
        rows = [{"sessions": name, **row} for name, row in diagnostics.items()]
        ctx.run.write_json("compare/world_diagnostics.json", {"rows": rows})
        extra["Protocol C: where the sessions stand"] = diagnostics_markdown(diagnostics)
    infos = {a: evaluated["arms"][a]["info"] for a in arms}
    extra["How each arm was chosen"] = selection_notes(cfg.train, cfg.align, infos)
    if unavailable:
        extra["Arms left out"] = "\n".join(f"- {a}: {why}" for a, why in unavailable.items())
    report = write_comparison_report(
        ctx.run.stage_dir("compare"), title=f"A/B comparison: {cfg.name}", comparison=comparison, protocols=protocols,
        settings=settings, deviations=protocol_deviations(cfg.split, cfg.eval), data_source=cfg.data.source,
        per_user={a: r.per_user for a, r in results.items()}, curves=curves, curve_x_labels=x_labels,
        extra_sections=extra)
    LOG.info("compare: report written to %s", report)
    return {"report": str(report), **comparison.to_json()}


STAGE_FUNCTIONS: Dict[str, Callable[[PipelineContext], Dict[str, object]]] = {
    "data": data_stage,
    "tokenize": tokenize_stage,
    "train": train_stage,
    "train-reward": train_reward_stage,
    "align": align_stage,
    "cascade": cascade_stage,
    "evaluate": evaluate_stage,
    "compare": compare_stage,
}
