"""docs/EVAL.md protocol C: the simulated A/B test, served by the synthetic world's own response model.

Each arm serves every evaluated user one session: its best-scored returned session (the one a live system
would show). The world knows every user's true response to every item in every slot, so the session's true
expected reward (``SyntheticWorld.session_reward``: click + long view + 2 x like by default, with the world's
position, diversity and repeat effects) is that user's outcome. Arms are compared by the mean outcome over
the same users, with paired bootstrap intervals (``eval.bootstrap``).

Shape legend: U users, R sessions, M session items.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.synthetic import SyntheticWorld
from torchrec_onerec.eval.protocols import EvalResult

TRUE_REWARD = "true_reward"


def served_sessions(result: EvalResult) -> np.ndarray:
    """[U, M] the best-scored returned session of each user (filler sessions are all -1).

    Example:
        >>> r = EvalResult({}, {}, np.array([[[1, 2], [3, 4]]]), np.array([[-2.0, -1.0]]))
        >>> served_sessions(r).tolist()
        [[3, 4]]
    """
    best = np.argmax(np.where(np.isfinite(result.scores), result.scores, -np.inf), axis=1)
    return result.sessions[np.arange(len(best)), best]


def world_item_ids(raw_item_ids: np.ndarray, sessions: np.ndarray) -> np.ndarray:
    """Sessions of contiguous item ids (-1 at empty slots) as the world's own item ids, -1 kept.

    Example:
        >>> world_item_ids(np.array([7, 3, 9]), np.array([[2, 0, -1]])).tolist()
        [[9, 7, -1]]
    """
    raw = np.asarray(raw_item_ids).astype(np.int64)
    return np.where(sessions >= 0, raw[np.clip(sessions, 0, None)], -1)


def true_session_rewards(
    world: SyntheticWorld, data: InteractionData, result: EvalResult, weights: Optional[Dict[str, float]] = None
) -> np.ndarray:
    """[U] the world's expected reward of the session each user is served.

    Args:
        world (SyntheticWorld): the world that logged ``data``.
        data (InteractionData): the loaded synthetic data (maps contiguous user/item ids to the world's).
        result (EvalResult): an arm's evaluation (``per_user["user"]`` holds contiguous user ids).
        weights (Dict[str, float] | None): signal weights of the reward (None: the world's defaults).

    Returns:
        [U] float64 true expected reward, aligned with ``result.per_user``.
    """
    if data.num_items != world.num_items:
        raise ValueError(
            f"data has {data.num_items} items, the world {world.num_items}: pass the world that "
            "logged this data (datasets.synthetic.load_synthetic with the same config and seed)"
        )
    users = np.asarray(data.raw_user_ids)[result.per_user["user"]].astype(np.int64)
    return world.session_reward(users, world_item_ids(data.raw_item_ids, served_sessions(result)), weights)


def add_true_rewards(
    world: SyntheticWorld, data: InteractionData, result: EvalResult, weights: Optional[Dict[str, float]] = None
) -> EvalResult:
    """Add protocol C's per-user ``true_reward`` and its mean to ``result`` (in place) and return it."""
    values = true_session_rewards(world, data, result, weights)
    result.per_user[TRUE_REWARD] = values
    result.metrics[TRUE_REWARD] = float(values.mean())
    return result


def world_reward_fn(
    world: SyntheticWorld, data: InteractionData, weights: Optional[Dict[str, float]] = None
) -> Callable[[SampleSet, np.ndarray], np.ndarray]:
    """The world's true expected session reward as an alignment reward function (``alignment.candidates.RewardFn``):
    U samples and their sessions [U, N, M] (contiguous item ids, -1 empty) -> rewards [U, N].

    Aligning to it instead of the learned reward model (``align.reward_source=world``) separates what the
    alignment method can do from what the reward model's errors let it do.

    Example:
        >>> from torchrec_onerec.datasets.synthetic import load_synthetic
        >>> from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
        >>> from torchrec_onerec.data.samples import Sample
        >>> data, world = load_synthetic(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
        >>> s = SampleSet.from_samples([Sample(0, np.array([1]), np.array([2]), np.zeros((1, 0), np.float32))], [])
        >>> world_reward_fn(world, data)(s, np.array([[[3, 5], [-1, -1]]])).shape
        (1, 2)
    """
    raw_users = np.asarray(data.raw_user_ids).astype(np.int64)
    raw_items = np.asarray(data.raw_item_ids).astype(np.int64)

    def reward(samples: SampleSet, sessions: np.ndarray) -> np.ndarray:
        U, N, M = sessions.shape
        items = world_item_ids(raw_items, sessions).reshape(U * N, M)
        return world.session_reward(np.repeat(raw_users[samples.user], N), items, weights).reshape(U, N)

    return reward
