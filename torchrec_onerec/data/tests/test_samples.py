"""Tests of the columnar SampleSet: indexing, subsets, jagged gathers, pickling and summaries."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from torchrec_onerec.data.samples import Sample, SampleSet, gather_jagged, take_slices


def _set() -> SampleSet:
    samples = [
        Sample(0, np.array([1, 2, 3]), np.array([4, 5, -1]), np.array([[1, 0], [0, 1], [0, 0]], np.float32)),
        Sample(1, np.array([], dtype=np.int64), np.array([6, -1, -1]), np.array([[1, 1], [0, 0], [0, 0]], np.float32)),
        Sample(2, np.array([7]), np.array([8, 9, 10]), np.zeros((3, 2), np.float32)),
    ]
    return SampleSet.from_samples(samples, ["vtr", "ltr"])


def test_getitem_round_trips_samples() -> None:
    s = _set()
    assert len(s) == 3
    assert s[0].history.tolist() == [1, 2, 3]
    assert s[1].history.tolist() == []
    assert s[-1].user == 2 and s[-1].target.tolist() == [8, 9, 10]
    assert s[1].labels.tolist() == [[1, 1], [0, 0], [0, 0]]
    with pytest.raises(IndexError, match="out of range"):
        s[3]


def test_subset_reorders_and_repeats() -> None:
    s = _set().subset([2, 0, 2])
    assert s.user.tolist() == [2, 0, 2]
    assert [s[i].history.tolist() for i in range(3)] == [[7], [1, 2, 3], [7]]
    assert s.history_offsets.tolist() == [0, 1, 4, 5]
    assert s.labels.shape == (3, 3, 2)
    assert len(_set().subset([])) == 0
    with pytest.raises(IndexError, match="subset indices"):
        _set().subset([5])


def test_gather_matches_python_slicing() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 6, 50)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.integers(0, 100, offsets[-1])
    rows = rng.integers(0, 50, 80)
    got_values, got_offsets = gather_jagged(values, offsets, rows)
    expected = [values[offsets[r] : offsets[r + 1]].tolist() for r in rows]
    assert [got_values[got_offsets[k] : got_offsets[k + 1]].tolist() for k in range(80)] == expected
    v, o = take_slices(values, np.array([3]), np.array([0]))
    assert v.tolist() == [] and o.tolist() == [0, 0]


def test_validation_and_pickle() -> None:
    s = _set()
    assert pickle.loads(pickle.dumps(s)).history_values.tolist() == s.history_values.tolist()
    with pytest.raises(ValueError, match="labels has shape"):
        SampleSet(s.user, s.history_values, s.history_offsets, s.target, s.labels[..., :1], ["vtr", "ltr"])
    bad = s.labels.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        SampleSet(s.user, s.history_values, s.history_offsets, s.target, bad, ["vtr", "ltr"])
    with pytest.raises(ValueError, match="history_offsets"):
        SampleSet(s.user, s.history_values, s.history_offsets[:-1], s.target, s.labels, ["vtr", "ltr"])


def test_summary() -> None:
    summary = _set().summary()
    assert summary["count"] == 3 and summary["users"] == 3
    assert summary["history_length"]["mean"] == pytest.approx(4 / 3)
    assert summary["history_length"]["median"] == 1.0
    assert summary["target_length"]["histogram"] == {1: 1, 2: 1, 3: 1}
    # real target items: 6 slots; vtr is 1 at (0,0) and (1,0) -> 2/6; ltr at (0,1) and (1,0) -> 2/6
    assert summary["label_rates"] == pytest.approx({"vtr": 2 / 6, "ltr": 2 / 6})
    assert SampleSet.empty(3, ["vtr"]).summary()["count"] == 0
