"""Best-of-n re-selection: the reward picks among the n most probable sessions only, the rest keep their places,
fillers stay last, and every metric follows the new order."""

from __future__ import annotations

import numpy as np
import pytest

from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.eval.protocols import EvalResult, score_sessions
from torchrec_onerec.eval.session_selection import reward_order, select_by_reward

NUM_ITEMS = 20


def _evaluated(sessions: np.ndarray, scores: np.ndarray, targets: np.ndarray) -> tuple[EvalResult, SampleSet]:
    U = len(sessions)
    samples = SampleSet.from_samples(
        [Sample(u, np.array([19]), targets[u], np.zeros((targets.shape[1], 0), np.float32)) for u in range(U)], []
    )
    metrics, per_user = score_sessions(
        "B", sessions, scores, samples.target, ks=[5], num_items=NUM_ITEMS, legality=np.ones(U)
    )
    per_user.update(user=np.arange(U), sample=np.arange(U))
    return EvalResult(metrics, per_user, sessions, scores.astype(np.float32), {"arm": "generative"}), samples


def _by_first_item(samples: SampleSet, sessions: np.ndarray) -> np.ndarray:
    """A reward that prefers a higher first item; it records the shapes it was called with."""
    _by_first_item.calls.append(sessions.shape)  # type: ignore[attr-defined]
    return sessions[:, :, 0].astype(np.float64)


def test_only_the_n_most_probable_compete_and_the_rest_keep_their_places() -> None:
    _by_first_item.calls = []  # type: ignore[attr-defined]
    sessions = np.array([[[1, 2], [9, 3], [5, 4], [18, 6]], [[7, 8], [2, 1], [-1, -1], [-1, -1]]])
    scores = np.array([[-1.0, -2.0, -3.0, -4.0], [-1.0, -2.0, -np.inf, -np.inf]])
    result, samples = _evaluated(sessions, scores, np.array([[9, 3], [2, 1]]))
    chosen = select_by_reward(result, samples, _by_first_item, 3, protocol="B", ks=[5], num_items=NUM_ITEMS)
    assert _by_first_item.calls == [(2, 3, 2)]  # type: ignore[attr-defined]
    assert chosen.sessions[0, :, 0].tolist() == [9, 5, 1, 18]  # 18 is 4th by probability: it does not compete
    assert chosen.sessions[1, :, 0].tolist() == [7, 2, -1, -1]  # the filler stays behind the real sessions
    assert chosen.scores.tolist()[0] == [0.0, -1.0, -2.0, -3.0]
    assert chosen.scores[1, 2:].tolist() == [-np.inf, -np.inf]
    # user 0's target is now served first; user 1 still gets it second
    assert chosen.per_user["recall@m"].tolist() == [1.0, 0.0]
    assert result.per_user["recall@m"].tolist() == [0.0, 0.0]  # the input is left as it was
    assert chosen.info == {"arm": "generative", "select_top_n": 3}
    assert chosen.per_user["sample"].tolist() == [0, 1]


def test_one_candidate_serves_what_the_search_served() -> None:
    rng = np.random.default_rng(0)
    sessions = np.stack([rng.permutation(NUM_ITEMS)[:12].reshape(4, 3) for _ in range(5)])
    scores = -np.sort(rng.random((5, 4)), axis=1)
    result, samples = _evaluated(sessions, scores, rng.integers(0, NUM_ITEMS, (5, 3)))
    chosen = select_by_reward(result, samples, _by_first_item, 1, protocol="B", ks=[5], num_items=NUM_ITEMS)
    assert np.array_equal(chosen.sessions, sessions)
    for name, values in result.per_user.items():
        assert np.allclose(chosen.per_user[name], values), name


def test_ties_keep_the_probability_order() -> None:
    assert reward_order(np.array([[1.0, 2.0, 2.0, 1.0]]), np.ones((1, 4), bool)).tolist() == [[1, 2, 0, 3]]


@pytest.mark.parametrize("top_n", [0, 5])
def test_top_n_outside_the_returned_sessions_is_refused(top_n: int) -> None:
    result, samples = _evaluated(np.array([[[1], [2], [3], [4]]]), -np.arange(4.0)[None], np.array([[1]]))
    with pytest.raises(ValueError, match=rf"top_n={top_n} must lie in \[1, 4\].*eval.num_return"):
        select_by_reward(result, samples, _by_first_item, top_n, protocol="B", ks=[5], num_items=NUM_ITEMS)


def test_a_reward_of_the_wrong_shape_is_refused() -> None:
    result, samples = _evaluated(np.array([[[1], [2]]]), np.array([[-1.0, -2.0]]), np.array([[1]]))
    with pytest.raises(ValueError, match=r"reward_fn returned shape \(1,\), expected \(1, 2\)"):
        select_by_reward(result, samples, lambda s, x: np.zeros(1), 2, protocol="B", ks=[5], num_items=NUM_ITEMS)
