"""What every arm of the A/B is made of (``Arm``), and the pieces the generative arms share: loading an exported
model, scoring it on a split, and choosing a serving setting on the validation users (``choose_on_validation``).
The registry itself is ``arms``; arms with a module of their own (``interpolation``) build on this one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.context import PipelineContext, world_size
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.reward_estimates import add_reward_estimates
from torchrec_onerec.generation.slate import LevelMixture
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.run_dir import RunDir, read_json
from torchrec_onerec.runtime import resolve_device
from torchrec_onerec.train.distributed import init_distributed
from torchrec_onerec.train.export import load_exported, plain_model, sharded_model

LOG = logging.getLogger("torchrec_onerec")

ScoreFn = Callable[[PipelineContext, Optional[SessionRewardModel]], EvalResult]


@dataclass(frozen=True)
class Arm:
    """One arm of the A/B comparison.

    Args:
        name: its name in ``compare.arms``.
        needs: the stages whose artefacts it reads; the arm is left out (and the report says why) when one of them
            did not apply to the data (alignment under protocol A).
        score: (context, the session reward model or None) -> its ``EvalResult`` on the scored split
            (``eval.split``); the reward model is there for arms that choose something by it.
        chosen: (config, the ``info`` its result carries) -> how the arm was chosen, for the report.
        serves_from: the stage whose exported model ``onerec recommend --arm NAME`` serves; "" for an arm that is
            not one exported OneRec model (the cascade, popularity).
        model_path: (run directory) -> that model file; required with ``serves_from``.
        serving_penalty: (run directory) -> the ``RepeatedPrefixPenalty`` ``recommend`` serves with (the one the
            run's ``evaluate`` stage chose); None: the plain search.
        slate: ``recommend`` serves by ``generation.slate.slate_search`` (with ``serving_penalty``) instead of the
            beam search.
        serving_mixture: (run directory) -> (a second model file, the level weights the run's ``evaluate`` stage
            chose): ``recommend`` serves ``LevelMixture(that model, model_path's model, weights)`` as a slate.
    """

    name: str
    needs: Tuple[str, ...]
    score: ScoreFn
    chosen: Callable[[OneRecConfig, Dict[str, object]], str]
    serves_from: str = ""
    model_path: Optional[Callable[[RunDir], Path]] = None
    serving_penalty: Optional[Callable[[RunDir], float]] = None
    slate: bool = False
    serving_mixture: Optional[Callable[[RunDir], Tuple[Path, List[float]]]] = None

    def __post_init__(self) -> None:
        if bool(self.serves_from) != (self.model_path is not None):
            raise ValueError(f"arm {self.name!r}: serves_from={self.serves_from!r} and model_path go together")
        if self.serving_mixture is not None and not (self.slate and self.serves_from):
            raise ValueError(f"arm {self.name!r}: a level mixture is served as a slate, from a model file")


def generative_model(ctx: PipelineContext, state: Dict[str, torch.Tensor]) -> OneRecModel:
    """A OneRec model holding the plain state dict ``state``: unsharded on the run's device in one process; under
    torchrun with its tables sharded over the ranks as training shards them (``train.export.sharded_model``), so no
    rank holds a whole table. That is a collective, and every rank then generates with the model together, as
    ``score_generative`` does (its users split across the ranks, in lockstep)."""
    cfg = ctx.config
    sizes = ctx.codebook.vocab_sizes
    if world_size() > 1:
        group = init_distributed(resolve_device(cfg.device), timeout_s=cfg.train.collective_timeout_s)  # the run's
        return sharded_model(state, cfg.model, sizes, cfg.train, group)
    return plain_model(state, cfg.model, sizes, device=resolve_device(cfg.device))


def load_generative(ctx: PipelineContext, path: Path) -> OneRecModel:
    """The exported OneRec model at ``path``, on the run's device; under torchrun sharded (``generative_model``)."""
    if world_size() > 1:
        return generative_model(ctx, read_generative_state(ctx, path))
    return load_exported(path, ctx.config.model, ctx.codebook.vocab_sizes, device=resolve_device(ctx.config.device))


def read_generative_state(ctx: PipelineContext, path: Path) -> Dict[str, torch.Tensor]:
    """The plain state dict (CPU) of the exported OneRec model at ``path``, checked against the run's config."""
    return load_exported(path, ctx.config.model, ctx.codebook.vocab_sizes).state_dict()


def score_generative(
    ctx: PipelineContext,
    model: Union[OneRecModel, LevelMixture],
    diversity_penalty: float = 0.0,
    samples: Optional[SampleSet] = None,
    slate: bool = False,
) -> EvalResult:
    """``model`` beam-searched (or slate-served) on ``samples`` (default: the scored split)."""
    cfg = ctx.config
    book = ctx.codebook
    return evaluate_generative(
        model,
        ctx.scored_samples if samples is None else samples,
        codes=book.codes,
        prefix_index=book.prefix_index(),
        config=cfg.eval,
        protocol=cfg.split.protocol,
        max_history=cfg.model.max_history,
        device=resolve_device(cfg.device),
        diversity_penalty=diversity_penalty,
        slate=slate,
        distributed=True,  # under torchrun every rank runs the evaluate stage and searches its share of the users
    )


def trained_model_path(run: RunDir) -> Path:
    """The NTP model the run's ``train`` stage kept."""
    return run.recorded_file("train", run.read_json("train/summary.json")["best_model_path"])


def aligned_model_path(run: RunDir) -> Path:
    """The model the run's ``align`` stage ended with."""
    return run.recorded_file("align", run.read_json("align/summary.json")["model_path"])


def choose_on_validation(
    ctx: PipelineContext,
    reward_model: Optional[SessionRewardModel],
    values: Sequence[float],
    score_valid: Callable[[float], EvalResult],
    what: str,
) -> Tuple[float, Dict[str, float], str]:
    """A serving setting chosen on the validation users only, 0 (the setting off) among the tries: the value whose
    validation result is best by the session reward model's estimate of the served session (its validation
    NDCG@10 without a reward model), the smaller on a tie. Returns (the value, every value's validation score,
    what the score is)."""
    cfg = ctx.config
    ndcg = f"ndcg@{10 if 10 in cfg.eval.ks else max(cfg.eval.ks)}"
    if reward_model is not None:
        criterion = "validation: the session reward model's estimated reward of the served session"
    else:
        criterion = f"validation {ndcg.upper()}"
    table: Dict[str, float] = {}
    for value in [0.0] + [v for v in values if v > 0]:
        result = score_valid(value)
        if reward_model is not None:
            add_reward_estimates(reward_model, ctx.split.valid, result, batch_size=cfg.eval.batch_size)
            table[str(value)] = result.metrics["reward_served"]
        else:
            table[str(value)] = result.metrics[ndcg]
    best = max(table, key=lambda v: (table[v], -float(v)))
    LOG.info("evaluate: %s %s chosen on %s (%s)", what, best, criterion, table)
    return float(best), table, criterion


def chosen_penalty(run: RunDir, arm: str) -> float:
    """The serving penalty the run's ``evaluate`` stage chose for ``arm`` on the validation users.

    Raises:
        FileNotFoundError: the stage has not scored the arm (the message says how to).
    """
    return float(chosen_setting(run, arm, "diversity_penalty"))


def chosen_setting(run: RunDir, arm: str, key: str) -> Any:
    """The serving setting ``key`` (an entry of the arm's result ``info``) the run's ``evaluate`` stage chose for
    ``arm`` on the validation users.

    Raises:
        FileNotFoundError: the stage has not scored the arm (the message says how to).
    """
    path = run.path / "evaluate" / "metrics.json"
    arms = read_json(path)["arms"] if path.is_file() else {}
    if arm not in arms:
        raise FileNotFoundError(
            f"{path} holds no {arm!r} arm: its serving settings are chosen on the validation users "
            f"by the evaluate stage; run `onerec evaluate` with compare.arms listing {arm}"
        )
    info = arms[arm]["info"]
    if key not in info:
        raise FileNotFoundError(
            f"{path} records no {key!r} for the {arm!r} arm (an earlier version of the evaluate stage wrote it); "
            f"run `onerec evaluate` again with compare.arms listing {arm}"
        )
    return info[key]


def selection_text(info: Dict[str, object]) -> str:
    """How a serving setting was chosen: the criterion and every value's validation score, for the report."""
    tried = sorted(info["selection"].items(), key=lambda pair: float(pair[0]))  # type: ignore[attr-defined]
    table = ", ".join(f"{v}: {score:.4f}" for v, score in tried)
    return f"chosen on {info['selected_on']} ({table})"
