"""Schema of evaluation (EVAL.md protocols A and B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


@dataclass
class EvalConfig:
    """How generated recommendations are scored.

    Args:
        beam_size: beams of the constrained beam search (protocol A needs beam >= max(ks)).
        num_return: sessions returned per user (their first items form protocol A's ranked list).
        ks: cut-offs of Recall@K / NDCG@K.
        exclude_history: block items of the user's history from generation (EVAL.md: report both when on).
        batch_size: users per generation batch.
    """

    beam_size: int = 20
    num_return: int = 20
    ks: List[int] = field(default_factory=lambda: [5, 10])
    exclude_history: bool = False
    batch_size: int = 128

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.num_return < 1 or self.batch_size < 1:
            raise ValueError("eval.beam_size, eval.num_return and eval.batch_size must be >= 1")
        if self.num_return > self.beam_size:
            raise ValueError(f"eval.num_return={self.num_return} exceeds eval.beam_size={self.beam_size}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"eval.ks={list(self.ks)} needs at least one cut-off, each >= 1")
