"""Tests of constrained sampling: the constraints of beam search hold, scores equal ``log_prob``, a seeded
generator repeats its draws, a near-zero temperature is greedy decoding, and draws follow the model's
distribution over the allowed items."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from torchrec_onerec.generation.beam_search import constrained_beam_search, history_items
from torchrec_onerec.generation.sampling import constrained_sample
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


def _draw(model, batch, index, n: int, seed: int, **kwargs):
    return constrained_sample(
        model, batch, prefix_index=index, num_samples=n, generator=torch.Generator().manual_seed(seed), **kwargs
    )


def test_constraints_hold_and_scores_are_log_probs() -> None:
    codes, index, model, batch = _setup(30, [3, 3], session_items=3)
    out = _draw(model, batch, index, 16, seed=0, exclude_history=True)
    assert out.items.shape == (3, 16, 3) and torch.isfinite(out.scores).all()
    assert (out.items >= 0).all() and torch.equal(codes[out.items], out.codes)
    for a, b in itertools.combinations(range(3), 2):
        assert (out.items[..., a] != out.items[..., b]).all()
    history = history_items(batch)
    for user in range(3):
        assert not set(out.items[user].flatten().tolist()) & set(history[user][history[user] >= 0].tolist())
    torch.testing.assert_close(model.log_prob(batch, out.codes), out.scores)
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()  # best first


def test_a_seeded_generator_repeats_its_draws_and_another_seed_differs() -> None:
    _, index, model, batch = _setup(30, [3, 3], session_items=3)
    first, again, other = (_draw(model, batch, index, 8, seed=seed) for seed in (0, 0, 1))
    assert torch.equal(first.items, again.items) and torch.equal(first.scores, again.scores)
    assert not torch.equal(first.items, other.items)
    assert len({tuple(s) for s in first.items[0].tolist()}) > 1  # the rows of a user are separate draws


def test_a_near_zero_temperature_is_greedy_decoding() -> None:
    _, index, model, batch = _setup(30, [3, 3], session_items=3)
    greedy = constrained_beam_search(model, batch, prefix_index=index, beam_size=1, num_return=1)
    cold = _draw(model, batch, index, 4, seed=0, temperature=1e-4)
    assert torch.equal(cold.items, greedy.items.expand(-1, 4, -1))


def test_draws_follow_the_model_over_the_items() -> None:
    # every (level-0, level-1) tuple is an item, so no code is ever blocked and a draw's probability is the
    # model's own probability of the one-item session
    codes, sizes = torch.tensor(list(itertools.product(range(3), range(4)))), [3, 4]
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny", session_items=1), sizes).eval()
    batch = random_batch(codes, 1, max_history=model.config.max_history, session_items=1, seed=0)
    out = _draw(model, batch, PrefixIndex(codes, vocab_sizes=sizes), 6000, seed=0)
    frequency = np.bincount(out.items[0, :, 0].numpy(), minlength=12) / 6000
    probability = model.log_prob(batch, codes.view(1, 12, 1, 2)).exp()[0].detach().numpy()
    assert abs(probability.sum() - 1.0) < 1e-4
    assert np.abs(frequency - probability).max() < 0.02, (frequency, probability)
