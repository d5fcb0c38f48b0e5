"""Constraints of OneRec's session decoding as logits processors (docs/METHOD.md section 2, serving).

Each constraint is a small callable ``(state, scores) -> scores`` over the [B N, K_l] log-probabilities of the
next code, composed in a list (as Hugging Face's ``LogitsProcessorList``) and kept apart from the search:

- ``ValidCodeProcessor``: only codes that extend the beam's partial tuple towards a real item, so every
  finished tuple is an item.
- ``BlockedItemsProcessor``: items a beam may not write (those its session already holds, and a per-user
  excluded set such as the history), with look-ahead: at every level a code is kept only if the subtree below
  the extended prefix still holds an item that is not blocked, so no beam walks into a prefix whose every
  completion is blocked (at the last level the subtree is the item itself).
- ``RepeatedPrefixPenalty``: not a constraint but a serving preference (``eval.diversity_penalty``): a session
  item's first code costs ``penalty`` for every earlier item of the session that starts with it, so sessions
  spread over the coarsest clusters of the catalogue (the generative counterpart of the cascade's MMR re-rank).

The candidates (the prefix id that partial tuple + each code would be, from the tokenizer's ``PrefixIndex``)
are computed once per step for all beams (``BeamState.candidate_nodes``); nothing loops over beams in Python.
A processor's scores have one column per code of the level ([B N, K_l]), or, at a level the search scores
compactly (``BeamState.column_codes`` set: an item-id level, whose prefixes each lead to a few of its K_l codes),
one column per valid next code of each beam ([B N, F]); the built-in processors read only
``candidate_nodes``, which follows the columns either way.

Shape legend: B batch (users), N beams, M session items, L code levels (L' here), K codebook size, S blocked
items per beam.
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
        column_codes (torch.Tensor | None): [B N, F] the code each score column stands for (-1: padding), when
            the step scores each beam's valid next codes only; None: column k is code k.
        column_nodes (torch.Tensor | None): [B N, F] the prefix id (item id at the last level) each column leads
            to, -1 at padding; given with ``column_codes``.
    """

    codes: torch.Tensor
    items: torch.Tensor
    item: int
    level: int
    num_beams: int
    prefix_index: PrefixIndex
    column_codes: Optional[torch.Tensor] = None
    column_nodes: Optional[torch.Tensor] = None
    _candidates: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def prefix(self) -> torch.Tensor:
        """[B N, l] the partial code tuple of the item being written."""
        return self.codes[:, self.item, : self.level]

    @property
    def is_last_level(self) -> bool:
        """Whether this step finishes an item."""
        return self.level == self.codes.shape[2] - 1

    def candidate_nodes(self) -> torch.Tensor:
        """[B N, K_l] (or [B N, F] with ``column_codes``) the prefix id (length l + 1) each column extends the
        partial tuple to, -1 where that is no item's prefix; at the last level, the item it finishes. Memoised."""
        if self.column_nodes is not None:
            return self.column_nodes
        if self._candidates is None:
            rows, K = self.codes.shape[0], self.prefix_index.vocab_sizes[self.level]
            parent = self.prefix_index.prefix_ids(self.prefix).unsqueeze(1).expand(rows, K)  # (BN, K), -1: none
            code = torch.arange(K, device=parent.device).expand(rows, K)
            self._candidates = self.prefix_index.child(self.level, parent.reshape(-1), code.reshape(-1)).view(rows, K)
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
        """[B N, K_l] (or [B N, F]) scores -> the same with invalid codes at -inf."""
        return scores.masked_fill(state.candidate_nodes() < 0, float("-inf"))


class BlockedItemsProcessor:
    """Keep only codes under which the beam can still finish an item it may write (look-ahead at every level).

    A beam's blocked items are those its session already holds (``no_repeat``) and its user's ``excluded``
    items, each counted once. Code k at level l is kept when the items under prefix + k outnumber the blocked
    ones there (``PrefixIndex.subtree_sizes`` minus the blocked items whose ``ancestor_ids`` at depth l + 1 is
    prefix + k, counted with a sorted search per beam); a code that leads to no item is blocked too. At the last
    level this blocks exactly the blocked items. So a live beam always has a code left to write while its user
    has at least M items outside ``excluded``.

    Args:
        excluded (torch.Tensor | None): [B, H] int64 items to exclude per user, -1 padded (e.g. the history;
            duplicates allowed). None: none.
        no_repeat (bool): block the items of the beam's own session.

    Example:
        >>> index = PrefixIndex(torch.tensor([[0, 0], [0, 1], [1, 0]]))  # items 0, 1 under (0,); item 2 under (1,)
        >>> state = BeamState(torch.tensor([[[0, 1], [-1, -1]]]), torch.tensor([[1, -1]]), item=1, level=0,
        ...                   num_beams=1, prefix_index=index)  # the session holds item 1; its 2nd item starts
        >>> BlockedItemsProcessor(torch.tensor([[0, -1]]))(state, torch.zeros(1, 2))  # the user saw item 0
        tensor([[-inf, 0.]])
    """

    def __init__(self, excluded: Optional[torch.Tensor] = None, *, no_repeat: bool = True) -> None:
        if excluded is not None and excluded.dim() != 2:
            raise ValueError(f"excluded must be [B, H] item ids (-1 padded), got shape {tuple(excluded.shape)}")
        self.excluded = excluded
        self.no_repeat = no_repeat

    def blocked_items(self, state: BeamState) -> torch.Tensor:
        """[B N, S] each beam's blocked items, sorted, each once (-1: padding or a duplicate)."""
        parts = [state.items[:, : state.item]] if self.no_repeat else []  # (BN, j)
        if self.excluded is not None:
            parts.append(self.excluded.repeat_interleave(state.num_beams, dim=0))  # (BN, H): a user's beams adjoin
        if not parts:
            return state.items.new_empty(state.items.shape[0], 0)
        blocked = torch.cat(parts, dim=1).sort(dim=1).values  # (BN, S)
        repeat = torch.zeros_like(blocked, dtype=torch.bool)
        repeat[:, 1:] = blocked[:, 1:] == blocked[:, :-1]
        return blocked.masked_fill(repeat, -1)

    def __call__(self, state: BeamState, scores: torch.Tensor) -> torch.Tensor:
        """[B N, K_l] (or [B N, F]) scores -> the same at -inf where every item below the extended prefix is
        blocked."""
        index, depth = state.prefix_index, state.level + 1
        nodes = state.candidate_nodes()  # (BN, K) prefix ids at depth l + 1, -1: none
        free = index.subtree_sizes(depth, nodes)  # (BN, K) items under each candidate
        blocked = self.blocked_items(state)  # (BN, S)
        if blocked.shape[1] > 0:
            under = index.ancestor_ids(depth, blocked).sort(dim=1).values  # (BN, S) their prefixes at depth l + 1
            free = free - (torch.searchsorted(under, nodes, right=True) - torch.searchsorted(under, nodes))
        return scores.masked_fill(free <= 0, float("-inf"))


class RepeatedPrefixPenalty:
    """Lower each first code of a session item by ``penalty`` times the number of earlier items of the beam's
    session that start with the same code.

    The first code level is the coarsest clustering of the catalogue, so the term spreads a session over
    clusters, as the cascade's MMR re-rank spreads its list over the item space. It changes what the beams keep,
    so a search with it returns scores that are the log-probabilities minus the penalties (the serving order),
    not ``log_prob``. It reads ``column_codes``, so it leaves a compact search compact
    (``follows_columns``).

    Args:
        penalty (float): >= 0, in log-probability units per earlier item in the same cluster (0: no effect).

    Example:
        >>> index = PrefixIndex(torch.tensor([[0, 0], [0, 1], [1, 0]]))
        >>> codes = torch.tensor([[[0, 1], [-1, -1], [-1, -1]], [[1, 0], [-1, -1], [-1, -1]]])
        >>> state = BeamState(codes, torch.tensor([[1, -1, -1], [2, -1, -1]]), item=1, level=0, num_beams=2,
        ...                   prefix_index=index)  # each beam holds one item; the 2nd item starts
        >>> RepeatedPrefixPenalty(0.5)(state, torch.zeros(2, 2))
        tensor([[-0.5000,  0.0000],
                [ 0.0000, -0.5000]])
    """

    follows_columns = True

    def __init__(self, penalty: float) -> None:
        if not penalty >= 0.0:
            raise ValueError(f"penalty={penalty} must be >= 0 (0 leaves the scores as they are)")
        self.penalty = float(penalty)

    def __call__(self, state: BeamState, scores: torch.Tensor) -> torch.Tensor:
        """[B N, K_0] (or [B N, F]) scores -> the same, penalised at a session item's first code."""
        if state.level != 0 or state.item == 0 or self.penalty == 0.0:
            return scores
        earlier = state.codes[:, : state.item, 0]  # (BN, j) first codes of the finished items
        counts = torch.zeros(earlier.shape[0], state.prefix_index.vocab_sizes[0], device=scores.device)
        counts.scatter_add_(1, earlier, torch.ones_like(earlier, dtype=counts.dtype))  # (BN, K_0)
        if state.column_codes is not None:
            counts = counts.gather(1, state.column_codes.clamp(min=0))
        return scores - self.penalty * counts.to(scores.dtype)
