"""Unique code tuples: counting items that share all L codes and disambiguating them (docs/METHOD.md section 1).

Two items can land in the same cluster at every level (a collision). A generated tuple must map back to one
item, so, as TIGER does, an extra code level numbers the items that share an L-tuple 0, 1, 2, ... (in item-id
order); items with a unique L-tuple get 0. The extra level's vocabulary is the largest group's size.
Shapes: N items, L levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Collisions:
    """How the items' L-tuples collide, and the disambiguating extra code.

    Args:
        extra (torch.Tensor): [N] int64 rank of each item among the items sharing its L-tuple.
        num_items (int): N.
        num_distinct (int): number of distinct L-tuples.
        unique_items (int): items whose L-tuple no other item has.
        max_group (int): most items sharing one L-tuple (the extra level's vocabulary size).
    """

    extra: torch.Tensor
    num_items: int
    num_distinct: int
    unique_items: int
    max_group: int

    @property
    def collision_rate(self) -> float:
        """Fraction of items that need the extra code to be told apart: 1 - distinct tuples / N."""
        return (self.num_items - self.num_distinct) / self.num_items

    @property
    def unique_fraction(self) -> float:
        """Fraction of items whose L-tuple is unique."""
        return self.unique_items / self.num_items


def tuple_ids(codes: torch.Tensor) -> torch.Tensor:
    """Dense id of each row's tuple: equal rows get equal ids, ordered as the tuples sort.

    Args:
        codes (torch.Tensor): [N, L] non-negative int64 codes.

    Returns:
        [N] int64 ids in [0, number of distinct rows).

    Example:
        >>> tuple_ids(torch.tensor([[1, 2], [0, 5], [1, 2]])).tolist()
        [1, 0, 1]
    """
    radix = (codes.max(dim=0).values + 1).tolist()
    if float(torch.tensor(radix, dtype=torch.float64).prod()) < 2.0**62:  # one int64 key per row
        key = torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
        for level, size in enumerate(radix):
            key = key * size + codes[:, level]
        return torch.unique(key, sorted=True, return_inverse=True)[1]
    return torch.unique(codes, dim=0, sorted=True, return_inverse=True)[1]


def disambiguate(codes: torch.Tensor) -> Collisions:
    """Number the items that share an L-tuple 0, 1, 2, ... in item order; count the collisions.

    Args:
        codes (torch.Tensor): [N, L] int64 codes.

    Returns:
        Collisions with the [N] extra code.

    Example:
        >>> c = disambiguate(torch.tensor([[0, 1], [2, 3], [0, 1], [0, 1]]))
        >>> c.extra.tolist(), c.num_distinct, c.unique_items, c.max_group
        ([0, 0, 1, 2], 2, 1, 3)
    """
    n = codes.shape[0]
    group = tuple_ids(codes)
    counts = torch.bincount(group)
    order = torch.argsort(group, stable=True)  # items grouped by tuple, in item order inside a group
    starts = torch.cumsum(counts, 0) - counts
    extra = torch.empty(n, dtype=torch.int64, device=codes.device)
    extra[order] = torch.arange(n, device=codes.device) - starts[group[order]]
    return Collisions(
        extra=extra,
        num_items=n,
        num_distinct=int(counts.numel()),
        unique_items=int((counts == 1).sum()),
        max_group=int(counts.max()),
    )
