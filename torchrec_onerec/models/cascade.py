"""The cascade baseline OneRec replaces (docs/METHOD.md introduction): retrieval -> ranking -> top-m session.

For each user: the two-tower model (``models.two_tower``) retrieves K_r = ``cascade.retrieval.num_candidates``
items by exact inner product over the catalogue; the multi-task ranker (``models.ranker``) scores each
candidate's task probabilities, combined as ``sum_t w_t p_t`` with ``cascade.ranker.score_weights`` (normalised
to sum 1; empty = equal weights); the candidates in combined-score order are written as R consecutive sessions
of M items. The first session is the top-m session that protocol B scores; protocol A asks for M = 1 and
R = max(K). A session's score is the mean combined score of its items, so scores never increase from one
session to the next; a session left without items (fewer than R M candidates) is a filler: all -1, score -inf.

Run-directory files (``train.cascade_training``): ``two_tower.pt`` and ``ranker.pt``; ``load_cascade`` reads them.

Shape legend: U users, K candidates, T tasks, R sessions, M session items.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.models.cascade_config import CascadeConfig
from torchrec_onerec.models.ranker import MultiTaskRanker, candidate_samples, load_ranker, predict
from torchrec_onerec.models.two_tower import TwoTowerRetrieval, item_kjt, load_two_tower, retrieve

TWO_TOWER_FILE = "two_tower.pt"
RANKER_FILE = "ranker.pt"
RANKED_PAIRS_PER_CHUNK = 32768  # (user, candidate) rows scored at a time: bounds the repeated histories' memory
KEPT_RANKINGS = 2  # the validation and the scored users


def _contents_digest(samples: SampleSet) -> str:
    """A digest of every array of ``samples`` (two sets with equal contents are the same users)."""
    digest = hashlib.sha1()
    for array in (samples.user, samples.history_values, samples.history_offsets, samples.target, samples.labels):
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def combined_weights(config: CascadeConfig, tasks: list[str]) -> np.ndarray:
    """[T] float64 weights of the tasks' probabilities in the combined score, summing to 1.

    Example:
        >>> from torchrec_onerec.models.cascade_config import RankerConfig
        >>> combined_weights(CascadeConfig(), ["vtr", "swt"]).tolist()
        [0.5, 0.5]
        >>> combined_weights(CascadeConfig(ranker=RankerConfig(score_weights={"vtr": 3.0, "swt": 1.0})),
        ...                  ["vtr", "swt", "ltr"]).tolist()
        [0.75, 0.25, 0.0]
    """
    given = dict(config.ranker.score_weights)
    unknown = sorted(set(given) - set(tasks))
    if unknown:
        raise ValueError(
            f"cascade.ranker.score_weights names {unknown}, which the ranker does not predict; its tasks are {tasks}"
        )
    weights = np.array([given.get(task, 0.0) for task in tasks] if given else [1.0] * len(tasks), np.float64)
    assert weights.sum() > 0, "RankerConfig checks that the score weights have a positive sum"
    return weights / weights.sum()


def sessions_from_ranking(
    items: np.ndarray, scores: np.ndarray, *, num_sessions: int, session_items: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Write ranked lists as R consecutive sessions of M, scored by their items' mean score.

    Args:
        items (np.ndarray): [U, K] item ids, best first, -1 padding (padding sorted last).
        scores (np.ndarray): [U, K] their scores (ignored at padding).
        num_sessions (int): R.
        session_items (int): M.

    Returns:
        (sessions [U, R, M] int64, session scores [U, R] float32; -inf for a session without items).

    Example:
        >>> s, v = sessions_from_ranking(np.array([[5, 3, 9, -1]]), np.array([[1.0, 0.5, 0.25, 0.0]]),
        ...                              num_sessions=3, session_items=2)
        >>> s.tolist(), v.tolist()
        ([[[5, 3], [9, -1], [-1, -1]]], [[0.75, 0.25, -inf]])
    """
    U, K = items.shape
    width = num_sessions * session_items
    flat = np.full((U, width), PAD_ITEM, np.int64)
    value = np.zeros((U, width), np.float64)
    flat[:, : min(K, width)] = items[:, :width]
    value[:, : min(K, width)] = scores[:, :width]
    sessions = flat.reshape(U, num_sessions, session_items)
    real = sessions != PAD_ITEM
    count = real.sum(axis=2)
    total = np.where(real, value.reshape(U, num_sessions, session_items), 0.0).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        session_scores = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
    return sessions, session_scores.astype(np.float32)


def mmr_rerank(
    items: np.ndarray, scores: np.ndarray, vectors: np.ndarray, *, weight: float, take: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Maximal marginal relevance: re-order ranked candidates so that similar items do not follow each other.

    Greedily, each next item maximises ``(1 - weight) * score - weight * max(0, max cosine to the items already
    taken)`` (an item unlike all of them is not penalised, nor rewarded). An item's value can only fall as more
    items are taken, and the candidates left only shrink, so the values of the items in the order taken never
    increase: they are returned as the items' scores.

    Args:
        items (np.ndarray): [U, K] candidate item ids, -1 padding.
        scores (np.ndarray): [U, K] relevance (ignored at padding).
        vectors (np.ndarray): [I, D] L2-normalised item vectors (cosine = inner product).
        weight (float): 0 keeps the ranking; 1 ignores relevance after the first item.
        take (int): items to return per user, <= K.

    Returns:
        (items [U, take] int64, values [U, take] float64; -1 / -inf where the candidates ran out).

    Example:
        >>> v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
        >>> items, values = mmr_rerank(np.array([[0, 1, 2]]), np.array([[0.9, 0.8, 0.5]]), v, weight=0.5, take=3)
        >>> items.tolist(), bool(values[0, 0] >= values[0, 1] >= values[0, 2])
        ([[0, 2, 1]], True)
        >>> mmr_rerank(np.array([[0, 1, 2]]), np.array([[0.9, 0.8, 0.5]]), v, weight=0.0, take=2)[0].tolist()
        [[0, 1]]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight={weight} must lie in [0, 1] (cascade.ranker.rerank_weights)")
    U, K = items.shape
    take = min(take, K)
    real = items != PAD_ITEM
    relevance = np.where(real, (1.0 - weight) * scores, -np.inf)
    candidate_vectors = vectors[np.where(real, items, 0)]  # [U, K, D]
    closest = np.zeros((U, K))  # max cosine (floored at 0) of each candidate to the items taken so far
    taken = np.zeros((U, K), dtype=bool)
    rows = np.arange(U)
    out_items = np.full((U, take), PAD_ITEM, np.int64)
    out_values = np.full((U, take), -np.inf)
    for t in range(take):
        value = np.where(taken, -np.inf, relevance - weight * closest)
        pick = value.argmax(axis=1)
        best = value[rows, pick]
        ok = np.isfinite(best)
        out_items[ok, t] = items[rows[ok], pick[ok]]
        out_values[ok, t] = best[ok]
        taken[rows, pick] |= ok
        similarity = np.einsum("ukd,ud->uk", candidate_vectors, candidate_vectors[rows, pick])
        closest = np.where(ok[:, None], np.maximum(closest, similarity), closest)
    return out_items, out_values


class CascadeRecommender:
    """Two-tower retrieval -> multi-task ranking -> sessions (module docstring).

    Args:
        two_tower (TwoTowerRetrieval): the plain (unsharded) retrieval model.
        ranker (MultiTaskRanker): the plain ranker.
        config (CascadeConfig): K_r (``retrieval.num_candidates``) and ``ranker.score_weights``.
        item_content (torch.Tensor): [I, C] the item content the two-tower model was trained with (C may be 0).
        ranker_item_features (torch.Tensor): [I, 1 + C] the ranker's ``item_dense_features``.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.cascade_config import RankerConfig, RetrievalConfig
        >>> cfg = CascadeConfig(RetrievalConfig(embedding_dim=4, num_candidates=4), RankerConfig(embedding_dim=4))
        >>> tt = TwoTowerRetrieval(cfg.retrieval, num_users=2, num_items=6)
        >>> ranker = MultiTaskRanker(cfg.ranker, num_users=2, num_items=6, tasks=["vtr"], dense_features=2)
        >>> rec = CascadeRecommender(tt, ranker, cfg, torch.zeros(6, 0), torch.zeros(6, 1))
        >>> users = SampleSet.from_samples([Sample(1, np.array([0]), np.array([2]), np.zeros((1, 0), np.float32))], [])
        >>> sessions, scores = rec.recommend(users, num_sessions=2, session_items=2)
        >>> sessions.shape, bool(scores[0, 0] >= scores[0, 1]), len(set(sessions.ravel().tolist()))
        ((1, 2, 2), True, 4)
    """

    def __init__(
        self,
        two_tower: TwoTowerRetrieval,
        ranker: MultiTaskRanker,
        config: CascadeConfig,
        item_content: torch.Tensor,
        ranker_item_features: torch.Tensor,
    ) -> None:
        if not two_tower.num_items == ranker.num_items == len(item_content) == len(ranker_item_features):
            raise ValueError(
                f"the two-tower model ({two_tower.num_items} items), the ranker ({ranker.num_items}), "
                f"the item content ({len(item_content)}) and the ranker's item features "
                f"({len(ranker_item_features)}) must cover one catalogue"
            )
        self.two_tower, self.ranker, self.config = two_tower.eval(), ranker.eval(), config
        self.item_content, self.ranker_item_features = item_content, ranker_item_features
        self.weights = combined_weights(config, ranker.tasks)
        self._item_vectors: Optional[np.ndarray] = None
        self._rankings: List[Tuple[Tuple[str, bool], Tuple[np.ndarray, np.ndarray]]] = []  # newest first

    @property
    def num_items(self) -> int:
        """I, the catalogue size."""
        return self.two_tower.num_items

    def retrieve(self, samples: SampleSet, *, exclude_history: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """(items [U, K_r] int64, inner products [U, K_r]) of the retrieval stage, best first (K_r capped at I)."""
        k = min(self.config.retrieval.num_candidates, self.num_items)
        return retrieve(self.two_tower, samples, k=k, item_content=self.item_content, exclude_history=exclude_history)

    def rank(self, samples: SampleSet, candidates: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Score candidates with the ranker.

        Args:
            samples (SampleSet): U samples.
            candidates (np.ndarray): [U, K] item ids, -1 padding.

        Returns:
            (probabilities [U, K, T] float32, combined score [U, K] float64, -inf at padding).
        """
        U, K = candidates.shape
        step = max(1, RANKED_PAIRS_PER_CHUNK // max(K, 1))
        parts = [
            predict(
                self.ranker,
                candidate_samples(samples.subset(np.arange(lo, min(lo + step, U))), candidates[lo : lo + step]),
                self.ranker_item_features,
            )
            for lo in range(0, U, step)
        ]
        tasks = len(self.ranker.tasks)
        probabilities = (np.concatenate(parts) if parts else np.zeros((0, tasks), np.float32)).reshape(U, K, tasks)
        combined = np.where(candidates != PAD_ITEM, probabilities @ self.weights, -np.inf)
        return probabilities, combined

    def ranking(self, samples: SampleSet, *, exclude_history: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """(items [U, K_r] int64, combined scores [U, K_r] float64) of the first two stages, best first (padding
        last). The rankings of the last ``KEPT_RANKINGS`` sample sets are kept (recognised by their contents), so
        the re-rank weights tried on one set of validation users retrieve and rank them once; the arrays
        returned are shared, not to be written to.
        """
        key = (_contents_digest(samples), exclude_history)
        for kept, ranking in self._rankings:
            if kept == key:
                return ranking
        candidates, _ = self.retrieve(samples, exclude_history=exclude_history)
        _, combined = self.rank(samples, candidates)
        order = np.argsort(-combined, axis=1, kind="stable")  # padding (-inf) sorts last
        ranking = (np.take_along_axis(candidates, order, axis=1), np.take_along_axis(combined, order, axis=1))
        for array in ranking:
            array.flags.writeable = False
        self._rankings = [(key, ranking), *self._rankings][:KEPT_RANKINGS]
        return ranking

    def item_vectors(self) -> np.ndarray:
        """[I, D] the two-tower model's L2-normalised item vectors (the re-rank's similarity)."""
        if self._item_vectors is None:
            device = next(self.two_tower.parameters()).device
            with torch.no_grad():
                vectors = self.two_tower.item_vectors(
                    item_kjt(torch.arange(self.num_items, device=device)), self.item_content.to(device).float()
                )
            self._item_vectors = torch.nn.functional.normalize(vectors.float(), dim=1).cpu().numpy()
        return self._item_vectors

    def recommend(
        self,
        samples: SampleSet,
        *,
        num_sessions: int,
        session_items: int,
        exclude_history: bool = False,
        diversity_weight: float = 0.0,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """R sessions of M items per sample: the retrieved candidates in combined-score order, or re-ranked.

        Args:
            samples (SampleSet): U samples (user and history are read).
            num_sessions (int): R >= 1.
            session_items (int): M >= 1.
            exclude_history (bool): never recommend an item of the sample's history.
            diversity_weight (float): 0 keeps the ranker's order; above 0, the third stage of a production
                cascade: ``mmr_rerank`` of the ranked candidates over the two-tower item vectors, with this weight.

        Returns:
            (sessions [U, R, M] int64, scores [U, R] float32 non-increasing; -1 / -inf for filler sessions).
        """
        if num_sessions < 1 or session_items < 1:
            raise ValueError(f"num_sessions={num_sessions} and session_items={session_items} must be >= 1")
        items, scores = self.ranking(samples, exclude_history=exclude_history)
        if diversity_weight > 0:
            items, scores = mmr_rerank(
                items, scores, self.item_vectors(), weight=diversity_weight, take=num_sessions * session_items
            )
        return sessions_from_ranking(items, scores, num_sessions=num_sessions, session_items=session_items)


def load_cascade(
    folder: Path, *, config: Optional[CascadeConfig] = None, device: Optional[torch.device] = None
) -> CascadeRecommender:
    """The recommender from a folder written by ``train_cascade`` (``two_tower.pt``, ``ranker.pt``).

    Args:
        folder (Path): e.g. ``<run_dir>/cascade``.
        config (CascadeConfig | None): inference settings to use (``retrieval.num_candidates``,
            ``ranker.score_weights``); None = those the models were trained with. The model sizes always come
            from the files.
        device (torch.device | None): where to run (CPU by default).

    Returns:
        CascadeRecommender: models in eval mode.
    """
    folder = Path(folder)
    two_tower, content = load_two_tower(folder / TWO_TOWER_FILE, device=device)
    ranker, features = load_ranker(folder / RANKER_FILE, device=device)
    saved = CascadeConfig(retrieval=two_tower.config, ranker=ranker.config)
    if config is not None:
        saved = CascadeConfig(
            retrieval=replace(saved.retrieval, num_candidates=config.retrieval.num_candidates),
            ranker=replace(saved.ranker, score_weights=dict(config.ranker.score_weights)),
        )
    return CascadeRecommender(two_tower, ranker, saved, content, features)
