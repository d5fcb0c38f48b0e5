"""The A/B harness: bootstrap intervals cover at their stated rate, and a known-better arm is found."""

from __future__ import annotations

import numpy as np
import pytest

from torchrec_onerec.data.samples import PAD_ITEM
from torchrec_onerec.datasets.synthetic import load_synthetic
from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
from torchrec_onerec.eval.bootstrap import mean_interval, paired_difference, resample_indices
from torchrec_onerec.eval.compare import compare_arms
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.simulated import TRUE_REWARD, add_true_rewards, served_sessions


def test_mean_interval_covers_the_true_mean_at_about_the_stated_rate():
    rng = np.random.default_rng(0)
    trials, covered = 200, 0
    for t in range(trials):
        values = rng.exponential(2.0, size=150)  # skewed, true mean 2.0
        ci = mean_interval(values, resample_indices(150, resamples=400, seed=t), level=0.9)
        covered += ci.low <= 2.0 <= ci.high
    assert 0.83 <= covered / trials <= 0.96  # 0.9 nominal; percentile bootstrap runs slightly under on skewed data


def test_paired_difference_is_narrower_than_unpaired_and_centred():
    rng = np.random.default_rng(1)
    user_effect = rng.normal(0, 5, size=300)
    base = user_effect + rng.normal(0, 0.1, size=300)
    arm = base + 0.2
    idx = resample_indices(300, resamples=500, seed=0)
    diff = paired_difference(arm, base, idx)["difference"]
    assert diff.low <= 0.2 <= diff.high and diff.excludes_zero()
    separate = mean_interval(arm, idx)
    assert diff.high - diff.low < 0.1 * (separate.high - separate.low)


def test_paired_difference_of_equal_arms_does_not_exclude_zero():
    values = np.random.default_rng(2).normal(size=100)
    out = paired_difference(values, values.copy(), resample_indices(100, resamples=200, seed=0))
    assert out["difference"].value == 0.0 and not out["difference"].excludes_zero()


def _arm(users: np.ndarray, sessions: np.ndarray) -> EvalResult:
    U = len(users)
    per_user = {"user": users, "sample": np.arange(U)}
    return EvalResult({}, per_user, sessions[:, None, :], np.zeros((U, 1), np.float32))


def test_oracle_arm_beats_random_arm_in_the_simulated_ab_test():
    data, world = load_synthetic(SyntheticConfig(num_users=200, num_items=100, num_topics=5), seed=3)
    users = np.arange(120)
    rng = np.random.default_rng(0)
    random_sessions = np.stack([rng.choice(100, size=4, replace=False) for _ in users])
    oracle = add_true_rewards(world, data, _arm(users, world.best_items(users, 4)))
    random = add_true_rewards(world, data, _arm(users, random_sessions))
    comparison = compare_arms({"random": random, "oracle": oracle}, baseline="random", resamples=300)
    assert comparison.metrics == [TRUE_REWARD]
    versus = comparison.versus["oracle"][TRUE_REWARD]
    assert versus["difference"].excludes_zero() and versus["difference"].low > 0
    assert versus["lift"].value > 0.5
    assert "oracle" in comparison.to_markdown() and "random" in comparison.to_markdown()


def test_served_session_is_the_best_scored_and_fillers_earn_nothing():
    data, world = load_synthetic(SyntheticConfig(num_users=20, num_items=30, num_topics=3), seed=0)
    sessions = np.array([[[1, 2], [PAD_ITEM, PAD_ITEM]]])
    result = EvalResult(
        {}, {"user": np.array([0]), "sample": np.array([0])}, sessions, np.array([[-1.0, -np.inf]], np.float32)
    )
    assert served_sessions(result).tolist() == [[1, 2]]
    filler_first = EvalResult(
        {}, {"user": np.array([0]), "sample": np.array([0])}, sessions[:, ::-1], np.array([[-np.inf, -1.0]], np.float32)
    )
    assert add_true_rewards(world, data, filler_first).metrics[TRUE_REWARD] == pytest.approx(
        float(world.session_reward(np.array([0]), np.array([[1, 2]]))[0])
    )


def test_compare_refuses_arms_scored_on_other_users():
    a = _arm(np.arange(3), np.zeros((3, 2), np.int64))
    b = _arm(np.arange(3), np.zeros((3, 2), np.int64))
    b.per_user["user"] = np.array([0, 1, 5])
    a.per_user["ndcg@5"] = b.per_user["ndcg@5"] = np.zeros(3)
    with pytest.raises(ValueError, match="other users"):
        compare_arms({"a": a, "b": b}, baseline="a")
    with pytest.raises(ValueError, match="baseline='c'"):
        compare_arms({"a": a, "b": b}, baseline="c")
