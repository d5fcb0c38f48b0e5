"""Scoring sessions with a trained session reward model (docs/METHOD.md section 3): per-signal probabilities and
the scalar reward of N candidate sessions per user, in batches, without gradients. What alignment ranks its
candidates by (``alignment.pairs``) and what the evaluate stage reports as the reward model's estimates.

Shape legend: U users, N sessions per user, M session items, S signals.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_batch import to_reward_batch


def _check_sessions(model: SessionRewardModel, samples: SampleSet, sessions: np.ndarray) -> np.ndarray:
    """``sessions`` as [U, N, M] int64 with U = len(samples) and ids in [-1, num_items), else ValueError."""
    sessions = np.asarray(sessions)
    if sessions.ndim != 3 or sessions.shape[0] != len(samples) or (sessions.size and sessions.dtype.kind not in "iu"):
        raise ValueError(
            f"sessions must be an integer array [U={len(samples)}, N, M] (one row per sample), got "
            f"shape {sessions.shape} and dtype {sessions.dtype}"
        )
    if sessions.size and (int(sessions.min()) < PAD_ITEM or int(sessions.max()) >= model.num_items):
        raise ValueError(
            f"sessions hold ids in [{int(sessions.min())}, {int(sessions.max())}]; items are "
            f"[0, {model.num_items}) for this reward model and -1 is the only padding value"
        )
    largest_user = samples.largest_ids()[0]
    if largest_user >= model.num_users:
        raise ValueError(
            f"samples hold user id {largest_user} but the reward model has "
            f"{model.num_users} users; score users of the data set it was trained on"
        )
    return sessions.astype(np.int64, copy=False)


def score_sessions(
    model: SessionRewardModel, samples: SampleSet, sessions: np.ndarray, *, batch_size: int, device: torch.device
) -> np.ndarray:
    """Per-signal probabilities of N sessions per user, from a plain (unsharded) model, without gradients.

    Sample u's user and history are paired with each of its N sessions. The model runs in eval mode (its mode
    is restored afterwards).

    Args:
        model (SessionRewardModel): a plain model (``load_reward_model``), on ``device``.
        samples (SampleSet): U samples (their user and history; targets and labels are not read).
        sessions (np.ndarray): [U, N, M] int item ids, -1 at empty slots (anywhere in a session).
        batch_size (int): sessions per forward pass (at least one user's N sessions).
        device (torch.device): where the model is.

    Returns:
        np.ndarray: [U, N, S] float32 probabilities, S = ``model.signals``.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.reward_config import RewardModelConfig
        >>> model = SessionRewardModel(RewardModelConfig(embedding_dim=8, semantic_ids=False), 2, 5, ["vtr", "ltr"])
        >>> s = SampleSet.from_samples([Sample(1, np.array([4]), np.array([0]), np.zeros((1, 2), np.float32))],
        ...                            ["vtr", "ltr"])
        >>> score_sessions(model, s, np.array([[[0, 1], [2, -1], [3, 4]]]), batch_size=8,
        ...                device=torch.device("cpu")).shape
        (1, 3, 2)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    sessions = _check_sessions(model, samples, sessions)
    U, N, M = sessions.shape
    out = np.zeros((U, N, len(model.signals)), np.float32)
    users_per_batch = max(1, batch_size // max(N, 1))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, U if N else 0, users_per_batch):
                rows = np.arange(start, min(U, start + users_per_batch))
                batch = collate_samples(samples, np.repeat(rows, N))  # each user once per session
                target = torch.from_numpy(sessions[rows].reshape(len(rows) * N, M))
                batch = dataclasses.replace(
                    batch,
                    target=target,
                    target_mask=target != PAD_ITEM,
                    labels=torch.zeros(len(rows) * N, M, len(model.signals)),
                )
                reward_batch = to_reward_batch(batch, session_label="mean", item_tokens=model.item_tokens)
                probabilities = model(reward_batch.to(device)).probabilities
                out[rows] = probabilities.view(len(rows), N, -1).float().cpu().numpy()
    finally:
        model.train(was_training)
    return out


def session_rewards(
    model: SessionRewardModel, samples: SampleSet, sessions: np.ndarray, *, batch_size: int, device: torch.device
) -> np.ndarray:
    """The scalar reward of N sessions per user: ``model.reward`` of ``score_sessions``.

    Args:
        model (SessionRewardModel): a plain model on ``device``.
        samples (SampleSet): U samples (user and history).
        sessions (np.ndarray): [U, N, M] int item ids, -1 at empty slots.
        batch_size (int): sessions per forward pass.
        device (torch.device): where the model is.

    Returns:
        np.ndarray: [U, N] float32.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.reward_config import RewardModelConfig
        >>> model = SessionRewardModel(RewardModelConfig(embedding_dim=8, semantic_ids=False), 2, 5, ["vtr", "ltr"])
        >>> s = SampleSet.from_samples([Sample(1, np.array([4]), np.array([0]), np.zeros((1, 2), np.float32))],
        ...                            ["vtr", "ltr"])
        >>> session_rewards(model, s, np.array([[[0, 1], [2, -1]]]), batch_size=8, device=torch.device("cpu")).shape
        (1, 2)
    """
    probabilities = score_sessions(model, samples, sessions, batch_size=batch_size, device=device)
    return model.reward(torch.from_numpy(probabilities)).numpy()
