"""Constrained sampling of whole sessions: N independent draws from the model, under beam search's constraints.

Beam search returns the N most probable sessions, which for a peaked model differ in a slot or two: as DPO
candidates (``alignment.pairs``) they leave the reward little to choose between. Sampling draws each code from
the model's distribution over the codes the constraints allow, at a temperature, so the N sessions of a user
spread over what the model deems possible (the on-policy candidates of the OneRec technical report's RL). The
decoding loop, KV cache and constraints are beam search's (``beam_search.decode_sessions``); only the step that
picks the surviving rows differs (``SampleSelect``).

Scores are the model's own log-probabilities of the drawn codes (before the temperature and the constraints),
so they equal ``OneRecModel.log_prob`` of the returned sessions, as beam search's do. Sessions come back sorted
by score, best first. Draws are independent, so two rows of a user can hold the same session.

Shape legend: B batch (users), N samples, M session items, L' code levels, K codebook size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from torchrec_onerec.data.semantic_batch import SemanticIdBatch
from torchrec_onerec.generation.beam_search import (
    BeamSearchOutput,
    Selection,
    check_search_arguments,
    decode_sessions,
    default_processors,
    follow_columns,
)
from torchrec_onerec.generation.processors import LogitsProcessor
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


class SampleSelect:
    """Each of the N rows of a user draws its next code from softmax(log-probs / temperature) over allowed codes.

    Args:
        temperature (float): > 0; 1 samples the model's own distribution, lower sharpens it towards beam search.
        generator (torch.Generator): the random stream (on the device the search runs on).
    """

    def __init__(self, temperature: float, generator: torch.Generator) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0 (align.sample_temperature)")
        self.temperature, self.generator = temperature, generator

    def initial_scores(self, B: int, N: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(B, N, device=device)  # every row is its own draw from the start

    def __call__(self, scores: torch.Tensor, log_probs: torch.Tensor) -> Selection:
        B, N = scores.shape
        allowed = torch.isfinite(log_probs)
        dead = ~allowed.any(dim=1, keepdim=True)  # no code left (a filler row): draw any, its score is -inf
        weights = torch.where(allowed | dead, log_probs / self.temperature, float("-inf"))
        weights = torch.where(dead, torch.zeros_like(weights), weights).softmax(dim=1)
        chosen = torch.multinomial(weights, 1, generator=self.generator).squeeze(1)  # (BN,)
        picked = log_probs.gather(1, chosen.unsqueeze(1)).view(B, N)
        beam = torch.arange(N, device=scores.device).expand(B, N)
        return scores + picked, beam, chosen


@torch.no_grad()
def constrained_sample(
    model: OneRecModel,
    batch: SemanticIdBatch,
    *,
    prefix_index: PrefixIndex,
    num_samples: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    session_items: Optional[int] = None,
    exclude_history: bool = False,
    processors: Sequence[LogitsProcessor] = (),
    use_cache: bool = True,
) -> BeamSearchOutput:
    """Draw ``num_samples`` sessions per user of ``batch`` under the default constraints (the model in eval mode).

    Args:
        model (OneRecModel): the trained model (unsharded; dropout is off while sampling).
        batch (SemanticIdBatch): the users.
        prefix_index (PrefixIndex): the codebook's prefix index, on the batch's device.
        num_samples (int): N sessions per user.
        generator (torch.Generator): the random stream, on the batch's device (seed it for reproducible draws).
        temperature (float): > 0, divides the log-probabilities before each draw.
        session_items (int | None): M items per session (default: the model's ``session_items``).
        exclude_history (bool): never emit an item of the user's history.
        processors (Sequence[LogitsProcessor]): extra constraints, after the default ones.
        use_cache (bool): decode with the self-attention KV cache.

    Returns:
        BeamSearchOutput: items [B, N, M], codes [B, N, M, L'], scores [B, N] (log M(S | H)), best first; -inf
        marks a filler session, as in ``constrained_beam_search``.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_batch, random_codes
        >>> codes, sizes = random_codes(12, [3, 3])
        >>> model = OneRecModel(model_size("tiny"), sizes)
        >>> batch = random_batch(codes, 2, max_history=4, session_items=2)
        >>> out = constrained_sample(model, batch, prefix_index=PrefixIndex(codes, vocab_sizes=sizes), num_samples=5,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> tuple(out.items.shape), bool((out.items >= 0).all()), bool((out.items[..., 0] != out.items[..., 1]).all())
        ((2, 5, 2), True, True)
        >>> bool((out.scores[:, :-1] >= out.scores[:, 1:]).all())  # best first
        True
    """
    M = check_search_arguments(model, batch, prefix_index, session_items, num_samples, num_samples)
    steps = list(default_processors(prefix_index, batch, exclude_history=exclude_history)) + list(processors)
    was_training = model.training
    model.eval()
    try:
        return decode_sessions(
            model,
            batch,
            prefix_index,
            steps,
            num_samples,
            num_samples,
            M,
            use_cache,
            compact=follow_columns(processors),
            select=SampleSelect(temperature, generator),
        )
    finally:
        model.train(was_training)
