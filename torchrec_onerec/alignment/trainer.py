"""One iteration of preference-alignment training on TorchRec (docs/METHOD.md section 4, step 4).

The policy starts from the plain state dict of the iteration's reference M_t and is trained with the project's
TorchRec stack, as the generative model is (``train.loop``): ``PreferenceTrainStep`` built on the meta device,
sharded by ``train.sharding.shard_for_training`` (planner, DMP, fused sparse optimiser, clipped AdamW), M_t's
weights copied into the table shards and dense parameters (``load_plain_state``), and batches fed through
``TrainPipelineSparseDist``. Each rank reads its slice of every global batch (``train.rank_data``) with the
preference rows of the samples in that slice attached (``train_step.preference_batch``). Learning rates are
constant (``align.learning_rate``, ``align.sparse_learning_rate``) and the optimisers start fresh every
iteration, so an iteration depends only on M_t, its pairs, the seed and the iteration number (what makes
resuming at an iteration boundary exact). At the end every rank receives the trained plain state dict.

Under torchrun each rank's loss is L_NTP over its own NTP rows plus lambda times L_DPO over its own pairs (or
L_GRPO over its own candidate groups; 0 on a rank whose slice holds none), and DDP averages the ranks'
gradients, as in ``train.loop``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List

import numpy as np
import torch
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.utils.data import DataLoader, Dataset
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm.auto import tqdm

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
from torchrec_onerec.runtime import seed_everything
from torchrec_onerec.train.checkpoint import rank_seed
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, all_reduce_sum, broadcast_object
from torchrec_onerec.train.export import MODEL_PREFIX, gather_model_state
from torchrec_onerec.train.rank_data import RankBatchSampler, steps_per_epoch
from torchrec_onerec.train.sharding import shard_for_training


def load_plain_state(dmp: DistributedModelParallel, state: Dict[str, torch.Tensor]) -> None:
    """Copy a plain ``OneRecModel`` state dict into a sharded train module (each rank fills its own shards).

    Args:
        dmp (DistributedModelParallel): the sharded module whose model sits at ``.model`` (state-dict keys
            ``model.<OneRecModel key>``).
        state (Dict[str, torch.Tensor]): the full plain state dict (``export.gather_model_state`` /
            ``load_exported(...).state_dict()``).
    """
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*ShardedTensor.*", category=FutureWarning)
        sharded = dmp.state_dict()
        expected = {key[len(MODEL_PREFIX) :] for key in sharded}
        if expected != set(state):
            raise KeyError(
                f"the plain state dict does not fit the model: missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}; load a model of the same config"
            )
        for key, value in sharded.items():
            plain = state[key[len(MODEL_PREFIX) :]]
            if isinstance(value, ShardedTensor):
                for shard in value.local_shards():
                    (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                    shard.tensor.copy_(plain[row : row + rows, col : col + cols].to(shard.tensor.device))
            else:
                value.copy_(plain.to(value.device))
        dmp.load_state_dict(sharded)


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
    """Train the policy from ``state`` for ``align.epochs`` epochs with L_NTP + lambda * L_DPO + mu * L_chosen.

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
    steps = steps_per_epoch(len(samples), align.batch_size, ctx.world_size)
    if steps == 0:
        raise ValueError(
            f"{len(samples)} training samples cannot feed {ctx.world_size} processes; use more samples "
            "or fewer processes"
        )
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
    config = replace(train_config, learning_rate=align.learning_rate, sparse_learning_rate=align.sparse_learning_rate)
    training = shard_for_training(module, config, ctx, seed=seed)
    load_plain_state(training.dmp, state)
    seed_everything(rank_seed(seed, ctx.rank, iteration))  # dropout streams: a function of (seed, rank, iteration)
    dataset = _PreferenceBatches(samples, prefs, SemanticIdTransform(codes, max_history=model_config.max_history))
    pipeline = TrainPipelineSparseDist(training.dmp, training.optimizer, device=ctx.device, execute_all_batches=True)
    sums, seconds = _StepSums(), 0.0
    bar = tqdm(
        total=steps * align.epochs,
        desc=f"align iteration {iteration + 1}",
        unit="step",
        disable=not (progress and ctx.is_rank0),
    )
    training.dmp.train()
    for epoch in range(align.epochs):
        sampler = RankBatchSampler(
            len(samples),
            align.batch_size,
            shuffle=True,
            seed=seed,
            epoch=iteration * align.epochs + epoch,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        batches: Iterator[PreferenceBatch] = iter(
            DataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=_as_batch)  # type: ignore[arg-type]
        )
        while True:
            start = time.perf_counter()
            try:
                metrics = pipeline.progress(batches)
            except StopIteration:  # every rank runs out at the same step
                break
            seconds += time.perf_counter() - start
            sums.add(metrics)
            bar.update(1)
    bar.close()
    gathered = gather_model_state(training.dmp, ctx)
    return IterationTraining(broadcast_object(gathered, ctx), sums.result(ctx, seconds))
