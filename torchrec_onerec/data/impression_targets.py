"""Protocol B training samples whose targets are exposed sessions: every shown item, clicked or not.

Protocol B's own training samples (``data.splits``) target runs of m positives. The OneRec paper trains its
generator on whole exposed sessions (the items a request showed, from the sessions users engaged with), and the
logged exposures say much more than the clicks alone: here a user has about five impressions per positive. With
``train.targets=impressions`` the generator's training targets are runs of m consecutive training-day impressions
of a user in time order (stride ``split.train_stride``, m when 0), each with its labels, so
``train.label_weights`` decides how much a shown-and-clicked item counts against a shown-only one (weight
``1 + labels @ weights``). The history of a run is what evaluation reads for a session: the user's positives
(pre-period, then training-day positives) before the run's first impression, at most n. Runs whose history is
shorter than ``split.min_history`` are dropped and counted. With ``train.random_exposures=engaged`` the
impressions of a randomly exposing policy (``is_rand``) that got no feedback are left out before the runs are
formed (counted): what a random policy showed is no example of what to show.

Shape legend: K runs, m target items, S signals, n history items.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from torchrec_onerec.data.config import SplitConfig
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.sequences import assemble_samples, target_runs, user_offsets
from torchrec_onerec.data.splits import SplitB
from torchrec_onerec.train.config import RANDOM_EXPOSURES


def impression_training_samples(
    split: SplitB, config: SplitConfig, num_users: int, *, random_exposures: str = "all"
) -> Tuple[SampleSet, int, int]:
    """Training samples over runs of m consecutive training-day impressions (module docstring).

    Args:
        split (SplitB): the protocol B split (its ``train`` impression table and ``train_sequences``).
        config (SplitConfig): the split's config (n, m, ``train_stride``, ``min_history``).
        num_users (int): U, the data's user count.
        random_exposures (str): ``all``, or ``engaged``: leave out the ``is_rand`` impressions without a positive
            or any feedback signal (``train.random_exposures``).

    Returns:
        (SampleSet of K runs with the training samples' signals, runs dropped for a short history, impressions
        left out as unengaged random exposures).

    Example:
        >>> import pandas as pd
        >>> from torchrec_onerec.data.splits import protocol_b_split
        >>> from torchrec_onerec.datasets.interactions import InteractionData
        >>> day = 86_400_000
        >>> inter = pd.DataFrame({"user_id": [0] * 5, "item_id": [1, 2, 3, 4, 5], "timestamp": [0, 1, 2, 3, 2 * day],
        ...                       "click": [1, 0, 1, 0, 1], "long_view": [0] * 5, "like": [0] * 5}).astype("int64")
        >>> data = InteractionData("toy", inter, pd.DataFrame({"item_id": np.arange(6)}), np.arange(1), np.arange(6))
        >>> config = SplitConfig(protocol="B", session_items=2, valid_start="1970-01-02", test_start="1970-01-03")
        >>> samples, short, skipped = impression_training_samples(protocol_b_split(data, config), config, 1)
        >>> [s.history.tolist() for s in samples], samples.target.tolist(), samples.labels[:, :, 1].tolist(), short
        ([[1]], [[3, 4]], [[1.0, 0.0]], 1)
    """
    if random_exposures not in RANDOM_EXPOSURES:
        raise ValueError(f"random_exposures={random_exposures!r} must be one of {list(RANDOM_EXPOSURES)}")
    shown = split.impressions["train"]  # (user, time) order
    signals = list(split.train.signals)
    skipped = 0
    if random_exposures == "engaged":
        engaged = shown["positive"].to_numpy(bool) | (shown[signals].to_numpy() > 0).any(axis=1)
        unengaged_random = shown["is_rand"].to_numpy(bool) & ~engaged
        skipped = int(unengaged_random.sum())
        shown = shown[~unengaged_random]
    m, n = config.session_items, config.max_history
    users = shown["user_id"].to_numpy(np.int64)
    items = shown["item_id"].to_numpy(np.int64)
    labels = shown[signals].to_numpy(np.float32) if signals else np.zeros((len(shown), 0), np.float32)
    positive = shown["positive"].to_numpy(bool)
    # the positive sequences: pre-period items, then the training-day positives, chronological per user
    seq_users = split.train_sequences["user_id"].to_numpy(np.int64)
    seq_items = split.train_sequences["item_id"].to_numpy(np.int64)
    seq_off = user_offsets(seq_users, num_users)
    num_pre = np.diff(seq_off) - np.bincount(users[positive], minlength=num_users)
    off = user_offsets(users, num_users)
    rank = np.arange(len(users)) - off[users]  # position among the user's training-day impressions
    before = np.cumsum(positive) - positive  # positives among the rows before each row ...
    positives_before = before - before[off[users]]  # ... of the same user
    stride = config.train_stride or m
    at = np.flatnonzero(rank % stride == 0)
    who = users[at]
    end = seq_off[who] + num_pre[who] + positives_before[at]
    hist_start = np.maximum(seq_off[who], end - n)
    target, run_labels = target_runs(items, labels, at, np.minimum(m, off[who + 1] - at), m)
    samples, short = assemble_samples(
        who, seq_items, hist_start, end - hist_start, target, run_labels, signals, config.min_history
    )
    return samples, short, skipped
