"""Candidate groups for group-relative policy optimisation (``align.objective=grpo``): every candidate counts.

DPO (``pairs``) keeps two of a user's N scored candidates, the best and the worst, and discards what the reward
said about the rest. GRPO (Shao et al. 2024, the on-policy RL that the OneRec technical report's ECPO builds on)
keeps them: each candidate's advantage is its reward standardised over the user's real candidates,

    A_g = (r_g - mean(r)) / std(r),

and training raises the probability of the sessions above the user's mean and lowers those below it, in
proportion (``train_step``). To bound the rows a step trains on, a group keeps G of the N candidates, the G/2
with the highest rewards and the G/2 with the lowest (``align.group_size``; ties go to the earlier candidate),
with their advantages taken over all N. The reference log-probabilities log M_t(S | H) are the candidates'
search scores, which equal ``OneRecModel.log_prob`` (``generation.beam_search``), so nothing runs twice. Users get
no group, and are counted, when fewer than G real candidates came back or every real one has the same reward.

Shape legend: U sampled users, P users with a group, N candidates, G kept per group, M session items, L' code
levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, NamedTuple, Optional

import numpy as np
import torch

from torchrec_onerec.alignment.candidates import CandidateBatch, RewardFn, reduce_candidates
from torchrec_onerec.alignment.pairs import ROLE_GROUP, ExtraRows, ScoredUsers, finite_mean
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


class GroupSelection(NamedTuple):
    """Which candidates of which users form groups.

    Args:
        users (np.ndarray): [P] int64 users (rows of the reward matrix) with a group, ascending.
        members (np.ndarray): [P, G] int64 the kept candidates, highest reward first.
        advantages (np.ndarray): [P, G] float32 their rewards standardised over the user's real candidates.
        ties (int): users whose real candidates all have the same reward (no group).
        fillers (int): users with fewer than G real candidates (no group).
    """

    users: np.ndarray
    members: np.ndarray
    advantages: np.ndarray
    ties: int
    fillers: int


def select_groups(rewards: np.ndarray, real: np.ndarray, group_size: int) -> GroupSelection:
    """The G/2 best and G/2 worst real candidates of every user, with standardised advantages (module docstring).

    Args:
        rewards (np.ndarray): [U, N] float rewards (ignored where ``real`` is False).
        real (np.ndarray): [U, N] bool, False at filler sessions.
        group_size (int): G, even, >= 2.

    Returns:
        GroupSelection: the P groups and the skipped counts.

    Example:
        >>> rewards = np.array([[1.0, 3.0, 2.0, 0.0], [2.0, 2.0, 2.0, 2.0], [5.0, 1.0, 9.0, 0.0]])
        >>> real = np.array([[True] * 4, [True] * 4, [True, True, False, False]])
        >>> s = select_groups(rewards, real, 2)
        >>> s.users.tolist(), s.members.tolist(), s.ties, s.fillers
        ([0, 2], [[1, 3], [0, 1]], 1, 0)
        >>> [[round(float(a), 3) for a in row] for row in s.advantages]  # (r - mean) / std over real candidates
        [[1.342, -1.342], [1.0, -1.0]]
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    real = np.asarray(real, dtype=bool)
    if rewards.shape != real.shape or rewards.ndim != 2:
        raise ValueError(f"rewards {rewards.shape} and real {real.shape} must both be [U, N]")
    if group_size < 2 or group_size % 2 or group_size > rewards.shape[1]:
        raise ValueError(
            f"group_size={group_size} must be even, >= 2 and <= the {rewards.shape[1]} candidates (align.group_size)"
        )
    count = real.sum(axis=1)
    filled = np.where(real, rewards, 0.0)
    mean = filled.sum(axis=1) / np.maximum(count, 1)
    std = np.sqrt(np.where(real, (rewards - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(count, 1))
    enough = count >= group_size
    differ = std > 1e-12 * np.maximum(np.abs(mean), 1.0)
    users = np.flatnonzero(enough & differ)
    # highest reward first, fillers last; a stable sort keeps the earlier candidate of a tie first
    order = np.argsort(-np.where(real, rewards, -np.inf)[users], axis=1, kind="stable")
    half = group_size // 2
    top = order[:, :half]
    bottom = np.take_along_axis(order, (count[users, None] - half + np.arange(half)).astype(np.int64), axis=1)
    members = np.concatenate([top, bottom], axis=1).astype(np.int64)
    picked = np.take_along_axis(rewards[users], members, axis=1)
    advantages = ((picked - mean[users, None]) / std[users, None]).astype(np.float32)
    return GroupSelection(
        users.astype(np.int64), members, advantages, int((enough & ~differ).sum()), int((~enough).sum())
    )


@dataclass
class CandidateGroups(ScoredUsers):
    """Kept candidates of sampled training samples with their advantages and reference log-probs.

    Args:
        sample_rows (np.ndarray): [P] int64 rows of the training SampleSet the groups belong to.
        items (np.ndarray): [P, G, M] int64 the kept sessions.
        codes (np.ndarray): [P, G, M, L'] int64 their codes.
        rewards (np.ndarray): [P, G] float64 their rewards.
        advantages (np.ndarray): [P, G] float32 their advantages.
        reference (np.ndarray): [P, G] float32 log M_t(S | H).
        candidate_reward_mean (np.ndarray): [U] float64 mean reward of each sampled user's real candidates.
        candidate_reward_max (np.ndarray): [U] float64 best reward of each sampled user's real candidates.
        ties (int): sampled users skipped because all their candidates tie.
        fillers (int): sampled users skipped for having fewer than G real candidates.
    """

    sample_rows: np.ndarray
    items: np.ndarray
    codes: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    reference: np.ndarray
    candidate_reward_mean: np.ndarray
    candidate_reward_max: np.ndarray
    ties: int = 0
    fillers: int = 0

    def extra_rows(self, index: np.ndarray) -> ExtraRows:
        """The G rows of each group in ``index`` (group by group)."""
        index = np.asarray(index, dtype=np.int64)
        G, M = self.items.shape[1], self.items.shape[2]
        return ExtraRows(
            np.repeat(self.sample_rows[index], G),
            self.items[index].reshape(-1, M),
            np.full(len(index) * G, ROLE_GROUP, dtype=np.int64),
            self.reference[index].reshape(-1).astype(np.float32),
            self.advantages[index].reshape(-1).astype(np.float32),
        )

    def summary(self) -> Dict[str, float]:
        """Counts and mean rewards for the iteration log (NaN means when there is nothing to average)."""
        half = self.items.shape[1] // 2
        return {
            **self._counts("groups"),
            "top_half_reward": finite_mean(self.rewards[:, :half].reshape(-1)),
            "bottom_half_reward": finite_mean(self.rewards[:, half:].reshape(-1)),
        }


def empty_groups(group_size: int, session_items: int, num_levels: int) -> CandidateGroups:
    """No groups (and no sampled users), with the array shapes of G, M and L'."""
    G, M, L = group_size, session_items, num_levels
    return CandidateGroups(
        np.zeros(0, np.int64),
        np.zeros((0, G, M), np.int64),
        np.zeros((0, G, M, L), np.int64),
        np.zeros((0, G)),
        np.zeros((0, G), np.float32),
        np.zeros((0, G), np.float32),
        np.zeros(0),
        np.zeros(0),
    )


def _batch_groups(cand: CandidateBatch, sample_rows: np.ndarray, group_size: int) -> CandidateGroups:
    """The groups of one candidate batch whose U users are the training rows ``sample_rows`` [U]."""
    real = cand.real
    pick = select_groups(cand.rewards, real, group_size)
    users = pick.users
    members = torch.as_tensor(pick.members, device=cand.codes.device)
    user_index = torch.as_tensor(users, device=cand.codes.device).unsqueeze(1)
    reward_mean, reward_max = cand.reward_stats()
    return CandidateGroups(
        sample_rows=sample_rows[users],
        items=np.take_along_axis(cand.items[users], pick.members[:, :, None], axis=1),
        codes=cand.codes[user_index, members].cpu().numpy(),
        rewards=np.take_along_axis(cand.rewards[users], pick.members, axis=1),
        advantages=pick.advantages,
        reference=cand.log_probs[user_index, members].float().cpu().numpy(),
        candidate_reward_mean=reward_mean,
        candidate_reward_max=reward_max,
        ties=pick.ties,
        fillers=pick.fillers,
    )


def build_candidate_groups(
    model: OneRecModel,
    samples: SampleSet,
    rows: np.ndarray,
    reward_fn: RewardFn,
    *,
    codes: torch.Tensor,
    prefix_index: PrefixIndex,
    num_candidates: int,
    group_size: int,
    batch_size: int,
    exclude_history: bool = False,
    device: Optional[torch.device] = None,
    progress: bool = False,
    sampled: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> CandidateGroups:
    """Candidates for ``samples[rows]`` from ``model`` (= M_t), scored, reduced to groups of G with advantages.

    Args:
        model (OneRecModel): the current plain model; it writes the candidates and is the reference.
        samples (SampleSet): the training samples.
        rows (np.ndarray): [R] rows of ``samples`` (this rank's share).
        reward_fn (RewardFn): rewards of candidate sessions.
        codes (torch.Tensor): [I, L'] int64 item codes.
        prefix_index (PrefixIndex): the codebook's index, on ``device``.
        num_candidates (int): N sessions per user.
        group_size (int): G kept per user.
        batch_size (int): users per generation batch.
        exclude_history (bool): never generate an item of the user's history.
        device (torch.device | None): where to generate (default: the model's device).
        progress (bool): a tqdm bar.
        sampled (int): candidates drawn by sampling instead of beam search (``candidates.scored_candidates``).
        temperature (float): their sampling temperature.
        seed (int): seeds the draws.

    Returns:
        CandidateGroups: P <= R groups, in row order.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_codes
        >>> from torchrec_onerec.train.testing import random_samples
        >>> codes, sizes = random_codes(10, [3, 3])
        >>> _ = torch.manual_seed(0)
        >>> model = OneRecModel(model_size("tiny"), sizes).eval()
        >>> samples = random_samples(3, 10, max_history=3, session_items=2, seed=0)
        >>> first_item = lambda users, sessions: sessions[:, :, 0].astype(float)
        >>> groups = build_candidate_groups(model, samples, np.array([0, 2]), first_item, codes=codes,
        ...                                 prefix_index=PrefixIndex(codes, vocab_sizes=sizes), num_candidates=8,
        ...                                 group_size=4, batch_size=2)
        >>> groups.items.shape, bool((groups.rewards[:, :2] >= groups.rewards[:, 2:]).all())
        ((2, 4, 2), True)
    """
    parts = reduce_candidates(
        model,
        samples,
        rows,
        reward_fn,
        lambda cand, users: _batch_groups(cand, users, group_size),
        codes=codes,
        prefix_index=prefix_index,
        num_candidates=num_candidates,
        batch_size=batch_size,
        exclude_history=exclude_history,
        device=device,
        progress=progress,
        sampled=sampled,
        temperature=temperature,
        seed=seed,
    )
    if parts:
        return CandidateGroups.concat(parts)
    return empty_groups(group_size, samples.session_items, int(codes.shape[1]))
