"""Schema of the ``eval`` config section: how generated recommendations are scored (docs/EVAL.md protocols A, B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from torchrec_onerec.errors import ConfigError


@dataclass
class EvalConfig:
    """How generated recommendations are scored (``torchrec_onerec.eval.generative.evaluate_generative``).

    Args:
        beam_size: beams of the constrained beam search (docs/EVAL.md: beam >= K under protocol A).
        num_return: sessions returned per user, <= ``beam_size``; under protocol A their first items form the
            ranked list, so it must be >= max(``ks``).
        ks: cut-offs of Recall@K / NDCG@K, distinct, each >= 1.
        split: the users every arm is scored on: ``test`` (the A/B, read once for a final config) or ``valid``
            (for choosing among configs: the same metrics on the validation users; the synthetic world's true
            reward and its diagnostics are left out there, because protocol C's truth is never used to choose).
        exclude_history: block items of the user's history from generation (docs/EVAL.md protocol A: a run that masks
            them reports both figures, i.e. run the evaluation once with each value).
        batch_size: users per generation batch.
        constrained: constrained decoding (real items only, no repeats within a session); False decodes freely,
            an ablation that makes the legality and repeat rates informative.
        protocol_a_session_items: items per generated sequence under protocol A. 1 (default) scores each
            sequence by its first item alone, so the returned sequences' first items are distinct and the ranked
            list has ``num_return`` items; a larger value ranks first items by whole-session score and drops
            repeated first items (the list may then be shorter than K, see ``eval.protocols``).
        diversity_penalties: the penalties the ``*_diverse`` and ``*_slate`` arms try on the validation users
            (with 0, the plain search or slate) for serving: a session item's first code costs the penalty for each
            earlier item of the session under the same first code (``generation.processors.RepeatedPrefixPenalty``
            in the beam search, ``generation.slate`` in the slate); the arm keeps the one its validation users are
            best served with, as ``cascade_rerank`` keeps its weight.
        interpolation_weights: the w in (0, 1) the ``onerec_interp_slate`` arm tries on the validation users (with
            0 and 1, the NTP and the aligned model): the weights (1 - w) theta_NTP + w theta_aligned, served as a
            slate (``torchrec_onerec.interpolation``); ``onerec_mix_slate`` tries the same w as the aligned model's
            share of the first code's log-probability.
        select_candidates: the n the ``*_select`` arms try on the validation users (with 0, the plain search):
            of each user's n most probable returned sessions, the one the alignment reward
            (``align.reward_source``) scores highest is served (``eval.session_selection``); each n must be
            <= ``num_return`` when such an arm runs.

    Example:
        >>> EvalConfig(beam_size=10, num_return=10).ks
        [5, 10]
        >>> EvalConfig(beam_size=5, num_return=10)
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: eval.num_return=10 exceeds eval.beam_size=5; lower num_return or ...
    """

    beam_size: int = 20
    num_return: int = 20
    ks: List[int] = field(default_factory=lambda: [5, 10])
    split: str = "test"
    exclude_history: bool = False
    batch_size: int = 128
    constrained: bool = True
    protocol_a_session_items: int = 1
    diversity_penalties: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    interpolation_weights: List[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    select_candidates: List[int] = field(default_factory=lambda: [2, 5, 10])

    def __post_init__(self) -> None:
        for name in ("beam_size", "num_return", "batch_size", "protocol_a_session_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 1")
        if self.num_return > self.beam_size:
            raise ConfigError(
                f"eval.num_return={self.num_return} exceeds eval.beam_size={self.beam_size}; "
                "lower num_return or raise beam_size"
            )
        if self.split not in ("test", "valid"):
            raise ConfigError(f"eval.split={self.split!r} must be 'test' (the A/B) or 'valid' (choosing a config)")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"eval.ks={list(self.ks)} needs at least one cut-off, each >= 1")
        if len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"eval.ks={list(self.ks)} repeats a cut-off; list each K once")
        if any(not p >= 0.0 for p in self.diversity_penalties):
            raise ConfigError(f"eval.diversity_penalties={list(self.diversity_penalties)}: every penalty must be >= 0")
        if any(not 0.0 < w < 1.0 for w in self.interpolation_weights):
            raise ConfigError(
                f"eval.interpolation_weights={list(self.interpolation_weights)}: every weight must lie strictly "
                "between 0 and 1 (both ends are always tried)"
            )
        if any(n < 0 for n in self.select_candidates):
            raise ConfigError(f"eval.select_candidates={list(self.select_candidates)}: every n must be >= 0")


# The names of arms.ARMS, which this schema module does not import (tests/test_arms.py keeps them equal).
ARM_KINDS = (
    "cascade",
    "cascade_rerank",
    "onerec",
    "onerec_dpo",
    "onerec_ipa",
    "popularity",
    "sasrec",
    "onerec_diverse",
    "onerec_ipa_diverse",
    "onerec_select",
    "onerec_ipa_select",
    "onerec_slate",
    "onerec_ipa_slate",
    "onerec_interp_slate",
    "onerec_mix_slate",
)


@dataclass
class CompareConfig:
    """The A/B comparison (``onerec compare``): which arms, against which baseline, with what intervals.

    Args:
        arms: arm names: ``cascade`` (the retrieval -> ranking baseline), ``cascade_rerank`` (the same with a third
            stage, a diversity re-rank whose weight is chosen on validation: ``cascade.ranker.rerank_weights``),
            ``onerec`` (the NTP-trained model),
            ``onerec_dpo`` (after one alignment iteration), ``onerec_ipa`` (after every alignment iteration),
            ``onerec_diverse`` / ``onerec_ipa_diverse`` (those models served with a diversity penalty chosen on
            validation: ``eval.diversity_penalties``),
            ``onerec_select`` / ``onerec_ipa_select`` (those models serving the best of their n most probable
            sessions by the alignment reward, n chosen on validation: ``eval.select_candidates``),
            ``onerec_slate`` / ``onerec_ipa_slate`` (those models served as slates from their next-item
            distribution, the same penalty chosen on validation: ``generation.slate``),
            ``onerec_interp_slate`` (the NTP and aligned models' weights interpolated, served as a slate, the weight
            and penalty chosen on validation: ``eval.interpolation_weights``), ``onerec_mix_slate`` (a slate whose
            first code is scored between the NTP and the aligned model's distributions and whose later codes by the
            aligned model's, ``generation.slate.LevelMixture``, the weight and penalty chosen likewise),
            ``popularity`` (the floor), ``sasrec`` (the sequential baseline; its stage trains only when it is
            listed here: ``sasrec`` section), or ``model:<path>`` (any
            exported OneRec model file, e.g. another run's ``train/best_model.pt`` with the same codebook). An
            arm whose stage did not run (no alignment under protocol A) is left out and the report says so.
        baseline: the arm the others are compared with (relative lift, paired intervals).
        resamples: bootstrap resamples of users.
        level: interval coverage, in (0, 1).

    Example:
        >>> CompareConfig(arms=["onerec"], baseline="cascade")
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: compare.baseline='cascade' is not one of compare.arms=['onerec']; ...
    """

    arms: List[str] = field(
        default_factory=lambda: ["cascade", "cascade_rerank", "onerec", "onerec_dpo", "onerec_ipa", "popularity"]
    )
    baseline: str = "cascade"
    resamples: int = 1000
    level: float = 0.95

    def __post_init__(self) -> None:
        for arm in self.arms:
            if arm not in ARM_KINDS and not (arm.startswith("model:") and len(arm) > len("model:")):
                raise ConfigError(f"compare.arms has {arm!r}; arms are {list(ARM_KINDS)} or 'model:<path>'")
        if len(set(self.arms)) != len(self.arms):
            raise ConfigError(f"compare.arms={list(self.arms)} repeats an arm")
        if self.baseline not in self.arms:
            raise ConfigError(
                f"compare.baseline={self.baseline!r} is not one of compare.arms={list(self.arms)}; "
                "add it or pick an arm"
            )
        if self.resamples < 1:
            raise ConfigError(f"compare.resamples={self.resamples} must be >= 1")
        if not 0.0 < self.level < 1.0:
            raise ConfigError(f"compare.level={self.level} must lie in (0, 1), e.g. 0.95")
