"""Tests of the per-user metrics: hand-checked cases, and the vectorised code equal to a plain loop."""

from __future__ import annotations

import math
from typing import Dict, List

import numpy as np
import pytest
import torch

from torchrec_onerec.eval.metrics import (
    coverage,
    dedupe_rows,
    first_occurrence,
    legality_rate,
    ranking_metrics,
    repeat_rates,
)
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def _reference(ranked: List[int], targets: List[int], k: int) -> Dict[str, float]:
    """Recall@K and NDCG@K of one list, written out as in the module docstring."""
    positives = {t for t in targets if t >= 0}
    seen, dcg = set(), 0.0
    hits = 0
    for rank, item in enumerate(ranked[:k]):
        if item >= 0 and item not in seen and item in positives:
            hits += 1
            dcg += 1.0 / math.log2(rank + 2)
        seen.add(item)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(positives))))
    return {"recall": hits / len(positives), "ndcg": dcg / ideal}


def test_hand_checked_single_target() -> None:
    ranked = np.array([[5, 1, 2], [1, 2, 5], [1, 2, 3]])
    out = ranking_metrics(ranked, np.array([[5], [5], [5]]), [1, 3])
    assert out["recall@3"].tolist() == [1.0, 1.0, 0.0]  # hit rate with one target
    assert out["ndcg@3"].tolist() == pytest.approx([1.0, 1 / math.log2(4), 0.0])  # rank 1, rank 3, miss
    assert out["recall@1"].tolist() == [1.0, 0.0, 0.0]


def test_hand_checked_several_positives() -> None:
    # P = {3, 7}; 7 at rank 1, 3 at rank 4.
    out = ranking_metrics(np.array([[7, 1, 2, 3]]), np.array([[3, 7, -1]]), [2, 4])
    assert out["recall@2"][0] == pytest.approx(0.5)
    assert out["ndcg@2"][0] == pytest.approx(1.0 / (1.0 + 1 / math.log2(3)))
    assert out["recall@4"][0] == pytest.approx(1.0)
    assert out["ndcg@4"][0] == pytest.approx((1.0 + 1 / math.log2(5)) / (1.0 + 1 / math.log2(3)))
    # |P| = 3 > K = 2: recall cannot exceed 2/3, but NDCG's ideal covers min(K, |P|) = 2 ranks.
    out = ranking_metrics(np.array([[1, 2]]), np.array([[1, 2, 3]]), [2])
    assert out["recall@2"][0] == pytest.approx(2 / 3) and out["ndcg@2"][0] == pytest.approx(1.0)


def test_k_beyond_the_list_duplicates_and_suffix() -> None:
    out = ranking_metrics(np.array([[4, -1]]), np.array([[9]]), [10])
    assert out["recall@10"][0] == 0.0
    out = ranking_metrics(np.array([[2]]), np.array([[2]]), [10])  # a one-item list, K = 10
    assert out["recall@10"][0] == 1.0 and out["ndcg@10"][0] == 1.0
    out = ranking_metrics(np.array([[3, 3, 4]]), np.array([[3, 4, 3]]), [3], suffix="m")  # repeats earn nothing
    assert set(out) == {"recall@m", "ndcg@m"}
    assert out["recall@m"][0] == 1.0
    assert out["ndcg@m"][0] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))


def test_vectorised_equals_reference_loop() -> None:
    rng = np.random.default_rng(0)
    U, L, M = 200, 12, 4
    ranked = rng.integers(-1, 15, size=(U, L))  # padding and repeats included
    targets = rng.integers(-1, 15, size=(U, M))
    targets[:, 0] = rng.integers(0, 15, size=U)  # at least one positive
    out = ranking_metrics(ranked, targets, [1, 5, 10, 20])
    for u in range(U):
        for k in (1, 5, 10, 20):
            ref = _reference(ranked[u].tolist(), targets[u].tolist(), k)
            assert out[f"recall@{k}"][u] == pytest.approx(ref["recall"])
            assert out[f"ndcg@{k}"][u] == pytest.approx(ref["ndcg"])
            assert 0.0 <= out[f"ndcg@{k}"][u] <= 1.0


def test_dedupe_and_first_occurrence_match_a_loop() -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(-1, 6, size=(50, 9))
    first = first_occurrence(rows)
    deduped = dedupe_rows(rows)
    for row, mask, compact in zip(rows.tolist(), first.tolist(), deduped.tolist()):
        seen: List[int] = []
        for item, is_first in zip(row, mask):
            assert is_first == (item >= 0 and item not in seen)
            if item >= 0 and item not in seen:
                seen.append(item)
        assert compact == seen + [-1] * (len(row) - len(seen))


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="no positive item"):
        ranking_metrics(np.array([[1, 2]]), np.array([[-1]]), [2])
    with pytest.raises(ValueError, match="one row per user"):
        ranking_metrics(np.array([[1, 2]]), np.array([[1], [2]]), [2])
    with pytest.raises(ValueError, match="-1 is the only padding"):
        ranking_metrics(np.array([[-3]]), np.array([[1]]), [1])


def test_repeat_rates_and_filler() -> None:
    items = np.array([[[1, 2, 1], [3, 4, 5], [6, 6, 6]], [[1, -1, -1], [2, 3, 2], [0, 1, 2]]])
    valid = np.array([[True, True, False], [True, True, True]])
    sessions, slots = repeat_rates(items, valid)
    assert sessions.tolist() == pytest.approx([1 / 2, 1 / 3])  # filler session [6, 6, 6] is left out
    assert slots.tolist() == pytest.approx([1 / 6, 1 / 9])  # -1 never repeats
    sessions, _ = repeat_rates(items[:1], np.zeros((1, 3), dtype=bool))
    assert sessions.tolist() == [0.0]


def test_legality_rate_uses_the_prefix_index() -> None:
    index = PrefixIndex(torch.tensor([[0, 0], [0, 1], [1, 1]]), vocab_sizes=[2, 2])
    codes = torch.tensor([[[[0, 0], [1, 0]], [[1, 0], [1, 0]]]])  # [U=1, R=2, M=2, L'=2]; (1, 0) is no item
    assert legality_rate(codes, index).tolist() == [0.25]
    assert legality_rate(codes, index, np.array([[True, False]])).tolist() == [0.5]
    assert legality_rate(codes, index, np.array([[False, False]])).tolist() == [1.0]


def test_coverage() -> None:
    ranked = np.array([[0, 1, 2], [0, 3, -1]])
    assert coverage(ranked, 8) == 0.5
    assert coverage(ranked, 8, k=1) == 0.125
    with pytest.raises(ValueError, match="outside the catalogue"):
        coverage(ranked, 3)
