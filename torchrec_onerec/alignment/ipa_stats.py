"""What alignment measures on held-out users and on its own pairs (``alignment.ipa``'s iteration log).

``generation_stats``: the rewards of the sessions a model writes for held-out users (mean, best and most probable
session) and its KL to the previous model on them; ``pair_stats``: the DPO loss, accuracy and margins of a trained
policy on an iteration's pairs. Both split the users or pairs across ranks and sum over them (collectives); on
models with sharded tables the ranks run the same number of batches (``candidates.sharded_lockstep``), padding
batches counted nowhere.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.alignment.dpo import dpo_loss
from torchrec_onerec.alignment.candidates import RewardFn, scored_candidates, sharded_lockstep
from torchrec_onerec.alignment.pairs import PreferencePairs
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.semantic_batch import sibling_groups, to_semantic_batch
from torchrec_onerec.eval.user_shards import lockstep_batches, rank_rows
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.distributed import DistContext, all_reduce_sum


def rank_share(count: int, ctx: DistContext) -> np.ndarray:
    """This rank's contiguous share of ``range(count)``."""
    return np.array_split(np.arange(count), ctx.world_size)[ctx.rank]


@torch.no_grad()
def generation_stats(
    model: OneRecModel,
    samples: SampleSet,
    reward_fn: RewardFn,
    *,
    codes: torch.Tensor,
    prefix_index: PrefixIndex,
    align: AlignConfig,
    ctx: DistContext,
    reference: Optional[OneRecModel] = None,
) -> Dict[str, float]:
    """Rewards of the N sessions ``model`` writes for ``samples`` (each rank its share; a collective).

    Args:
        model (OneRecModel): the model to generate with, plain or with sharded tables.
        samples (SampleSet): the held-out users.
        reward_fn (RewardFn): rewards of candidate sessions.
        codes (torch.Tensor): [I, L'] int64 item codes.
        prefix_index (PrefixIndex): the codebook's index, on ``ctx.device``.
        align (AlignConfig): ``num_candidates``, ``generation_batch_size``, ``exclude_history``.
        ctx (DistContext): this rank.
        reference (OneRecModel | None): the previous model; adds ``kl_to_reference``.

    Returns:
        Dict[str, float]: ``users``; ``reward_mean`` (mean over users of the mean reward of their real
        sessions), ``reward_max`` (mean of each user's best), ``reward_top`` (mean reward of the most probable
        session), ``filler_share`` (share of filler sessions); with a reference, ``kl_to_reference`` (mean over
        real sessions of log M(S) - log M_ref(S)).
    """
    sums = [0.0] * 7  # users with a real session, mean, max, top, filler sessions, sessions, log-ratio
    lockstep = sharded_lockstep(model)
    for cand in scored_candidates(
        model,
        samples.subset(rank_share(len(samples), ctx)),
        reward_fn,
        codes=codes,
        prefix_index=prefix_index,
        num_candidates=align.num_candidates,
        batch_size=align.generation_batch_size,
        exclude_history=align.exclude_history,
        device=ctx.device,
        padding=samples if lockstep else None,
    ):
        if cand.padding:
            if reference is not None:
                # the lookups the other ranks make on this batch
                reference.log_prob(cand.batch, cand.codes, prefix_index=prefix_index)
            continue
        real = cand.real
        users = real.any(axis=1)
        reward_mean, reward_max = cand.reward_stats()
        sums[0] += users.sum()
        sums[1] += reward_mean[users].sum()
        sums[2] += reward_max[users].sum()
        sums[3] += cand.rewards[users, 0].sum()  # beams come best first: slot 0 is real whenever any is
        sums[4] += (~real).sum()
        sums[5] += real.size
        if reference is not None:
            ratio = cand.log_probs - reference.log_prob(cand.batch, cand.codes, prefix_index=prefix_index).float()
            sums[6] += float(ratio[torch.from_numpy(real).to(ratio.device)].sum())
    num_users, mean, best, top, fillers, sessions, log_ratio = all_reduce_sum(sums, ctx)
    per_user = num_users if num_users else float("nan")
    stats = {
        "users": int(num_users),
        "reward_mean": mean / per_user,
        "reward_max": best / per_user,
        "reward_top": top / per_user,
        "filler_share": fillers / max(sessions, 1.0),
    }
    if reference is not None:
        real_sessions = sessions - fillers
        stats["kl_to_reference"] = log_ratio / real_sessions if real_sessions else float("nan")
    return stats


@torch.no_grad()
def pair_stats(
    policy: OneRecModel,
    pairs: PreferencePairs,
    samples: SampleSet,
    *,
    codes: torch.Tensor,
    prefix_index: PrefixIndex,
    align: AlignConfig,
    ctx: DistContext,
) -> Dict[str, float]:
    """DPO numbers of ``policy`` (eval mode) on ``pairs`` against their stored reference log-probs (a collective).

    Args:
        policy (OneRecModel): the trained model, plain or with sharded tables.
        pairs (PreferencePairs): the iteration's pairs (every rank holds all; each scores its share).
        samples (SampleSet): the training samples the pairs' ``sample_rows`` index.
        codes (torch.Tensor): [I, L'] int64 item codes.
        prefix_index (PrefixIndex): the codebook's index, on ``ctx.device`` (the siblings ``item_head=prefix``
            scores).
        align (AlignConfig): ``beta``, ``generation_batch_size``.
        ctx (DistContext): this rank.

    Returns:
        Dict[str, float]: ``dpo_loss``, ``dpo_accuracy``, ``reward_margin`` (means over pairs) and
        ``chosen_log_ratio`` / ``rejected_log_ratio`` (mean log M_{t+1}(S) - log M_t(S)); NaN without pairs.
    """
    sums = [0.0] * 6  # pairs, loss, correct, margin, chosen log-ratio, rejected log-ratio
    size = align.generation_batch_size
    share = rank_rows(len(pairs), size, ctx.rank, ctx.world_size)  # whole batches, as evaluation splits users
    # sharded: every rank runs as many batches as the rank with the most
    batches = lockstep_batches(len(pairs), size, ctx.world_size) if sharded_lockstep(policy) else None
    siblings = sibling_groups(codes) if policy.config.reads_siblings else None  # once, not per batch
    was_training = policy.training
    policy.eval()
    for start in range(0, size * batches if batches is not None else len(share), size):
        index = share[start : start + size]
        padding = len(index) == 0
        if padding:
            index = np.zeros(1, np.int64)  # the first pair, scored for the lookups alone
        batch = to_semantic_batch(
            collate_samples(samples, pairs.sample_rows[index]),
            codes,
            max_history=policy.config.max_history,
            siblings=siblings,
        ).to(ctx.device)
        sessions = torch.from_numpy(np.stack([pairs.chosen_codes[index], pairs.rejected_codes[index]], axis=1))
        log_probs = policy.log_prob(batch, sessions.to(ctx.device), prefix_index=prefix_index).float().cpu()  # (P_b, 2)
        if padding:
            continue
        ref_chosen = torch.from_numpy(pairs.reference_chosen[index]).float()
        ref_rejected = torch.from_numpy(pairs.reference_rejected[index]).float()
        out = dpo_loss(log_probs[:, 0], log_probs[:, 1], ref_chosen, ref_rejected, beta=align.beta)
        margins = out.chosen_rewards - out.rejected_rewards
        values: Tuple[Any, ...] = (
            len(index),
            out.losses.sum(),
            (margins > 0).sum(),
            margins.sum(),
            (log_probs[:, 0] - ref_chosen).sum(),
            (log_probs[:, 1] - ref_rejected).sum(),
        )
        sums = [total + float(value) for total, value in zip(sums, values)]
    policy.train(was_training)
    count, loss, correct, margin, chosen, rejected = all_reduce_sum(sums, ctx)
    per_pair = count if count else float("nan")
    return {
        "dpo_loss": loss / per_pair,
        "dpo_accuracy": correct / per_pair,
        "reward_margin": margin / per_pair,
        "chosen_log_ratio": chosen / per_pair,
        "rejected_log_ratio": rejected / per_pair,
    }
