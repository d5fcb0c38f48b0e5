"""The module DMP shards for preference alignment (docs/METHOD.md section 4, step 4: L = L_NTP + lambda * L_DPO) and
the batch it reads.

One batch holds up to four kinds of rows, all as ordinary semantic-ID samples (so the sharded EmbeddingCollection
is called once per forward, on ``batch.features``, as ``TrainPipelineSparseDist`` needs):

- NTP rows (``role`` 0): training samples with their logged target session; they give L_NTP;
- chosen rows (``role`` 1): for every sample of the batch that has a preference pair, its user and history with
  the chosen session S^w as the target;
- rejected rows (``role`` 2): the same with the rejected session S^l, in the same order as the chosen rows;
- GRPO rows (``role`` 3, ``align.objective=grpo`` instead of the pairs): for every sample with a candidate group
  (``groups``), one row per kept candidate, with its advantage.

One teacher-forced forward over all rows gives the code log-probabilities; a preference row's sum over its codes
is log M_{t+1}(S | H), and ``reference_log_prob`` carries the frozen reference's log M_t(S | H), computed once
per iteration (``pairs``, ``groups``), so the reference model never runs here. The loss is

    L = mean cross-entropy over the NTP rows' codes + lambda * L_DPO (mean over the batch's pairs)
        + lambda * L_GRPO (mean over the batch's GRPO rows, ``grpo``)
        + mu * mean cross-entropy over the chosen rows' codes (``align.chosen_nll_weight``, 0 by default)
        + moe_aux_weight * MoE balance loss,

so a sample with a pair (or group) gets L_NTP plus its preference term and the others L_NTP alone (mixing them
in one batch keeps a single pipeline and one input_dist per step; a batch without pairs has L_DPO = 0, one
without GRPO rows L_GRPO = 0). The encoder runs once per row, i.e. three times for a sample with a pair: the
price of keeping the batch an ordinary KJT batch.

Shape legend: B rows, M session items, L' code levels, K codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, NamedTuple, Protocol, Tuple

import numpy as np
import torch

from torchrec_onerec.alignment.dpo import dpo_loss
from torchrec_onerec.alignment.grpo import grpo_loss
from torchrec_onerec.alignment.pairs import ROLE_CHOSEN, ROLE_GROUP, ROLE_NTP, ROLE_REJECTED, ExtraRows
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, SemanticIdTransform
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule

__all__ = [
    "ROLE_CHOSEN",
    "ROLE_GROUP",
    "ROLE_NTP",
    "ROLE_REJECTED",
    "AlignStepMetrics",
    "PreferenceBatch",
    "PreferenceTrainStep",
    "code_log_probs",
    "preference_batch",
]


@dataclass
class PreferenceBatch(SemanticIdBatch):
    """A ``SemanticIdBatch`` of NTP rows and DPO or GRPO rows (module docstring); TorchRec ``Pipelineable``.

    Args:
        role (torch.Tensor): [B] int64: 0 NTP row, 1 chosen row, 2 rejected row (the k-th chosen row and the
            k-th rejected row are one pair), 3 GRPO row.
        reference_log_prob (torch.Tensor): [B] float32 log M_t(target | H) of the reference model at chosen,
            rejected and GRPO rows, 0 at NTP rows.
        advantage (torch.Tensor): [B] float32 the advantage of GRPO rows, 0 elsewhere.

    The other fields are those of ``SemanticIdBatch``.
    """

    role: torch.Tensor
    reference_log_prob: torch.Tensor
    advantage: torch.Tensor


class PreferenceData(Protocol):
    """What a preference batch reads its extra rows from: ``PreferencePairs`` or ``groups.CandidateGroups``."""

    sample_rows: np.ndarray

    def __len__(self) -> int: ...

    def extra_rows(self, index: np.ndarray) -> ExtraRows: ...

    def summary(self) -> Dict[str, float]: ...


def preference_batch(
    samples: SampleSet, rows: np.ndarray, prefs: PreferenceData, index: np.ndarray, transform: SemanticIdTransform
) -> PreferenceBatch:
    """The batch of training rows ``rows`` plus the rows of pairs (or groups) ``index``.

    Args:
        samples (SampleSet): the training samples.
        rows (np.ndarray): [B_ntp] rows of ``samples`` (the NTP rows).
        prefs (PreferenceData): the iteration's pairs or groups.
        index (np.ndarray): [P_b] pairs or groups to add (normally those whose ``sample_rows`` are in ``rows``).
        transform (SemanticIdTransform): items -> semantic codes.

    Returns:
        PreferenceBatch: the NTP rows first, then ``prefs.extra_rows(index)`` (for pairs: the chosen rows, then
        the rejected ones; for groups: G rows per group).

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
    extra = prefs.extra_rows(np.asarray(index, dtype=np.int64))
    B = len(rows)
    extended = samples.subset(np.concatenate([rows, extra.sample_rows]))  # fresh arrays: safe to overwrite
    extended.target[B:] = extra.target
    extended.labels[B:] = 0.0  # generated sessions have no logged feedback
    base = transform(collate_samples(extended))
    role = torch.cat([torch.full((B,), ROLE_NTP), torch.from_numpy(extra.role)])
    reference = torch.cat([torch.zeros(B), torch.from_numpy(extra.reference).float()])
    advantage = torch.cat([torch.zeros(B), torch.from_numpy(extra.advantage).float()])
    return PreferenceBatch(
        **{f.name: getattr(base, f.name) for f in fields(SemanticIdBatch)},
        role=role,
        reference_log_prob=reference,
        advantage=advantage,
    )


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
        grpo_loss (torch.Tensor): [] L_GRPO over the batch's GRPO rows (0 without them).
        grpo_ratio (torch.Tensor): [] their mean per-code ratio to the reference.
        grpo_clipped (torch.Tensor): [] the share of them whose ratio the clip holds.
        group_rows (torch.Tensor): [] number of GRPO rows (weights the GRPO numbers when averaging steps).
    """

    loss: torch.Tensor
    ntp_loss: torch.Tensor
    dpo_loss: torch.Tensor
    chosen_nll: torch.Tensor
    aux_loss: torch.Tensor
    dpo_accuracy: torch.Tensor
    reward_margin: torch.Tensor
    pairs: torch.Tensor
    grpo_loss: torch.Tensor
    grpo_ratio: torch.Tensor
    grpo_clipped: torch.Tensor
    group_rows: torch.Tensor


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
    """``forward(batch) -> (loss, AlignStepMetrics)``, L = L_NTP + lambda * (L_DPO + L_GRPO) + mu * L_chosen.

    Parameter names are those of ``OneRecTrainStep`` (the model sits at ``self.model``), so the plain state dict
    of a trained model loads into it and ``export.gather_model_state`` reads it back.

    Args:
        model (OneRecModel): the policy M_{t+1} (meta-built for DMP).
        beta (float): DPO temperature (``align.beta``).
        dpo_weight (float): lambda (``align.dpo_weight``), the weight of the preference loss: L_DPO over the
            batch's pairs, or L_GRPO over its GRPO rows (a batch holds one kind or the other).
        chosen_nll_weight (float): mu (``align.chosen_nll_weight``).
        grpo_clip (float): eps of L_GRPO (``align.grpo_clip``).

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

    def __init__(
        self,
        model: OneRecModel,
        *,
        beta: float,
        dpo_weight: float,
        chosen_nll_weight: float = 0.0,
        grpo_clip: float = 0.2,
    ) -> None:
        super().__init__(model)
        if beta <= 0 or dpo_weight < 0 or chosen_nll_weight < 0 or not 0 < grpo_clip < 1:
            raise ValueError(
                f"need beta > 0, dpo_weight >= 0, chosen_nll_weight >= 0 and grpo_clip in (0, 1), got "
                f"beta={beta}, dpo_weight={dpo_weight}, chosen_nll_weight={chosen_nll_weight}, "
                f"grpo_clip={grpo_clip} (align.beta, align.dpo_weight, align.chosen_nll_weight, "
                "align.grpo_clip)"
            )
        self.beta, self.dpo_weight, self.chosen_nll_weight = beta, dpo_weight, chosen_nll_weight
        self.grpo_clip = grpo_clip

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
        dpo = dpo_loss(
            session[chosen],
            session[rejected],
            batch.reference_log_prob[chosen],
            batch.reference_log_prob[rejected],
            beta=self.beta,
        )
        group = batch.role == ROLE_GROUP
        grpo = grpo_loss(
            session, batch.reference_log_prob, batch.advantage, real.sum(dim=(1, 2)).float(), group, clip=self.grpo_clip
        )
        loss = (
            ntp_loss
            + self.dpo_weight * (dpo.loss + grpo.loss)
            + self.chosen_nll_weight * chosen_nll
            + self.model.config.moe_aux_weight * out.aux_loss
        )
        metrics = AlignStepMetrics(
            loss.detach(),
            ntp_loss.detach(),
            dpo.loss.detach(),
            chosen_nll.detach(),
            out.aux_loss.detach(),
            dpo.accuracy.detach(),
            dpo.margin.detach(),
            chosen.sum().detach(),
            grpo.loss.detach(),
            grpo.ratio,
            grpo.clipped.detach(),
            group.sum().detach(),
        )
        return loss, metrics
