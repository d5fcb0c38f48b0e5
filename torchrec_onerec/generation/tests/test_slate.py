"""Tests of slate serving: the next-item distribution is exact (it equals ``log_prob`` of one-item sessions, sums
to 1 over a full code vocabulary, does not depend on the block size), sessions take real items without repeats,
the penalty spreads a session over first codes, history items can be excluded, and short catalogues give filler."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchrec_onerec.generation import slate
from torchrec_onerec.generation.beam_search import history_items
from torchrec_onerec.generation.serving import serve_sessions
from torchrec_onerec.generation.slate import (
    LevelMixture,
    next_item_log_probs,
    slate_search,
    slate_sessions,
    slate_sessions_reference,
)
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


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
    for bad in (-1.0, float("inf")):
        with pytest.raises(ValueError, match=f"penalty={bad} must be finite and >= 0"):
            slate_sessions(scores, torch.zeros(5, dtype=torch.long), penalty=bad, num_sessions=1, session_items=1)


def test_slate_sessions_equal_the_plain_reference_bit_for_bit() -> None:
    # ties, unservable items, exhausted rows, clusters of every size: the incremental fill must pick the same
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        B, N, C = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 9), (2, 60), (1, 8)))
        scores = torch.randint(-4, 1, (B, N), generator=gen).float() * 0.5
        scores[torch.rand(B, N, generator=gen) < 0.3] = float("-inf")
        first = torch.randint(0, C, (N,), generator=gen)
        for penalty in (0.0, 0.5, 2.0, 1e9):
            R, M = int(torch.randint(1, 6, (1,), generator=gen)), int(torch.randint(1, 5, (1,), generator=gen))
            fast = slate_sessions(scores, first, penalty=penalty, num_sessions=R, session_items=M)
            plain = slate_sessions_reference(scores, first, penalty=penalty, num_sessions=R, session_items=M)
            assert torch.equal(fast[0], plain[0]) and torch.equal(fast[1], plain[1])


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
    monkeypatch.setattr(slate, "next_item_log_probs", lambda *a, **k: calls.append(1) or original(*a, **k))
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


@pytest.mark.parametrize("codebook", [[4], [3, 3], [2, 3, 2]])
def test_per_level_terms_add_up_to_the_distribution_level_after_level(codebook: list[int]) -> None:
    codes, _, model, batch = _setup(15, codebook)
    levels = next_item_log_probs(model, batch, codes, per_level=True)
    assert levels.shape == (codes.shape[1], 3, 15)
    total = levels[0].clone()
    for term in levels[1:]:
        total += term
    assert torch.equal(total, next_item_log_probs(model, batch, codes))  # the same sum, bit for bit
    # the first level's term is the distribution over first codes: one value per code, summing to 1 over them
    first, where = torch.unique(codes[:, 0], return_inverse=True)
    per_code = torch.full((3, len(first)), float("nan")).index_copy(1, where, levels[0])
    torch.testing.assert_close(levels[0], per_code[:, where])
    torch.testing.assert_close(per_code.exp().sum(1), torch.ones(3))


def _two_models(codebook: list[int]):
    codes, sizes, first, batch = _setup(20, codebook)
    torch.manual_seed(7)
    second = OneRecModel(model_size("tiny", session_items=3), sizes).eval()
    return codes, sizes, first, second, batch


@pytest.mark.parametrize("codebook", [[3, 3], [2, 3, 2]])
def test_level_mixture_serves_each_model_at_its_end_and_mixes_level_by_level(codebook: list[int]) -> None:
    codes, _, first, second, batch = _two_models(codebook)
    L = codes.shape[1]
    common = dict(codes=codes, num_return=2, session_items=3, penalty=1.0)
    for weight, model in ((0.0, first), (1.0, second)):
        mixed = slate_search(LevelMixture(first, second, [weight] * L), batch, **common)
        alone = slate_search(model, batch, **common)
        assert torch.equal(mixed.items, alone.items) and torch.equal(mixed.scores, alone.scores)
    a = next_item_log_probs(first, batch, codes, per_level=True)
    b = next_item_log_probs(second, batch, codes, per_level=True)
    weights = [0.25] + [1.0] * (L - 1)  # the first code mostly the first model's, the rest the second's
    expected = 0.75 * a[0] + 0.25 * b[0] + b[1:].sum(0)
    torch.testing.assert_close(LevelMixture(first, second, weights).next_item_log_probs(batch, codes), expected)
    served = slate_search(LevelMixture(first, second, weights), batch, **common)
    assert torch.equal(
        served.items, slate_sessions(expected, codes[:, 0], penalty=1.0, num_sessions=2, session_items=3)[0]
    )


def test_level_mixture_reads_each_model_once_per_batch_inside_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    codes, _, first, second, batch = _two_models([3, 3])
    L = codes.shape[1]
    calls = []
    original = slate.next_item_log_probs
    monkeypatch.setattr(slate, "next_item_log_probs", lambda *a, **k: calls.append(k) or original(*a, **k))
    with slate.reused_next_item_log_probs():
        for weight in (0.0, 0.5, 1.0):
            for penalty in (0.0, 2.0):
                mixture = LevelMixture(first, second, [weight] + [1.0] * (L - 1))
                slate_search(mixture, batch, codes=codes, num_return=2, session_items=3, penalty=penalty)
    assert calls == [{"per_level": True}, {"per_level": True}]  # one pass per model, not per weight or penalty


def test_level_mixture_refuses_other_codebooks_bad_weights_and_beam_search() -> None:
    codes, sizes, first, second, batch = _two_models([3, 3])
    other = OneRecModel(model_size("tiny", session_items=3), [4, *sizes[1:]])
    ok = [0.5] + [1.0] * (len(sizes) - 1)
    with pytest.raises(ValueError, match="different codebooks"):
        LevelMixture(first, other, ok)
    with pytest.raises(ValueError, match=rf"one weight in \[0, 1\] per code level \({len(sizes)} levels\)"):
        LevelMixture(first, second, [0.5])
    with pytest.raises(ValueError, match=r"level_weights=\[1.5, 1.0"):
        LevelMixture(first, second, [1.5] + ok[1:])
    index = PrefixIndex(codes, vocab_sizes=sizes)
    with pytest.raises(ValueError, match="serves only as a slate"):
        serve_sessions(
            LevelMixture(first, second, ok), batch, codes=codes, prefix_index=index, beam_size=4, num_return=2
        )
