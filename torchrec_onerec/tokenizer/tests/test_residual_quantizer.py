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
