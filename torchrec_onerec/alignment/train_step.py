"""The module DMP shards for preference alignment (docs/METHOD.md section 4, step 4: L = L_NTP + lambda * L_DPO) and
the batch it reads.

One batch holds three kinds of rows, all as ordinary semantic-ID samples (so the sharded EmbeddingCollection is
called once per forward, on ``batch.features``, as ``TrainPipelineSparseDist`` needs):

- NTP rows (``role`` 0): training samples with their logged target session; they give L_NTP;
- chosen rows (``role`` 1): for every sample of the batch that has a preference pair, its user and history with
  the chosen session S^w as the target;
- rejected rows (``role`` 2): the same with the rejected session S^l, in the same order as the chosen rows.

One teacher-forced forward over all rows gives the code log-probabilities; a chosen or rejected row's sum over
its codes is log M_{t+1}(S | H), and ``reference_log_prob`` carries the frozen reference's log M_t(S | H),
computed once per iteration (``pairs``), so the reference model never runs here. The loss is

    L = mean cross-entropy over the NTP rows' codes + lambda * L_DPO (mean over the batch's pairs)
        + mu * mean cross-entropy over the chosen rows' codes (``align.chosen_nll_weight``, 0 by default)
        + moe_aux_weight * MoE balance loss,

so a sample with a pair gets L_NTP + lambda * L_DPO and the others L_NTP alone (mixing both in one batch keeps a
single pipeline and one input_dist per step; a batch without pairs has L_DPO = 0). The encoder runs once per
row, i.e. three times for a sample with a pair: the price of keeping the batch an ordinary KJT batch.

Shape legend: B rows, M session items, L' code levels, K codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple, Tuple

import numpy as np
import torch

from torchrec_onerec.alignment.dpo import dpo_loss
from torchrec_onerec.alignment.pairs import PreferencePairs
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, SemanticIdTransform
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule

ROLE_NTP, ROLE_CHOSEN, ROLE_REJECTED = 0, 1, 2


@dataclass
class PreferenceBatch(SemanticIdBatch):
    """A ``SemanticIdBatch`` of NTP, chosen and rejected rows (module docstring); TorchRec ``Pipelineable``.

    Args:
        role (torch.Tensor): [B] int64: 0 NTP row, 1 chosen row, 2 rejected row (the k-th chosen row and the
            k-th rejected row are one pair).
        reference_log_prob (torch.Tensor): [B] float32 log M_t(target | H) of the reference model at chosen and
            rejected rows, 0 at NTP rows.

    The other fields are those of ``SemanticIdBatch``.
    """

    role: torch.Tensor
    reference_log_prob: torch.Tensor


def preference_batch(samples: SampleSet, rows: np.ndarray, pairs: PreferencePairs, pair_index: np.ndarray,
                     transform: SemanticIdTransform) -> PreferenceBatch:
    """The batch of training rows ``rows`` plus the chosen and rejected rows of pairs ``pair_index``.

    Args:
        samples (SampleSet): the training samples.
        rows (np.ndarray): [B_ntp] rows of ``samples`` (the NTP rows).
        pairs (PreferencePairs): the iteration's pairs.
        pair_index (np.ndarray): [P_b] pairs to add (normally those whose ``sample_rows`` are in ``rows``).
        transform (SemanticIdTransform): items -> semantic codes.

    Returns:
        PreferenceBatch: B = B_ntp + 2 P_b rows, NTP rows first, then chosen, then rejected.

    Example:
        >>> from dataclasses import replace
        >>> from torchrec_onerec.alignment.pairs import empty_pairs
        >>> from torchrec_onerec.train.testing import random_samples
        >>> samples = random_samples(4, 6, max_history=3, session_items=2, seed=0)
        >>> pairs = replace(empty_pairs(2, 2), sample_rows=np.array([2]), chosen=np.array([[0, 1]]),
        ...                 rejected=np.array([[4, 5]]), reference_chosen=np.array([-1.5], np.float32),
        ...                 reference_rejected=np.array([-2.5], np.float32))
        >>> codes = torch.arange(12).view(6, 2)
        >>> b = preference_batch(samples, np.array([1, 2]), pairs, np.array([0]), SemanticIdTransform(codes))
        >>> b.role.tolist(), b.target.tolist()[2:], b.reference_log_prob.tolist()
        ([0, 0, 1, 2], [[0, 1], [4, 5]], [0.0, 0.0, -1.5, -2.5])
    """
    rows = np.asarray(rows, dtype=np.int64)
    pair_index = np.asarray(pair_index, dtype=np.int64)
    B, P = len(rows), len(pair_index)
    pair_rows = pairs.sample_rows[pair_index]
    extended = samples.subset(np.concatenate([rows, pair_rows, pair_rows]))  # fresh arrays: safe to overwrite
    extended.target[B:B + P] = pairs.chosen[pair_index]
    extended.target[B + P:] = pairs.rejected[pair_index]
    extended.labels[B:] = 0.0  # generated sessions have no logged feedback
    base = transform(collate_samples(extended))
    role = torch.cat([torch.full((B,), ROLE_NTP), torch.full((P,), ROLE_CHOSEN), torch.full((P,), ROLE_REJECTED)])
    reference = torch.cat([torch.zeros(B), torch.from_numpy(pairs.reference_chosen[pair_index]).float(),
                           torch.from_numpy(pairs.reference_rejected[pair_index]).float()])
    return PreferenceBatch(**{f.name: getattr(base, f.name) for f in fields(SemanticIdBatch)}, role=role,
                           reference_log_prob=reference)


class AlignStepMetrics(NamedTuple):
    """Detached per-step numbers of one rank.

    Args:
        loss (torch.Tensor): [] the training loss.
        ntp_loss (torch.Tensor): [] mean cross-entropy over the NTP rows' real codes.
        dpo_loss (torch.Tensor): [] mean L_DPO over the batch's pairs (0 without pairs).
        chosen_nll (torch.Tensor): [] mean cross-entropy over the chosen rows' codes (0 without pairs).
        aux_loss (torch.Tensor): [] MoE balance loss.
        dpo_accuracy (torch.Tensor): [] share of the batch's pairs with chosen implicit reward above rejected.
        reward_margin (torch.Tensor): [] mean implicit reward margin r^w - r^l over the batch's pairs.
        pairs (torch.Tensor): [] number of pairs in the batch (weights the DPO numbers when averaging steps).
    """

    loss: torch.Tensor
    ntp_loss: torch.Tensor
    dpo_loss: torch.Tensor
    chosen_nll: torch.Tensor
    aux_loss: torch.Tensor
    dpo_accuracy: torch.Tensor
    reward_margin: torch.Tensor
    pairs: torch.Tensor


def code_log_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of every target code, 0 at padding.

    Args:
        logits (torch.Tensor): [B, M, L', K_max] code logits (``OneRecOutput.logits``).
        labels (torch.Tensor): [B, M, L'] int64 target codes, -1 at padding.

    Returns:
        torch.Tensor: [B, M, L'] float32; summed over (M, L') it equals ``OneRecModel.log_prob`` of the target.

    Example:
        >>> logits = torch.log(torch.tensor([[[[0.25, 0.75]], [[0.5, 0.5]]]]))  # B=1, M=2, L'=1, K=2
        >>> code_log_probs(logits, torch.tensor([[[1], [-1]]])).exp().round(decimals=4).tolist()
        [[[0.75], [1.0]]]
    """
    log_probs = logits.float().log_softmax(dim=-1)
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(labels < 0, 0.0)


class PreferenceTrainStep(OneRecTrainModule):
    """``forward(batch) -> (loss, AlignStepMetrics)``, L = L_NTP + lambda * L_DPO + mu * L_chosen (module docstring).

    Parameter names are those of ``OneRecTrainStep`` (the model sits at ``self.model``), so the plain state dict
    of a trained model loads into it and ``export.gather_model_state`` reads it back.

    Args:
        model (OneRecModel): the policy M_{t+1} (meta-built for DMP).
        beta (float): DPO temperature (``align.beta``).
        dpo_weight (float): lambda (``align.dpo_weight``).
        chosen_nll_weight (float): mu (``align.chosen_nll_weight``).

    Example:
        >>> from torchrec_onerec.alignment.pairs import empty_pairs
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_codes
        >>> from torchrec_onerec.train.testing import random_samples
        >>> codes, sizes = random_codes(12, [3, 3])
        >>> step = PreferenceTrainStep(OneRecModel(model_size("tiny"), sizes), beta=0.1, dpo_weight=1.0)
        >>> samples = random_samples(4, 12, max_history=3, session_items=2, seed=0)
        >>> batch = preference_batch(samples, np.arange(4), empty_pairs(2, 3), np.zeros(0), SemanticIdTransform(codes))
        >>> loss, metrics = step(batch)
        >>> bool(loss.requires_grad), float(metrics.pairs), float(metrics.dpo_loss)
        (True, 0.0, 0.0)
    """

    def __init__(self, model: OneRecModel, *, beta: float, dpo_weight: float, chosen_nll_weight: float = 0.0
                 ) -> None:
        super().__init__(model)
        if beta <= 0 or dpo_weight < 0 or chosen_nll_weight < 0:
            raise ValueError(f"need beta > 0, dpo_weight >= 0 and chosen_nll_weight >= 0, got beta={beta}, "
                             f"dpo_weight={dpo_weight}, chosen_nll_weight={chosen_nll_weight} (align.beta, "
                             "align.dpo_weight, align.chosen_nll_weight)")
        self.beta, self.dpo_weight, self.chosen_nll_weight = beta, dpo_weight, chosen_nll_weight

    def forward(self, batch: PreferenceBatch) -> Tuple[torch.Tensor, AlignStepMetrics]:  # type: ignore[override]
        """Loss and its detached parts."""
        out = self.model(batch)
        picked = code_log_probs(out.logits, out.labels)  # (B, M, L')
        real = out.labels >= 0
        ntp_codes = real & (batch.role == ROLE_NTP).view(-1, 1, 1)
        ntp_loss = -(picked * ntp_codes).sum() / ntp_codes.sum().clamp(min=1)
        session = picked.sum(dim=(1, 2))  # (B,) log M_{t+1}(target | H)
        chosen, rejected = batch.role == ROLE_CHOSEN, batch.role == ROLE_REJECTED
        chosen_codes = real & chosen.view(-1, 1, 1)
        chosen_nll = -(picked * chosen_codes).sum() / chosen_codes.sum().clamp(min=1)
        dpo = dpo_loss(session[chosen], session[rejected], batch.reference_log_prob[chosen],
                       batch.reference_log_prob[rejected], beta=self.beta)
        loss = (ntp_loss + self.dpo_weight * dpo.loss + self.chosen_nll_weight * chosen_nll
                + self.model.config.moe_aux_weight * out.aux_loss)
        metrics = AlignStepMetrics(loss.detach(), ntp_loss.detach(), dpo.loss.detach(), chosen_nll.detach(),
                                   out.aux_loss.detach(), dpo.accuracy.detach(), dpo.margin.detach(),
                                   chosen.sum().detach())
        return loss, metrics
