"""Constraints of OneRec's session decoding as logits processors (ONEREC.md section 2, serving).

Each constraint is a small callable ``(state, scores) -> scores`` over the [B N, K_l] log-probabilities of the
next code, composed in a list (as Hugging Face's ``LogitsProcessorList``) and kept apart from the search:

- ``ValidCodeProcessor``: only codes that extend the beam's partial tuple towards a real item
  (``PrefixIndex.valid_next``), so every finished tuple is an item.
- ``NoRepeatProcessor``: at an item's last level, block the completions that give an item the session
  already holds.
- ``ExcludeItemsProcessor``: at the last level, block completions that give one of a per-user item set
  (e.g. the history).

The last two look at the candidate items (the item that partial tuple + each last code would be, from the
tokenizer's ``PrefixIndex``), computed once per step for all beams (``BeamState.candidate_items``); nothing
loops over beams in Python.

Shape legend: B batch (users), N beams, M session items, L code levels (L' here), K codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


@dataclass
class BeamState:
    """The beams at one decoding step: choosing level ``level`` of session item ``item``.

    Args:
        codes (torch.Tensor): [B N, M, L'] codes chosen so far (-1 where not yet).
        items (torch.Tensor): [B N, M] finished items so far (-1 where not yet).
        item (int): j, the session item being written.
        level (int): l, the code level being chosen.
        num_beams (int): N (rows of one user are adjacent).
        prefix_index (PrefixIndex): the item code tuples.
    """

    codes: torch.Tensor
    items: torch.Tensor
    item: int
    level: int
    num_beams: int
    prefix_index: PrefixIndex
    _candidates: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def prefix(self) -> torch.Tensor:
        """[B N, l] the partial code tuple of the item being written."""
        return self.codes[:, self.item, :self.level]

    @property
    def is_last_level(self) -> bool:
        """Whether this step finishes an item."""
        return self.level == self.codes.shape[2] - 1

    def candidate_items(self) -> torch.Tensor:
        """[B N, K_last] the item each last-level code would finish (-1: none); last level only, memoised."""
        if not self.is_last_level:
            raise ValueError(f"candidate_items is defined at the last level {self.codes.shape[2] - 1}, "
                             f"this step chooses level {self.level}")
        if self._candidates is None:
            rows, K = self.codes.shape[0], self.prefix_index.vocab_sizes[self.level]
            parent = self.prefix_index.prefix_ids(self.prefix).unsqueeze(1).expand(rows, K)  # (BN, K), -1: none
            last = torch.arange(K, device=parent.device).expand(rows, K)
            self._candidates = self.prefix_index.child(self.level, parent.reshape(-1), last.reshape(-1)).view(rows, K)
        return self._candidates


LogitsProcessor = Callable[[BeamState, torch.Tensor], torch.Tensor]


class ValidCodeProcessor:
    """Keep only codes that continue the partial tuple towards a real item.

    Args:
        prefix_index (PrefixIndex): the item code tuples.

    Example:
        >>> index = PrefixIndex(torch.tensor([[0, 1], [1, 0]]))  # items (0, 1) and (1, 0)
        >>> state = BeamState(torch.tensor([[[0, -1]]]), torch.tensor([[-1]]), item=0, level=1, num_beams=1,
        ...                   prefix_index=index)
        >>> ValidCodeProcessor(index)(state, torch.zeros(1, 2))
        tensor([[-inf, 0.]])
    """

    def __init__(self, prefix_index: PrefixIndex) -> None:
        self.prefix_index = prefix_index

    def __call__(self, state: BeamState, scores: torch.Tensor) -> torch.Tensor:
        """[B N, K_l] scores -> the same with invalid codes at -inf."""
        return scores.masked_fill(~self.prefix_index.valid_next(state.prefix), float("-inf"))


class NoRepeatProcessor:
    """At an item's last level, block codes that would finish an item already in the beam's session.

    Example:
        >>> index = PrefixIndex(torch.tensor([[0, 0], [0, 1]]))  # items (0, 0) and (0, 1)
        >>> state = BeamState(torch.tensor([[[0, 1], [0, -1]]]), torch.tensor([[1, -1]]), item=1, level=1,
        ...                   num_beams=1, prefix_index=index)  # the session holds item 1; writing its 2nd item
        >>> NoRepeatProcessor()(state, torch.zeros(1, 2))
        tensor([[0., -inf]])
    """

    def __call__(self, state: BeamState, scores: torch.Tensor) -> torch.Tensor:
        """[B N, K_last] scores -> the same with repeats at -inf (other levels unchanged)."""
        if not state.is_last_level or state.item == 0:
            return scores
        candidates = state.candidate_items()  # (BN, K)
        chosen = state.items[:, :state.item]  # (BN, j), all real items
        repeat = (candidates.unsqueeze(2) == chosen.unsqueeze(1)).any(dim=2) & (candidates >= 0)
        return scores.masked_fill(repeat, float("-inf"))


class ExcludeItemsProcessor:
    """At an item's last level, block codes that would finish one of the user's excluded items.

    Args:
        excluded (torch.Tensor): [B, H] int64 items to exclude per user, -1 padded (e.g. the history).

    Example:
        >>> index = PrefixIndex(torch.tensor([[0, 0], [0, 1]]))
        >>> state = BeamState(torch.tensor([[[0, -1]]]), torch.tensor([[-1]]), item=0, level=1, num_beams=1,
        ...                   prefix_index=index)
        >>> ExcludeItemsProcessor(torch.tensor([[0, -1]]))(state, torch.zeros(1, 2))  # the user saw item 0
        tensor([[-inf, 0.]])
    """

    def __init__(self, excluded: torch.Tensor) -> None:
        self.excluded = excluded.sort(dim=1).values  # sorted rows for searchsorted

    def __call__(self, state: BeamState, scores: torch.Tensor) -> torch.Tensor:
        """[B N, K_last] scores -> the same with excluded items at -inf (other levels unchanged)."""
        if not state.is_last_level or self.excluded.shape[1] == 0:
            return scores
        candidates = state.candidate_items()  # (BN, K)
        B, H = self.excluded.shape
        per_user = candidates.reshape(B, -1)  # (B, N K): a user's beams are adjacent rows
        position = torch.searchsorted(self.excluded, per_user).clamp(max=H - 1)
        hit = (self.excluded.gather(1, position) == per_user) & (per_user >= 0)
        return scores.masked_fill(hit.view_as(scores), float("-inf"))
