"""Evaluate the SASRec arm (``models.sasrec``) by docs/EVAL.md protocol A or B, like every other arm.

SASRec ranks the whole catalogue for each evaluation user (``evaluation_users``); the top R M items are written as
R consecutive sessions of M (``models.cascade.sessions_from_ranking``), exactly as the cascade writes its ranking:
under protocol A, M = 1 and R = max(ks); under protocol B, M = ``session_items`` and R = ceil(max(ks) / m), the
first session being the top-m session. ``eval.protocols.score_sessions`` computes the metrics. Every item is a
real one, so legality is 1.

Shape legend: N samples, U evaluated users, R sessions, M session items.
"""

from __future__ import annotations

import time

import numpy as np

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.protocols import EvalResult, check_protocol, evaluation_users, score_sessions
from torchrec_onerec.models.cascade import sessions_from_ranking
from torchrec_onerec.models.sasrec import SASRec, rank_items


def evaluate_sasrec(
    model: SASRec, samples: SampleSet, *, config: EvalConfig, protocol: str, num_items: int
) -> EvalResult:
    """Rank the catalogue with SASRec for every sample with a target and score the lists by ``protocol``.

    Args:
        model (SASRec): the trained model (``models.sasrec.load_sasrec``).
        samples (SampleSet): N validation or test samples.
        config (EvalConfig): ``ks``, ``exclude_history`` and ``batch_size`` (the beam settings do not apply).
        protocol (str): ``"A"`` or ``"B"``.
        num_items (int): I, the catalogue size (coverage).

    Returns:
        EvalResult: metrics and per-user arrays named as the other arms', sessions [U, R, M], scores [U, R].

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.sasrec_config import SASRecConfig
        >>> model = SASRec(SASRecConfig(embedding_dim=8, num_heads=2, ffn_hidden=16), num_items=6, max_history=2)
        >>> test = SampleSet.from_samples([Sample(u, np.array([u]), np.array([u + 2, -1]), np.zeros((2, 0), np.float32))
        ...                                for u in range(3)], [])
        >>> r = evaluate_sasrec(model, test, config=EvalConfig(ks=[2, 4]), protocol="B", num_items=6)
        >>> r.sessions.shape, r.metrics["legality"], r.metrics["recall@4"] >= r.metrics["recall@2"]
        ((3, 2, 2), 1.0, True)
    """
    check_protocol(protocol)
    rows, skipped = evaluation_users(samples)
    users = samples.subset(rows)
    K = max(config.ks)
    M = 1 if protocol == "A" else users.session_items
    R = -(-K // M)  # enough sessions for a top-K list
    start = time.perf_counter()
    items, scores = rank_items(
        model, users, k=min(R * M, num_items), exclude_history=config.exclude_history, batch_size=config.batch_size
    )
    sessions, session_scores = sessions_from_ranking(items, scores, num_sessions=R, session_items=M)
    seconds = time.perf_counter() - start
    metrics, per_user = score_sessions(
        protocol,
        sessions,
        session_scores,
        users.target,
        ks=config.ks,
        num_items=num_items,
        legality=np.ones(len(users)),
    )
    per_user["user"] = users.user.copy()
    per_user["sample"] = rows
    info = {
        "protocol": protocol,
        "arm": "sasrec",
        "ks": list(config.ks),
        "session_items": M,
        "num_sessions": R,
        "exclude_history": config.exclude_history,
        "num_samples": len(samples),
        "users_without_target": skipped,
        "seconds": seconds,
        "users_per_second": len(rows) / max(seconds, 1e-9),
    }
    return EvalResult(metrics, per_user, sessions, session_scores, info)
