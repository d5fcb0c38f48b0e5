"""Schemas of the ``split`` and ``loader`` config sections (docs/EVAL.md protocols A and B; batching)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Dict

from torchrec_onerec.errors import ConfigError


@dataclass
class SplitConfig:
    """How samples and evaluation targets are cut (docs/EVAL.md protocols A and B).

    Args:
        protocol: ``A`` (leave-one-out next item) or ``B`` (day split, sessions with feedback).
        max_history: n, the most recent history items kept per sample.
        session_items: m, items per target session.
        positive_col: feedback column that marks a positive impression (protocol B); ``""`` = every row.
        session_rule: ``window`` (all of a user's impressions in one split window form one session) or
            ``gap`` (runs of impressions with gaps under ``session_gap_minutes``).
        session_gap_minutes: under ``session_rule=gap``, a pause longer than this starts a new session.
        valid_start, test_start, test_end: protocol B day boundaries, ``YYYY-MM-DD``; train is every day
            before ``valid_start``, test runs to ``test_end`` inclusive (``""``: to the end of the data).
            An empty ``valid_start``/``test_start`` defaults to the data's last 4 / last 2 calendar days.
        utc_offset_hours: the time zone the day boundaries are read in (KuaiRand's dates are UTC+8).
        labels: reward signal -> feedback column (protocol B labels, e.g. ``swt: long_view``).
        min_history: samples whose history is shorter are dropped and counted (0 keeps cold-start samples).
        train_stride: protocol B training runs start every this many positives (0 = m: consecutive,
            non-overlapping runs as docs/EVAL.md states them; 1 = a run at every position, m times the samples,
            overlapping targets).
    """

    protocol: str = "A"
    max_history: int = 50
    session_items: int = 5
    positive_col: str = "click"
    session_rule: str = "window"
    session_gap_minutes: float = 30.0
    valid_start: str = ""
    test_start: str = ""
    test_end: str = ""
    utc_offset_hours: float = 0.0
    labels: Dict[str, str] = field(default_factory=lambda: {"swt": "long_view", "vtr": "click", "ltr": "like"})
    min_history: int = 1
    train_stride: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in ("A", "B"):
            raise ConfigError(f"split.protocol={self.protocol!r} must be 'A' or 'B'")
        if self.session_rule not in ("window", "gap"):
            raise ConfigError(f"split.session_rule={self.session_rule!r} must be 'window' or 'gap'")
        for name in ("max_history", "session_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"split.{name}={getattr(self, name)} must be >= 1")
        if self.train_stride < 0:
            raise ConfigError(f"split.train_stride={self.train_stride} must be >= 0 (0 = session_items)")
        if self.min_history < 0:
            raise ConfigError(f"split.min_history={self.min_history} must be >= 0")
        if self.session_gap_minutes <= 0:
            raise ConfigError(f"split.session_gap_minutes={self.session_gap_minutes} must be > 0")
        if not -24 < self.utc_offset_hours < 24:
            raise ConfigError(f"split.utc_offset_hours={self.utc_offset_hours} must lie in (-24, 24)")
        days = {}
        for name in ("valid_start", "test_start", "test_end"):
            value = getattr(self, name)
            if value:
                try:
                    days[name] = datetime.date.fromisoformat(value)
                except ValueError:
                    raise ConfigError(
                        f"split.{name}={value!r} is not a date; write it as YYYY-MM-DD or leave it empty"
                    ) from None
        ordered = [days[k] for k in ("valid_start", "test_start", "test_end") if k in days]
        if ordered != sorted(ordered):
            raise ConfigError(
                f"split day boundaries must satisfy valid_start <= test_start <= test_end, got "
                f"{self.valid_start!r}, {self.test_start!r}, {self.test_end!r}"
            )


@dataclass
class LoaderConfig:
    """Batching of samples into TorchRec batches.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 = in the main process).
        shuffle: shuffle training samples each epoch (seeded by ``seed`` and the epoch).
    """

    batch_size: int = 256
    num_workers: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"loader.batch_size={self.batch_size} must be >= 1")
