"""Prefix index over the valid code tuples, for constrained decoding (docs/METHOD.md section 1, used by section 2).

Beam search writes an item's L' codes one at a time and may only write a tuple that is a real item. This index
answers, for a batch of prefixes, which next codes are valid, and maps full tuples back to items, with a few
tensor operations per level on the index's device and no per-beam Python loop.

Layout. Level l (0 <= l < L') has P_l distinct prefixes of length l, numbered 0..P_l-1 in sorted order
(level 0 has only the empty prefix, id 0). Its edges (prefix of length l, next code) are stored sorted by the
key ``parent * K_l + code``, with the child: the id of the length-(l+1) prefix, or at the last level the item
id. ``offsets[l]`` ([P_l + 1]) delimits each prefix's edges, so the valid next codes of a prefix are one
contiguous slice. When P_l * K_l <= dense_limit, the level also keeps a dense [P_l, K_l] child table (-1: no
such prefix), whose flat index is the key: a child is one gather and a mask one row gather. Otherwise a child
is a ``searchsorted`` on the keys, and a mask a scatter of the slice (padded to the level's largest fan-out).
For look-ahead constraints (does a prefix still lead to an allowed item?) the index also keeps each item's
ancestor prefix id at every depth ([L' + 1, I] int64) and the number of items under every prefix.
Shapes: B queries, L' levels, K_l vocabulary of level l.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch


class PrefixIndex:
    """Valid code tuples as per-level prefix tables.

    Args:
        codes (torch.Tensor): [I, L'] int64 codes, one unique tuple per item (item id = row).
        vocab_sizes (Optional[Sequence[int]]): K_l per level (default: largest code + 1 per level).
        device (Optional[torch.device]): where queries run (default: the codes' device).
        dense_limit (int): a level keeps a dense [P_l, K_l] table when P_l * K_l is at most this.

    Example:
        >>> index = PrefixIndex(torch.tensor([[0, 1], [0, 2], [2, 0]]), vocab_sizes=[3, 3])
        >>> index.valid_next(torch.empty(1, 0, dtype=torch.long)).tolist()
        [[True, False, True]]
        >>> index.valid_next(torch.tensor([[0], [1], [2]])).tolist()
        [[False, True, True], [False, False, False], [True, False, False]]
        >>> index.item_of(torch.tensor([[0, 2], [2, 0], [1, 1]])).tolist()
        [1, 2, -1]
        >>> index.ancestor_ids(1, torch.tensor([0, 1, 2, -1])).tolist()  # prefixes (0,) (0,) (2,), none
        [0, 0, 1, -1]
        >>> index.subtree_sizes(1, torch.tensor([0, 1, -1])).tolist()  # items under (0,), (2,), none
        [2, 1, 0]
    """

    def __init__(
        self,
        codes: torch.Tensor,
        *,
        vocab_sizes: Optional[Sequence[int]] = None,
        device: Optional[torch.device] = None,
        dense_limit: int = 1 << 22,
    ) -> None:
        if codes.dim() != 2 or codes.shape[1] == 0 or codes.shape[0] == 0:
            raise ValueError(f"codes must be [num_items, num_levels] with both > 0, got {tuple(codes.shape)}")
        target = device if device is not None else codes.device
        codes = codes.to(torch.int64).cpu()
        num_items, num_levels = codes.shape
        sizes = list(vocab_sizes) if vocab_sizes is not None else (codes.max(dim=0).values + 1).tolist()
        if len(sizes) != num_levels:
            raise ValueError(f"vocab_sizes={sizes} has {len(sizes)} entries for codes with {num_levels} levels")
        low, high = codes.min(dim=0).values, codes.max(dim=0).values
        for level, size in enumerate(sizes):
            if int(low[level]) < 0 or int(high[level]) >= size:
                raise ValueError(
                    f"codes at level {level} span [{int(low[level])}, {int(high[level])}], outside the vocabulary "
                    f"[0, {size}) of vocab_sizes[{level}]={size}"
                )
        self.vocab_sizes: List[int] = [int(s) for s in sizes]
        self.num_items = num_items
        self._keys: List[torch.Tensor] = []
        self._children: List[torch.Tensor] = []
        self._edge_codes: List[torch.Tensor] = []
        self._offsets: List[torch.Tensor] = []
        self._dense: List[Optional[torch.Tensor]] = []
        self._fanout: List[int] = []
        self._subtree_sizes: List[torch.Tensor] = [torch.tensor([num_items])]  # depth d: [P_d] items under each
        ancestors = [torch.zeros(num_items, dtype=torch.int64)]  # depth d: [I] each item's prefix id of length d
        parent = torch.zeros(num_items, dtype=torch.int64)
        num_parents = 1
        for level, size in enumerate(self.vocab_sizes):
            keys, inverse = torch.unique(parent * size + codes[:, level], sorted=True, return_inverse=True)
            if level == num_levels - 1:
                if keys.numel() != num_items:
                    raise ValueError(
                        f"codes has {num_items - keys.numel()} duplicate tuples: every item needs a unique tuple "
                        "(build the index from a Codebook's disambiguated codes)"
                    )
                children = torch.empty_like(keys)
                children[inverse] = torch.arange(num_items)
            else:
                children = torch.arange(keys.numel())
            offsets = torch.searchsorted(keys, torch.arange(num_parents + 1) * size)
            self._keys.append(keys)
            self._children.append(children)
            self._edge_codes.append(keys % size)
            self._offsets.append(offsets)
            self._fanout.append(int((offsets[1:] - offsets[:-1]).max()))
            dense = None
            if num_parents * size <= dense_limit:
                dense = torch.full((num_parents * size,), -1, dtype=torch.int64)
                dense[keys] = children
                dense = dense.view(num_parents, size)
            self._dense.append(dense)
            node = children[inverse]  # [I] each item's prefix id of length level + 1 (at the last level, the item)
            self._subtree_sizes.append(torch.bincount(node, minlength=keys.numel()))
            ancestors.append(node)
            parent, num_parents = node, keys.numel()
        self._ancestors = torch.stack(ancestors)  # [L' + 1, I]
        self.device = torch.device("cpu")
        self.to(target)

    @property
    def num_levels(self) -> int:
        """L', the code levels of a full tuple."""
        return len(self.vocab_sizes)

    def to(self, device: torch.device) -> "PrefixIndex":
        """Move the tables to ``device`` (in place); returns self."""
        device = torch.device(device)
        for tables in (self._keys, self._children, self._edge_codes, self._offsets, self._subtree_sizes):
            tables[:] = [t.to(device) for t in tables]
        self._ancestors = self._ancestors.to(device)
        self._dense = [None if t is None else t.to(device) for t in self._dense]
        self.device = device
        return self

    def child(self, level: int, parent: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Id of prefix ``parent`` extended by ``code`` at ``level`` (an item id at the last level).

        Args:
            level (int): 0 <= level < L'.
            parent (torch.Tensor): [B] int64 prefix ids of length ``level`` (-1: invalid).
            code (torch.Tensor): [B] int64 next codes (any value; out of range gives -1).

        Returns:
            [B] int64 child ids, -1 where the extended prefix is no item's prefix.
        """
        size = self.vocab_sizes[level]
        ok = (parent >= 0) & (code >= 0) & (code < size)
        key = parent.clamp_min(0) * size + code.clamp(0, size - 1)
        dense = self._dense[level]
        if dense is not None:
            found = dense.view(-1)[key]
        else:
            keys = self._keys[level]
            pos = torch.searchsorted(keys, key).clamp_max(keys.numel() - 1)
            found = torch.where(keys[pos] == key, self._children[level][pos], -1)
        return torch.where(ok, found, -1)

    def fanout(self, level: int) -> int:
        """The most codes that follow one prefix of length ``level`` (0 <= level < L')."""
        return self._fanout[level]

    def children_of(self, level: int, parent: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Every valid next code after prefixes given by id, with the child it leads to, as padded lists.

        Args:
            level (int): 0 <= level < L', the length of the prefixes.
            parent (torch.Tensor): [B] int64 prefix ids at ``level`` (-1: invalid, gives an all-padding row).

        Returns:
            (codes [B, F], children [B, F]) int64, F = ``fanout(level)``, codes ascending in each row; -1 pads
            both past a prefix's own children (at the last level the children are item ids).

        Example:
            >>> index = PrefixIndex(torch.tensor([[0, 1], [0, 2], [2, 0]]), vocab_sizes=[3, 3])
            >>> codes, items = index.children_of(1, torch.tensor([0, 1, -1]))  # after (0,), after (2,), none
            >>> codes.tolist(), items.tolist()
            ([[1, 2], [0, -1], [-1, -1]], [[0, 1], [2, -1], [-1, -1]])
        """
        offsets, fanout = self._offsets[level], self._fanout[level]
        valid = parent >= 0
        start = offsets[parent.clamp_min(0)]
        end = torch.where(valid, offsets[parent.clamp_min(0) + 1], start)
        pos = start.unsqueeze(1) + torch.arange(fanout, device=self.device)  # [B, F]
        real = pos < end.unsqueeze(1)
        pos = pos.clamp_max(self._keys[level].numel() - 1)
        codes = torch.where(real, self._edge_codes[level][pos], -1)
        return codes, torch.where(real, self._children[level][pos], -1)

    def prefix_ids(self, prefix: torch.Tensor) -> torch.Tensor:
        """Ids of a batch of prefixes of one length l.

        Args:
            prefix (torch.Tensor): [B, l] codes, 0 <= l <= L'.

        Returns:
            [B] int64 prefix ids at level l (item ids when l = L'), -1 for prefixes of no item.
        """
        if prefix.dim() != 2 or prefix.shape[1] > self.num_levels:
            raise ValueError(f"prefix must be [B, l] with l <= {self.num_levels}, got {tuple(prefix.shape)}")
        prefix = prefix.to(self.device, torch.int64)
        ids = torch.zeros(prefix.shape[0], dtype=torch.int64, device=self.device)
        for level in range(prefix.shape[1]):
            ids = self.child(level, ids, prefix[:, level])
        return ids

    def valid_next_ids(self, level: int, parent: torch.Tensor) -> torch.Tensor:
        """Mask of the valid next codes after prefixes given by id.

        Args:
            level (int): 0 <= level < L', the length of the prefixes.
            parent (torch.Tensor): [B] int64 prefix ids at ``level`` (-1: invalid, gives an all-False row).

        Returns:
            [B, K_level] bool.
        """
        size = self.vocab_sizes[level]
        valid_parent = parent >= 0
        safe = parent.clamp_min(0)
        dense = self._dense[level]
        if dense is not None:
            return (dense[safe] >= 0) & valid_parent.unsqueeze(1)
        offsets = self._offsets[level]
        start = offsets[safe]
        end = torch.where(valid_parent, offsets[safe + 1], start)
        pos = start.unsqueeze(1) + torch.arange(self._fanout[level], device=self.device)  # [B, fanout]
        edge_codes = self._edge_codes[level]
        codes = torch.where(pos < end.unsqueeze(1), edge_codes[pos.clamp_max(edge_codes.numel() - 1)], size)
        mask = torch.zeros(parent.shape[0], size + 1, dtype=torch.bool, device=self.device)
        return mask.scatter_(1, codes, True)[:, :size]

    def valid_next(self, prefix: torch.Tensor) -> torch.Tensor:
        """Mask of the valid next codes at level l for each prefix of length l.

        Args:
            prefix (torch.Tensor): [B, l] codes, 0 <= l < L'.

        Returns:
            [B, K_l] bool; an all-False row for a prefix that is no item's prefix.
        """
        level = prefix.shape[1] if prefix.dim() == 2 else -1
        if not 0 <= level < self.num_levels:
            raise ValueError(f"prefix must be [B, l] with l < {self.num_levels}, got {tuple(prefix.shape)}")
        return self.valid_next_ids(level, self.prefix_ids(prefix))

    def ancestor_ids(self, depth: int, items: torch.Tensor) -> torch.Tensor:
        """Id of each item's prefix of length ``depth`` (the item itself at depth L').

        Args:
            depth (int): 0 <= depth <= L'.
            items (torch.Tensor): [...] int64 item ids (-1: none).

        Returns:
            [...] int64 prefix ids at ``depth``, -1 where the item is -1.
        """
        return torch.where(items >= 0, self._ancestors[depth][items.clamp_min(0)], -1)

    def subtree_sizes(self, depth: int, prefix: torch.Tensor) -> torch.Tensor:
        """Number of items under each prefix of length ``depth`` (1 for an item at depth L').

        Args:
            depth (int): 0 <= depth <= L'.
            prefix (torch.Tensor): [...] int64 prefix ids at ``depth`` (-1: none).

        Returns:
            [...] int64 item counts, 0 where the prefix is -1.
        """
        return torch.where(prefix >= 0, self._subtree_sizes[depth][prefix.clamp_min(0)], 0)

    def item_of(self, tuples: torch.Tensor) -> torch.Tensor:
        """Item of each full code tuple.

        Args:
            tuples (torch.Tensor): [B, L'] codes.

        Returns:
            [B] int64 item ids, -1 where no item has the tuple.
        """
        if tuples.dim() != 2 or tuples.shape[1] != self.num_levels:
            raise ValueError(f"tuples must be [B, {self.num_levels}], got {tuple(tuples.shape)}")
        return self.prefix_ids(tuples)
