"""Preference pairs for DPO (docs/METHOD.md section 4, steps 1-2): the model's candidate sessions, scored by a reward.

For each sampled training sample (a user and history) the current model M_t writes N candidate sessions with
constrained beam search (``generation.beam_search``; optionally S of them drawn by constrained sampling instead,
``generation.sampling``, for candidates that spread wider than the N most probable), a reward function scores them,
and the best becomes the chosen session S^w and the worst the rejected one S^l (ties broken towards the earlier
candidate: beams come best first, then the samples, best first). Users get no pair, and are counted, when fewer than
two real sessions came back (the rest are filler, see ``constrained_beam_search``) or when every real session has
the same reward. The pair keeps the reference log-probabilities log M_t(S | H) of both sessions, computed once here
by the teacher-forced ``OneRecModel.log_prob``, so the reference model never runs inside a training step.

Under torchrun every rank builds the pairs of its share of the sampled rows and ``gather_preferences`` joins them, in
rank order, on every rank.

The candidates and reward functions are ``alignment.candidates``'s.

Shape legend: U users, N candidates, M session items, L' code levels, P pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Type, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.alignment.candidates import CandidateBatch, RewardFn, reduce_candidates, sharded_lockstep
from torchrec_onerec.train.distributed import DistContext

if TYPE_CHECKING:
    from torchrec_onerec.alignment.groups import CandidateGroups

PrefsT = TypeVar("PrefsT", "PreferencePairs", "CandidateGroups")
# roles of the rows of a preference batch (``train_step``): NTP rows, DPO chosen and rejected rows, GRPO rows
ROLE_NTP, ROLE_CHOSEN, ROLE_REJECTED, ROLE_GROUP = 0, 1, 2, 3


class ExtraRows(NamedTuple):
    """Rows a preference batch adds to its NTP rows (``train_step.preference_batch``).

    Args:
        sample_rows (np.ndarray): [E] int64 training rows whose user and history each extra row takes.
        target (np.ndarray): [E, M] int64 the session each row is scored on.
        role (np.ndarray): [E] int64 role of each row (``ROLE_*``).
        reference (np.ndarray): [E] float32 log M_t(target | H).
        advantage (np.ndarray): [E] float32 the row's advantage (GRPO rows; 0 for DPO rows).
    """

    sample_rows: np.ndarray
    target: np.ndarray
    role: np.ndarray
    reference: np.ndarray
    advantage: np.ndarray


def sample_preference_rows(num_samples: int, fraction: float, *, seed: int, iteration: int) -> np.ndarray:
    """The training rows that get a preference pair in one iteration: round(fraction * N) rows, at least one.

    Args:
        num_samples (int): N training samples.
        fraction (float): r_DPO in (0, 1].
        seed (int): the run's seed.
        iteration (int): the iteration (each draws its own rows, the same ones on every call).

    Returns:
        np.ndarray: [R] int64 distinct rows, ascending.

    Example:
        >>> sample_preference_rows(10, 0.3, seed=0, iteration=0).shape, len(sample_preference_rows(10, 1.0, seed=0,
        ...                                                                                       iteration=1))
        ((3,), 10)
    """
    if num_samples < 1 or not 0.0 < fraction <= 1.0:
        raise ValueError(f"need num_samples >= 1 and fraction in (0, 1], got {num_samples} and {fraction}")
    count = min(num_samples, max(1, int(round(fraction * num_samples))))
    rng = np.random.default_rng(np.random.SeedSequence([seed, iteration, 0x1BA]))
    return np.sort(rng.choice(num_samples, size=count, replace=False)).astype(np.int64)


class PairSelection(NamedTuple):
    """Which candidates of which users form pairs.

    Args:
        users (np.ndarray): [P] int64 users (rows of the reward matrix) that got a pair, ascending.
        chosen (np.ndarray): [P] int64 candidate with the highest reward (the first such one).
        rejected (np.ndarray): [P] int64 candidate with the lowest reward (the first such one).
        ties (int): users whose real candidates all have the same reward (no pair).
        fillers (int): users with fewer than two real candidates (no pair).
    """

    users: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    ties: int
    fillers: int


def select_pairs(rewards: np.ndarray, real: np.ndarray) -> PairSelection:
    """Best and worst real candidate of every user; users with all-equal rewards or < 2 real ones are skipped.

    Args:
        rewards (np.ndarray): [U, N] float rewards (ignored where ``real`` is False).
        real (np.ndarray): [U, N] bool, False at filler sessions.

    Returns:
        PairSelection: the P pairs and the skipped counts.

    Example:
        >>> rewards = np.array([[1.0, 3.0, 0.5], [2.0, 2.0, 2.0], [5.0, 0.0, 9.0]])
        >>> real = np.array([[True, True, True], [True, True, True], [True, False, False]])
        >>> s = select_pairs(rewards, real)
        >>> s.users.tolist(), s.chosen.tolist(), s.rejected.tolist(), s.ties, s.fillers
        ([0], [1], [2], 1, 1)
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    real = np.asarray(real, dtype=bool)
    if rewards.shape != real.shape or rewards.ndim != 2:
        raise ValueError(f"rewards {rewards.shape} and real {real.shape} must both be [U, N]")
    best = np.where(real, rewards, -np.inf).argmax(axis=1)
    worst = np.where(real, rewards, np.inf).argmin(axis=1)
    rows = np.arange(len(rewards))
    enough = real.sum(axis=1) >= 2
    differ = rewards[rows, best] > rewards[rows, worst]
    keep = enough & differ
    return PairSelection(
        np.flatnonzero(keep).astype(np.int64),
        best[keep].astype(np.int64),
        worst[keep].astype(np.int64),
        int((enough & ~differ).sum()),
        int((~enough).sum()),
    )


ScoredT = TypeVar("ScoredT", bound="ScoredUsers")


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite entries (NaN when there are none)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


class ScoredUsers:
    """What pairs and groups share: per-item arrays plus the counts ``ties`` and ``fillers`` (dataclass fields)."""

    sample_rows: np.ndarray
    candidate_reward_mean: np.ndarray
    candidate_reward_max: np.ndarray
    ties: int
    fillers: int

    def __len__(self) -> int:
        return len(self.sample_rows)

    @classmethod
    def concat(cls: Type[ScoredT], parts: Sequence[ScoredT]) -> ScoredT:
        """The items of ``parts`` one after the other (arrays concatenated, counts summed)."""
        if not parts:
            raise ValueError(f"concat needs at least one {cls.__name__}")
        values: Dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            items = [getattr(p, f.name) for p in parts]
            values[f.name] = sum(items) if f.name in ("ties", "fillers") else np.concatenate(items)
        return cls(**values)

    def _counts(self, kept: str) -> Dict[str, float]:
        return {
            "sampled_users": int(len(self.candidate_reward_mean)),
            kept: len(self),
            "skipped_ties": self.ties,
            "skipped_fillers": self.fillers,
            "candidate_reward_mean": finite_mean(self.candidate_reward_mean),
            "candidate_reward_max": finite_mean(self.candidate_reward_max),
        }


@dataclass
class PreferencePairs(ScoredUsers):
    """Chosen and rejected sessions of sampled training samples, with their rewards and reference log-probs.

    Args:
        sample_rows (np.ndarray): [P] int64 rows of the training SampleSet the pairs belong to.
        chosen (np.ndarray): [P, M] int64 items of the chosen session S^w.
        rejected (np.ndarray): [P, M] int64 items of the rejected session S^l.
        chosen_codes (np.ndarray): [P, M, L'] int64 codes of S^w.
        rejected_codes (np.ndarray): [P, M, L'] int64 codes of S^l.
        chosen_reward (np.ndarray): [P] float64 reward of S^w.
        rejected_reward (np.ndarray): [P] float64 reward of S^l.
        reference_chosen (np.ndarray): [P] float32 log M_t(S^w | H), summed over the codes.
        reference_rejected (np.ndarray): [P] float32 log M_t(S^l | H).
        candidate_reward_mean (np.ndarray): [U] float64 mean reward of each sampled user's real candidates (NaN
            when none), for every sampled user, paired or not.
        candidate_reward_max (np.ndarray): [U] float64 best reward of each sampled user's real candidates.
        ties (int): sampled users skipped because all their candidates tie.
        fillers (int): sampled users skipped for having fewer than two real candidates.
    """

    sample_rows: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    chosen_codes: np.ndarray
    rejected_codes: np.ndarray
    chosen_reward: np.ndarray
    rejected_reward: np.ndarray
    reference_chosen: np.ndarray
    reference_rejected: np.ndarray
    candidate_reward_mean: np.ndarray
    candidate_reward_max: np.ndarray
    ties: int = 0
    fillers: int = 0

    def extra_rows(self, index: np.ndarray) -> ExtraRows:
        """The chosen rows of pairs ``index``, then their rejected rows in the same order."""
        index = np.asarray(index, dtype=np.int64)
        P = len(index)
        return ExtraRows(
            np.concatenate([self.sample_rows[index]] * 2),
            np.concatenate([self.chosen[index], self.rejected[index]]),
            np.concatenate([np.full(P, ROLE_CHOSEN), np.full(P, ROLE_REJECTED)]).astype(np.int64),
            np.concatenate([self.reference_chosen[index], self.reference_rejected[index]]).astype(np.float32),
            np.zeros(2 * P, dtype=np.float32),
        )

    def summary(self) -> Dict[str, float]:
        """Counts and mean rewards for the iteration log (NaN means when there is nothing to average)."""
        return {
            **self._counts("pairs"),
            "chosen_reward": finite_mean(self.chosen_reward),
            "rejected_reward": finite_mean(self.rejected_reward),
        }


def _batch_pairs(
    model: OneRecModel, cand: CandidateBatch, sample_rows: np.ndarray, prefix_index: PrefixIndex
) -> PreferencePairs:
    """The pairs of one candidate batch whose U users are the training rows ``sample_rows`` [U]."""
    real = cand.real
    pick = select_pairs(cand.rewards, real)
    users = torch.as_tensor(pick.users, device=cand.codes.device)
    both = torch.stack(
        [
            cand.codes[users, torch.as_tensor(pick.chosen, device=users.device)],
            cand.codes[users, torch.as_tensor(pick.rejected, device=users.device)],
        ],
        dim=1,
    )  # (P, 2, M, L')
    reference = torch.zeros(len(pick.users), 2)
    if len(pick.users) or sharded_lockstep(model):  # sharded: every rank scores every batch, pairs or not
        sessions = torch.zeros((len(real),) + tuple(both.shape[1:]), dtype=torch.long, device=users.device)
        sessions[users] = both  # users without a pair score a dummy session, dropped below
        reference = model.log_prob(cand.batch, sessions, prefix_index=prefix_index)[users].float().cpu()
    reward_mean, reward_max = cand.reward_stats()
    return PreferencePairs(
        sample_rows=sample_rows[pick.users],
        chosen=cand.items[pick.users, pick.chosen],
        rejected=cand.items[pick.users, pick.rejected],
        chosen_codes=both[:, 0].cpu().numpy(),
        rejected_codes=both[:, 1].cpu().numpy(),
        chosen_reward=cand.rewards[pick.users, pick.chosen],
        rejected_reward=cand.rewards[pick.users, pick.rejected],
        reference_chosen=reference[:, 0].numpy(),
        reference_rejected=reference[:, 1].numpy(),
        candidate_reward_mean=reward_mean,
        candidate_reward_max=reward_max,
        ties=pick.ties,
        fillers=pick.fillers,
    )


def build_preference_pairs(
    model: OneRecModel,
    samples: SampleSet,
    rows: np.ndarray,
    reward_fn: RewardFn,
    *,
    codes: torch.Tensor,
    prefix_index: PrefixIndex,
    num_candidates: int,
    batch_size: int,
    exclude_history: bool = False,
    device: Optional[torch.device] = None,
    progress: bool = False,
    sampled: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> PreferencePairs:
    """Candidates for ``samples[rows]`` from ``model`` (= the reference M_t), scored, reduced to best/worst pairs.

    Args:
        model (OneRecModel): the current plain model; it writes the candidates and is the DPO reference.
        samples (SampleSet): the training samples.
        rows (np.ndarray): [R] rows of ``samples`` to build pairs for (this rank's share).
        reward_fn (RewardFn): rewards of candidate sessions.
        codes (torch.Tensor): [I, L'] int64 item codes.
        prefix_index (PrefixIndex): the codebook's index, on ``device``.
        num_candidates (int): N sessions per user.
        batch_size (int): users per beam-search batch.
        exclude_history (bool): never generate an item of the user's history.
        device (torch.device | None): where to generate (default: the model's device).
        progress (bool): a tqdm bar.
        sampled (int): candidates drawn by sampling instead of beam search (``scored_candidates``).
        temperature (float): their sampling temperature.
        seed (int): seeds the draws (with each batch's position).

    Returns:
        PreferencePairs: P <= R pairs, in row order.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_codes
        >>> codes, sizes = random_codes(10, [3, 3])
        >>> _ = torch.manual_seed(0)
        >>> model = OneRecModel(model_size("tiny"), sizes).eval()
        >>> samples = SampleSet.from_samples([Sample(u, np.array([u]), np.array([1, 2]), np.zeros((2, 0), np.float32))
        ...                                   for u in range(3)], [])
        >>> # a toy reward that tells every 2-item session apart (item ids < 10), so no user's candidates tie
        >>> session_number = lambda users, sessions: (10 * sessions[:, :, 0] + sessions[:, :, 1]).astype(float)
        >>> pairs = build_preference_pairs(model, samples, np.array([0, 2]), session_number, codes=codes,
        ...                                prefix_index=PrefixIndex(codes, vocab_sizes=sizes), num_candidates=8,
        ...                                batch_size=2)
        >>> pairs.sample_rows.tolist(), pairs.ties, pairs.fillers
        ([0, 2], 0, 0)
        >>> bool((pairs.chosen_reward == 10 * pairs.chosen[:, 0] + pairs.chosen[:, 1]).all())
        True
        >>> bool((pairs.chosen_reward > pairs.rejected_reward).all()), pairs.reference_chosen.shape
        (True, (2,))
    """
    parts = reduce_candidates(
        model,
        samples,
        rows,
        reward_fn,
        lambda cand, users: _batch_pairs(model, cand, users, prefix_index),
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
    return PreferencePairs.concat(parts) if parts else empty_pairs(samples.session_items, int(codes.shape[1]))


def empty_pairs(session_items: int, num_levels: int) -> PreferencePairs:
    """No pairs (and no sampled users), with the array shapes of M = ``session_items`` and L' = ``num_levels``."""
    M, L = session_items, num_levels
    return PreferencePairs(
        np.zeros(0, np.int64),
        np.zeros((0, M), np.int64),
        np.zeros((0, M), np.int64),
        np.zeros((0, M, L), np.int64),
        np.zeros((0, M, L), np.int64),
        np.zeros(0),
        np.zeros(0),
        np.zeros(0, np.float32),
        np.zeros(0, np.float32),
        np.zeros(0),
        np.zeros(0),
    )


def gather_preferences(prefs: PrefsT, ctx: DistContext) -> PrefsT:
    """Every rank's pairs (or ``groups.CandidateGroups``), in rank order, on every rank (``all_gather_object``;
    no-op with one process).

    Example:
        >>> ctx = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False)
        >>> len(gather_preferences(empty_pairs(2, 3), ctx))
        0
    """
    if ctx.world_size == 1:
        return prefs
    parts: List[Optional[PrefsT]] = [None] * ctx.world_size
    dist.all_gather_object(parts, prefs)
    return type(prefs).concat([p for p in parts if p is not None])
