"""Reward functions alignment can maximise besides the session reward model: the cascade's ranker, and mixes.

The OneRec technical report (arXiv 2506.13695) scores generated sessions with the production ranking model's
preference score, the model a team running a cascade already has. ``ranker_reward_fn`` does that with this
project's cascade ranker (``models.ranker``): a session's reward is the ranker's combined score
(``cascade.ranker.score_weights``) summed over its real items, divided by M, so an empty slot counts 0. The
ranker scores items one by one: it knows nothing of order or diversity within a session, which the session
reward model learns from logged sessions. With a ``diversity_weight`` w (``align.ranker_diversity``) each slot
counts as the cascade's own MMR re-rank values it (``models.cascade.mmr_rerank``, the ``cascade_rerank`` arm):
(1 - w) * its score - w * its redundancy, the largest cosine (floored at 0) of its two-tower item vector to the
items before it in the session. ``mixed_reward_fn`` combines both: each reward is standardised over a
user's candidates (zero mean, unit spread), then they are summed with weights. Pair selection compares
candidates of one user only, so the per-user scale of each reward is all that matters.

Every function here returns an ``alignment.candidates.RewardFn``: (U samples, sessions [U, N, M]) -> [U, N].

Shape legend: U users, N candidates, M session items.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from torchrec_onerec.alignment.candidates import RewardFn
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.models.cascade import CascadeRecommender


def session_redundancy(sessions: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Each slot's largest cosine (floored at 0) to the real items before it in its session: 0 for the first
    item, for an item unlike all before it and at padding.

    Args:
        sessions (np.ndarray): [U, N, M] item ids, -1 at empty slots.
        vectors (np.ndarray): [I, D] L2-normalised item vectors (cosine = inner product).

    Returns:
        np.ndarray: [U, N, M] float64 in [0, 1].

    Example:
        >>> v = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
        >>> session_redundancy(np.array([[[0, 1, 2], [2, -1, 0]]]), v).round(2).tolist()
        [[[0.0, 0.6, 0.8], [0.0, 0.0, 0.0]]]
    """
    real = sessions != PAD_ITEM
    x = vectors[np.where(real, sessions, 0)] * real[..., None]  # [U, N, M, D], zero rows at padding
    cosine = np.einsum("unid,unjd->unij", x, x)  # [U, N, M, M]
    earlier = np.tril(np.ones(sessions.shape[-1], dtype=bool), k=-1)  # [i, j]: j before i
    return np.where(earlier, np.maximum(cosine, 0.0), 0.0).max(axis=-1) * real


def ranker_reward_fn(recommender: CascadeRecommender, diversity_weight: float = 0.0) -> RewardFn:
    """The cascade ranker's combined score of each session's items, summed and divided by M; with
    ``diversity_weight`` w > 0, each item's MMR value (1 - w) * score - w * ``session_redundancy`` instead.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.testing import tiny_cascade
        >>> rec = tiny_cascade(num_users=2, num_items=6)
        >>> users = SampleSet.from_samples([Sample(1, np.array([0]), np.array([2]), np.zeros((1, 0), np.float32))], [])
        >>> r = ranker_reward_fn(rec)(users, np.array([[[3, 4], [3, -1], [-1, -1]]]))
        >>> r.shape, bool(r[0, 0] > r[0, 1] > r[0, 2] == 0.0)
        ((1, 3), True)
    """
    if not 0.0 <= diversity_weight <= 1.0:
        raise ValueError(f"diversity_weight={diversity_weight} must lie in [0, 1] (align.ranker_diversity)")

    def reward(samples: SampleSet, sessions: np.ndarray) -> np.ndarray:
        U, N, M = sessions.shape
        flat = sessions.reshape(U, N * M)
        _, combined = recommender.rank(samples, flat)  # [U, N M], -inf at padding
        per_item = np.where(flat != PAD_ITEM, combined, 0.0).reshape(U, N, M)
        if diversity_weight > 0:
            redundancy = session_redundancy(sessions, recommender.item_vectors())
            per_item = (1.0 - diversity_weight) * per_item - diversity_weight * redundancy
        return (per_item.sum(axis=2) / M).astype(np.float64)

    return reward


def standardise_per_user(rewards: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Each row of [U, N] shifted to mean 0 and scaled to unit standard deviation over its real entries
    (``real`` [U, N] bool); a row whose real entries are all equal, and every filler entry, becomes 0.

    Example:
        >>> standardise_per_user(np.array([[1.0, 3.0, 9.0], [2.0, 2.0, 0.0]]),
        ...                      np.array([[True, True, False], [True, True, True]])).round(3).tolist()
        [[-1.0, 1.0, 0.0], [0.707, 0.707, -1.414]]
    """
    rewards = np.asarray(rewards, np.float64)
    count = np.maximum(real.sum(axis=1, keepdims=True), 1)
    mean = np.where(real, rewards, 0.0).sum(axis=1, keepdims=True) / count
    spread = np.sqrt(np.where(real, (rewards - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / count)
    scaled = (rewards - mean) / np.where(spread > 0, spread, 1.0)
    return np.where(real & (spread > 0), scaled, 0.0)


def mixed_reward_fn(fns: Sequence[RewardFn], weights: Sequence[float]) -> RewardFn:
    """sum_k w_k standardise_per_user(fn_k): rewards on different scales, each standardised over the user's real
    candidates (filler sessions, all -1, stay out of the statistics and get 0).

    Example:
        >>> a = lambda s, x: x[:, :, 0].astype(float)          # prefers a high first item
        >>> b = lambda s, x: -10.0 * x[:, :, 1].astype(float)  # prefers a low second item, on a larger scale
        >>> sessions = np.array([[[1, 5], [3, 1], [2, 2]]])
        >>> mixed_reward_fn([a, b], [0.5, 0.5])(None, sessions).round(3).tolist()
        [[-1.299, 1.103, 0.196]]
    """
    if len(fns) != len(weights) or not fns:
        raise ValueError(
            f"mixed_reward_fn needs one weight per reward function, got {len(fns)} functions and {len(weights)} weights"
        )

    def reward(samples: SampleSet, sessions: np.ndarray) -> np.ndarray:
        real = (sessions != PAD_ITEM).any(axis=2)  # [U, N]
        total = np.zeros(sessions.shape[:2])
        for fn, weight in zip(fns, weights):
            total += weight * standardise_per_user(np.asarray(fn(samples, sessions), np.float64), real)
        return total

    return reward
