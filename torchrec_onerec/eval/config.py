"""Schema of the ``eval`` config section: how generated recommendations are scored (../EVAL.md protocols A, B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from torchrec_onerec.errors import ConfigError


@dataclass
class EvalConfig:
    """How generated recommendations are scored (``torchrec_onerec.eval.generative.evaluate_generative``).

    Args:
        beam_size: beams of the constrained beam search (EVAL.md: beam >= K under protocol A).
        num_return: sessions returned per user, <= ``beam_size``; under protocol A their first items form the
            ranked list, so it must be >= max(``ks``).
        ks: cut-offs of Recall@K / NDCG@K, distinct, each >= 1.
        exclude_history: block items of the user's history from generation (EVAL.md protocol A: a run that masks
            them reports both figures, i.e. run the evaluation once with each value).
        batch_size: users per generation batch.
        constrained: constrained decoding (real items only, no repeats within a session); False decodes freely,
            an ablation that makes the legality and repeat rates informative.
        protocol_a_session_items: items per generated sequence under protocol A. 1 (default) scores each
            sequence by its first item alone, so the returned sequences' first items are distinct and the ranked
            list has ``num_return`` items; a larger value ranks first items by whole-session score and drops
            repeated first items (the list may then be shorter than K, see ``eval.protocols``).

    Example:
        >>> EvalConfig(beam_size=10, num_return=10).ks
        [5, 10]
        >>> EvalConfig(beam_size=5, num_return=10)
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: eval.num_return=10 exceeds eval.beam_size=5; lower num_return or raise beam_size
    """

    beam_size: int = 20
    num_return: int = 20
    ks: List[int] = field(default_factory=lambda: [5, 10])
    exclude_history: bool = False
    batch_size: int = 128
    constrained: bool = True
    protocol_a_session_items: int = 1

    def __post_init__(self) -> None:
        for name in ("beam_size", "num_return", "batch_size", "protocol_a_session_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name}={getattr(self, name)} must be >= 1")
        if self.num_return > self.beam_size:
            raise ConfigError(f"eval.num_return={self.num_return} exceeds eval.beam_size={self.beam_size}; "
                             "lower num_return or raise beam_size")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"eval.ks={list(self.ks)} needs at least one cut-off, each >= 1")
        if len(set(self.ks)) != len(self.ks):
            raise ConfigError(f"eval.ks={list(self.ks)} repeats a cut-off; list each K once")
