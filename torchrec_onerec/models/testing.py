"""Seeded toy inputs for the OneRec model (docs/METHOD.md section 2): unique item codes and semantic batches;
and an untrained toy cascade for the examples and tests of what scores with one.

Used by the tests of ``modules``, ``models`` and ``generation`` and by ``benchmarks/generation.py``; nothing
here is needed to train on real data, where the tokenizer makes the codes and ``data.batch`` the batches.

Shape legend: B batch, M session items, L code levels (L' with the disambiguation level), K codebook size,
I items.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, sibling_groups, to_semantic_batch
from torchrec_onerec.models.cascade import CascadeRecommender
from torchrec_onerec.models.cascade_config import CascadeConfig, RankerConfig, RetrievalConfig
from torchrec_onerec.models.ranker import MultiTaskRanker
from torchrec_onerec.models.two_tower import TwoTowerRetrieval


def cluster_leaf_codes(num_items: int, num_clusters: int, *, seed: int = 0) -> Tuple[torch.Tensor, List[int]]:
    """Codes of the item-id leaf recipe (``tokenizer.disambiguation=item``): a random balanced cluster, then the id.

    Args:
        num_items (int): I.
        num_clusters (int): C; the clusters' sizes differ by at most one.
        seed (int): the seed of the items' order.

    Returns:
        (codes [I, 2] int64: cluster, item id; vocab_sizes [C, I]).

    Example:
        >>> codes, sizes = cluster_leaf_codes(6, 3)
        >>> sorted(torch.bincount(codes[:, 0]).tolist()), codes[:, 1].tolist(), sizes
        ([2, 2, 2], [0, 1, 2, 3, 4, 5], [3, 6])
    """
    cluster = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)) % num_clusters
    return torch.stack([cluster, torch.arange(num_items)], dim=1), [num_clusters, num_items]


def random_codes(num_items: int, codebook_sizes: Sequence[int], *, seed: int = 0) -> Tuple[torch.Tensor, List[int]]:
    """Random semantic IDs made unique by a disambiguation level, as a tokenizer would.

    Each item draws L codes uniformly; items sharing all L codes get 0, 1, 2, ... in an extra last level.

    Args:
        num_items (int): I.
        codebook_sizes (Sequence[int]): K of each of the L drawn levels.
        seed (int): the random seed.

    Returns:
        (codes [I, L + 1] int64 with unique rows, vocab_sizes: the L sizes plus the disambiguation level's).

    Example:
        >>> codes, sizes = random_codes(20, [2, 2], seed=0)
        >>> tuple(codes.shape), len(set(map(tuple, codes.tolist()))), sizes[:2]
        ((20, 3), 20, [2, 2])
    """
    generator = torch.Generator().manual_seed(seed)
    drawn = torch.stack([torch.randint(size, (num_items,), generator=generator) for size in codebook_sizes], dim=1)
    _, group = torch.unique(drawn, dim=0, return_inverse=True)  # (I,) id of each item's L-code tuple
    order = torch.argsort(group, stable=True)
    sorted_group = group[order]
    first = torch.searchsorted(sorted_group, sorted_group)  # start of each item's group in sorted order
    rank = torch.empty_like(group)
    rank[order] = torch.arange(num_items) - first  # 0, 1, ... within a group
    codes = torch.cat([drawn, rank.unsqueeze(1)], dim=1)
    return codes, [int(size) for size in codebook_sizes] + [int(rank.max()) + 1]


def random_batch(
    codes: torch.Tensor,
    batch_size: int,
    *,
    max_history: int,
    session_items: int,
    num_users: int = 1000,
    seed: int = 0,
    siblings: bool = False,
    sampled_siblings: int = 0,
) -> SemanticIdBatch:
    """A semantic batch of random users with random histories (0 .. n items) and sessions (1 .. M items).

    Args:
        codes (torch.Tensor): [I, L'] item codes.
        batch_size (int): B.
        max_history (int): n, the longest history drawn (at most I).
        session_items (int): M; each target session has 1 .. M distinct items, padded with -1.
        num_users (int): user ids are drawn from [0, num_users).
        seed (int): the random seed.
        siblings (bool): carry each target item's siblings (for a model with ``item_head="prefix"``).
        sampled_siblings (int): with ``siblings``, that many drawn per cluster (``sample_siblings``); 0: all.

    Returns:
        SemanticIdBatch: B samples with one label signal.

    Example:
        >>> codes, _ = random_codes(30, [3, 3])
        >>> batch = random_batch(codes, 4, max_history=5, session_items=2)
        >>> tuple(batch.target_codes.shape), bool(batch.target_mask[:, 0].all())
        ((4, 2, 3), True)
    """
    rng = np.random.default_rng(seed)
    num_items = codes.shape[0]
    samples = []
    for _ in range(batch_size):
        history = rng.choice(num_items, size=rng.integers(0, min(max_history, num_items) + 1), replace=False)
        size = int(rng.integers(1, session_items + 1))
        target = np.full(session_items, -1, dtype=np.int64)
        target[:size] = rng.choice(num_items, size=size, replace=False)
        labels = (target[:, None] >= 0).astype(np.float32)
        samples.append(Sample(int(rng.integers(num_users)), history.astype(np.int64), target, labels))
    return to_semantic_batch(
        collate_samples(samples),
        codes,
        siblings=sibling_groups(codes) if siblings else None,
        sampled_siblings=sampled_siblings,
        generator=torch.Generator().manual_seed(seed),
    )


def tiny_cascade(
    num_users: int, num_items: int, tasks: Sequence[str] = ("vtr",), *, num_candidates: Optional[int] = None
) -> CascadeRecommender:
    """An untrained cascade (tables of width 4, no item content, one dense item feature of zeros), initialised
    from the global torch seed: enough to exercise what retrieves, ranks or scores with a cascade.

    Args:
        num_users (int): rows of the user tables.
        num_items (int): I.
        tasks (Sequence[str]): the ranker's towers.
        num_candidates (int | None): K_r of retrieval; None keeps ``RetrievalConfig``'s default.

    Example:
        >>> rec = tiny_cascade(num_users=2, num_items=6, tasks=["vtr", "swt"])
        >>> rec.num_items, list(rec.ranker.tasks)
        (6, ['vtr', 'swt'])
    """
    retrieval = RetrievalConfig(embedding_dim=4)
    if num_candidates is not None:
        retrieval = dataclasses.replace(retrieval, num_candidates=num_candidates)
    config = CascadeConfig(retrieval, RankerConfig(embedding_dim=4))
    return CascadeRecommender(
        TwoTowerRetrieval(config.retrieval, num_users=num_users, num_items=num_items),
        MultiTaskRanker(config.ranker, num_users=num_users, num_items=num_items, tasks=list(tasks), dense_features=2),
        config,
        torch.zeros(num_items, 0),
        torch.zeros(num_items, 1),
    )
