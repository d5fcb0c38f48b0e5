"""How a OneRec model writes the sessions it serves: beam search or a slate, with the diversity penalty.

The evaluation of the generative arms (``eval.generative``) and ``onerec recommend`` (``recommend``) both serve
through ``serve_sessions``, so an arm is scored exactly as it is served.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from torchrec_onerec.data.semantic_batch import SemanticIdBatch
from torchrec_onerec.generation.beam_search import BeamSearchOutput, constrained_beam_search
from torchrec_onerec.generation.processors import RepeatedPrefixPenalty
from torchrec_onerec.generation.slate import LevelMixture, slate_search
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


@torch.no_grad()
def serve_sessions(
    model: Union[OneRecModel, LevelMixture],
    batch: SemanticIdBatch,
    *,
    codes: torch.Tensor,
    prefix_index: PrefixIndex,
    beam_size: int,
    num_return: int,
    session_items: Optional[int] = None,
    penalty: float = 0.0,
    slate: bool = False,
    exclude_history: bool = False,
    constrained: bool = True,
) -> BeamSearchOutput:
    """The ``num_return`` sessions each user of ``batch`` is served, best first.

    Args:
        model (OneRecModel | LevelMixture): the generator (a ``LevelMixture`` serves only as a slate).
        batch (SemanticIdBatch): the users.
        codes (torch.Tensor): [I, L'] int64 item codes (``Codebook.codes``); the slate reads them.
        prefix_index (PrefixIndex): the same codebook's index on the batch's device; the beam search reads it.
        beam_size (int): N, beams kept per user (beam search only).
        num_return (int): R sessions per user.
        session_items (int | None): M items per session (default: the model's ``session_items``).
        penalty (float): per earlier session item under the same first code (0: none): ``RepeatedPrefixPenalty``
            in the beam search, the slate's own penalty in ``slate_search``.
        slate (bool): serve by ``generation.slate.slate_search`` instead of ``constrained_beam_search``.
        exclude_history (bool): never serve an item of the user's history.
        constrained (bool): the beam search's default constraints (a slate always serves real items).

    Returns:
        BeamSearchOutput: items [B, R, M], codes [B, R, M, L'], scores [B, R].

    Raises:
        ValueError: a ``LevelMixture`` without ``slate``.
    """
    if slate:
        return slate_search(
            model,
            batch,
            codes=codes,
            num_return=num_return,
            session_items=session_items or model.config.session_items,
            penalty=penalty,
            exclude_history=exclude_history,
        )
    if isinstance(model, LevelMixture):
        raise ValueError(
            "a LevelMixture mixes two models' next-item distributions and serves only as a slate; pass slate=True "
            "(or serve one of its models by beam search)"
        )
    return constrained_beam_search(
        model,
        batch,
        prefix_index=prefix_index,
        beam_size=beam_size,
        num_return=num_return,
        session_items=session_items,
        exclude_history=exclude_history,
        constrained=constrained,
        processors=[RepeatedPrefixPenalty(penalty)] if penalty > 0 else [],
    )
