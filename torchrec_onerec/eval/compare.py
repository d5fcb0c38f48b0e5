"""The A/B comparison: several arms scored on the same users, each metric with a bootstrap interval, and every
arm's difference and relative lift over a baseline arm with a paired interval (``eval.bootstrap``).

An arm is anything that returned an ``EvalResult`` for the same SampleSet (the generative model, the cascade,
the popularity floor, an aligned model, an oracle): ``eval.protocols`` scores them all on the same users, so
per-user values line up row by row. Which metrics get intervals: Recall@K / NDCG@K (protocols A and B),
protocol C's ``true_reward`` and the reward model's estimates (``reward_*``), where the arms have them; the
other per-user values (legality, repeat and filler rates, list length) are reported as plain means.

Shape legend: U users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from torchrec_onerec.eval.bootstrap import (
    DEFAULT_RESAMPLES,
    Interval,
    mean_interval,
    paired_difference,
    resample_indices,
)
from torchrec_onerec.eval.protocols import ID_KEYS, EvalResult
from torchrec_onerec.eval.simulated import TRUE_REWARD

DIAGNOSTICS = ("legality", "repeat_rate", "repeat_slot_rate", "filler_rate", "list_length")


def is_compared_metric(name: str) -> bool:
    """Metrics that get intervals: ranking metrics, the true reward, reward-model estimates."""
    return name.startswith(("recall@", "ndcg@", "reward_")) or name == TRUE_REWARD


@dataclass
class Comparison:
    """Every arm's metrics with intervals, and each arm against the baseline.

    Args:
        baseline (str): the arm the others are compared with.
        arms (List[str]): arm names, in report order (baseline first).
        metrics (List[str]): the compared metrics.
        num_users (int): U, the users every arm was scored on.
        level (float): interval coverage.
        resamples (int): bootstrap resamples.
        means (Dict[str, Dict[str, Interval]]): arm -> metric -> mean with interval.
        versus (Dict[str, Dict[str, Dict[str, Interval]]]): arm (not the baseline) -> metric ->
            ``{"difference", "lift"}`` over the baseline, paired intervals.
        diagnostics (Dict[str, Dict[str, float]]): arm -> plain means of ``DIAGNOSTICS`` it has.
        info (Dict[str, Dict[str, Any]]): arm -> its ``EvalResult.info``.
    """

    baseline: str
    arms: List[str]
    metrics: List[str]
    num_users: int
    level: float
    resamples: int
    means: Dict[str, Dict[str, Interval]]
    versus: Dict[str, Dict[str, Dict[str, Interval]]]
    diagnostics: Dict[str, Dict[str, float]] = field(default_factory=dict)
    info: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {
            "baseline": self.baseline,
            "arms": self.arms,
            "metrics": self.metrics,
            "num_users": self.num_users,
            "level": self.level,
            "resamples": self.resamples,
            "means": {a: {m: ci.to_json() for m, ci in per.items()} for a, per in self.means.items()},
            "versus": {
                a: {m: {k: ci.to_json() for k, ci in d.items()} for m, d in per.items()}
                for a, per in self.versus.items()
            },
            "diagnostics": self.diagnostics,
            "info": self.info,
        }

    def to_markdown(self) -> str:
        """Per metric group (ranking, protocol C's true reward, reward-model estimates): each arm's means with
        intervals, then each arm's lift over the baseline with paired intervals; then the diagnostics."""
        pct = f"{round(self.level * 100)}%"
        lines = [
            f"Means over the same {self.num_users} users with {pct} bootstrap intervals ({self.resamples} "
            f"resamples of users); lifts relative to **{self.baseline}** with paired intervals "
            "(* = the interval of the difference excludes 0)."
        ]
        for title, group in metric_groups(self.metrics).items():
            lines += ["", f"### {title}", "", "| arm | " + " | ".join(group) + " |", "|---|" + "---|" * len(group)]
            for arm in self.arms:
                cis = [self.means[arm][m] for m in group]
                cells = " | ".join(f"{c.value:.4f} [{c.low:.4f}, {c.high:.4f}]" for c in cis)
                lines.append(f"| {arm} | {cells} |")
            for arm in self.arms[1:]:
                lifts = []
                for metric in group:
                    lift, diff = self.versus[arm][metric]["lift"], self.versus[arm][metric]["difference"]
                    star = "*" if diff.excludes_zero() else ""
                    lifts.append(
                        "n/a"
                        if np.isnan(lift.value)
                        else f"{lift.value:+.1%} [{lift.low:+.1%}, {lift.high:+.1%}]{star}"
                    )
                lines.append(f"| lift of {arm} | " + " | ".join(lifts) + " |")
        if any(self.diagnostics.values()):
            keys = [k for k in DIAGNOSTICS if any(k in d for d in self.diagnostics.values())]
            lines += [
                "",
                "### Diagnostics (means)",
                "",
                "| arm | " + " | ".join(keys) + " |",
                "|---|" + "---|" * len(keys),
            ]
            for arm in self.arms:
                lines.append(
                    f"| {arm} | "
                    + " | ".join(f"{self.diagnostics[arm][k]:.4f}" if k in self.diagnostics[arm] else "-" for k in keys)
                    + " |"
                )
        return "\n".join(lines) + "\n"


def metric_groups(metrics: Sequence[str]) -> Dict[str, List[str]]:
    """The compared metrics by kind, in report order (empty groups left out).

    Example:
        >>> for group, metrics in metric_groups(["ndcg@5", "true_reward", "reward_vtr_max"]).items():
        ...     print(group, metrics)
        Ranking (docs/EVAL.md A/B) ['ndcg@5']
        True reward (protocol C) ['true_reward']
        Reward-model estimates ['reward_vtr_max']
    """
    groups = {
        "Ranking (docs/EVAL.md A/B)": [m for m in metrics if m.startswith(("recall@", "ndcg@"))],
        "True reward (protocol C)": [m for m in metrics if m == TRUE_REWARD],
        "Reward-model estimates": [m for m in metrics if m.startswith("reward_")],
    }
    return {title: group for title, group in groups.items() if group}


def compare_arms(
    results: Mapping[str, EvalResult],
    *,
    baseline: str,
    metrics: Optional[Sequence[str]] = None,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> Comparison:
    """Compare arms scored on the same users.

    Args:
        results (Mapping[str, EvalResult]): arm name -> its evaluation on one SampleSet (same users, same order).
        baseline (str): the arm to compare the others with (the cascade in the product's report).
        metrics (Sequence[str] | None): metrics to compare; None = every ``is_compared_metric`` that all arms have.
        resamples (int): bootstrap resamples (the same resamples serve every arm and metric).
        level (float): interval coverage.
        seed (int): seed of the resamples.

    Returns:
        Comparison.

    Example:
        >>> users = {"user": np.arange(3), "sample": np.arange(3)}
        >>> a = EvalResult({}, {**users, "ndcg@5": np.array([0.5, 0.2, 0.8])}, np.zeros((3, 1, 1)), np.zeros((3, 1)))
        >>> b = EvalResult({}, {**users, "ndcg@5": np.array([0.25, 0.1, 0.4])}, np.zeros((3, 1, 1)), np.zeros((3, 1)))
        >>> c = compare_arms({"base": b, "new": a}, baseline="base", resamples=50)
        >>> round(c.versus["new"]["ndcg@5"]["lift"].value, 3), c.versus["new"]["ndcg@5"]["difference"].excludes_zero()
        (1.0, True)
    """
    if baseline not in results:
        raise ValueError(f"baseline={baseline!r} is not one of the arms {list(results)}; name an arm that ran")
    arms = [baseline] + [a for a in results if a != baseline]
    reference = results[baseline].per_user
    for arm in arms:
        per_user = results[arm].per_user
        for key in ID_KEYS:
            if key in reference and (key not in per_user or not np.array_equal(per_user[key], reference[key])):
                raise ValueError(
                    f"arm {arm!r} was scored on other users than {baseline!r} ({key} differs); "
                    "evaluate every arm on the same SampleSet"
                )
    common = set.intersection(*(set(results[a].per_user) for a in arms))
    if metrics is None:
        metrics = [m for m in reference if m in common and is_compared_metric(m)]
    missing = [m for m in metrics if m not in common]
    if missing:
        raise ValueError(f"metrics {missing} are missing from some arms (every arm has: {sorted(common)})")
    if not metrics:
        raise ValueError(f"no metric to compare: the arms share only {sorted(common)}")
    num_users = len(next(iter(reference.values())))
    indices = resample_indices(num_users, resamples=resamples, seed=seed)
    means = {a: {m: mean_interval(results[a].per_user[m], indices, level=level) for m in metrics} for a in arms}
    versus = {
        a: {m: paired_difference(results[a].per_user[m], reference[m], indices, level=level) for m in metrics}
        for a in arms
        if a != baseline
    }
    diagnostics = {
        a: {k: float(np.mean(results[a].per_user[k])) for k in DIAGNOSTICS if k in results[a].per_user} for a in arms
    }
    return Comparison(
        baseline,
        arms,
        list(metrics),
        num_users,
        level,
        resamples,
        means,
        versus,
        diagnostics,
        {a: dict(results[a].info) for a in arms},
    )
