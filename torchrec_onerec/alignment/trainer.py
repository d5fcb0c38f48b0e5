"""One iteration of preference-alignment training on TorchRec (docs/METHOD.md section 4, step 4).

The policy starts from the plain state dict of the iteration's reference M_t and is trained by the project's one
training recipe, ``train.trainer.fit``: ``PreferenceTrainStep`` built on the meta device, sharded (planner, DMP,
fused sparse optimiser, clipped AdamW), M_t's weights copied into the table shards and dense parameters
(``load_plain_state``), and batches fed through ``TrainPipelineSparseDist``; no validation (the alignment
stage judges each iteration on held-out users, ``alignment.ipa``). Each rank reads its slice of every global
batch (``train.rank_data``) with the preference rows of the samples in that slice attached
(``train_step.preference_batch``). Learning rates follow ``align.optim`` (constant by
default) and the optimisers start fresh every iteration, so an iteration depends only on
M_t, its pairs, the seed and the iteration number (what makes resuming at an iteration boundary exact). At the
end every rank receives the trained plain state dict.

Under torchrun each rank's loss is L_NTP over its own NTP rows plus lambda times L_DPO over its own pairs (or
L_GRPO over its own candidate groups; 0 on a rank whose slice holds none), and DDP averages the ranks'
gradients, as in ``train.loop``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.alignment.train_step import (
    AlignStepMetrics,
    PreferenceBatch,
    PreferenceData,
    PreferenceTrainStep,
    preference_batch,
)
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.semantic_batch import SemanticIdTransform
from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, all_reduce_sum, broadcast_object
from torchrec_onerec.train.rank_data import RankBatchSampler
from torchrec_onerec.train.trainer import FitSpec, State, fit


class _PreferenceBatches(Dataset[PreferenceBatch]):
    """Map-style dataset whose index is one rank's rows of a global batch; the rows' pairs (or groups) come along."""

    def __init__(self, samples: SampleSet, prefs: PreferenceData, transform: SemanticIdTransform) -> None:
        self.samples, self.prefs, self.transform = samples, prefs, transform
        self.pref_of_row = np.full(len(samples), -1, dtype=np.int64)
        self.pref_of_row[prefs.sample_rows] = np.arange(len(prefs))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, rows: np.ndarray) -> PreferenceBatch:
        index = self.pref_of_row[rows]
        return preference_batch(self.samples, rows, self.prefs, index[index >= 0], self.transform)


def _as_batch(batch: PreferenceBatch) -> PreferenceBatch:
    return batch


@dataclass
class IterationTraining:
    """What one iteration's training produced.

    Args:
        state (Dict[str, torch.Tensor]): the trained plain ``OneRecModel`` state dict (CPU), on every rank.
        metrics (Dict[str, float]): over all steps and ranks: ``steps``, ``loss``, ``ntp_loss``, ``aux_loss``
            (means over steps), ``dpo_loss``, ``dpo_accuracy``, ``reward_margin``, ``chosen_nll`` (means over pair
            occurrences in training batches; NaN without pairs), ``grpo_loss``, ``grpo_ratio``, ``grpo_clipped``
            (means over GRPO rows; only when there were some), ``seconds`` (wall time in steps).
    """

    state: Dict[str, torch.Tensor]
    metrics: Dict[str, float]


class _StepSums:
    """This rank's sums of step metrics (DPO numbers weighted by the batch's pairs, GRPO's by its GRPO rows)."""

    def __init__(self) -> None:
        # steps, loss, ntp, aux, pairs, pairs * (dpo, accuracy, margin, chosen nll), group rows,
        # group rows * (grpo, ratio, clipped)
        self.values = [0.0] * 13

    def add(self, m: AlignStepMetrics) -> None:
        pairs, rows = float(m.pairs), float(m.group_rows)
        for index, value in enumerate(
            (
                1.0,
                float(m.loss),
                float(m.ntp_loss),
                float(m.aux_loss),
                pairs,
                pairs * float(m.dpo_loss),
                pairs * float(m.dpo_accuracy),
                pairs * float(m.reward_margin),
                pairs * float(m.chosen_nll),
                rows,
                rows * float(m.grpo_loss),
                rows * float(m.grpo_ratio),
                rows * float(m.grpo_clipped),
            )
        ):
            self.values[index] += value

    def result(self, ctx: DistContext, seconds: float) -> Dict[str, float]:
        (steps, loss, ntp, aux, pairs, dpo, accuracy, margin, chosen, rows, grpo, ratio, clipped) = all_reduce_sum(
            self.values, ctx
        )
        per_step, per_pair = max(steps, 1.0), (pairs if pairs else float("nan"))
        result = {
            "steps": int(steps) // ctx.world_size,
            "loss": loss / per_step,
            "ntp_loss": ntp / per_step,
            "aux_loss": aux / per_step,
            "dpo_loss": dpo / per_pair,
            "dpo_accuracy": accuracy / per_pair,
            "reward_margin": margin / per_pair,
            "chosen_nll": chosen / per_pair,
            "seconds": seconds,
        }
        if rows:
            result.update(grpo_loss=grpo / rows, grpo_ratio=ratio / rows, grpo_clipped=clipped / rows)
        return result


def train_iteration(
    state: Dict[str, torch.Tensor],
    prefs: PreferenceData,
    samples: SampleSet,
    *,
    model_config: OneRecModelConfig,
    vocab_sizes: List[int],
    codes: torch.Tensor,
    align: AlignConfig,
    train_config: TrainConfig,
    ctx: DistContext,
    seed: int,
    iteration: int,
    progress: bool = False,
) -> IterationTraining:
    """Train the policy from ``state`` for ``align.optim.epochs`` epochs with L_NTP + lambda * L_DPO + mu * L_chosen.

    Args:
        state (Dict[str, torch.Tensor]): the plain state dict of the reference M_t (the policy's start).
        prefs (PreferenceData): the iteration's pairs or candidate groups (all ranks', ``gather_preferences``).
        samples (SampleSet): the training samples (every sample gives L_NTP).
        model_config (OneRecModelConfig): the model's config.
        vocab_sizes (List[int]): K_l of each code level.
        codes (torch.Tensor): [I, L'] int64 item codes.
        align (AlignConfig): epochs, batch size, learning rates, beta, lambda.
        train_config (TrainConfig): weight decay, clipping, sparse optimiser, sharding type (the ``train``
            section; its learning rates and schedule are not used).
        ctx (DistContext): this rank.
        seed (int): the run's seed.
        iteration (int): the iteration number (0-based): fixes the data order and dropout streams.
        progress (bool): a tqdm bar on rank 0.

    Returns:
        IterationTraining: the trained state dict on every rank and the step metrics.
    """
    if align.disable_dropout:
        # The reference log-probabilities come from the model in eval mode; a policy with dropout on would
        # start each pair from a log-ratio of noise rather than 0 (TRL's DPO turns dropout off for this reason).
        model_config = replace(model_config, dropout=0.0)
    module = PreferenceTrainStep(
        OneRecModel(model_config, vocab_sizes, device=torch.device("meta")),
        beta=align.beta,
        dpo_weight=align.dpo_weight,
        chosen_nll_weight=align.chosen_nll_weight,
        grpo_clip=align.grpo_clip,
    )
    dataset = _PreferenceBatches(
        samples,
        prefs,
        SemanticIdTransform(codes, max_history=model_config.max_history, siblings=model_config.reads_siblings),
    )

    def batches(epoch: int, first: int) -> DataLoader:
        sampler = RankBatchSampler(
            len(samples),
            align.batch_size,
            shuffle=True,
            seed=seed,
            epoch=iteration * align.optim.epochs + epoch,
            rank=ctx.rank,
            world_size=ctx.world_size,
            start=first,
        )
        return DataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=_as_batch)  # type: ignore[arg-type]

    sums = _StepSums()
    kept: Dict[str, State] = {}  # the trained state, on rank 0

    def step_loss(metrics: AlignStepMetrics) -> float:
        sums.add(metrics)
        return float(metrics.loss)

    result = fit(
        FitSpec(
            name=f"align_iteration_{iteration + 1}",
            module=module,
            batches=batches,
            optim=align.optim,  # the optimisers start fresh every iteration (module docstring)
            stack=train_config,
            save=lambda trained: kept.update(state=trained),
            init_state=state,
            dropout_stream=iteration,  # dropout draws: a function of (seed, rank, iteration)
            step_loss=step_loss,
        ),
        ctx,
        seed=seed,
        progress=progress,
    )
    return IterationTraining(broadcast_object(kept.get("state"), ctx), sums.result(ctx, result.train_seconds))
