"""Columnar training and evaluation samples: a user, a history, a target session and its feedback labels.

A ``SampleSet`` holds N samples as numpy arrays (fast to slice, cheap to pickle into DataLoader workers): the
history is jagged (``history_values`` + ``history_offsets``), the target session is a dense ``[N, M]`` matrix
padded with -1 and the labels a dense ``[N, M, S]`` matrix. The splits of docs/EVAL.md protocols A and B
(``torchrec_onerec.data.splits``) produce them; ``torchrec_onerec.data.batch`` turns slices of them into
TorchRec batches.

Shape legend: N samples, M session items (m), S reward signals, H history items (at most n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

PAD_ITEM = -1


def take_slices(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the slices ``values[starts[k]:starts[k] + lengths[k]]`` into a jagged array, vectorised.

    Args:
        values (np.ndarray): [V] the source array.
        starts (np.ndarray): [K] int start of each slice.
        lengths (np.ndarray): [K] int length of each slice (>= 0).

    Returns:
        (values [sum lengths], offsets [K + 1] int64) of the slices, in order.

    Example:
        >>> v, o = take_slices(np.array([10, 11, 12, 13]), np.array([2, 0]), np.array([2, 1]))
        >>> v.tolist(), o.tolist()
        ([12, 13, 10], [0, 2, 3])
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    positions = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    return values[positions], offsets


def gather_jagged(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Select rows of a jagged array, vectorised.

    Args:
        values (np.ndarray): [sum of lengths] the concatenated rows.
        offsets (np.ndarray): [R + 1] int64, row r is ``values[offsets[r]:offsets[r + 1]]``.
        rows (np.ndarray): [K] int row indices (any order, repeats allowed).

    Returns:
        (values [sum of selected lengths], offsets [K + 1] int64) of the selected rows, in ``rows`` order.

    Example:
        >>> v, o = gather_jagged(np.array([1, 2, 3, 4]), np.array([0, 1, 1, 4]), np.array([2, 0]))
        >>> v.tolist(), o.tolist()
        ([2, 3, 4, 1], [0, 3, 4])
    """
    rows = np.asarray(rows, dtype=np.int64)
    return take_slices(values, offsets[rows], offsets[rows + 1] - offsets[rows])


@dataclass
class Sample:
    """One sample, as ``SampleSet[i]`` returns it.

    Args:
        user (int): the user id.
        history (np.ndarray): [H] int64 item ids, oldest to newest.
        target (np.ndarray): [M] int64 item ids of the target session, padded with -1.
        labels (np.ndarray): [M, S] float32 feedback per target item (0 for padding).
    """

    user: int
    history: np.ndarray
    target: np.ndarray
    labels: np.ndarray


@dataclass
class SampleSet:
    """N samples in columnar form.

    Args:
        user (np.ndarray): [N] int64 user ids.
        history_values (np.ndarray): [sum H] int64 history item ids, each row oldest to newest.
        history_offsets (np.ndarray): [N + 1] int64, sample i's history is
            ``history_values[history_offsets[i]:history_offsets[i + 1]]``.
        target (np.ndarray): [N, M] int64 target item ids, real items first, then -1 padding.
        labels (np.ndarray): [N, M, S] float32 feedback of each target item (0 at padding), NaN-free.
        signals (List[str]): the S signal names of the last label axis (e.g. ``["swt", "vtr", "ltr"]``).

    Example:
        >>> s = SampleSet.from_samples(
        ...     [Sample(3, np.array([5, 6]), np.array([7, -1]), np.array([[1.0], [0.0]], dtype=np.float32))],
        ...     signals=["vtr"])
        >>> len(s), s[0].history.tolist(), s.target.shape, s.labels.shape
        (1, [5, 6], (1, 2), (1, 2, 1))
    """

    user: np.ndarray
    history_values: np.ndarray
    history_offsets: np.ndarray
    target: np.ndarray
    labels: np.ndarray
    signals: List[str]

    def __post_init__(self) -> None:
        n = len(self.user)
        if self.history_offsets.shape != (n + 1,):
            raise ValueError(
                f"history_offsets has shape {self.history_offsets.shape}, expected ({n + 1},) for {n} samples"
            )
        if int(self.history_offsets[0]) != 0 or int(self.history_offsets[-1]) != len(self.history_values):
            raise ValueError("history_offsets must start at 0 and end at len(history_values)")
        if self.target.ndim != 2 or self.target.shape[0] != n:
            raise ValueError(f"target has shape {self.target.shape}, expected ({n}, M)")
        expected = (n, self.target.shape[1], len(self.signals))
        if self.labels.shape != expected:
            raise ValueError(f"labels has shape {self.labels.shape}, expected {expected} (N, M, S=len(signals))")
        if np.isnan(self.labels).any():
            raise ValueError("labels contain NaN; fill missing feedback before building a SampleSet")

    @classmethod
    def empty(cls, session_items: int, signals: Sequence[str]) -> "SampleSet":
        """A set with no samples, M = ``session_items`` and the given signals."""
        return cls(
            user=np.zeros(0, dtype=np.int64),
            history_values=np.zeros(0, dtype=np.int64),
            history_offsets=np.zeros(1, dtype=np.int64),
            target=np.zeros((0, session_items), dtype=np.int64),
            labels=np.zeros((0, session_items, len(signals)), dtype=np.float32),
            signals=list(signals),
        )

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], signals: Sequence[str]) -> "SampleSet":
        """Stack ``Sample`` objects (all with the same M and S) into a set.

        Args:
            samples (Sequence[Sample]): at least one sample.
            signals (Sequence[str]): names of the S label columns.

        Returns:
            SampleSet: N = ``len(samples)``.
        """
        if len(samples) == 0:
            raise ValueError("from_samples needs at least one sample; use SampleSet.empty for none")
        lengths = np.array([len(s.history) for s in samples], dtype=np.int64)
        offsets = np.zeros(len(samples) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            user=np.array([s.user for s in samples], dtype=np.int64),
            history_values=np.concatenate([np.asarray(s.history, dtype=np.int64) for s in samples]),
            history_offsets=offsets,
            target=np.stack([np.asarray(s.target, dtype=np.int64) for s in samples]),
            labels=np.stack([np.asarray(s.labels, dtype=np.float32) for s in samples]),
            signals=list(signals),
        )

    @property
    def session_items(self) -> int:
        """M, the width of the target matrix."""
        return int(self.target.shape[1])

    @property
    def history_lengths(self) -> np.ndarray:
        """[N] int64 history length of each sample."""
        return np.diff(self.history_offsets)

    @property
    def target_lengths(self) -> np.ndarray:
        """[N] int64 number of real (non-padding) target items of each sample."""
        return (self.target != PAD_ITEM).sum(axis=1).astype(np.int64)

    def largest_ids(self) -> Tuple[int, int]:
        """The largest user id and the largest item id (histories and targets); -1 for what the set lacks.

        The id-range checks compare these with the sizes of the tables that will embed the ids.

        Example:
            >>> s = SampleSet.from_samples([Sample(3, np.array([5, 9]), np.array([7, -1]), np.zeros((2, 0)))], [])
            >>> s.largest_ids(), SampleSet.empty(2, []).largest_ids()
            ((3, 9), (-1, -1))
        """
        user = int(self.user.max()) if len(self) else -1
        return user, max((int(ids.max()) for ids in (self.history_values, self.target) if ids.size), default=-1)

    def __len__(self) -> int:
        return len(self.user)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for a SampleSet of {n} samples")
        index %= n
        lo, hi = self.history_offsets[index], self.history_offsets[index + 1]
        return Sample(
            user=int(self.user[index]),
            history=self.history_values[lo:hi].copy(),
            target=self.target[index].copy(),
            labels=self.labels[index].copy(),
        )

    def subset(self, indices: np.ndarray | Sequence[int]) -> "SampleSet":
        """The samples at ``indices`` ([K] ints, in that order, repeats allowed) as a new set of K samples."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"subset indices span [{rows.min()}, {rows.max()}], the set has {len(self)} samples")
        values, offsets = gather_jagged(self.history_values, self.history_offsets, rows)
        return SampleSet(self.user[rows], values, offsets, self.target[rows], self.labels[rows], list(self.signals))

    def summary(self) -> Dict[str, object]:
        """Counts and distributions: samples, users, history and target lengths, label rates.

        Returns:
            A JSON-ready dict: ``count``, ``users``, ``history_length`` (mean/median/p90/min/max),
            ``target_length`` (mean and a histogram ``{length: samples}``) and ``label_rates`` (mean of each
            signal over real target items).

        Example:
            >>> s = SampleSet.from_samples([Sample(0, np.array([1]), np.array([2, -1]),
            ...                                    np.array([[1.0], [0.0]], dtype=np.float32))], ["vtr"])
            >>> s.summary()["target_length"], s.summary()["label_rates"]
            ({'mean': 1.0, 'histogram': {1: 1}}, {'vtr': 1.0})
        """
        hist = self.history_lengths
        tlen = self.target_lengths
        real = self.target != PAD_ITEM
        lengths, counts = np.unique(tlen, return_counts=True)
        has = len(self) > 0
        return {
            "count": len(self),
            "users": int(len(np.unique(self.user))),
            "history_length": {
                "mean": float(hist.mean()) if has else 0.0,
                "median": float(np.median(hist)) if has else 0.0,
                "p90": float(np.percentile(hist, 90)) if has else 0.0,
                "min": int(hist.min()) if has else 0,
                "max": int(hist.max()) if has else 0,
            },
            "target_length": {
                "mean": float(tlen.mean()) if has else 0.0,
                "histogram": {int(k): int(c) for k, c in zip(lengths, counts)},
            },
            "label_rates": {
                name: float(self.labels[..., s][real].mean()) if real.any() else 0.0
                for s, name in enumerate(self.signals)
            },
        }
