"""Tests of the swap refinement of balanced K-means: sizes kept, cost never up, error below the paper's."""

from __future__ import annotations

import pytest
import torch

from torchrec_onerec.tokenizer import swap_refine
from torchrec_onerec.tokenizer.balanced_kmeans import BalancedKMeans, balanced_sizes
from torchrec_onerec.tokenizer.swap_refine import refine_by_swaps, swap_pass


def _total(cost: torch.Tensor, labels: torch.Tensor) -> float:
    return float(cost.gather(1, labels.unsqueeze(1)).sum())


def test_a_pass_keeps_sizes_and_never_raises_the_cost() -> None:
    torch.manual_seed(0)
    cost = torch.rand(60, 6)
    labels = torch.arange(60) % 6
    for _ in range(5):
        new, swaps = swap_pass(cost, labels, 6)
        assert torch.equal(torch.bincount(new, minlength=6), torch.bincount(labels, minlength=6))
        assert _total(cost, new) <= _total(cost, labels) + 1e-6
        assert (swaps > 0) == (not torch.equal(new, labels))
        labels = new
    assert swap_pass(cost, labels, 6)[1] >= 0


def test_a_pass_takes_the_best_disjoint_swaps() -> None:
    # points 0 and 1 both gain most by trading with point 2; the larger gain (point 0's) is taken
    cost = torch.tensor([[5.0, 0.0], [3.0, 0.0], [0.0, 0.0], [9.0, 0.0]])
    labels, swaps = swap_pass(cost, torch.tensor([0, 0, 1, 1]), 2)
    assert swaps == 1 and labels.tolist() == [1, 0, 0, 1]


def test_refined_error_is_below_the_papers_with_the_same_sizes() -> None:
    torch.manual_seed(1)
    centres = torch.randn(12, 8)
    x = centres[torch.randint(0, 12, (600,))] + 0.3 * torch.randn(600, 8)
    plain = BalancedKMeans(10, seed=0).fit(x)
    refined = BalancedKMeans(10, seed=0, swap_refine=True).fit(x)
    assert sorted(refined.cluster_sizes().tolist(), reverse=True) == balanced_sizes(600, 10)
    assert refined.swaps > 0 and plain.swaps == 0
    assert refined.inertia < plain.inertia
    assert torch.equal(refined.labels, BalancedKMeans(10, seed=0, swap_refine=True).fit(x).labels)  # seeded
    torch.testing.assert_close(refined.centroids, torch.stack([x[refined.labels == c].mean(0) for c in range(10)]))


def test_refinement_too_large_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(swap_refine, "MAX_ELEMENTS", 100)
    with pytest.raises(ValueError, match="balanced_swap_refine=false"):
        refine_by_swaps(torch.randn(40, 2), torch.arange(40) % 4, 4)


def test_the_setting_off_keeps_earlier_runs_fingerprints() -> None:
    import dataclasses

    import numpy as np

    from torchrec_onerec.config import OneRecConfig
    from torchrec_onerec.pipeline import stage_fingerprint
    from torchrec_onerec.tokenizer.codebook import catalogue_fingerprint
    from torchrec_onerec.tokenizer.config import TokenizerConfig

    before = {k: v for k, v in dataclasses.asdict(TokenizerConfig()).items() if k != "balanced_swap_refine"}
    ids = np.arange(5)
    assert catalogue_fingerprint(ids, TokenizerConfig(), seed=0) == catalogue_fingerprint(ids, before, seed=0)
    on = TokenizerConfig(balanced_swap_refine=True)
    assert catalogue_fingerprint(ids, on, seed=0) != catalogue_fingerprint(ids, before, seed=0)
    config = OneRecConfig()
    refined = dataclasses.replace(config, tokenizer=on)
    assert stage_fingerprint(config, "tokenize") != stage_fingerprint(refined, "tokenize")
