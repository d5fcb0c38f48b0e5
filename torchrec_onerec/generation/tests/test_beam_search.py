"""Tests of constrained beam search: valid items only, no repeats, history exclusion, exact on a tiny
vocabulary, KV cache equal to full decoding, scores equal to ``log_prob``."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchrec_onerec.generation.beam_search import constrained_beam_search, history_items
from torchrec_onerec.generation.processors import (BeamState, ExcludeItemsProcessor, NoRepeatProcessor,
                                                   ValidCodeProcessor)
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def _setup(num_items: int, codebook: list[int], session_items: int, users: int = 3, seed: int = 0):
    codes, sizes = random_codes(num_items, codebook, seed=seed)
    torch.manual_seed(seed)
    model = OneRecModel(model_size("tiny", session_items=session_items), sizes).eval()
    batch = random_batch(codes, users, max_history=model.config.max_history, session_items=session_items, seed=seed)
    return codes, PrefixIndex(codes, vocab_sizes=sizes), model, batch


def test_only_valid_items_and_no_repeats() -> None:
    codes, index, model, batch = _setup(30, [3, 3], session_items=3)
    out = constrained_beam_search(model, batch, prefix_index=index, beam_size=16, num_return=8)
    assert out.items.shape == (3, 8, 3) and out.codes.shape == (3, 8, 3, 3)
    assert (out.items >= 0).all()
    assert torch.equal(codes[out.items], out.codes)  # every code tuple is its item's
    for a, b in itertools.combinations(range(3), 2):
        assert (out.items[..., a] != out.items[..., b]).all()
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()  # best first


def test_history_items_are_excluded_when_asked() -> None:
    _, index, model, batch = _setup(30, [3, 3], session_items=2, users=4)
    history = history_items(batch)
    out = constrained_beam_search(model, batch, prefix_index=index, beam_size=8, num_return=8, exclude_history=True)
    for user in range(4):
        seen = set(history[user][history[user] >= 0].tolist())
        assert seen.isdisjoint(out.items[user].flatten().tolist())


def test_matches_exhaustive_search_on_a_tiny_vocabulary() -> None:
    codes, index, model, batch = _setup(6, [2, 2], session_items=2, users=2, seed=3)
    sessions = torch.tensor([pair for pair in itertools.permutations(range(6), 2)])  # all 30 sessions
    all_scores = model.log_prob(batch, codes[sessions].unsqueeze(0).expand(2, -1, -1, -1))  # (B, 30)
    # beam 36 holds every partial session at every step, so the search is exact
    out = constrained_beam_search(model, batch, prefix_index=index, beam_size=36, num_return=10)
    best = all_scores.topk(10, dim=1)
    torch.testing.assert_close(out.scores, best.values)
    assert torch.equal(out.items, sessions[best.indices])


def test_kv_cache_equals_no_cache_and_scores_equal_log_prob() -> None:
    _, index, model, batch = _setup(40, [4, 4], session_items=2)
    cached = constrained_beam_search(model, batch, prefix_index=index, beam_size=6, num_return=6)
    full = constrained_beam_search(model, batch, prefix_index=index, beam_size=6, num_return=6, use_cache=False)
    assert torch.equal(cached.items, full.items)
    torch.testing.assert_close(cached.scores, full.scores)
    torch.testing.assert_close(model.log_prob(batch, cached.codes), cached.scores)


def test_unconstrained_search_and_shorter_sessions() -> None:
    _, index, model, batch = _setup(40, [4, 4], session_items=3)
    free = constrained_beam_search(model, batch, prefix_index=index, beam_size=4, num_return=2, constrained=False,
                                   session_items=2)
    assert free.items.shape == (3, 2, 2)
    constrained = constrained_beam_search(model, batch, prefix_index=index, beam_size=4, num_return=2,
                                          session_items=2)
    assert (free.scores >= constrained.scores - 1e-5).all()  # dropping constraints never lowers the best score
    model.train()
    constrained_beam_search(model, batch, prefix_index=index, beam_size=2, num_return=1)
    assert model.training  # the caller's mode is restored


def test_processors_mask_repeats_and_excluded_items() -> None:
    codes = torch.tensor([[0, 0], [0, 1], [1, 0]])  # items 0, 1, 2
    index = PrefixIndex(codes)
    # 1 user, 2 beams, writing item 1 of the session at its last level, both beams under prefix (0,)
    state = BeamState(codes=torch.tensor([[[0, 1], [0, -1]], [[1, 0], [0, -1]]]),
                      items=torch.tensor([[1, -1], [2, -1]]), item=1, level=1, num_beams=2, prefix_index=index)
    scores = torch.zeros(2, 2)
    valid = ValidCodeProcessor(index)(state, scores)
    assert torch.isfinite(valid).all()  # (0, 0) and (0, 1) both exist
    no_repeat = NoRepeatProcessor()(state, scores)
    assert torch.isinf(no_repeat[0, 1]) and torch.isfinite(no_repeat[1]).all()  # beam 0 already holds item 1
    excluded = ExcludeItemsProcessor(torch.tensor([[0, -1]]))(state, scores)
    assert torch.isinf(excluded[:, 0]).all() and torch.isfinite(excluded[:, 1]).all()


def test_argument_errors_name_the_fix() -> None:
    _, index, model, batch = _setup(20, [3, 3], session_items=2)
    with pytest.raises(ValueError, match="num_return"):
        constrained_beam_search(model, batch, prefix_index=index, beam_size=2, num_return=3)
    with pytest.raises(ValueError, match="session_items"):
        constrained_beam_search(model, batch, prefix_index=index, beam_size=2, num_return=1, session_items=5)


def test_autocast_bf16_search_stays_valid() -> None:
    codes, index, model, batch = _setup(30, [3, 3], session_items=2)
    full = constrained_beam_search(model, batch, prefix_index=index, beam_size=6, num_return=3)
    half = constrained_beam_search(model, batch, prefix_index=index, beam_size=6, num_return=3,
                                   amp_dtype=torch.bfloat16)  # CPU autocast; fp16/bf16 on CUDA alike
    assert (half.items >= 0).all() and (half.items[..., 0] != half.items[..., 1]).all()
    assert torch.equal(codes[half.items], half.codes)
    torch.testing.assert_close(half.scores[:, 0], full.scores[:, 0], atol=0.3, rtol=0.05)
