"""Candidate sessions for alignment: what the current model writes for sampled users, scored by a reward.

``scored_candidates`` writes N sessions per user (the N - S most probable by constrained beam search, then S drawn
by constrained sampling) and scores them with a ``RewardFn``; ``reduce_candidates`` turns each scored batch into
DPO pairs (``alignment.pairs``) or GRPO groups (``alignment.groups``).

On a model whose tables are sharded over the torchrun ranks (``train.export.sharded_model``) every lookup is a
collective, so the ranks generate in lockstep: ``reduce_candidates`` has a rank with fewer batches than another
search padding batches (marked ``padding``; their sessions count as fillers and nothing of them is kept), and every
model call a reducer makes per batch it makes on every rank (``sharded_lockstep``).

Reward functions: ``RewardFn(samples, sessions) -> rewards`` takes the U samples (users and histories) and their
candidate sessions [U, N, M] of item ids (-1 = empty slot; a filler session is all -1) and returns [U, N] floats,
higher is better (the session reward model, the cascade's ranker, or a simulator's true reward).

Shape legend: U users, N candidates, M session items, L' code levels.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from torchrec_onerec.data.batch import make_dataloader
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, SemanticIdTransform
from torchrec_onerec.eval.user_shards import group_size, has_sharded_tables, most_over_ranks
from torchrec_onerec.generation.beam_search import BeamSearchOutput, constrained_beam_search
from torchrec_onerec.generation.sampling import constrained_sample
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex

RewardFn = Callable[[SampleSet, np.ndarray], np.ndarray]
ReducedT = TypeVar("ReducedT")


class CandidateBatch(NamedTuple):
    """One batch of users with their scored candidate sessions.

    Args:
        rows (np.ndarray): [U] positions of these users in the samples given to ``scored_candidates``.
        batch (SemanticIdBatch): the users' batch, on the generation device.
        items (np.ndarray): [U, N, M] int64 item ids, -1 throughout a filler session.
        codes (torch.Tensor): [U, N, M, L'] int64 code tuples (arbitrary in filler sessions), on the device.
        log_probs (torch.Tensor): [U, N] float32 log M(S | H) (the beam scores), -inf for filler sessions.
        rewards (np.ndarray): [U, N] float64 rewards, NaN for filler sessions.
        padding (bool): a batch searched only to keep a sharded model's ranks in lockstep (``rows`` empty,
            every session a filler, rewards NaN).
    """

    rows: np.ndarray
    batch: SemanticIdBatch
    items: np.ndarray
    codes: torch.Tensor
    log_probs: torch.Tensor
    rewards: np.ndarray
    padding: bool = False

    @property
    def real(self) -> np.ndarray:
        """[U, N] bool, True at real (non-filler) sessions (none in a padding batch)."""
        return np.isfinite(self.log_probs.cpu().numpy()) & (not self.padding)

    def reward_stats(self) -> Tuple[np.ndarray, np.ndarray]:
        """[U] mean and [U] best reward of each user's real candidates (NaN for a user with none)."""
        real = self.real
        any_real = real.any(axis=1)
        totals = np.where(real, self.rewards, 0.0).sum(axis=1)
        return (
            np.where(any_real, totals / np.maximum(real.sum(axis=1), 1), np.nan),
            np.where(any_real, np.where(real, self.rewards, -np.inf).max(axis=1), np.nan),
        )


def _check_rewards(rewards: np.ndarray, shape: Sequence[int], real: np.ndarray) -> np.ndarray:
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.shape != tuple(shape):
        raise ValueError(
            f"the reward function returned shape {rewards.shape}, expected {tuple(shape)} "
            "(one reward per candidate session of each user)"
        )
    if not np.isfinite(rewards[real]).all():
        raise ValueError(
            "the reward function returned NaN or infinite rewards for real sessions; it must score "
            "every session with a finite number"
        )
    return np.where(real, rewards, np.nan)


def _candidates(
    model: OneRecModel,
    batch: SemanticIdBatch,
    *,
    prefix_index: PrefixIndex,
    num_candidates: int,
    sampled: int,
    temperature: float,
    seed: int,
    session_items: int,
    exclude_history: bool,
) -> BeamSearchOutput:
    """The N - S beam-search sessions, then S sampled ones (each part best first)."""
    parts, beams = [], num_candidates - sampled
    if beams:
        parts.append(
            constrained_beam_search(
                model,
                batch,
                prefix_index=prefix_index,
                beam_size=beams,
                num_return=beams,
                session_items=session_items,
                exclude_history=exclude_history,
            )
        )
    if sampled:
        generator = torch.Generator(batch.target_codes.device).manual_seed(seed)
        parts.append(
            constrained_sample(
                model,
                batch,
                prefix_index=prefix_index,
                num_samples=sampled,
                generator=generator,
                temperature=temperature,
                session_items=session_items,
                exclude_history=exclude_history,
            )
        )
    return BeamSearchOutput(*(torch.cat(tensors, dim=1) for tensors in zip(*parts)))


@torch.no_grad()
def scored_candidates(
    model: OneRecModel,
    samples: SampleSet,
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
    padding: Optional[SampleSet] = None,
) -> Iterator[CandidateBatch]:
    """Write ``num_candidates`` sessions of M = ``samples.session_items`` items per sample and score them.

    The candidates are the N - S most probable sessions (constrained beam search) followed by S sessions drawn
    from the model (``generation.sampling``; S = ``sampled``, 0 by default).

    Args:
        model (OneRecModel): the model (plain, or with sharded tables and ``padding``); it should be in eval mode.
        samples (SampleSet): the users (their targets are not read).
        reward_fn (RewardFn): rewards of candidate sessions (module docstring).
        codes (torch.Tensor): [I, L'] int64 item codes of the model's codebook.
        prefix_index (PrefixIndex): the same codebook's index, on ``device``.
        num_candidates (int): N, the beam width and the sessions returned per user.
        batch_size (int): users per beam-search batch.
        exclude_history (bool): never generate an item of the user's history.
        device (torch.device | None): where to generate (default: the model's device).
        progress (bool): a tqdm bar over batches.
        sampled (int): S in [0, N], the candidates drawn by constrained sampling instead of beam search.
        temperature (float): the sampling temperature.
        seed (int): with ``seed`` and its first row's position, a batch's draws are reproducible.
        padding (SampleSet | None): for a model with sharded tables, a non-empty sample set whose first batch
            this rank searches (yielded with ``padding=True``, after its own) until it has searched as many
            batches as the rank with the most (a collective: every rank must call this together).

    Yields:
        CandidateBatch: per batch, in sample order, then any padding batches.
    """
    if not 0 <= sampled <= num_candidates:
        raise ValueError(
            f"sampled={sampled} must lie in [0, num_candidates={num_candidates}] (align.sampled_candidates)"
        )
    device = device or next(model.parameters()).device
    M = samples.session_items
    transform = SemanticIdTransform(codes, max_history=model.config.max_history, siblings=model.config.reads_siblings)
    loader = make_dataloader(
        samples, LoaderConfig(batch_size=batch_size, shuffle=False), seed=0, shuffle=False, transform=transform
    )

    def search(batch: SemanticIdBatch, start: int) -> BeamSearchOutput:
        return _candidates(
            model,
            batch,
            prefix_index=prefix_index,
            num_candidates=num_candidates,
            sampled=sampled,
            temperature=temperature,
            seed=int(np.random.SeedSequence([seed, start]).generate_state(1)[0]),
            session_items=M,
            exclude_history=exclude_history,
        )

    # before any search: the count is a collective, and so is every sharded lookup
    extra = 0 if padding is None else most_over_ranks(len(loader)) - len(loader)
    start = 0
    for batch in tqdm(loader, desc="candidates", unit="batch", disable=not progress):
        batch = batch.to(device)
        out = search(batch, start)
        U = batch.batch_size
        rows = np.arange(start, start + U)
        start += U
        real = torch.isfinite(out.scores).cpu().numpy()
        items = np.where(real[:, :, None], out.items.cpu().numpy(), PAD_ITEM)
        rewards = _check_rewards(reward_fn(samples.subset(rows), items), (U, num_candidates), real)
        yield CandidateBatch(rows, batch, items, out.codes, out.scores.float(), rewards)
    if extra > 0:
        assert padding is not None
        first = padding.subset(np.arange(min(batch_size, len(padding))))
        config = LoaderConfig(batch_size=batch_size, shuffle=False)
        batch = next(iter(make_dataloader(first, config, seed=0, shuffle=False, transform=transform)))
        batch = batch.to(device)
    for _ in range(extra):
        out = search(batch, len(samples))  # its draws are never kept
        nothing = np.full(tuple(out.scores.shape), np.nan)
        yield CandidateBatch(
            np.zeros(0, np.int64), batch, out.items.cpu().numpy(), out.codes, out.scores, nothing, True
        )


def sharded_lockstep(model: OneRecModel) -> bool:
    """Whether ``model``'s tables are sharded over several ranks: then every rank must make the same model calls."""
    return group_size()[1] > 1 and has_sharded_tables(model)


def reduce_candidates(
    model: OneRecModel,
    samples: SampleSet,
    rows: np.ndarray,
    reward_fn: RewardFn,
    reduce: Callable[[CandidateBatch, np.ndarray], ReducedT],
    **candidates: Any,
) -> List[ReducedT]:
    """``reduce(batch, its training rows)`` over the scored candidates of ``samples[rows]`` (the model in eval mode,
    without gradients, restored after); ``candidates`` are ``scored_candidates``'s keyword arguments.

    With sharded tables (a collective) the ranks search in lockstep: ``reduce`` also sees the padding batches,
    and must make the same model calls on them as on the others; what it returns for them is dropped."""
    rows = np.asarray(rows, dtype=np.int64)
    parts: List[ReducedT] = []
    was_training = model.training
    padding = samples if sharded_lockstep(model) else None
    model.eval()
    try:
        with torch.no_grad():
            for cand in scored_candidates(model, samples.subset(rows), reward_fn, padding=padding, **candidates):
                part = reduce(cand, rows[cand.rows])
                if not cand.padding:
                    parts.append(part)
    finally:
        model.train(was_training)
    return parts
