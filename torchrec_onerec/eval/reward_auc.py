"""How well a session reward model ranks logged feedback (docs/EVAL.md protocol B: reward-model quality is the AUC
of each tower on the test days, at impression level and at session level).

``evaluate_reward_model`` scores the logged sessions and, separately, every logged impression as a 1-item
session, and reports per-tower ROC AUC (torchmetrics) and positive rates; ``session_aucs`` is the session level
alone (the reward model's validation metric, ``train.reward_training``). A session's label is 1 when any of its
items has the signal; the same-length AUC compares only sessions with the same number of items, since the plain
session AUC mostly measures session length.

Shape legend: N samples, M session items, S signals.
"""

from __future__ import annotations

import logging
import math
from typing import Dict, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import binary_auroc

from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_scoring import score_sessions

LOG = logging.getLogger("torchrec_onerec")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of ``scores`` against 0/1 ``labels`` (torchmetrics, exact); NaN when the labels are one class.

    Example:
        >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
        >>> auc(np.array([0.1, 0.2]), np.array([1, 1]))
        nan
    """
    labels = np.asarray(labels).reshape(-1) > 0
    if labels.all() or not labels.any():
        return float("nan")
    value = binary_auroc(torch.as_tensor(np.asarray(scores, np.float32).reshape(-1)), torch.from_numpy(labels).long())
    return float(value)


def auc_within_groups(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """ROC AUC over the (positive, negative) pairs that share a group (e.g. sessions of the same length).

    Equal to the per-group AUCs averaged with weights P_g * N_g (positives times negatives of group g); groups
    with one class only add no pair. NaN when no group has both classes.

    Example:
        >>> scores, labels = np.array([0.9, 0.1, 0.5, 0.6]), np.array([1, 0, 0, 1])
        >>> auc(scores, labels), auc_within_groups(scores, labels, np.array([5, 5, 1, 1]))
        (1.0, 1.0)
        >>> auc_within_groups(np.array([0.2, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0]), np.array([1, 1, 2, 2]))
        0.5
    """
    scores, labels, groups = np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1) > 0, np.asarray(groups)
    total, weight = 0.0, 0.0
    for group in np.unique(groups):
        inside = groups == group
        positives = int(labels[inside].sum())
        pairs = positives * (int(inside.sum()) - positives)
        if pairs:
            total += pairs * auc(scores[inside], labels[inside])
            weight += pairs
    return total / weight if weight else float("nan")


def nan_mean(values: Sequence[float]) -> float:
    """Mean of the non-NaN values (NaN when there is none)."""
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def session_aucs(
    model: SessionRewardModel, sessions: SampleSet, *, batch_size: int, device: torch.device
) -> Dict[str, Dict[str, float]]:
    """Session-level AUC per tower of a plain model on logged sessions (label: any positive item).

    Args:
        model (SessionRewardModel): a plain model on ``device``.
        sessions (SampleSet): N sessions (``impression_samples(..., items_per_sample=m)``).
        batch_size (int): sessions per forward pass.
        device (torch.device): where the model is.

    Returns:
        Dict[str, Dict[str, float]]: per signal ``session_auc`` (all pairs of sessions),
        ``session_auc_same_length`` (only pairs of sessions with the same number of real items, so a longer
        session's higher chance of holding some positive does not count: the reward model compares sessions
        of one length) and ``session_positive_rate``; NaN where the labels are one class.
    """
    _check_signals(model, sessions, "sessions")
    scores = score_sessions(model, sessions, sessions.target[:, None, :], batch_size=batch_size, device=device)[
        :, 0
    ]  # (N, S)
    labels = np.asarray((sessions.labels > 0).any(axis=1))  # (N, S): the any rule
    lengths = sessions.target_lengths
    return {
        signal: {
            "session_auc": auc(scores[:, s], labels[:, s]),
            "session_auc_same_length": auc_within_groups(scores[:, s], labels[:, s], lengths),
            "session_positive_rate": float(labels[:, s].mean()) if len(labels) else float("nan"),
        }
        for s, signal in enumerate(model.signals)
    }


def evaluate_reward_model(
    model: SessionRewardModel, sessions: SampleSet, impressions: SampleSet, *, batch_size: int, device: torch.device
) -> Dict[str, Dict[str, float]]:
    """Per-tower AUC of a plain reward model at session level and at impression level (docs/EVAL.md protocol B).

    Session level (``session_aucs``): each logged session (a row of ``sessions``) is scored as a whole; its
    label for a signal is 1 when any of its real items has that signal (the ``any`` rule, whatever rule
    trained the model); ``session_auc_same_length`` compares only sessions of equal length. Impression level:
    each real item of ``impressions`` is scored alone, as a 1-item session with its sample's history, against
    its own label. A signal whose labels are all one class at a level gets AUC NaN there (skipped, left out of
    the means) and a warning.

    Args:
        model (SessionRewardModel): a plain model on ``device``.
        sessions (SampleSet): sessions of m items (``impression_samples(..., items_per_sample=m)``).
        impressions (SampleSet): impressions (``impression_samples(..., items_per_sample=1)``; any M works).
        batch_size (int): sessions per forward pass.
        device (torch.device): where the model is.

    Returns:
        Dict[str, Dict[str, float]]: for each signal ``session_auc``, ``session_auc_same_length``,
        ``impression_auc``, ``session_positive_rate``, ``impression_positive_rate``; under ``all``: the means
        over signals of the three AUCs and the counts ``sessions``, ``impressions``.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.reward_config import RewardModelConfig
        >>> model = SessionRewardModel(RewardModelConfig(embedding_dim=8, semantic_ids=False), 2, 5, ["vtr"])
        >>> s = SampleSet.from_samples([Sample(u, np.array([4]), np.array([u, 2]), np.full((2, 1), u, np.float32))
        ...                             for u in (0, 1)], ["vtr"])
        >>> metrics = evaluate_reward_model(model, s, s, batch_size=4, device=torch.device("cpu"))
        >>> metrics["vtr"]["session_positive_rate"], metrics["all"]["impressions"]
        (0.5, 4.0)
    """
    _check_signals(model, impressions, "impressions")
    out = session_aucs(model, sessions, batch_size=batch_size, device=device)
    real = impressions.target != PAD_ITEM  # (N, M)
    scores = score_sessions(model, impressions, impressions.target[:, :, None], batch_size=batch_size, device=device)[
        real
    ]  # (real impressions, S)
    labels = impressions.labels[real] > 0  # (real impressions, S)
    for s, signal in enumerate(model.signals):
        out[signal]["impression_auc"] = auc(scores[:, s], labels[:, s])
        out[signal]["impression_positive_rate"] = float(labels[:, s].mean()) if len(labels) else float("nan")
        for key in ("session_auc", "impression_auc"):
            if math.isnan(out[signal][key]):
                LOG.warning("reward model: the %s labels of %r are all one class; its AUC is skipped", key[:-4], signal)
    keys = ("session_auc", "session_auc_same_length", "impression_auc")
    out["all"] = {key: nan_mean([out[s][key] for s in model.signals]) for key in keys}
    out["all"].update(sessions=float(len(sessions)), impressions=float(real.sum()))
    return out


def _check_signals(model: SessionRewardModel, samples: SampleSet, name: str) -> None:
    if list(samples.signals) != model.signals:
        raise ValueError(
            f"{name} carry signals {list(samples.signals)} but the reward model's towers are "
            f"{model.signals}; build both from the same split.labels"
        )
