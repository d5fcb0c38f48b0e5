"""Tests of slate serving: the next-item distribution is exact (it equals ``log_prob`` of one-item sessions, sums
to 1 over a full code vocabulary, does not depend on the block size), sessions take real items without repeats,
the penalty spreads a session over first codes, history items can be excluded, and short catalogues give filler."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchrec_onerec.generation import slate
from torchrec_onerec.generation.beam_search import history_items
from torchrec_onerec.generation.slate import next_item_log_probs, slate_search, slate_sessions
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes


def _setup(num_items: int, codebook: list[int], users: int = 3, seed: int = 0):
    codes, sizes = random_codes(num_items, codebook, seed=seed)
    torch.manual_seed(seed)
    model = OneRecModel(model_size("tiny", session_items=3), sizes).eval()
    batch = random_batch(codes, users, max_history=model.config.max_history, session_items=3, seed=seed)
    return codes, sizes, model, batch


@pytest.mark.parametrize("codebook", [[4], [3, 3], [2, 3, 2]])
def test_next_item_log_probs_equal_log_prob_of_one_item_sessions(codebook: list[int]) -> None:
    codes, _, model, batch = _setup(15, codebook)
    log_probs = next_item_log_probs(model, batch, codes)
    one_item = codes.view(1, len(codes), 1, -1).expand(3, -1, -1, -1)
    torch.testing.assert_close(log_probs, model.log_prob(batch, one_item))
    small_blocks = next_item_log_probs(model, batch, codes, chunk_elements=1)  # one user per block
    torch.testing.assert_close(small_blocks, log_probs)


def test_over_a_full_vocabulary_the_distribution_sums_to_one_and_the_mode_is_restored() -> None:
    sizes = [3, 4]
    codes = torch.tensor(list(itertools.product(range(3), range(4))))  # every tuple is an item
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny", session_items=2), sizes).train()
    batch = random_batch(codes, 2, max_history=model.config.max_history, session_items=2)
    total = next_item_log_probs(model, batch, codes).exp().sum(dim=1)
    torch.testing.assert_close(total, torch.ones(2))
    assert model.training


def test_slate_sessions_fill_greedily_and_the_penalty_spreads_them() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.9, 1.0, 0.5, 0.0]])
    first = torch.tensor([0, 0, 0, 1, 1, 2])
    plain, plain_scores = slate_sessions(scores, first, penalty=0.0, num_sessions=2, session_items=3)
    assert plain.tolist() == [[[0, 1, 2], [3, 4, 5]]]
    torch.testing.assert_close(plain_scores, torch.tensor([[12.9, 1.5]]))
    spread, spread_scores = slate_sessions(scores, first, penalty=4.5, num_sessions=1, session_items=3)
    assert spread.tolist() == [[[0, 3, 5]]]  # 4.0 - 4.5 < 1.0, then < 0.0 (item 5, the third cluster)
    torch.testing.assert_close(spread_scores, torch.tensor([[6.0]]))


def test_sessions_come_back_by_score_and_too_few_items_give_filler() -> None:
    scores = torch.tensor([[2.0, 1.0, float("-inf"), 0.0, float("-inf")]])
    items, session_scores = slate_sessions(
        scores, torch.zeros(5, dtype=torch.long), penalty=0.0, num_sessions=3, session_items=1
    )
    assert items.tolist() == [[[0], [1], [3]]]
    items, session_scores = slate_sessions(
        scores, torch.zeros(5, dtype=torch.long), penalty=0.0, num_sessions=2, session_items=2
    )
    assert items.tolist() == [[[0, 1], [-1, -1]]] and session_scores[0, 1] == float("-inf")
    with pytest.raises(ValueError, match="penalty=-1.0 must be >= 0"):
        slate_sessions(scores, torch.zeros(5, dtype=torch.long), penalty=-1.0, num_sessions=1, session_items=1)


def test_slate_search_serves_real_items_without_repeats_and_can_exclude_history() -> None:
    codes, _, model, batch = _setup(40, [4, 3])
    out = slate_search(model, batch, codes=codes, num_return=4, session_items=3, penalty=0.5, exclude_history=True)
    assert out.items.shape == (3, 4, 3) and torch.isfinite(out.scores).all()
    assert torch.equal(codes[out.items], out.codes)
    history = history_items(batch)
    for user in range(3):
        served = out.items[user].flatten().tolist()
        assert len(set(served)) == len(served)
        assert not set(served) & set(history[user][history[user] >= 0].tolist())
    assert (out.scores[:, :-1] >= out.scores[:, 1:]).all()
    # without the penalty the first session holds the user's three most probable items
    plain = slate_search(model, batch, codes=codes, num_return=1, session_items=3)
    top = next_item_log_probs(model, batch, codes).topk(3, dim=1).indices
    assert torch.equal(plain.items[:, 0], top)


def test_reused_distribution_is_computed_once_per_batch_and_serves_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    codes, _, model, batch = _setup(20, [3, 3])
    _, _, _, other = _setup(20, [3, 3], seed=1)  # other users' histories
    expected = [
        slate_search(model, b, codes=codes, num_return=2, session_items=3, penalty=p).items
        for b in (batch, other)
        for p in (0.0, 2.0)
    ]
    calls = []
    original = slate.next_item_log_probs
    monkeypatch.setattr(slate, "next_item_log_probs", lambda *a: calls.append(1) or original(*a))
    # each call gets its own copy of the codes, as the arms do (they load the codebook again for every pass)
    with slate.reused_next_item_log_probs():
        served = [
            slate_search(model, b, codes=codes.clone(), num_return=2, session_items=3, penalty=p).items
            for b in (batch, other)
            for p in (0.0, 2.0)
        ]
    assert len(calls) == 2  # one per batch, not one per penalty
    assert all(torch.equal(a, b) for a, b in zip(served, expected))
    slate_search(model, batch, codes=codes, num_return=2, session_items=3, penalty=1.0)
    assert len(calls) == 3  # outside the block nothing is kept


@pytest.mark.parametrize("codebook", [[3, 3], [2, 3, 2], [4, 4, 4]])
def test_prefix_tree_pass_equals_the_plain_rows_pass(codebook: list[int]) -> None:
    codes, _, model, batch = _setup(30, codebook, users=4)
    with torch.no_grad():
        plain = slate._next_item_log_probs(model, batch, codes, 1 << 22)
        for chunk in (1 << 22, 50):  # one block of users, and one user per block
            torch.testing.assert_close(slate._next_item_log_probs_tree(model, batch, codes, chunk), plain)
