"""The reward model's estimates of the sessions an arm serves (the OneRec paper's offline metric).

Shape legend: U users, R returned sessions per user, S signals.
"""

from __future__ import annotations

import numpy as np
import torch

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_scoring import score_sessions


def add_reward_estimates(
    model: SessionRewardModel, samples: SampleSet, result: EvalResult, *, batch_size: int
) -> EvalResult:
    """The reward model's estimate of each signal over an arm's returned sessions (the OneRec paper's offline
    metric): per user, ``reward_<signal>_mean`` and ``reward_<signal>_max`` over its real sessions (fillers left
    out), and ``reward_served``, the model's scalar reward of the session the user is served (the best-scored
    one, as protocol C serves it); added to ``result`` in place."""
    users = samples.subset(result.per_user["sample"])
    probabilities = score_sessions(
        model, users, result.sessions, batch_size=batch_size, device=next(model.parameters()).device
    )  # [U, R, S]
    real = np.isfinite(result.scores)[:, :, None]  # [U, R, 1]
    count = np.maximum(real.sum(axis=1), 1)
    means = np.where(real, probabilities, 0.0).sum(axis=1) / count  # [U, S]
    maxima = np.where(real, probabilities, -np.inf).max(axis=1)
    maxima = np.where(np.isfinite(maxima), maxima, 0.0)
    for s, signal in enumerate(model.signals):
        for name, values in ((f"reward_{signal}_mean", means[:, s]), (f"reward_{signal}_max", maxima[:, s])):
            result.per_user[name] = values.astype(np.float64)
            result.metrics[name] = float(values.mean())
    best = np.argmax(np.where(np.isfinite(result.scores), result.scores, -np.inf), axis=1)
    served = model.reward(torch.from_numpy(probabilities[np.arange(len(best)), best])).numpy().astype(np.float64)
    result.per_user["reward_served"] = served
    result.metrics["reward_served"] = float(served.mean())
    return result
