"""Target-aware attention over the history: it reads the history items like the session item, ignores padding
and history order, and survives an empty history."""

from __future__ import annotations

import torch

from torchrec_onerec.models.history_attention import HistoryAttention


def _identity_attention(dim: int, sharpness: float) -> HistoryAttention:
    attention = HistoryAttention(dim)
    with torch.no_grad():
        attention.query.weight.copy_(torch.eye(dim) * sharpness)
        attention.out.weight.copy_(torch.eye(dim))
        attention.out.bias.zero_()
    return attention


def test_each_item_reads_the_history_items_most_like_it() -> None:
    attention = _identity_attention(2, sharpness=20.0)
    history = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # one user with two interests
    items = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # a session with one item of each
    read = attention(items, history, torch.tensor([2]))[0]
    assert read[0, 0] > 0.99 and read[1, 1] > 0.99  # not the history's mean (0.5, 0.5) that u summarises


def test_padding_and_history_order_do_not_change_the_read_and_an_empty_history_gives_the_bias() -> None:
    torch.manual_seed(0)
    attention = HistoryAttention(4)
    items = torch.randn(1, 3, 4)
    history = torch.randn(3, 4)
    alone = attention(items, history, torch.tensor([3]))
    reordered = attention(items, history[[2, 0, 1]], torch.tensor([3]))
    torch.testing.assert_close(alone, reordered)
    # batched with a user of a longer history and one without history: the first user's read is the same
    batched = attention(
        torch.cat([items, torch.randn(2, 3, 4)]), torch.cat([history, torch.randn(5, 4)]), torch.tensor([3, 5, 0])
    )
    torch.testing.assert_close(batched[:1], alone)
    torch.testing.assert_close(batched[2], attention.out.bias.expand(3, 4).detach())  # nothing to read
