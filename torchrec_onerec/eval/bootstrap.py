"""Bootstrap confidence intervals over users: one arm's mean, and paired differences and lifts between arms.

Every arm of a comparison is scored on the same users (``eval.protocols``), so per-user values line up and the
paired bootstrap applies: resample users with replacement, recompute each statistic on the resample, and take
the percentile interval. Pairing removes the between-user variance that both arms share, which makes the
interval of a difference much narrower than two separate intervals would suggest.

Shape legend: U users, B bootstrap resamples.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np

DEFAULT_RESAMPLES = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile confidence interval.

    Args:
        value (float): the statistic on the observed users.
        low (float): lower end of the interval.
        high (float): upper end.
        level (float): coverage the interval was built for (e.g. 0.95).
    """

    value: float
    low: float
    high: float
    level: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (a difference that is significant at ``level``)."""
        return self.low > 0 or self.high < 0

    def to_json(self) -> Dict[str, float]:
        return asdict(self)


def resample_indices(num_users: int, *, resamples: int, seed: int) -> np.ndarray:
    """[B, U] user indices drawn with replacement; the same draw serves every arm (paired bootstrap).

    Example:
        >>> resample_indices(3, resamples=2, seed=0).shape
        (2, 3)
    """
    if num_users < 1:
        raise ValueError(f"num_users={num_users}: a bootstrap needs at least one user")
    if resamples < 1:
        raise ValueError(f"resamples={resamples} must be >= 1")
    return np.random.default_rng(seed).integers(0, num_users, size=(resamples, num_users))


def _interval(value: float, draws: np.ndarray, level: float) -> Interval:
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return Interval(value, float("nan"), float("nan"), level)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return Interval(float(value), float(low), float(high), level)


def _check(values: np.ndarray, name: str, level: float) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty [U] array, got shape {values.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must lie in (0, 1), e.g. 0.95")
    return values


def mean_interval(values: np.ndarray, indices: np.ndarray, *, level: float = 0.95) -> Interval:
    """The mean of per-user ``values`` [U] and its bootstrap interval over the resamples ``indices`` [B, U].

    Example:
        >>> idx = resample_indices(4, resamples=200, seed=0)
        >>> ci = mean_interval(np.array([1.0, 1.0, 1.0, 1.0]), idx)
        >>> (ci.value, ci.low, ci.high)
        (1.0, 1.0, 1.0)
    """
    values = _check(values, "values", level)
    return _interval(float(values.mean()), values[indices].mean(axis=1), level)


def paired_difference(
    arm: np.ndarray, baseline: np.ndarray, indices: np.ndarray, *, level: float = 0.95
) -> Dict[str, Interval]:
    """Difference and relative lift of an arm over a baseline on the same users, with paired intervals.

    Args:
        arm (np.ndarray): [U] per-user values of the arm.
        baseline (np.ndarray): [U] per-user values of the baseline, same users in the same order.
        indices (np.ndarray): [B, U] resamples (``resample_indices``), shared by every arm of the comparison.
        level (float): interval coverage.

    Returns:
        ``{"difference": mean(arm) - mean(baseline), "lift": difference / mean(baseline)}`` as Intervals; the
        lift is nan (and its interval too) when the baseline's mean is 0.

    Example:
        >>> idx = resample_indices(3, resamples=100, seed=0)
        >>> out = paired_difference(np.array([2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0]), idx)
        >>> out["difference"].value, round(out["difference"].low, 6), round(out["lift"].value, 3)
        (1.0, 1.0, 0.5)
    """
    arm = _check(arm, "arm", level)
    baseline = _check(baseline, "baseline", level)
    if arm.shape != baseline.shape:
        raise ValueError(
            f"arm has {arm.size} users, baseline {baseline.size}: a paired comparison needs the same users"
        )
    diff_draws = arm[indices].mean(axis=1) - baseline[indices].mean(axis=1)
    base_draws = baseline[indices].mean(axis=1)
    base = float(baseline.mean())
    difference = float(arm.mean()) - base
    if base == 0:
        lift = Interval(float("nan"), float("nan"), float("nan"), level)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):  # a resample whose baseline mean is 0 is dropped
            lift = _interval(difference / base, diff_draws / base_draws, level)
    return {"difference": _interval(difference, diff_draws, level), "lift": lift}
