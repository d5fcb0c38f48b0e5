"""Tests of the decoding constraints: valid codes, and the blocked-items look-ahead against a per-beam Python
reference on random states (repeats and excluded items, duplicates included)."""

from __future__ import annotations

from typing import Optional

import pytest
import torch

from torchrec_onerec.generation.processors import BeamState, BlockedItemsProcessor, ValidCodeProcessor
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def _reference_allowed(
    codes: torch.Tensor, state: BeamState, excluded: Optional[torch.Tensor], no_repeat: bool
) -> torch.Tensor:
    """[B N, K_l] bool, beam by beam: code k is allowed iff some item extends prefix + k and is not blocked."""
    rows, level, K = state.codes.shape[0], state.level, state.prefix_index.vocab_sizes[state.level]
    allowed = torch.zeros(rows, K, dtype=torch.bool)
    for row in range(rows):
        blocked = set(state.items[row, : state.item].tolist()) if no_repeat else set()
        if excluded is not None:
            blocked |= set(excluded[row // state.num_beams].tolist())
        prefix = state.codes[row, state.item, :level].tolist()
        for item, tuple_ in enumerate(codes.tolist()):
            if tuple_[:level] == prefix and item not in blocked:
                allowed[row, tuple_[level]] = True
    return allowed


def _random_state(
    codes: torch.Tensor,
    index: PrefixIndex,
    item: int,
    level: int,
    users: int,
    beams: int,
    session_items: int,
    hot: int,
    generator: torch.Generator,
) -> BeamState:
    """Beams with random (possibly repeated) finished items, often ``hot``, and a partial tuple: mostly an
    item's prefix, sometimes random codes (often no item's prefix)."""
    rows, num_items, L = users * beams, codes.shape[0], codes.shape[1]
    pool = torch.randint(num_items, (rows, 3), generator=generator)  # a few items per beam, so repeats occur
    pool[:, 0] = hot
    items = torch.full((rows, session_items), -1, dtype=torch.long)
    items[:, :item] = pool.gather(1, torch.randint(3, (rows, item), generator=generator))
    state_codes = torch.full((rows, session_items, L), -1, dtype=torch.long)
    state_codes[:, :item] = codes[items[:, :item]]
    prefix = codes[torch.randint(num_items, (rows,), generator=generator), :level]
    noise = (
        torch.stack([torch.randint(k, (rows,), generator=generator) for k in index.vocab_sizes[:level]], 1)
        if level
        else prefix
    )
    use_noise = torch.rand(rows, generator=generator) < 0.2
    state_codes[:, item, :level] = torch.where(use_noise.unsqueeze(1), noise, prefix)
    return BeamState(state_codes, items, item, level, beams, index)


@pytest.mark.parametrize("dense_limit", [0, 1 << 22])  # sparse and dense PrefixIndex layouts
def test_lookahead_matches_a_per_beam_reference(dense_limit: int) -> None:
    codes, sizes = random_codes(40, [3, 3], seed=1)  # L' = 3 levels
    index = PrefixIndex(codes, vocab_sizes=sizes, dense_limit=dense_limit)
    generator = torch.Generator().manual_seed(0)
    users, beams, M = 3, 6, 3
    # per user: random items with repeats and -1 padding; user 0 also excludes every item under prefix (0,) but
    # the hot one, which many sessions hold, so whole subtrees are blocked at levels 0 and 1 too
    under = torch.nonzero(codes[:, 0] == 0).squeeze(1)
    hot = int(under[0])
    excluded = torch.randint(-1, codes.shape[0], (users, 24 + len(under) - 1), generator=generator)
    excluded[0, 24:] = under[1:]
    for item in range(M):
        for level in range(codes.shape[1]):
            state = _random_state(codes, index, item, level, users, beams, M, hot, generator)
            scores = torch.randn(users * beams, sizes[level], generator=generator)
            for blocked, no_repeat in ((excluded, True), (None, True), (excluded, False), (None, False)):
                out = BlockedItemsProcessor(blocked, no_repeat=no_repeat)(state, scores)
                expected = _reference_allowed(codes, state, blocked, no_repeat)
                assert torch.equal(torch.isfinite(out), expected), (item, level, no_repeat, blocked is None)
                assert torch.equal(out[expected], scores[expected])  # kept scores are untouched
            valid = ValidCodeProcessor(index)(state, scores)
            assert torch.equal(torch.isfinite(valid), _reference_allowed(codes, state, None, False))


def test_blocked_items_are_counted_once() -> None:
    codes = torch.tensor([[0, 0], [0, 1], [1, 0]])  # items 0, 1 under (0,); item 2 under (1,)
    index = PrefixIndex(codes)
    # the session holds item 0, which the user's history also holds twice: one of the 2 items under (0,) is free
    state = BeamState(
        torch.tensor([[[0, 0], [-1, -1]]]), torch.tensor([[0, -1]]), item=1, level=0, num_beams=1, prefix_index=index
    )
    out = BlockedItemsProcessor(torch.tensor([[0, 0, -1]]))(state, torch.zeros(1, 2))
    assert torch.isfinite(out).all()
    out = BlockedItemsProcessor(torch.tensor([[0, 1, 0]]))(state, torch.zeros(1, 2))  # now both are blocked
    assert torch.equal(torch.isfinite(out), torch.tensor([[False, True]]))


def test_processors_mask_repeats_and_excluded_items_at_the_last_level() -> None:
    codes = torch.tensor([[0, 0], [0, 1], [1, 0]])  # items 0, 1, 2
    index = PrefixIndex(codes)
    # 1 user, 2 beams, writing item 1 of the session at its last level, both beams under prefix (0,)
    state = BeamState(
        codes=torch.tensor([[[0, 1], [0, -1]], [[1, 0], [0, -1]]]),
        items=torch.tensor([[1, -1], [2, -1]]),
        item=1,
        level=1,
        num_beams=2,
        prefix_index=index,
    )
    scores = torch.zeros(2, 2)
    assert torch.isfinite(ValidCodeProcessor(index)(state, scores)).all()  # (0, 0) and (0, 1) both exist
    no_repeat = BlockedItemsProcessor()(state, scores)
    assert torch.isinf(no_repeat[0, 1]) and torch.isfinite(no_repeat[1]).all()  # beam 0 already holds item 1
    excluded = BlockedItemsProcessor(torch.tensor([[0, -1]]), no_repeat=False)(state, scores)
    assert torch.isinf(excluded[:, 0]).all() and torch.isfinite(excluded[:, 1]).all()
    with pytest.raises(ValueError, match=r"excluded must be \[B, H\]"):
        BlockedItemsProcessor(torch.tensor([0, 1]))
