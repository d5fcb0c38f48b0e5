"""PrefixIndex (constrained decoding over valid code tuples) against brute force, on both table layouts."""

import pytest
import torch

from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def _unique_codes(num_items: int, vocab: list, seed: int) -> torch.Tensor:
    """At most num_items distinct random tuples, in random item order."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.unique(torch.stack([torch.randint(0, k, (num_items * 2,), generator=gen) for k in vocab], 1), dim=0)
    return codes[torch.randperm(codes.shape[0], generator=gen)[:num_items]]


def _brute_valid_next(codes: torch.Tensor, prefix: torch.Tensor, size: int) -> torch.Tensor:
    length = prefix.shape[1]
    out = torch.zeros(prefix.shape[0], size, dtype=torch.bool)
    for b in range(prefix.shape[0]):
        match = (codes[:, :length] == prefix[b]).all(dim=1) if length else torch.ones(codes.shape[0], dtype=torch.bool)
        out[b, codes[match, length]] = True
    return out


def _brute_item_of(codes: torch.Tensor, tuples: torch.Tensor) -> torch.Tensor:
    hits = (tuples[:, None, :] == codes[None, :, :]).all(dim=2)  # [B, I]
    return torch.where(hits.any(dim=1), hits.float().argmax(dim=1), torch.tensor(-1))


@pytest.mark.parametrize("dense_limit", [0, 1 << 22])  # sparse searchsorted layout, dense tables
def test_agrees_with_brute_force(dense_limit: int) -> None:
    vocab = [6, 5, 4, 3]
    codes = _unique_codes(150, vocab, seed=0)
    gen = torch.Generator().manual_seed(1)
    index = PrefixIndex(codes, vocab_sizes=vocab, dense_limit=dense_limit)
    assert index.num_levels == 4 and index.vocab_sizes == vocab and index.num_items == codes.shape[0]
    for level in range(4):
        # half real prefixes, half random ones (mostly invalid), plus out-of-range codes
        real = codes[torch.randint(0, codes.shape[0], (40,), generator=gen), :level]
        rand = torch.stack([torch.randint(0, k, (40,), generator=gen) for k in vocab[:level]], 1) if level else real
        prefix = torch.cat([real, rand, torch.full((2, level), 9), torch.full((2, level), -1)])
        expected = _brute_valid_next(codes, prefix, vocab[level])
        assert torch.equal(index.valid_next(prefix), expected)
    tuples = torch.cat([codes, torch.stack([torch.randint(0, k, (200,), generator=gen) for k in vocab], 1)])
    assert torch.equal(index.item_of(tuples), _brute_item_of(codes, tuples))
    assert torch.equal(index.item_of(codes), torch.arange(codes.shape[0]))


def test_incremental_child_walk_matches_prefix_ids() -> None:
    codes = _unique_codes(80, [4, 4, 4], seed=2)
    index = PrefixIndex(codes, dense_limit=0)
    ids = torch.zeros(codes.shape[0], dtype=torch.long)
    for level in range(3):
        ids = index.child(level, ids, codes[:, level])
        assert torch.equal(ids, index.prefix_ids(codes[:, : level + 1]))
        if level < 2:
            assert index.valid_next_ids(level + 1, ids)[torch.arange(codes.shape[0]), codes[:, level + 1]].all()
    assert torch.equal(ids, torch.arange(codes.shape[0]))


@pytest.mark.parametrize("dense_limit", [0, 1 << 22])
def test_ancestors_and_subtree_sizes_agree_with_brute_force(dense_limit: int) -> None:
    codes = _unique_codes(120, [5, 4, 3], seed=4)
    index = PrefixIndex(codes, dense_limit=dense_limit)
    items = torch.cat([torch.arange(codes.shape[0]), torch.tensor([-1])])
    for depth in range(4):
        ancestors = index.ancestor_ids(depth, items)
        assert ancestors[-1] == -1
        assert torch.equal(ancestors[:-1], index.prefix_ids(codes[:, :depth]))  # the id of each item's prefix
        sizes = index.subtree_sizes(depth, ancestors)
        for item in range(codes.shape[0]):  # items sharing the prefix of length depth
            assert sizes[item] == int((codes[:, :depth] == codes[item, :depth]).all(dim=1).sum())
        assert sizes[-1] == 0
    assert torch.equal(index.ancestor_ids(3, items), items)  # at depth L' an item is its own prefix
    assert index.subtree_sizes(0, torch.tensor([0])).tolist() == [codes.shape[0]]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="2 duplicate tuples"):
        PrefixIndex(torch.tensor([[0, 1], [0, 1], [1, 1], [1, 1]]))
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 2\)"):
        PrefixIndex(torch.tensor([[0, 2]]), vocab_sizes=[2, 2])
    index = PrefixIndex(torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(ValueError, match="l < 2"):
        index.valid_next(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tuples must be \[B, 2\]"):
        index.item_of(torch.zeros(3, 1, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_agrees_with_cpu() -> None:
    codes = _unique_codes(200, [8, 8, 4], seed=3)
    cpu = PrefixIndex(codes, dense_limit=0)
    gpu = PrefixIndex(codes, dense_limit=0, device=torch.device("cuda"))
    prefix = codes[:50, :2]
    assert torch.equal(gpu.valid_next(prefix.cuda()).cpu(), cpu.valid_next(prefix))
    assert torch.equal(gpu.item_of(codes.cuda()).cpu(), torch.arange(codes.shape[0]))
