"""Serve the best of the model's most probable sessions by a reward (best-of-n re-selection of an evaluation).

Beam search returns R sessions per user, most probable first, and a live system serves the first. Alignment
(IPA) trains the model so that the session a reward prefers becomes the most probable one; re-selection reaches
for the same thing at serving time: of the n most probable sessions, the one ``reward_fn`` scores highest is
served, the others follow in reward order, and the sessions after the n-th keep their places. The reward is
the one alignment uses (``PipelineContext.alignment_reward``: the session reward model, the cascade's ranker or
their mix), never the synthetic world's truth. n = 1 serves what the plain search serves.

After re-selection the session scores are ranks (0 for the served session, -1, -2, ... after it; -inf for
filler sessions, which never move ahead of a real one), and every protocol metric is computed again from the
new order.

Shape legend: U evaluated users, R returned sessions, n re-selected sessions, M session items.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from torchrec_onerec.alignment.candidates import RewardFn
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.protocols import ID_KEYS, EvalResult, score_sessions


def reward_order(rewards: np.ndarray, real: np.ndarray) -> np.ndarray:
    """[U, n] each user's sessions by reward, best first; ties and filler sessions (``real`` False) keep their
    order, fillers after every real session.

    Example:
        >>> reward_order(np.array([[0.1, 0.9, 0.5, 0.0]]), np.array([[True, True, True, False]])).tolist()
        [[1, 2, 0, 3]]
    """
    key = np.where(real, -np.asarray(rewards, np.float64), np.inf)
    return np.argsort(key, axis=1, kind="stable")


def select_by_reward(
    result: EvalResult,
    samples: SampleSet,
    reward_fn: RewardFn,
    top_n: int,
    *,
    protocol: str,
    ks: Sequence[int],
    num_items: int,
) -> EvalResult:
    """``result`` with the best of each user's ``top_n`` most probable sessions by ``reward_fn`` served first.

    Args:
        result (EvalResult): an evaluation of U users (``evaluate_generative``); its sessions [U, R, M] best first.
        samples (SampleSet): the samples it evaluated (``result.per_user["sample"]`` indexes them).
        reward_fn (RewardFn): (U samples, sessions [U, n, M]) -> rewards [U, n], higher is better.
        top_n (int): n, in [1, R]: how many of the most probable sessions compete.
        protocol (str): ``"A"`` or ``"B"``, as ``result`` was scored.
        ks (Sequence[int]): the cut-offs, as ``result`` was scored.
        num_items (int): the catalogue size (coverage).

    Returns:
        EvalResult: a new result (``result`` is not changed): sessions re-ordered, scores the new ranks, metrics
        and per-user values recomputed, ``info["select_top_n"]`` = n.

    Raises:
        ValueError: ``top_n`` outside [1, R].

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> samples = SampleSet.from_samples([Sample(0, np.array([1]), np.array([7, -1]),
        ...                                          np.zeros((2, 0), np.float32))], [])
        >>> sessions = np.array([[[3, 4], [7, 5], [6, 8]]])
        >>> plain = EvalResult({}, {"user": np.array([0]), "sample": np.array([0]), "legality": np.ones(1)},
        ...                    sessions, np.array([[-1.0, -2.0, -3.0]], np.float32))
        >>> prefers_7 = lambda s, x: (x == 7).any(axis=2).astype(float)
        >>> chosen = select_by_reward(plain, samples, prefers_7, 2, protocol="B", ks=[2], num_items=9)
        >>> chosen.sessions[0, :, 0].tolist(), chosen.scores.tolist(), chosen.metrics["recall@m"]
        ([7, 3, 6], [[0.0, -1.0, -2.0]], 1.0)
    """
    U, R, M = result.sessions.shape
    if not 1 <= top_n <= R:
        raise ValueError(
            f"top_n={top_n} must lie in [1, {R}] (the sessions returned per user, eval.num_return); "
            "lower the eval.select_candidates entry or raise eval.num_return"
        )
    real = np.isfinite(result.scores)  # [U, R]
    users = samples.subset(np.asarray(result.per_user["sample"]))
    # filler sessions are all -1 already (EvalResult), which every reward function scores as empty
    rewards = np.asarray(reward_fn(users, result.sessions[:, :top_n]), np.float64)
    if rewards.shape != (U, top_n):
        raise ValueError(f"reward_fn returned shape {rewards.shape}, expected {(U, top_n)}")
    order = np.concatenate(
        [reward_order(rewards, real[:, :top_n]), np.broadcast_to(np.arange(top_n, R), (U, R - top_n))], axis=1
    )
    sessions = np.take_along_axis(result.sessions, order[:, :, None], axis=1)
    scores = np.where(np.take_along_axis(real, order, axis=1), (-np.arange(R)).astype(np.float32), -np.inf)
    metrics, per_user = score_sessions(
        protocol,
        sessions,
        scores,
        users.target,
        ks=ks,
        num_items=num_items,
        legality=result.per_user["legality"],
    )
    per_user.update({key: np.asarray(result.per_user[key]).copy() for key in ID_KEYS})
    info = dict(result.info, select_top_n=top_n)
    return EvalResult(metrics, per_user, sessions, scores.astype(np.float32), info)
