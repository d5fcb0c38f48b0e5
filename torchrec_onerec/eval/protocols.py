"""From recommended sessions to the metrics of docs/EVAL.md protocols A and B, and the result type of an evaluation.

Any recommender that returns, per user, R scored sessions of M items (the generative model's beam search, the
popularity floor in ``baselines.py``, later the cascade) is scored here, so every arm is measured the same way.

Protocol A (next item, leave-one-out, full catalogue). The ranked list is the first item of each returned
session, sessions ordered by score (best first, stable on ties), filler sessions (score -inf) and illegal items
(-1) dropped, later repeats of an item dropped (its first, best-scored occurrence stays). Recall@K and NDCG@K
are computed against the single target (slot 0 of the target). A list with fewer than K items is padded: the
missing ranks earn nothing, so such a user can only lose; ``list_length`` reports the mean length.

Protocol B (sessions). ``recall@m`` / ``ndcg@m``: the best-scored session, in generated order, against the
target's positives with K = m (the generated session length). ``recall@K`` / ``ndcg@K``: the items of all
returned sessions in score order (session by session, each in generated order), deduplicated as above,
against the positives. Coverage@m and coverage@K describe the same two lists.

Both: legality (generated tuples that are real items), repeat rate (sessions holding a repeated item),
repeated-slot rate, and filler rate (returned sessions with score -inf, which the other rates leave out).
Definitions of the metrics: ``eval.metrics``.

Shape legend: U users, R sessions per user, M session items.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.eval.metrics import coverage, dedupe_rows, list_lengths, ranking_metrics, repeat_rates

PROTOCOLS = ("A", "B")
ID_KEYS = ("user", "sample")  # per-user arrays that identify the user rather than measure it


@dataclass
class EvalResult:
    """Metrics of one evaluation, with the per-user values behind them and the sessions that were scored.

    Args:
        metrics (Dict[str, float]): the mean over users of every per-user metric (``recall@K``, ``ndcg@K``,
            protocol B's ``recall@m`` / ``ndcg@m``, ``legality``, ``repeat_rate``, ``repeat_slot_rate``,
            ``filler_rate``, ``list_length``), plus ``coverage@K`` (and ``coverage@m``) and ``num_users``.
        per_user (Dict[str, np.ndarray]): [U] arrays, one per metric, aligned with ``user`` (user ids) and
            ``sample`` (row in the evaluated SampleSet): what paired bootstrap between arms resamples.
        sessions (np.ndarray): [U, R, M] int64 recommended sessions, best first (-1: not an item; a filler
            session, score -inf, is all -1).
        scores (np.ndarray): [U, R] float32 session scores (sequence log-probabilities for the model).
        info (Dict[str, Any]): the settings and counts a report must state (protocol, beam, m, n, users
            without a target, wall time ...).
    """

    metrics: Dict[str, float]
    per_user: Dict[str, np.ndarray]
    sessions: np.ndarray
    scores: np.ndarray
    info: Dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Write the arrays to ``path`` (.npz) and metrics + info beside it (same stem, .json), atomically.

        Example:
            >>> import tempfile
            >>> r = EvalResult({"ndcg@5": 0.5}, {"ndcg@5": np.array([0.5])}, np.zeros((1, 1, 1), np.int64),
            ...                np.zeros((1, 1), np.float32), {"arm": "x"})
            >>> path = Path(tempfile.mkdtemp()) / "arm.npz"
            >>> r.save(path)
            >>> back = EvalResult.load(path)
            >>> back.metrics, back.info, back.per_user["ndcg@5"].tolist()
            ({'ndcg@5': 0.5}, {'arm': 'x'}, [0.5])
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"per_user/{k}": v for k, v in self.per_user.items()}
        partial = path.with_name(path.name + ".partial")
        with open(partial, "wb") as f:
            np.savez(f, sessions=self.sessions, scores=self.scores, **arrays)  # type: ignore[arg-type]
        partial_json = path.with_suffix(".json.partial")
        partial_json.write_text(json.dumps({"metrics": self.metrics, "info": self.info}, indent=2, default=float))
        os.replace(partial, path)
        os.replace(partial_json, path.with_suffix(".json"))

    @classmethod
    def load(cls, path: Path) -> "EvalResult":
        """Read what ``save`` wrote; FileNotFoundError names the missing file."""
        for needed in (path, path.with_suffix(".json")):
            if not needed.is_file():
                raise FileNotFoundError(f"evaluation file {needed} is missing; run the evaluate stage first")
        meta = json.loads(path.with_suffix(".json").read_text())
        with np.load(path) as arrays:
            per_user = {k[len("per_user/") :]: arrays[k] for k in arrays.files if k.startswith("per_user/")}
            return cls(meta["metrics"], per_user, arrays["sessions"], arrays["scores"], meta["info"])


def check_protocol(protocol: str) -> None:
    """Raise ValueError unless ``protocol`` is ``"A"`` or ``"B"``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} must be 'A' (next item) or 'B' (sessions), see docs/EVAL.md")


def evaluation_users(samples: SampleSet) -> Tuple[np.ndarray, int]:
    """The samples that are generation targets: those with a real item in target slot 0.

    Args:
        samples (SampleSet): N samples.

    Returns:
        (row indices [U] int64, number of samples skipped for having no target); docs/EVAL.md: users without a
        positive are not generation targets, and are counted.
    """
    has_target = samples.target[:, 0] != PAD_ITEM if samples.session_items else np.zeros(len(samples), bool)
    rows = np.flatnonzero(has_target).astype(np.int64)
    if rows.size == 0:
        raise ValueError(
            f"none of the {len(samples)} samples has a target item; nothing to evaluate "
            "(pass the validation or test SampleSet of a split)"
        )
    return rows, int(len(samples) - rows.size)


def _by_score(items: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sessions ordered by score, best first (stable), with filler sessions' items set to -1.

    Returns:
        (items [U, R, M], valid [U, R] bool: finite score).
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    items = np.take_along_axis(items, order[:, :, None], axis=1)
    valid = np.isfinite(np.take_along_axis(scores, order, axis=1))
    return np.where(valid[:, :, None], items, PAD_ITEM), valid


def first_item_ranking(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Protocol A's ranked list: first items of the sessions by score, deduplicated (module docstring).

    Args:
        items (np.ndarray): [U, R, M] session item ids (-1: not an item).
        scores (np.ndarray): [U, R] session scores (-inf: filler).

    Returns:
        [U, R] int64, real items first, -1 padded.

    Example:
        >>> first_item_ranking(np.array([[[5, 1], [6, 2], [5, 3]]]), np.array([[-2.0, -1.0, -0.5]])).tolist()
        [[5, 6, -1]]
    """
    ordered, _ = _by_score(items, scores)
    return dedupe_rows(ordered[:, :, 0])


def beam_ranking(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Protocol B's top of the beam: every session's items, sessions by score, deduplicated (module docstring).

    Args:
        items (np.ndarray): [U, R, M] session item ids (-1: not an item).
        scores (np.ndarray): [U, R] session scores (-inf: filler).

    Returns:
        [U, R M] int64, real items first, -1 padded.

    Example:
        >>> beam_ranking(np.array([[[5, 1], [6, 5]]]), np.array([[-2.0, -1.0]])).tolist()
        [[6, 5, 1, -1]]
    """
    ordered, _ = _by_score(items, scores)
    U, R, M = ordered.shape
    return dedupe_rows(ordered.reshape(U, R * M))


def score_sessions(
    protocol: str,
    items: np.ndarray,
    scores: np.ndarray,
    target: np.ndarray,
    *,
    ks: Sequence[int],
    num_items: int,
    legality: np.ndarray,
) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Every metric of ``protocol`` for U users' recommended sessions.

    Args:
        protocol (str): ``"A"`` or ``"B"``.
        items (np.ndarray): [U, R, M] session item ids (-1: not an item).
        scores (np.ndarray): [U, R] session scores (-inf: filler), higher is better.
        target (np.ndarray): [U, M_t] target item ids, -1 padded, slot 0 real (A reads slot 0 only).
        ks (Sequence[int]): the cut-offs K.
        num_items (int): I, the catalogue size (for coverage).
        legality (np.ndarray): [U] legality rate of each user's generated tuples (``metrics.legality_rate``).

    Returns:
        (metrics: means and coverage, per_user: [U] arrays), named as in ``EvalResult``.

    Example:
        >>> m, _ = score_sessions("A", np.array([[[3], [4]]]), np.array([[-1.0, -2.0]]), np.array([[4]]),
        ...                       ks=[1, 2], num_items=5, legality=np.ones(1))
        >>> m["recall@1"], m["recall@2"], round(m["ndcg@2"], 4), m["coverage@2"]
        (0.0, 1.0, 0.6309, 0.4)
    """
    check_protocol(protocol)
    items = np.asarray(items, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    U, R, M = items.shape
    if scores.shape != (U, R) or len(target) != U or np.shape(legality) != (U,):
        raise ValueError(
            f"items {items.shape} need scores ({U}, {R}), {U} target rows and legality ({U},); got "
            f"{scores.shape}, {len(target)} and {np.shape(legality)}"
        )
    valid = np.isfinite(scores)  # [U, R], False for filler sessions
    session_repeat, slot_repeat = repeat_rates(items, valid)
    per_user: Dict[str, np.ndarray] = {}
    coverages: Dict[str, float] = {}
    if protocol == "A":
        ranked = first_item_ranking(items, scores)
        per_user.update(ranking_metrics(ranked, np.asarray(target)[:, :1], ks))
    else:
        ordered, _ = _by_score(items, scores)
        top_session = ordered[:, 0]  # [U, M], generated order
        per_user.update(ranking_metrics(top_session, target, [M], suffix="m"))
        coverages["coverage@m"] = coverage(top_session, num_items)
        ranked = beam_ranking(items, scores)
        per_user.update(ranking_metrics(ranked, target, ks))
    coverages.update({f"coverage@{k}": coverage(ranked, num_items, k) for k in ks})
    per_user["list_length"] = list_lengths(ranked).astype(np.float64)
    per_user["legality"] = np.asarray(legality, dtype=np.float64)
    per_user["repeat_rate"] = session_repeat
    per_user["repeat_slot_rate"] = slot_repeat
    per_user["filler_rate"] = 1.0 - valid.mean(axis=1)
    metrics = {name: float(values.mean()) for name, values in per_user.items()}
    metrics.update(coverages)
    metrics["num_users"] = float(U)
    return metrics, per_user
