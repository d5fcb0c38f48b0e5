"""The session reward model's input batch: B sessions with their users, as one KeyedJaggedTensor plus masks.

``to_reward_batch`` (and ``RewardTransform``, its picklable loader step) adds a ``OneRecBatch``'s target sessions to
its features as ``session_item``, and with semantic IDs every history and session item's code tokens
(``code_tokens``: one vocabulary over all levels) as ``history_code`` and ``session_code``, so the model's whole
input goes through one ``EmbeddingCollection`` call (``models.reward``).

Shape legend: B batch, M session items, S signals, I items, L' code levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.batch import HISTORY_KEY, USER_KEY, OneRecBatch, TensorFieldsBatch
from torchrec_onerec.data.samples import PAD_ITEM

SESSION_KEY = "session_item"
HISTORY_CODE_KEY = "history_code"
SESSION_CODE_KEY = "session_code"
REWARD_FEATURE_KEYS = (HISTORY_KEY, USER_KEY, SESSION_KEY)
CODE_FEATURE_KEYS = (HISTORY_CODE_KEY, SESSION_CODE_KEY)
ITEM_TABLE = "reward_item"
CODE_TABLE = "reward_code"
USER_TABLE = "reward_user"


def code_tokens(item_codes: torch.Tensor) -> torch.Tensor:
    """Every item's codes as tokens of one vocabulary over all levels: level l's code c becomes c plus the
    vocabulary sizes (largest code + 1) of the levels before l, so one table holds every level's rows.

    Args:
        item_codes (torch.Tensor): [I, L'] int64 codes of each item (``Codebook.codes``), all >= 0.

    Returns:
        torch.Tensor: [I, L'] int64 tokens in [0, vocabulary), on the CPU.

    Example:
        >>> code_tokens(torch.tensor([[0, 1], [2, 0]])).tolist()
        [[0, 4], [2, 3]]
    """
    if item_codes.dim() != 2 or item_codes.shape[1] < 1 or (item_codes.numel() and int(item_codes.min()) < 0):
        raise ValueError(
            f"item_codes must be a non-negative [I, L'] integer tensor (Codebook.codes), got shape "
            f"{tuple(item_codes.shape)}"
        )
    codes = item_codes.detach().to("cpu", torch.int64)
    sizes = codes.max(dim=0).values + 1
    return codes + (torch.cumsum(sizes, 0) - sizes)


@dataclass
class RewardBatch(TensorFieldsBatch):
    """B sessions with their users, as the reward model reads them; a TorchRec ``Pipelineable``.

    Args:
        features (KeyedJaggedTensor): keys ``REWARD_FEATURE_KEYS``: ``history_item`` (each user's history),
            ``user_id`` (one per session) and ``session_item`` (the session's real items, row by row).
        session_mask (torch.Tensor): [B, M] bool, True at the slots holding a real item (any slots: the
            ``session_item`` values fill the True slots in row-major order).
        labels (torch.Tensor): [B, S] float32 session labels (the training targets).
        item_labels (torch.Tensor): [B, M, S] float32 labels of each slot (0 at padding).

    Example:
        >>> import numpy as np
        >>> from torchrec_onerec.data.batch import collate_samples
        >>> from torchrec_onerec.data.samples import Sample, SampleSet
        >>> s = SampleSet.from_samples([Sample(0, np.array([3]), np.array([1, 2, -1]),
        ...                                    np.array([[1.0], [0.0], [0.0]], np.float32))], ["vtr"])
        >>> b = to_reward_batch(collate_samples(s), session_label="mean")
        >>> b.features[SESSION_KEY].values().tolist(), b.session_mask.tolist(), b.labels.tolist()
        ([1, 2], [[True, True, False]], [[0.5]])
    """

    features: KeyedJaggedTensor
    session_mask: torch.Tensor
    labels: torch.Tensor
    item_labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.session_mask.shape[0])


def slot_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the True slots of ``mask`` [B, M] of ``values`` [B, M, X] -> [B, X] (0 where no slot is True)."""
    real = mask.unsqueeze(-1).to(values.dtype)  # (B, M, 1)
    return (values * real).sum(dim=1) / real.sum(dim=1).clamp(min=1.0)


def session_labels(item_labels: torch.Tensor, mask: torch.Tensor, rule: str) -> torch.Tensor:
    """A session's label per signal from its items' labels.

    Args:
        item_labels (torch.Tensor): [B, M, S] 0/1 labels (0 at padding).
        mask (torch.Tensor): [B, M] bool, True at real items.
        rule (str): ``mean`` (the signal's rate over the real items; 0 for an empty session) or ``any``.

    Returns:
        torch.Tensor: [B, S] float32.

    Example:
        >>> labels = torch.tensor([[[1.0], [0.0], [0.0]]])
        >>> mask = torch.tensor([[True, True, False]])
        >>> session_labels(labels, mask, "mean").tolist(), session_labels(labels, mask, "any").tolist()
        ([[0.5]], [[1.0]])
    """
    if rule == "mean":
        return slot_mean(item_labels, mask)
    if rule == "any":
        return ((item_labels * mask.unsqueeze(-1).to(item_labels.dtype)) > 0).any(dim=1).to(torch.float32)
    raise ValueError(f"rule={rule!r} must be 'mean' or 'any' (reward.session_label)")


def to_reward_batch(
    batch: OneRecBatch, *, session_label: str, item_tokens: Optional[torch.Tensor] = None
) -> RewardBatch:
    """Add a ``OneRecBatch``'s target sessions to its feature KJT as ``session_item`` (vectorised).

    Args:
        batch (OneRecBatch): B samples whose ``target`` [B, M] are the sessions (-1: empty slot) and ``labels``
            [B, M, S] their items' feedback.
        session_label (str): ``mean`` or ``any`` (``session_labels``).
        item_tokens (torch.Tensor | None): [I, L'] code tokens of every item (``code_tokens``, on ``batch``'s
            device): adds ``history_code`` and ``session_code``, the L' tokens of each history and session item
            in item order; None for a model without ``reward.semantic_ids``.

    Returns:
        RewardBatch: on ``batch``'s device.

    Example:
        >>> import numpy as np
        >>> from torchrec_onerec.data.batch import collate_samples
        >>> from torchrec_onerec.data.samples import Sample, SampleSet
        >>> s = SampleSet.from_samples([Sample(0, np.array([2]), np.array([1, -1]), np.zeros((2, 1), np.float32))],
        ...                            ["vtr"])
        >>> tokens = code_tokens(torch.tensor([[0, 0], [1, 0], [1, 1]]))
        >>> b = to_reward_batch(collate_samples(s), session_label="mean", item_tokens=tokens)
        >>> b.features["history_code"].values().tolist(), b.features["session_code"].values().tolist()
        ([1, 3], [1, 2])
    """
    history, users = batch.features[HISTORY_KEY], batch.features[USER_KEY]
    mask = batch.target != PAD_ITEM
    keys, values = list(REWARD_FEATURE_KEYS), [history.values(), users.values(), batch.target[mask]]
    lengths = [history.lengths(), users.lengths(), mask.sum(dim=1)]
    if item_tokens is not None:
        levels = item_tokens.shape[1]
        keys += list(CODE_FEATURE_KEYS)
        values += [item_tokens[history.values()].reshape(-1), item_tokens[batch.target[mask]].reshape(-1)]
        lengths += [history.lengths() * levels, mask.sum(dim=1) * levels]
    features = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))
    return RewardBatch(
        features=features,
        session_mask=mask,
        labels=session_labels(batch.labels, mask, session_label),
        item_labels=batch.labels,
    )


class RewardTransform:
    """A picklable ``OneRecBatch -> RewardBatch`` step for ``make_dataloader(..., transform=)`` (worker-safe).

    Args:
        session_label (str): ``mean`` or ``any`` (``reward.session_label``).
        item_tokens (torch.Tensor | None): [I, L'] code tokens (``SessionRewardModel.item_tokens``) for a model
            with ``reward.semantic_ids``; None otherwise.

    Example:
        >>> import numpy as np
        >>> from torchrec_onerec.data.batch import collate_samples
        >>> from torchrec_onerec.data.samples import Sample, SampleSet
        >>> s = SampleSet.from_samples([Sample(0, np.array([3]), np.array([1, 2]), np.ones((2, 1), np.float32))],
        ...                            ["vtr"])
        >>> RewardTransform("any")(collate_samples(s)).features.keys()
        ['history_item', 'user_id', 'session_item']
    """

    def __init__(self, session_label: str, item_tokens: Optional[torch.Tensor] = None) -> None:
        if session_label not in ("mean", "any"):
            raise ValueError(f"session_label={session_label!r} must be 'mean' or 'any' (reward.session_label)")
        self.session_label, self.item_tokens = session_label, item_tokens

    def __call__(self, batch: OneRecBatch) -> RewardBatch:
        return to_reward_batch(batch, session_label=self.session_label, item_tokens=self.item_tokens)
