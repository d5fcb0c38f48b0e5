"""The arms of the A/B, in one registry: what each reads, how it is scored, how it was chosen, what it serves.

``evaluate`` (the stage) scores every arm of ``compare.arms`` with ``evaluate_arm``; ``compare`` writes each
arm's ``chosen`` text into the report; ``onerec recommend --arm`` serves the arms that have a ``serves_from``
stage (OneRec's models) and, through ``recommend.CascadeServer``, the two cascade arms. Adding an arm is one
``Arm`` entry in ``ARMS`` plus the function that scores it (and its name in ``eval.config.ARM_KINDS``, which
the config schema checks without importing this module). ``model:<path>`` arms (any exported OneRec model file)
are built on demand by ``arm_for``. What arms are made of, and the steps the generative ones share, are in
``arm_scoring``; an arm with more to it than a few lines has its own module (``interpolation``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

from torchrec_onerec.alignment.ipa import model_file
from torchrec_onerec.arm_scoring import (
    Arm,
    aligned_model_path,
    chosen_penalty,
    choose_on_validation,
    load_generative,
    score_generative,
    selection_text,
    trained_model_path,
)
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.context import PipelineContext
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.baselines import evaluate_popularity
from torchrec_onerec.eval.cascade import evaluate_cascade
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.sasrec import evaluate_sasrec
from torchrec_onerec.eval.session_selection import select_by_reward
from torchrec_onerec.generation.slate import reused_next_item_log_probs
from torchrec_onerec.interpolation import interpolated_slate_arm, level_mixed_slate_arm
from torchrec_onerec.models.cascade import CascadeRecommender, load_cascade
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.sasrec import load_sasrec
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.runtime import resolve_device
from torchrec_onerec.train.sasrec_training import SASREC_FILE

MODEL_PREFIX = "model:"


def arm_file(arm: str) -> str:
    """The file stem of an arm's saved evaluation (``model:<path>`` arms get a safe name).

    Example:
        >>> arm_file("model:../other run/train/best_model.pt")
        'model_.._other_run_train_best_model.pt'
    """
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", arm)


def _cascade(ctx: PipelineContext) -> CascadeRecommender:
    return load_cascade(ctx.run.path / "cascade", config=ctx.config.cascade, device=resolve_device(ctx.config.device))


def _score_cascade(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
    cfg = ctx.config
    return evaluate_cascade(
        _cascade(ctx), ctx.scored_samples, config=cfg.eval, protocol=cfg.split.protocol, num_items=ctx.data.num_items
    )


def _score_cascade_rerank(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
    cfg = ctx.config
    recommender = _cascade(ctx)

    def score(weight: float, samples: SampleSet) -> EvalResult:
        return evaluate_cascade(
            recommender,
            samples,
            config=cfg.eval,
            protocol=cfg.split.protocol,
            num_items=ctx.data.num_items,
            diversity_weight=weight,
        )

    weight, table, criterion = choose_on_validation(
        ctx,
        reward_model,
        cfg.cascade.ranker.rerank_weights,
        lambda w: score(w, ctx.split.valid),
        "cascade_rerank weight",
    )
    result = score(weight, ctx.scored_samples)
    result.info.update(selection=table, selected_on=criterion)
    return result


def _rerank_chosen(config: OneRecConfig, info: Dict[str, object]) -> str:
    return f"the cascade, then an MMR re-rank with diversity weight {info['diversity_weight']}, {selection_text(info)}"


def _diverse_arm(name: str, base: str, slate: bool = False) -> Arm:
    """Arm ``base``'s model served with a penalty per earlier session item under the same first code, chosen on
    validation among ``eval.diversity_penalties`` (and 0) as the ``cascade_rerank`` arm's weight is: in the beam
    search (``RepeatedPrefixPenalty``) or, with ``slate``, in slate serving (``generation.slate``)."""
    plain = ARMS[base]
    assert plain.model_path is not None
    model_path = plain.model_path
    how = "as a slate from its next-item distribution" if slate else "by beam search"

    def score(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
        model = load_generative(ctx, model_path(ctx.run))  # once, for every penalty tried and the scored split
        # a slate's penalty changes only the fill, not the distribution (read again when the scored split is valid)
        with reused_next_item_log_probs():
            penalty, table, criterion = choose_on_validation(
                ctx,
                reward_model,
                ctx.config.eval.diversity_penalties,
                lambda p: score_generative(ctx, model, p, ctx.split.valid, slate=slate),
                f"{name} diversity penalty",
            )
            result = score_generative(ctx, model, penalty, slate=slate)
        result.info.update(selection=table, selected_on=criterion)
        return result

    def chosen(config: OneRecConfig, info: Dict[str, object]) -> str:
        return (
            f"{plain.chosen(config, info)}; served {how} with a diversity penalty of {info['diversity_penalty']} "
            f"per earlier session item under the same first code, {selection_text(info)}"
        )

    return Arm(
        name,
        plain.needs,
        score,
        chosen,
        serves_from=plain.serves_from,
        model_path=model_path,
        serving_penalty=lambda run: chosen_penalty(run, name),
        slate=slate,
    )


def _select_arm(name: str, base: str) -> Arm:
    """Arm ``base``'s model serving the best of its n most probable sessions by the alignment reward
    (``eval.session_selection``), n chosen on validation among ``eval.select_candidates`` (and 0, the plain
    search) as the ``cascade_rerank`` arm's weight is. Not an exported model alone, so not served by
    ``onerec recommend``."""
    plain = ARMS[base]
    assert plain.model_path is not None
    model_path = plain.model_path

    def score(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
        cfg = ctx.config
        if cfg.align.reward_source == "world":
            raise ValueError(
                f"arm {name!r} picks the served session by the alignment reward, and align.reward_source='world' "
                "is the synthetic world's truth, which never serves (docs/EVAL.md); drop the arm from compare.arms "
                "or align to model, ranker or mix"
            )
        too_many = [n for n in cfg.eval.select_candidates if n > cfg.eval.num_return]
        if too_many:
            raise ValueError(
                f"eval.select_candidates={list(cfg.eval.select_candidates)} has {too_many}, above "
                f"eval.num_return={cfg.eval.num_return}: the served session is picked among the returned ones; "
                "lower those entries or raise eval.num_return"
            )
        model = load_generative(ctx, model_path(ctx.run))
        reward_fn = ctx.alignment_reward()
        protocol, ks, num_items = cfg.split.protocol, cfg.eval.ks, ctx.data.num_items

        def selected(result: EvalResult, samples: SampleSet, n: float) -> EvalResult:
            if n == 0:
                return result
            return select_by_reward(result, samples, reward_fn, int(n), protocol=protocol, ks=ks, num_items=num_items)

        valid = score_generative(ctx, model, samples=ctx.split.valid)  # searched once for every n tried
        n, table, criterion = choose_on_validation(
            ctx,
            reward_model,
            [float(n) for n in cfg.eval.select_candidates],
            lambda n: selected(valid, ctx.split.valid, n),
            f"{name} candidates",
        )
        scored = valid if cfg.eval.split == "valid" else score_generative(ctx, model)
        result = selected(scored, ctx.scored_samples, n)
        result.info.update(select_top_n=int(n), selection=table, selected_on=criterion)
        return result

    def chosen(config: OneRecConfig, info: Dict[str, object]) -> str:
        n = info["select_top_n"]
        serving = (
            f"served the best of its {n} most probable sessions by `align.reward_source={config.align.reward_source}`"
            if n
            else "served as searched (no re-selection)"
        )
        return f"{plain.chosen(config, info)}; {serving}, {selection_text(info)}"

    # "align": the reward exists only where alignment applies (protocol B with feedback).
    return Arm(name, tuple(dict.fromkeys(plain.needs + ("align",))), score, chosen)


def _score_popularity(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
    cfg = ctx.config
    return evaluate_popularity(
        ctx.scored_samples, ctx.split.train_sequences, ctx.data.num_items, config=cfg.eval, protocol=cfg.split.protocol
    )


def _score_sasrec(ctx: PipelineContext, reward_model: Optional[SessionRewardModel]) -> EvalResult:
    cfg = ctx.config
    model = load_sasrec(ctx.run.path / "sasrec" / SASREC_FILE, device=resolve_device(cfg.device))
    return evaluate_sasrec(
        model, ctx.scored_samples, config=cfg.eval, protocol=cfg.split.protocol, num_items=ctx.data.num_items
    )


def _sasrec_chosen(config: OneRecConfig, info: Dict[str, object]) -> str:
    optim = config.sasrec.optim
    stop = f", stopping after {optim.patience} epochs without a better one" if optim.patience else ""
    return (
        f"SASRec trained for at most {optim.epochs} epochs, the epoch with the best validation NDCG@10 kept"
        f"{stop}; sizes and learning rates from the `sasrec` section"
    )


def _ntp_chosen(config: OneRecConfig, info: Dict[str, object]) -> str:
    train = config.train
    epochs = (
        "the final weights (validated once, after the last epoch)"
        if train.eval_every_epochs >= train.optim.epochs
        else f"the epoch with the best validation {train.selection_metric}"
    )
    return f"NTP training, {train.optim.epochs} epochs, {epochs}"


def _generative_arm(
    name: str,
    needs: Tuple[str, ...],
    model_path: Callable[[RunDir], Path],
    chosen: Callable[[OneRecConfig, Dict[str, object]], str],
    serves_from: str = "",
) -> Arm:
    """An arm that is one exported OneRec model, beam-searched like every generative arm."""
    return Arm(
        name,
        needs,
        lambda ctx, reward_model: score_generative(ctx, load_generative(ctx, model_path(ctx.run))),
        chosen,
        serves_from=serves_from,
        model_path=model_path if serves_from else None,
    )


ARMS: Dict[str, Arm] = {
    arm.name: arm
    for arm in (
        Arm(
            "cascade",
            ("cascade",),
            _score_cascade,
            lambda config, info: (
                "two-tower retrieval kept at its best epoch by validation recall@K_r, ranker at its best "
                "epoch by mean validation AUC; sizes and learning rates from the config"
            ),
        ),
        Arm("cascade_rerank", ("cascade",), _score_cascade_rerank, _rerank_chosen),
        _generative_arm("onerec", ("tokenize", "train"), trained_model_path, _ntp_chosen, serves_from="train"),
        _generative_arm(
            "onerec_dpo",
            ("tokenize", "train", "align"),
            lambda run: run.path / "align" / model_file(1),
            lambda config, info: (
                f"the NTP model after one alignment iteration to `align.reward_source={config.align.reward_source}`"
            ),
        ),
        _generative_arm(
            "onerec_ipa",
            ("tokenize", "train", "align"),
            aligned_model_path,
            lambda config, info: (
                f"the NTP model after {config.align.iterations} alignment iterations to "
                f"`align.reward_source={config.align.reward_source}` (the last iteration "
                "is kept)"
            ),
            serves_from="align",
        ),
        Arm("popularity", (), _score_popularity, lambda config, info: "training counts; nothing tuned"),
        Arm("sasrec", ("sasrec",), _score_sasrec, _sasrec_chosen),
    )
}
ARMS.update(
    (arm.name, arm)
    for arm in (
        _diverse_arm("onerec_diverse", "onerec"),
        _diverse_arm("onerec_ipa_diverse", "onerec_ipa"),
        _diverse_arm("onerec_slate", "onerec", slate=True),
        _diverse_arm("onerec_ipa_slate", "onerec_ipa", slate=True),
        _select_arm("onerec_select", "onerec"),
        _select_arm("onerec_ipa_select", "onerec_ipa"),
        interpolated_slate_arm("onerec_interp_slate", ARMS["onerec"], ARMS["onerec_ipa"]),
        level_mixed_slate_arm("onerec_mix_slate", ARMS["onerec"], ARMS["onerec_ipa"]),
    )
)
SERVABLE_ARMS = tuple(name for name, arm in ARMS.items() if arm.serves_from)


def arm_for(name: str) -> Arm:
    """The registered arm ``name``, or a ``model:<path>`` arm over that exported model file.

    Raises:
        ValueError: neither a registered arm nor ``model:<path>``.

    Example:
        >>> arm_for("onerec_ipa").needs, arm_for("model:other/best_model.pt").needs
        (('tokenize', 'train', 'align'), ('tokenize',))
    """
    if name in ARMS:
        return ARMS[name]
    if name.startswith(MODEL_PREFIX) and len(name) > len(MODEL_PREFIX):
        path = Path(name[len(MODEL_PREFIX) :])

        def exported(run: RunDir) -> Path:
            if not path.is_file():
                raise FileNotFoundError(f"compare.arms names {name!r} but {path} does not exist")
            return path

        return _generative_arm(
            name, ("tokenize",), exported, lambda config, info: "an exported model named on the command line"
        )
    raise ValueError(f"arm {name!r} is not one of {list(ARMS)} nor '{MODEL_PREFIX}<path>'")


def evaluate_arm(
    ctx: PipelineContext, name: str, reward_model: Optional[SessionRewardModel]
) -> Tuple[Optional[EvalResult], str]:
    """Arm ``name`` scored on ``ctx.scored_samples``, or (None, why it is left out: a stage it needs did not
    apply to this data)."""
    arm = arm_for(name)
    for stage in arm.needs:
        done = (ctx.run.path / stage / "summary.json").is_file()
        summary = ctx.run.read_json(f"{stage}/summary.json") if done else {}
        if "not_applicable" in summary:
            return None, f"the {stage} stage did not apply: {summary['not_applicable']}"
    return arm.score(ctx, reward_model), ""
