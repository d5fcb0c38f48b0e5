"""Serving between the NTP model and its aligned successor, as a slate: their weights interpolated, or their
next-item distributions mixed level by level.

Alignment moves the NTP model towards what the reward prefers, and away from what the users were seen to choose.
A model on the straight line between the two sets of weights, theta(w) = (1 - w) theta_NTP + w theta_aligned,
trades one for the other (w = 0: the NTP model, w = 1: the aligned one). The aligned model is fine-tuned from the
NTP model's weights, so the line stays close to both; interpolating a fine-tuned model's weights with those it
started from is WiSE-FT (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022), and doing it
between a supervised and an aligned policy is how "rewarded soups" (Ramé et al., NeurIPS 2023) trade rewards.

The ``onerec_interp_slate`` arm tries w in ``eval.interpolation_weights`` and both ends (0 and 1: what
``onerec_slate`` and ``onerec_ipa_slate`` serve), each with the slate penalties of ``eval.diversity_penalties``,
and keeps the pair its validation users are best served with by ``choose_on_validation``'s criterion; that model
is written to ``evaluate/onerec_interp_slate.pt`` (what ``onerec recommend --arm onerec_interp_slate`` serves)
and scored on the scored split.

The trade need not be the same at every code level. The first code is the coarsest cluster (a topic, roughly):
choosing among clusters is where the NTP model's knowledge of the user lies, and choosing the item inside a
cluster is where alignment's preference for better items shows. The ``onerec_mix_slate`` arm serves
``generation.slate.LevelMixture(NTP, aligned, [w, 1, .., 1])``: an item's first-code log-probability is
(1 - w) times the NTP model's plus w times the aligned model's, its later levels' are the aligned model's; w and
the penalty are chosen on the validation users exactly as ``onerec_interp_slate``'s (w = 1 serves what
``onerec_ipa_slate`` does). ``onerec recommend --arm onerec_mix_slate`` serves the same mixture of the two models'
files, with the weights and the penalty the run's evaluation chose.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch

from torchrec_onerec.arm_scoring import (
    Arm,
    chosen_penalty,
    chosen_setting,
    choose_on_validation,
    generative_model,
    load_generative,
    read_generative_state,
    score_generative,
    selection_text,
)
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.context import PipelineContext, rank
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.generation.slate import LevelMixture, reused_next_item_log_probs
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.train.checkpoint import training_fingerprint
from torchrec_onerec.train.export import save_exported

INTERPOLATED_FILE = "evaluate/{arm}.pt"


def interpolate_states(
    start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], weight: float
) -> Dict[str, torch.Tensor]:
    """The state dict ``(1 - weight) start + weight end``, entry by entry (integer entries are taken from ``end``).

    Args:
        start (Mapping[str, torch.Tensor]): a model's state dict (weight 0).
        end (Mapping[str, torch.Tensor]): the same model's state dict after fine-tuning (weight 1).
        weight (float): where on the line, in [0, 1].

    Raises:
        ValueError: a weight outside [0, 1], or state dicts of different models (the keys or shapes named).

    Example:
        >>> a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(1)}
        >>> out = interpolate_states(a, {"w": torch.tensor([1.0, 4.0]), "n": torch.tensor(3)}, 0.25)
        >>> out["w"].tolist(), out["n"].item()
        ([0.25, 2.5], 3)
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"interpolation weight={weight} must lie in [0, 1] (0: the first model, 1: the second)")
    if set(start) != set(end):
        raise ValueError(
            f"the state dicts are of different models: only in the first {sorted(set(start) - set(end))}, "
            f"only in the second {sorted(set(end) - set(start))}"
        )
    out: Dict[str, torch.Tensor] = {}
    for key, first in start.items():
        last = end[key]
        if first.shape != last.shape:
            raise ValueError(
                f"{key} has shape {tuple(first.shape)} in the first state dict, {tuple(last.shape)} in the second"
            )
        out[key] = torch.lerp(first, last.to(first.dtype), weight) if first.is_floating_point() else last.clone()
    return out


def interpolated_slate_arm(name: str, start: Arm, end: Arm) -> Arm:
    """The arm serving, as a slate, ``start``'s model interpolated towards ``end``'s (module docstring).

    Args:
        name (str): the arm's name in ``compare.arms``.
        start (Arm): the arm of the model at weight 0 (the NTP model's, ``onerec``).
        end (Arm): the arm of the model at weight 1 (the aligned model's, ``onerec_ipa``).
    """
    assert start.model_path is not None and end.model_path is not None
    start_path, end_path = start.model_path, end.model_path

    def score(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
        cfg = ctx.config
        first_state = read_generative_state(ctx, start_path(ctx.run))
        last_state = read_generative_state(ctx, end_path(ctx.run))
        chosen, penalty, table, tried, criterion = _chosen_on_validation(
            ctx,
            reward_model,
            name,
            lambda weight: generative_model(ctx, interpolate_states(first_state, last_state, weight)),
            shared_store=False,  # a new model per weight: a store must not outlive its model
        )
        state = interpolate_states(first_state, last_state, chosen)
        if rank() == 0:
            save_exported(
                ctx.run.path / INTERPOLATED_FILE.format(arm=name),
                state,
                cfg.model,
                ctx.codebook.vocab_sizes,
                # the training fingerprint both ends were written with (model config, codebook, optimiser)
                training_fingerprint(
                    cfg.model, ctx.codebook.vocab_sizes, ctx.codebook.codes, cfg.train.sparse_optimizer
                ),
            )
        result = score_generative(ctx, generative_model(ctx, state), penalty, slate=True)
        result.info.update(
            interpolation_weight=chosen,
            selection=table,
            selected_on=criterion,
            penalty_selection=tried,
        )
        return result

    def chosen(config: OneRecConfig, info: Dict[str, object]) -> str:
        return (
            f"the weights (1 - w) x ({start.chosen(config, info)}) + w x ({end.chosen(config, info)}) at "
            f"w = {info['interpolation_weight']}, served as a slate with a diversity penalty of "
            f"{info['diversity_penalty']} per earlier session item under the same first code (the best penalty "
            f"at each w), w {selection_text(info)}"
        )

    def model_path(run: RunDir) -> Path:
        return run.path / INTERPOLATED_FILE.format(arm=name)

    return Arm(
        name,
        tuple(dict.fromkeys(start.needs + end.needs)),
        score,
        chosen,
        serves_from="evaluate",
        model_path=model_path,
        serving_penalty=lambda run: chosen_penalty(run, name),
        slate=True,
    )


def _chosen_on_validation(
    ctx: PipelineContext,
    reward_model: Optional[SessionRewardModel],
    name: str,
    model_at: Callable[[float], Union[OneRecModel, LevelMixture]],
    *,
    shared_store: bool,
) -> Tuple[float, float, Dict[str, float], Dict[str, float], str]:
    """The weight w (0, 1 and ``eval.interpolation_weights``) and slate penalty whose validation users are best
    served by ``choose_on_validation``'s criterion, the smaller w on a tie. ``model_at(w)`` serves at w; with
    ``shared_store`` one store of next-item distributions serves every w (the models behind ``model_at`` are the
    same objects for every w), otherwise one store per w.

    Returns:
        (w, its penalty, the best estimate at each w, every penalty's estimate at the chosen w, the criterion).
    """
    weights = sorted({0.0, 1.0, *[float(w) for w in ctx.config.eval.interpolation_weights]})
    table: Dict[str, float] = {}
    penalties: Dict[str, Tuple[float, Dict[str, float]]] = {}
    criterion = ""
    with reused_next_item_log_probs() if shared_store else nullcontext():
        for weight in weights:
            model = model_at(weight)
            # a slate's penalty changes only the fill: one distribution per batch for every penalty at this weight
            with nullcontext() if shared_store else reused_next_item_log_probs():
                penalty, tried, criterion = choose_on_validation(
                    ctx,
                    reward_model,
                    ctx.config.eval.diversity_penalties,
                    lambda p: score_generative(ctx, model, p, ctx.split.valid, slate=True),
                    f"{name} diversity penalty at weight {weight}",
                )
            table[str(weight)] = tried[str(penalty)]
            penalties[str(weight)] = (penalty, tried)
    chosen = max(table, key=lambda w: (table[w], -float(w)))
    penalty, tried = penalties[chosen]
    return float(chosen), penalty, table, tried, criterion


def level_mixed_slate_arm(name: str, start: Arm, end: Arm) -> Arm:
    """The arm serving, as a slate, ``LevelMixture(start's model, end's model, [w, 1, .., 1])``: the first code
    from between the two models' distributions, every later level from ``end``'s (module docstring).

    Args:
        name (str): the arm's name in ``compare.arms``.
        start (Arm): the arm of the model at weight 0 (the NTP model's, ``onerec``).
        end (Arm): the arm of the model at weight 1 (the aligned model's, ``onerec_ipa``).
    """
    assert start.model_path is not None and end.model_path is not None
    start_path, end_path = start.model_path, end.model_path

    def score(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
        first = load_generative(ctx, start_path(ctx.run))
        last = load_generative(ctx, end_path(ctx.run))
        later = [1.0] * (len(ctx.codebook.vocab_sizes) - 1)
        chosen, penalty, table, tried, criterion = _chosen_on_validation(
            ctx, reward_model, name, lambda weight: LevelMixture(first, last, [weight, *later]), shared_store=True
        )
        result = score_generative(ctx, LevelMixture(first, last, [chosen, *later]), penalty, slate=True)
        result.info.update(
            first_code_weight=chosen,
            level_weights=[chosen, *later],  # what ``onerec recommend`` serves with (``serving_mixture``)
            selection=table,
            selected_on=criterion,
            penalty_selection=tried,
        )
        return result

    def chosen(config: OneRecConfig, info: Dict[str, object]) -> str:
        return (
            f"each item's first-code term (1 - w) x ({start.chosen(config, info)}) + w x ({end.chosen(config, info)}) "
            f"in log-probability at w = {info['first_code_weight']}, its later levels' terms from the second model, "
            f"served as a slate with a diversity penalty of {info['diversity_penalty']} per earlier session item "
            f"under the same first code (the best penalty at each w), w {selection_text(info)}"
        )

    def serving_mixture(run: RunDir) -> Tuple[Path, List[float]]:
        weights = chosen_setting(run, name, "level_weights")
        return start_path(run), [float(w) for w in weights]

    return Arm(
        name,
        tuple(dict.fromkeys(start.needs + end.needs)),
        score,
        chosen,
        serves_from=end.serves_from,
        model_path=end_path,
        serving_penalty=lambda run: chosen_penalty(run, name),
        slate=True,
        serving_mixture=serving_mixture,
    )
