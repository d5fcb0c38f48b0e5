"""``serve_sessions`` serves exactly what the beam search (with its penalty) or the slate writes."""

from __future__ import annotations

import torch

from torchrec_onerec.generation.beam_search import constrained_beam_search
from torchrec_onerec.generation.processors import RepeatedPrefixPenalty
from torchrec_onerec.generation.serving import serve_sessions
from torchrec_onerec.generation.slate import slate_search
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def test_serve_sessions_is_the_beam_search_or_the_slate() -> None:
    codes, sizes = random_codes(30, [3, 3])
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny", session_items=3), sizes).eval()
    batch = random_batch(codes, 3, max_history=model.config.max_history, session_items=3)
    index = PrefixIndex(codes, vocab_sizes=sizes)
    common = dict(codes=codes, prefix_index=index, beam_size=6, num_return=4, exclude_history=True)
    beams = serve_sessions(model, batch, penalty=1.0, **common)
    expected = constrained_beam_search(
        model,
        batch,
        prefix_index=index,
        beam_size=6,
        num_return=4,
        exclude_history=True,
        processors=[RepeatedPrefixPenalty(1.0)],
    )
    assert torch.equal(beams.items, expected.items) and torch.equal(beams.scores, expected.scores)
    plain = serve_sessions(model, batch, **common)
    assert torch.equal(
        plain.scores,
        constrained_beam_search(
            model, batch, prefix_index=index, beam_size=6, num_return=4, exclude_history=True
        ).scores,
    )
    slate = serve_sessions(model, batch, penalty=1.0, slate=True, **common)
    direct = slate_search(model, batch, codes=codes, num_return=4, session_items=3, penalty=1.0, exclude_history=True)
    assert torch.equal(slate.items, direct.items) and torch.equal(slate.scores, direct.scores)
