"""Tests of constrained beam search: valid items only, no repeats, history exclusion without filler, exact on a
tiny vocabulary (with and without exclusion), KV cache equal to full decoding, scores equal to ``log_prob``."""

from __future__ import annotations

import itertools
from typing import List

import numpy as np
import pytest
import torch

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, to_semantic_batch
from torchrec_onerec.generation.beam_search import (
    constrained_beam_search,
    history_items,
    stable_top,
)
from torchrec_onerec.generation.processors import RepeatedPrefixPenalty
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def _setup(
    num_items: int,
    codebook: list[int],
    session_items: int,
    users: int = 3,
    seed: int = 0,
    history_tokens: str = "codes",
):
    codes, sizes = random_codes(num_items, codebook, seed=seed)
    torch.manual_seed(seed)
    model = OneRecModel(model_size("tiny", session_items=session_items, history_tokens=history_tokens), sizes).eval()
    batch = random_batch(codes, users, max_history=model.config.max_history, session_items=session_items, seed=seed)
    return codes, PrefixIndex(codes, vocab_sizes=sizes), model, batch


def _batch_with_histories(codes: torch.Tensor, histories: List[List[int]], session_items: int) -> SemanticIdBatch:
    """One user per history (the target session, unused by the search, is item 0)."""
    target = np.full(session_items, -1, dtype=np.int64)
    target[0] = 0
    samples = [
        Sample(user, np.array(history, dtype=np.int64), target, np.zeros((session_items, 0), np.float32))
        for user, history in enumerate(histories)
    ]
    return to_semantic_batch(collate_samples(samples), codes)


def _assert_real_sessions(out, codes: torch.Tensor, histories: List[List[int]]) -> None:
    """Every returned session is finite, of real items matching their codes, repeat-free and history-free."""
    assert torch.isfinite(out.scores).all(), out.scores
    assert (out.items >= 0).all() and torch.equal(codes[out.items], out.codes)
    for user, history in enumerate(histories):
        for session in out.items[user].tolist():
            assert len(set(session)) == len(session) and set(session).isdisjoint(history), (user, session)


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


def test_history_covering_most_of_a_subtree_gives_no_filler() -> None:
    codes, sizes = random_codes(12, [3, 3], seed=0)  # 3 levels, 4 items under each first code
    index = PrefixIndex(codes, vocab_sizes=sizes)
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny", session_items=2), sizes).eval()
    with torch.no_grad():  # the model wants code 0 at every level: item (0, 0, 0), under (0,) and (0, 0)
        for head in model.heads:
            head.weight.mul_(0.1)
            head.bias.zero_()
            head.bias[0] = 4.0
    under = torch.nonzero(codes[:, 0] == 0).squeeze(1).tolist()  # the 4 items under (0,)
    dead = torch.nonzero((codes[:, 0] == 0) & (codes[:, 1] == 0)).squeeze(1).tolist()  # the 2 under (0, 0)
    assert len(under) == 4 and len(dead) == 2
    # histories exhausting (0, 0), most or all of (0,) (user 3 also (1, 0)), one with a duplicate, and none
    histories = [under[:3], dead, under, under + [4, 7], [dead[0], dead[0], dead[1]], []]
    batch = _batch_with_histories(codes, histories, session_items=2)
    for use_cache in (True, False):
        out = constrained_beam_search(
            model, batch, prefix_index=index, beam_size=6, num_return=6, exclude_history=True, use_cache=use_cache
        )
        _assert_real_sessions(out, codes, histories)
        torch.testing.assert_close(model.log_prob(batch, out.codes), out.scores)
    assert (out.items[-1, 0] == torch.tensor(dead)).any()  # unexcluded, the user gets the model's favourite


def test_matches_exhaustive_search_on_a_tiny_vocabulary() -> None:
    codes, index, model, batch = _setup(6, [2, 2], session_items=2, users=2, seed=3)
    sessions = torch.tensor([pair for pair in itertools.permutations(range(6), 2)])  # all 30 sessions
    all_scores = model.log_prob(batch, codes[sessions].unsqueeze(0).expand(2, -1, -1, -1))  # (B, 30)
    # beam 36 holds every partial session at every step, so the search is exact
    out = constrained_beam_search(model, batch, prefix_index=index, beam_size=36, num_return=10)
    best = all_scores.topk(10, dim=1)
    torch.testing.assert_close(out.scores, best.values)
    assert torch.equal(out.items, sessions[best.indices])


def test_matches_exhaustive_search_with_excluded_history() -> None:
    codes, index, model, _ = _setup(6, [2, 2], session_items=2, seed=3)
    sessions = torch.tensor([pair for pair in itertools.permutations(range(6), 2)])  # all 30 sessions
    # 4, 5, 3 and 1 allowed items (duplicates in a history count once): 12, 20, 6 and 0 valid sessions
    for history, count in (([0, 3], 12), ([5], 20), ([1, 4, 4, 2], 6), ([0, 1, 2, 3, 4], 0)):
        batch = _batch_with_histories(codes, [history], session_items=2)
        valid = torch.tensor([not set(pair).intersection(history) for pair in sessions.tolist()])
        assert int(valid.sum()) == count
        expected = model.log_prob(batch, codes[sessions].unsqueeze(0))[0][valid].sort(descending=True)
        # a beam as wide as the valid sessions holds every valid partial session: the search is exact
        beam = max(count, 1)
        out = constrained_beam_search(
            model, batch, prefix_index=index, beam_size=beam, num_return=beam, exclude_history=True
        )
        torch.testing.assert_close(out.scores[0, :count], expected.values)
        assert torch.equal(out.items[0, :count], sessions[valid][expected.indices])
        assert torch.isneginf(out.scores[0, count:]).all()  # filler only when no valid session is left


@pytest.mark.parametrize("exclude_history, history_tokens", [(False, "codes"), (True, "codes"), (True, "items")])
def test_kv_cache_equals_no_cache_and_scores_equal_log_prob(exclude_history: bool, history_tokens: str) -> None:
    _, index, model, batch = _setup(40, [4, 4], session_items=2, history_tokens=history_tokens)
    cached = constrained_beam_search(
        model, batch, prefix_index=index, beam_size=6, num_return=6, exclude_history=exclude_history
    )
    full = constrained_beam_search(
        model, batch, prefix_index=index, beam_size=6, num_return=6, use_cache=False, exclude_history=exclude_history
    )
    assert torch.equal(cached.items, full.items)
    torch.testing.assert_close(cached.scores, full.scores)
    torch.testing.assert_close(model.log_prob(batch, cached.codes), cached.scores)


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_first_step_decodes_one_row_per_user_and_every_later_step_one_per_beam(use_cache: bool) -> None:
    _, index, model, batch = _setup(40, [4, 4], session_items=2)
    B, steps = batch.target_codes.shape[0], 2 * model.num_levels
    rows: List[int] = []
    scored: List[int] = []  # rows the first level's head scores (it runs at each item's first step)
    handles = [
        model.decoder.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0])),
        model.heads[0].register_forward_hook(lambda m, args, out: scored.append(args[0].shape[0])),
    ]
    constrained_beam_search(model, batch, prefix_index=index, beam_size=6, num_return=6, use_cache=use_cache)
    for handle in handles:
        handle.remove()
    assert rows == [B] + [B * 6] * (steps - 1)
    assert scored[0] == B and all(n == B * 6 for n in scored[1:])


def test_unconstrained_search_and_shorter_sessions() -> None:
    _, index, model, batch = _setup(40, [4, 4], session_items=3)
    free = constrained_beam_search(
        model, batch, prefix_index=index, beam_size=4, num_return=2, constrained=False, session_items=2
    )
    assert free.items.shape == (3, 2, 2)
    constrained = constrained_beam_search(model, batch, prefix_index=index, beam_size=4, num_return=2, session_items=2)
    assert (free.scores >= constrained.scores - 1e-5).all()  # dropping constraints never lowers the best score
    model.train()
    constrained_beam_search(model, batch, prefix_index=index, beam_size=2, num_return=1)
    assert model.training  # the caller's mode is restored


def test_argument_errors_name_the_fix() -> None:
    _, index, model, batch = _setup(20, [3, 3], session_items=2)
    with pytest.raises(ValueError, match="num_return"):
        constrained_beam_search(model, batch, prefix_index=index, beam_size=2, num_return=3)
    with pytest.raises(ValueError, match="session_items"):
        constrained_beam_search(model, batch, prefix_index=index, beam_size=2, num_return=1, session_items=5)


def test_autocast_bf16_search_stays_valid() -> None:
    codes, index, model, batch = _setup(30, [3, 3], session_items=2)
    full = constrained_beam_search(model, batch, prefix_index=index, beam_size=6, num_return=3)
    half = constrained_beam_search(
        model, batch, prefix_index=index, beam_size=6, num_return=3, amp_dtype=torch.bfloat16
    )  # CPU autocast; fp16/bf16 on CUDA alike
    assert (half.items >= 0).all() and (half.items[..., 0] != half.items[..., 1]).all()
    assert torch.equal(codes[half.items], half.codes)
    torch.testing.assert_close(half.scores[:, 0], full.scores[:, 0], atol=0.3, rtol=0.05)


@pytest.mark.parametrize("exclude_history", [False, True])
def test_ranking_only_a_clusters_items_at_the_item_id_level_gives_the_same_sessions(exclude_history: bool) -> None:
    num_items, clusters = 60, 4
    codes = torch.stack([torch.arange(num_items) % clusters, torch.arange(num_items)], dim=1)  # cluster, item id
    index = PrefixIndex(codes, vocab_sizes=[clusters, num_items])
    assert index.fanout(1) == num_items // clusters and index.fanout(0) == clusters  # level 1 only is compact
    torch.manual_seed(1)
    model = OneRecModel(model_size("tiny", session_items=3), [clusters, num_items]).eval()
    batch = random_batch(codes, 4, max_history=model.config.max_history, session_items=3, seed=1)
    kwargs = dict(prefix_index=index, beam_size=8, num_return=8, exclude_history=exclude_history)
    compact = constrained_beam_search(model, batch, **kwargs)
    dense = constrained_beam_search(model, batch, compact=False, **kwargs)
    assert torch.isfinite(compact.scores).all() and torch.equal(compact.items, dense.items)
    torch.testing.assert_close(compact.scores, dense.scores)
    torch.testing.assert_close(model.log_prob(batch, compact.codes), compact.scores)
    if exclude_history:
        for served, seen in zip(compact.items.tolist(), history_items(batch).tolist()):
            assert not set(sum(served, [])) & (set(seen) - {-1})


def test_level_log_probs_of_columns_block_by_block_equal_the_whole_level_log_softmax() -> None:
    torch.manual_seed(3)
    model = OneRecModel(model_size("tiny"), [4, 50]).eval()
    hidden = torch.randn(23, model.config.d_model)
    columns = torch.randint(0, 50, (23, 7))
    whole = model.heads[1](hidden).float().log_softmax(dim=-1).gather(1, columns)
    with torch.no_grad():
        for chunk_elements in (1, 50 * 5, 50 * 23, 1 << 21):  # one row, ragged blocks of 5, one block, default
            blocks = model.level_log_probs(hidden, 1, columns, chunk_elements=chunk_elements)
            torch.testing.assert_close(blocks, whole.detach(), rtol=0.0, atol=1e-6)


def _first_code_repeats(codes: torch.Tensor) -> torch.Tensor:
    """[B, R] for sessions' codes [B, R, M, L]: pairs of items in a session that share their first code."""
    first = codes[..., 0]
    same = first.unsqueeze(-1) == first.unsqueeze(-2)  # [B, R, M, M]
    return torch.triu(same, diagonal=1).sum(dim=(-1, -2))


def test_a_repeated_prefix_penalty_spreads_sessions_over_first_codes_and_is_scored() -> None:
    num_items, clusters = 60, 4
    codes = torch.stack([torch.arange(num_items) % clusters, torch.arange(num_items)], dim=1)  # cluster, item id
    index = PrefixIndex(codes, vocab_sizes=[clusters, num_items])
    torch.manual_seed(2)
    model = OneRecModel(model_size("tiny", session_items=3), [clusters, num_items]).eval()
    batch = random_batch(codes, 4, max_history=model.config.max_history, session_items=3, seed=2)
    kwargs = dict(prefix_index=index, beam_size=8, num_return=8)
    plain = constrained_beam_search(model, batch, **kwargs)
    assert constrained_beam_search(model, batch, processors=[RepeatedPrefixPenalty(0.0)], **kwargs).items.equal(
        plain.items
    )
    penalty = 0.7
    compact = constrained_beam_search(model, batch, processors=[RepeatedPrefixPenalty(penalty)], **kwargs)
    dense = constrained_beam_search(model, batch, processors=[RepeatedPrefixPenalty(penalty)], compact=False, **kwargs)
    assert torch.equal(compact.items, dense.items)  # it reads a compact step's columns
    torch.testing.assert_close(compact.scores, dense.scores)
    # scores: the sessions' log-probabilities minus the penalty per item under an earlier item's first code
    repeats = _first_code_repeats(compact.codes).float()
    torch.testing.assert_close(compact.scores, model.log_prob(batch, compact.codes) - penalty * repeats)
    assert repeats.sum() < _first_code_repeats(plain.codes).sum()  # 0 against 16 here
    strict = constrained_beam_search(model, batch, processors=[RepeatedPrefixPenalty(1e4)], **kwargs)
    assert not _first_code_repeats(strict.codes).any()  # 4 clusters, 3 items: every session can spread
    with pytest.raises(ValueError, match="penalty=-1.0 must be >= 0"):
        RepeatedPrefixPenalty(-1.0)


@pytest.mark.parametrize("n", [1, 3, 20])
def test_stable_top_is_the_head_of_a_stable_descending_sort(n: int) -> None:
    generator = torch.Generator().manual_seed(n)
    # few distinct values (many ties), blocked entries, and a row blocked but for fewer than n entries
    values = torch.randint(0, 4, (6, 300), generator=generator).float()
    values[values == 0] = float("-inf")
    values[5, 2:] = float("-inf")
    kept, columns = stable_top(values, n)
    ranked = values.sort(dim=1, descending=True, stable=True)
    assert torch.equal(columns, ranked.indices[:, :n])
    assert torch.equal(kept, ranked.values[:, :n])
