"""Residual quantiser: levels fit on residuals, error falls with levels, balanced and plain K-means."""

import pytest
import torch

from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.tokenizer.residual import ResidualQuantizer


def _embeddings(n: int = 600, d: int = 16) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)


@pytest.mark.parametrize("quantizer", ["balanced_kmeans", "residual_kmeans"])
def test_error_decreases_with_levels_and_decode_approximates(quantizer: str) -> None:
    x = _embeddings()
    config = TokenizerConfig(quantizer=quantizer, codebook_sizes=[8, 8, 8], max_iter=10)
    rq = ResidualQuantizer(config, seed=0)
    fit = rq.fit(x)
    assert fit.codes.shape == (600, 3) and [c.shape for c in fit.centroids] == [(8, 16)] * 3
    errors = [fit.input_sq, *fit.residual_sq]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    recon = rq.decode(fit.codes)
    assert float(((x - recon) ** 2).sum()) == pytest.approx(fit.residual_sq[-1], rel=1e-4)
    if quantizer == "balanced_kmeans":
        for level in range(3):
            assert torch.bincount(fit.codes[:, level], minlength=8).tolist() == [75] * 8
    else:  # plain K-means codes are the nearest centroids, which encode reproduces
        assert (rq.encode(x) == fit.codes).float().mean() > 0.95


def test_per_level_codebook_sizes_and_deterministic() -> None:
    x = _embeddings(300, 8)
    config = TokenizerConfig(codebook_sizes=[16, 4], max_iter=5)
    a = ResidualQuantizer(config, seed=3).fit(x)
    b = ResidualQuantizer(config, seed=3).fit(x)
    assert [c.shape[0] for c in a.centroids] == [16, 4] and torch.equal(a.codes, b.codes)
    assert int(a.codes[:, 0].max()) == 15 and int(a.codes[:, 1].max()) == 3
    assert all(level.seconds >= 0 and level.iterations >= 1 for level in a.levels)


def test_bad_input_names_the_level() -> None:
    with pytest.raises(ValueError, match=r"codebook_sizes\[1\]=64 is larger than the number of items N=50"):
        ResidualQuantizer(TokenizerConfig(codebook_sizes=[4, 64]), seed=0).fit(_embeddings(50, 4))
    with pytest.raises(RuntimeError, match="not fitted"):
        ResidualQuantizer(TokenizerConfig(), seed=0).encode(_embeddings(5, 4))


@pytest.mark.parametrize("quantizer", ["balanced_kmeans", "residual_kmeans"])
def test_prefix_scope_splits_each_parent_and_gives_every_item_its_own_tuple(quantizer: str) -> None:
    x = _embeddings()
    rq = ResidualQuantizer(
        TokenizerConfig(quantizer=quantizer, codebook_sizes=[8, 8, 16], codebook_scope="prefix", max_iter=10), seed=0
    )
    fit = rq.fit(x)
    assert fit.codebook_sizes == [8, 8, 16] and fit.centroids[0].shape == (8, 16)
    assert len({tuple(row) for row in fit.codes.tolist()}) == 600  # 600 items, at most 16 per level-1 prefix
    errors = [fit.input_sq, *fit.residual_sq]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert fit.residual_sq[-1] < 1e-6 * fit.input_sq  # the last level's items are their own centroids
    assert torch.allclose(rq.decode(fit.codes), x, atol=1e-5)
    if quantizer == "balanced_kmeans":  # level 1 is balanced within each parent: 75 items -> sizes 10 or 9
        for parent in range(8):
            sizes = torch.bincount(fit.codes[fit.codes[:, 0] == parent, 1], minlength=8)
            assert int(sizes.max()) - int(sizes.min()) <= 1 and int(sizes.sum()) == 75
    else:  # nearest centroids under each parent, which encode reproduces
        assert (rq.encode(x) == fit.codes).all(dim=1).float().mean() > 0.9
    # a two-level fit decodes to its level-1 residual error, and a tuple no item has is refused by name
    two = ResidualQuantizer(TokenizerConfig(codebook_sizes=[8, 8], codebook_scope="prefix", max_iter=10), seed=0)
    fit2 = two.fit(x)
    assert float(((x - two.decode(fit2.codes)) ** 2).sum()) == pytest.approx(fit2.residual_sq[1], rel=1e-3)
    with pytest.raises(ValueError, match=r"code tuple \[0, 7, 15\] \(row 0\) has no centroid at level 2"):
        rq.decode(torch.tensor([[0, 7, 15]]))


def test_prefix_scope_beats_one_codebook_per_level_on_uniqueness() -> None:
    x = _embeddings(2000, 8)
    unique = {}
    for scope in ("level", "prefix"):
        fit = ResidualQuantizer(
            TokenizerConfig(codebook_sizes=[16, 16, 16], codebook_scope=scope, max_iter=10), seed=0
        ).fit(x)
        unique[scope] = len({tuple(row) for row in fit.codes.tolist()}) / 2000
    assert unique["prefix"] > unique["level"] and unique["prefix"] > 0.9, unique
