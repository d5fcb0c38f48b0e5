"""Evaluate the cascade baseline (``models.cascade``) by docs/EVAL.md protocol A or B, like every other arm.

The users are those ``evaluate_generative`` and ``evaluate_popularity`` evaluate (``evaluation_users``: a real
item in target slot 0; the others are counted), and ``eval.protocols.score_sessions`` computes the metrics,
so the names and definitions are the same. The cascade writes its combined-score ranking of the K_r retrieved
candidates as R sessions of M: under protocol A, M = 1 and R = max(ks) (the ranked list is the top max(ks)
candidates); under protocol B, M = ``session_items`` (m) and R = ceil(max(ks) / m), the first session being
the top-m session that ``recall@m`` / ``ndcg@m`` score. Every recommended item is a real item, so legality is 1.

Shape legend: N samples, U evaluated users, R sessions, M session items.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.protocols import EvalResult, check_protocol, evaluation_users, score_sessions
from torchrec_onerec.models.cascade import CascadeRecommender


def evaluate_cascade(
    recommender: CascadeRecommender,
    samples: SampleSet,
    *,
    config: EvalConfig,
    protocol: str,
    num_items: int,
    session_items: Optional[int] = None,
    diversity_weight: float = 0.0,
) -> EvalResult:
    """Recommend sessions with the cascade for every sample with a target and score them by ``protocol``.

    Args:
        recommender (CascadeRecommender): the trained cascade (``models.cascade.load_cascade``).
        samples (SampleSet): N validation or test samples.
        config (EvalConfig): ``ks`` and ``exclude_history`` (the beam settings do not apply).
        protocol (str): ``"A"`` or ``"B"``.
        num_items (int): I, the catalogue size (coverage).
        session_items (int | None): M under protocol B (None: the samples' target width m); ignored under A.
        diversity_weight (float): the MMR re-rank's weight (``CascadeRecommender.recommend``); 0: none.

    Returns:
        EvalResult: metrics and per-user arrays named as the other arms', sessions [U, R, M], scores [U, R].

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.testing import tiny_cascade
        >>> rec = tiny_cascade(num_users=2, num_items=6, num_candidates=6)
        >>> test = SampleSet.from_samples([Sample(u, np.array([0]), np.array([u + 2, -1]), np.zeros((2, 0), np.float32))
        ...                                for u in range(2)], [])
        >>> r = evaluate_cascade(rec, test, config=EvalConfig(ks=[2, 4]), protocol="B", num_items=6)
        >>> r.sessions.shape, r.metrics["legality"], r.metrics["recall@4"] >= r.metrics["recall@2"]
        ((2, 2, 2), 1.0, True)
    """
    check_protocol(protocol)
    rows, skipped = evaluation_users(samples)
    users = samples.subset(rows)
    K = max(config.ks)
    M = 1 if protocol == "A" else (session_items or users.session_items)
    if M < 1:
        raise ValueError(f"session_items={M} must be >= 1")
    R = -(-K // M)  # enough sessions for a top-K list
    num_candidates = min(recommender.config.retrieval.num_candidates, recommender.num_items)
    if num_candidates < R * M and num_candidates < num_items:
        raise ValueError(
            f"cascade.retrieval.num_candidates={recommender.config.retrieval.num_candidates} is below "
            f"the {R * M} items the evaluation ranks (max(eval.ks)={K}, M={M}); raise it"
        )
    start = time.perf_counter()
    sessions, scores = recommender.recommend(
        users,
        num_sessions=R,
        session_items=M,
        exclude_history=config.exclude_history,
        diversity_weight=diversity_weight,
    )
    seconds = time.perf_counter() - start
    metrics, per_user = score_sessions(
        protocol, sessions, scores, users.target, ks=config.ks, num_items=num_items, legality=np.ones(len(users))
    )
    per_user["user"] = users.user.copy()
    per_user["sample"] = rows
    info = {
        "protocol": protocol,
        "arm": "cascade" if diversity_weight == 0 else "cascade_rerank",
        "diversity_weight": diversity_weight,
        "ks": list(config.ks),
        "session_items": M,
        "num_sessions": R,
        "num_candidates": num_candidates,
        "tasks": list(recommender.ranker.tasks),
        "score_weights": dict(zip(recommender.ranker.tasks, recommender.weights.tolist())),
        "exclude_history": config.exclude_history,
        "num_samples": len(samples),
        "users_without_target": skipped,
        "filler_sessions": int((~np.isfinite(scores)).sum()),
        "seconds": seconds,
        "users_per_second": len(rows) / max(seconds, 1e-9),
    }
    return EvalResult(metrics, per_user, sessions, scores, info)
