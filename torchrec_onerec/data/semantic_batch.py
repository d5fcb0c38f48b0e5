"""Semantic-ID batches: a ``OneRecBatch`` whose items are written as their code tuples (docs/METHOD.md section 2).

The generative model never sees item ids: every history item and every target item is read as its L' codes
(the L quantiser levels plus the disambiguation level, docs/METHOD.md section 1). This is a collate-time transform:
the DataLoader maps each ``OneRecBatch`` to a ``SemanticIdBatch`` (``SemanticIdTransform(codes)`` as its
collate step), so that TorchRec's input_dist, and ``TrainPipelineSparseDist`` ahead of it, see the code KJT
that the model's ``EmbeddingCollection`` consumes, and the model's forward stays free of id arithmetic.

The feature KJT has one key per code level for the history and for the target session, plus the user id,
always in the order of ``semantic_feature_keys(L')``:

- ``history_code_l`` (l = 0 .. L'-1): lengths = the history lengths; values = the level-l code of every
  history item, in history order (oldest to newest), so position k of every history key is the same item;
- ``target_code_l``: lengths = the number of real target items; values = the level-l codes of those items;
- ``user_id``: one id per sample;
- ``target_siblings`` (only for a model whose item level is scored per prefix, ``model.item_head=prefix``):
  the distinct last-level codes that share a real target item's first L'-1 codes (``sibling_groups``), ascending
  (``batch_siblings``), all on the first sample: each output row is looked up once per batch, however many
  targets share its cluster. With ``sampled_siblings=S`` (training on a large catalogue, ``train.sampled_siblings``)
  a target is scored against its own code and S codes drawn from its cluster instead (``sample_siblings``), so a
  step reads about (clusters in the batch) x S rows however large the clusters are.

Shape legend: B batch, M session items, L code levels (L' in the code tensors), S reward signals, I items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Tuple

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.batch import HISTORY_KEY, USER_KEY, OneRecBatch, TensorFieldsBatch

PAD_CODE = -1
SIBLINGS_KEY = "target_siblings"


def history_code_key(level: int) -> str:
    """The KJT key of the history tokens of code level ``level``."""
    return f"history_code_{level}"


def target_code_key(level: int) -> str:
    """The KJT key of the target-session tokens of code level ``level``."""
    return f"target_code_{level}"


def semantic_feature_keys(num_levels: int, *, siblings: bool = False) -> List[str]:
    """The keys of a semantic feature KJT, in order: history codes, target codes, user id (then the targets'
    siblings, with ``siblings``).

    Example:
        >>> semantic_feature_keys(2)
        ['history_code_0', 'history_code_1', 'target_code_0', 'target_code_1', 'user_id']
    """
    return (
        [history_code_key(level) for level in range(num_levels)]
        + [target_code_key(level) for level in range(num_levels)]
        + [USER_KEY]
        + ([SIBLINGS_KEY] if siblings else [])
    )


def batch_siblings(target_siblings: torch.Tensor) -> torch.Tensor:
    """The distinct codes of a batch's ``target_siblings`` [B, M, F] (-1 padded), ascending: the values of its
    ``target_siblings`` key, whose rows the model finds again by ``searchsorted``.

    Example:
        >>> batch_siblings(torch.tensor([[[3, 4, -1], [2, 5, 7]], [[3, 4, -1], [-1, -1, -1]]])).tolist()
        [2, 3, 4, 5, 7]
    """
    return torch.unique(target_siblings[target_siblings >= 0])


class SiblingGroups(NamedTuple):
    """The last-level codes of a codebook grouped by the first L'-1 codes (for an item-id level: each cluster's
    items), as ``sibling_groups`` returns them.

    Args:
        group (torch.Tensor): [I] int64 each item's group (its (L'-1)-code prefix in sorted order).
        members (torch.Tensor): [P, F] int64 each group's last-level codes, ascending, -1 padded; F is the
            largest group.
        position (torch.Tensor): [I] int64 where each item's last code sits in its group's row.
    """

    group: torch.Tensor
    members: torch.Tensor
    position: torch.Tensor


def sibling_groups(codes: torch.Tensor) -> SiblingGroups:
    """Group the items of ``codes`` [I, L'] (L' >= 2, unique rows) by their first L'-1 codes.

    Example:
        >>> g = sibling_groups(torch.tensor([[1, 5], [0, 3], [1, 2], [0, 4], [1, 7]]))
        >>> g.group.tolist(), g.members.tolist(), g.position.tolist()
        ([1, 0, 1, 0, 1], [[3, 4, -1], [2, 5, 7]], [1, 0, 0, 1, 2])
    """
    if codes.dim() != 2 or codes.shape[1] < 2:
        raise ValueError(
            f"codes of shape {tuple(codes.shape)} have no prefix to group by; an item level scored per prefix "
            "needs at least one code level before it"
        )
    last = codes[:, -1]
    _, group = torch.unique(codes[:, :-1], dim=0, return_inverse=True)
    num_groups = int(group.max()) + 1
    order = torch.argsort(group * (int(last.max()) + 1) + last)  # by group, then code
    sizes = torch.bincount(group, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    position = torch.empty_like(group)
    position[order] = torch.arange(len(order), device=codes.device) - starts[group[order]]
    members = torch.full((num_groups, int(sizes.max())), PAD_CODE, dtype=torch.int64, device=codes.device)
    members[group, position] = last
    return SiblingGroups(group, members, position)


@dataclass
class SemanticIdBatch(TensorFieldsBatch):
    """A ``OneRecBatch`` plus its items' semantic codes; implements TorchRec's ``Pipelineable``.

    Args:
        users (torch.Tensor): [B] int64 user ids.
        features (KeyedJaggedTensor): the code KJT, keys ``semantic_feature_keys(L')`` (see the module docstring).
        item_features (KeyedJaggedTensor): the item-id KJT of the source batch (``history_item``, ``user_id``),
            kept for history exclusion in generation and for item-id features.
        target (torch.Tensor): [B, M] int64 target item ids, -1 at padding (real items first).
        target_mask (torch.Tensor): [B, M] bool, True at real target items.
        target_codes (torch.Tensor): [B, M, L'] int64 codes of the target items, -1 at padding.
        labels (torch.Tensor): [B, M, S] float32 feedback per target item.
        target_siblings (torch.Tensor): [B, M, F] int64 the last-level codes sharing each target item's first
            L'-1 codes (its own among them; -1 padded, all -1 at padding items); [B, M, 0] when the batch was
            built without ``siblings``. Sampled (``sample_siblings``): the target's own code first, then a sample.
        sibling_log_ratio (torch.Tensor): [B, M] float32 what the sampled-softmax correction adds to each other
            sibling's logit, log(cluster size / S) (0 where every sibling is present, and without sampling).

    Example:
        >>> from torchrec_onerec.data.batch import collate_samples
        >>> from torchrec_onerec.data.samples import Sample
        >>> import numpy as np
        >>> codes = torch.tensor([[0, 0], [0, 1], [1, 0]])  # I = 3 items, L' = 2
        >>> b = to_semantic_batch(collate_samples([Sample(7, np.array([2, 0]), np.array([1, -1]),
        ...                                               np.zeros((2, 1), np.float32))]), codes)
        >>> b.features["history_code_0"].values().tolist(), b.features["history_code_1"].values().tolist()
        ([1, 0], [0, 0])
        >>> b.target_codes.tolist()
        [[[0, 1], [-1, -1]]]
    """

    users: torch.Tensor
    features: KeyedJaggedTensor
    item_features: KeyedJaggedTensor
    target: torch.Tensor
    target_mask: torch.Tensor
    target_codes: torch.Tensor
    labels: torch.Tensor
    target_siblings: torch.Tensor
    sibling_log_ratio: torch.Tensor

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.users.shape[0])

    @property
    def num_levels(self) -> int:
        """L', code levels per item."""
        return int(self.target_codes.shape[2])


def _check_codes(codes: torch.Tensor) -> None:
    """Raise ValueError unless ``codes`` is an [I, L'] int64 tensor."""
    if codes.dim() != 2 or codes.dtype != torch.int64:
        raise ValueError(f"codes must be an [I, L'] int64 tensor, got shape {tuple(codes.shape)} and {codes.dtype}")


def _check_ids(name: str, ids: torch.Tensor, num_items: int) -> None:
    """Raise ValueError when an item id falls outside the codebook's [0, I)."""
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_items):
        raise ValueError(
            f"{name} holds item ids in [{int(ids.min())}, {int(ids.max())}] but the codebook covers items "
            f"[0, {num_items}); tokenize the same item table the samples were built from"
        )


def sample_siblings(
    siblings: SiblingGroups, target: torch.Tensor, target_mask: torch.Tensor, count: int, generator: torch.Generator
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each target item's own last-level code and ``count`` codes of its cluster drawn uniformly without replacement,
    one draw per cluster shared by the batch's targets in it (the rows a step reads stay about clusters x
    ``count``): a sampled softmax within the cluster.

    A sibling j != target is drawn with probability count / F_c (F_c the cluster's size), so adding
    log(F_c / count) to its logit makes the sampled normaliser an unbiased estimate of the full one (the logQ
    correction of sampled softmax); a cluster of at most ``count`` items is taken whole, uncorrected.

    Args:
        siblings (SiblingGroups): ``sibling_groups(codes)``.
        target (torch.Tensor): [B, M] int64 target item ids, -1 at padding.
        target_mask (torch.Tensor): [B, M] bool, True at real items.
        count (int): S >= 1, codes drawn per cluster.
        generator (torch.Generator): the draw's random stream (on the CPU).

    Returns:
        (target_siblings [B, M, S + 1] int64: the target's code, then the drawn codes other than it, -1 padded
        and all -1 at padding items; sibling_log_ratio [B, M] float32: log(F_c / S), 0 where F_c <= S).

    Example:
        >>> g = sibling_groups(torch.tensor([[0, 0], [0, 1], [0, 2], [0, 3], [1, 4]]))
        >>> rows, ratio = sample_siblings(g, torch.tensor([[1, 4]]), torch.tensor([[True, True]]), 2,
        ...                               torch.Generator().manual_seed(0))
        >>> rows[0, 0, 0].item(), (rows[0, 0, 1:] != 1).all().item(), rows[0, 1].tolist()
        (1, True, [4, -1, -1])
        >>> [round(x, 3) for x in ratio[0].tolist()]
        [0.693, 0.0]
    """
    width = min(count, siblings.members.shape[1])
    if not target_mask.any():  # nothing to draw for
        return target.new_full(target.shape + (width + 1,), PAD_CODE), torch.zeros(target.shape, device=target.device)
    groups = siblings.group[target.clamp(min=0)]  # (B, M)
    own = siblings.members[groups, siblings.position[target.clamp(min=0)]]  # (B, M)
    present = torch.unique(groups[target_mask])  # (G,) the batch's clusters
    members = siblings.members[present]  # (G, F)
    keys = torch.rand(members.shape, generator=generator).to(members.device).masked_fill(members < 0, 2.0)
    drawn = members.gather(1, keys.topk(width, dim=1, largest=False).indices)  # (G, S): real members first
    slot = torch.searchsorted(present, groups).clamp(max=len(present) - 1)  # padding targets: any slot, masked
    per_target = drawn[slot]  # (B, M, S)
    per_target = per_target.masked_fill(per_target == own.unsqueeze(-1), PAD_CODE)
    rows = torch.cat([own.unsqueeze(-1), per_target], dim=-1).masked_fill(~target_mask.unsqueeze(-1), PAD_CODE)
    ratio = ((members >= 0).sum(dim=1).float() / count).log().clamp(min=0.0)[slot]
    return rows, ratio.masked_fill(~target_mask, 0.0)


def to_semantic_batch(
    batch: OneRecBatch,
    codes: torch.Tensor,
    *,
    max_history: Optional[int] = None,
    siblings: Optional[SiblingGroups] = None,
    sampled_siblings: int = 0,
    generator: Optional[torch.Generator] = None,
) -> SemanticIdBatch:
    """Replace every item of ``batch`` by its code tuple (vectorised; meant for the DataLoader's collate step).

    Args:
        batch (OneRecBatch): B samples; history lengths may be 0, target padding must trail the real items.
        codes (torch.Tensor): [I, L'] int64 code tuple of every item (``Codebook.codes``).
        max_history (int | None): n of the model that will read the batch; a longer history is an error
            (None: no check).
        siblings (SiblingGroups | None): ``sibling_groups(codes)``, for a model that scores its item level per
            prefix: adds ``target_siblings`` and its KJT key. None: neither.
        sampled_siblings (int): with ``siblings``, score each target against ``sample_siblings`` of this many
            codes of its cluster (training); 0: every sibling.
        generator (torch.Generator | None): the stream of that draw (None: the global one).

    Returns:
        SemanticIdBatch: on ``batch``'s device, sharing its id tensors.
    """
    _check_codes(codes)
    num_items, num_levels = codes.shape
    codes = codes.to(batch.target.device)
    history = batch.features[HISTORY_KEY]
    if max_history is not None and history.lengths().numel() and int(history.lengths().max()) > max_history:
        raise ValueError(
            f"a history has {int(history.lengths().max())} items, more than max_history={max_history}; "
            "cut histories to the model's max_history when building samples"
        )
    history_items = history.values()
    _check_ids("batch.features['history_item']", history_items, num_items)
    target_items = batch.target[batch.target_mask]  # real items only, row by row
    _check_ids("batch.target", target_items, num_items)
    if not torch.equal(batch.target_mask, batch.target_mask.cummin(dim=1).values):
        raise ValueError("batch.target_mask has padding before a real item; real target items must come first")
    target_lengths = batch.target_mask.sum(dim=1)
    users = batch.features[USER_KEY]
    values = [
        codes[history_items].t().reshape(-1),  # [L' * sum H], level-major: key l holds every item's level-l code
        codes[target_items].t().reshape(-1),  # [L' * sum M_b]
        users.values(),
    ]
    lengths = [history.lengths()] * num_levels + [target_lengths] * num_levels + [users.lengths()]
    B, M = batch.target.shape
    target_siblings = torch.full((B, M, 0), PAD_CODE, dtype=torch.int64, device=batch.target.device)
    log_ratio = torch.zeros((B, M), dtype=torch.float32, device=batch.target.device)
    if siblings is not None:
        siblings = SiblingGroups(*(part.to(batch.target.device) for part in siblings))
        if sampled_siblings > 0:
            target_siblings, log_ratio = sample_siblings(
                siblings,
                batch.target,
                batch.target_mask,
                sampled_siblings,
                generator if generator is not None else torch.default_generator,
            )
        else:
            target_siblings = siblings.members[siblings.group[batch.target.clamp(min=0)]]  # [B, M, F]
            target_siblings = target_siblings.masked_fill(~batch.target_mask.unsqueeze(-1), PAD_CODE)
        distinct = batch_siblings(target_siblings)  # each row once: clusters repeat across a batch's targets
        values.append(distinct)
        lengths.append(torch.cat([distinct.new_full((1,), len(distinct)), distinct.new_zeros(B - 1)]))
    target_codes = codes[batch.target.clamp(min=0)]  # [B, M, L']
    target_codes = target_codes.masked_fill(~batch.target_mask.unsqueeze(-1), PAD_CODE)
    return SemanticIdBatch(
        users=batch.users,
        features=KeyedJaggedTensor.from_lengths_sync(
            keys=semantic_feature_keys(num_levels, siblings=siblings is not None),
            values=torch.cat(values),
            lengths=torch.cat(lengths),
        ),
        item_features=batch.features,
        target=batch.target,
        target_mask=batch.target_mask,
        target_codes=target_codes,
        labels=batch.labels,
        target_siblings=target_siblings,
        sibling_log_ratio=log_ratio,
    )


class SemanticIdTransform:
    """A picklable ``OneRecBatch -> SemanticIdBatch`` step for a DataLoader's ``collate_fn`` (worker-safe).

    Args:
        codes (torch.Tensor): [I, L'] int64 code tuple of every item.
        max_history (int | None): n of the model; longer histories are an error (None: no check).
        siblings (bool): add each target item's siblings (``to_semantic_batch``), for a model whose item level
            is scored per prefix (``model.item_head=prefix``).
        sampled_siblings (int): with ``siblings``, this many drawn per cluster instead (``sample_siblings``);
            0: every sibling.
        seed (int): with ``sampled_siblings``, the draw of a batch is seeded by this and the batch's users and
            targets, so that it does not depend on the worker or process that builds the batch, and a resumed
            run draws what the uninterrupted one did.

    Example:
        >>> from torchrec_onerec.data.batch import collate_samples
        >>> from torchrec_onerec.data.samples import Sample
        >>> import numpy as np
        >>> step = SemanticIdTransform(torch.tensor([[0, 1], [1, 1]]))
        >>> step(collate_samples([Sample(0, np.array([1]), np.array([0]), np.zeros((1, 0), np.float32))])).target_codes
        tensor([[[0, 1]]])
    """

    def __init__(
        self,
        codes: torch.Tensor,
        *,
        max_history: Optional[int] = None,
        siblings: bool = False,
        sampled_siblings: int = 0,
        seed: int = 0,
    ) -> None:
        _check_codes(codes)
        if sampled_siblings < 0:
            raise ValueError(f"sampled_siblings={sampled_siblings} must be >= 0 (0: every sibling)")
        self.codes = codes
        self.max_history = max_history
        self.siblings = sibling_groups(codes) if siblings else None
        self.sampled_siblings, self.seed = sampled_siblings, seed

    def __call__(self, batch: OneRecBatch) -> SemanticIdBatch:
        generator = None
        if self.sampled_siblings and self.siblings is not None:
            # hashing a tuple of ints is the same in every process (unlike str hashing)
            content = hash((self.seed, tuple(batch.users.tolist()), tuple(batch.target[:, 0].tolist())))
            generator = torch.Generator().manual_seed(content & ((1 << 63) - 1))
        return to_semantic_batch(
            batch,
            self.codes,
            max_history=self.max_history,
            siblings=self.siblings,
            sampled_siblings=self.sampled_siblings,
            generator=generator,
        )
