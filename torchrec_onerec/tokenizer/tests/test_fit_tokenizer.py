"""fit_tokenizer end to end: unique codes, the report, determinism, bad input, the synthetic world's content."""

import json

import pytest
import torch

from torchrec_onerec.datasets.synthetic import load_synthetic
from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.tokenizer.embeddings import item_embeddings
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer


def _x(n: int = 512, d: int = 12) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(0)), dim=1)


def test_unique_codes_and_report(tmp_path) -> None:
    x = torch.cat([_x(), _x()[:40]])  # 40 duplicated embeddings: guaranteed collisions
    config = TokenizerConfig(codebook_sizes=[8, 4], max_iter=8)
    book, report = fit_tokenizer(x, config, seed=0)
    assert book.num_items == 552 and book.num_quantized_levels == 2 and book.num_levels == 3
    assert torch.unique(book.codes, dim=0).shape[0] == 552
    assert torch.equal(book.prefix_index().item_of(book.codes), torch.arange(552))
    assert report.collision_rate >= 40 / 552 and report.unique_fraction < 1.0
    assert report.vocab_sizes == book.vocab_sizes == [8, 4, report.max_collision_group]
    first, second = report.levels
    assert (first.min_cluster_size, first.max_cluster_size, first.utilisation) == (69, 69, 1.0)
    assert first.entropy_bits == pytest.approx(first.max_entropy_bits) == pytest.approx(3.0)
    assert second.reconstruction_error < first.reconstruction_error < 1.0
    assert report.reconstruction_error == second.reconstruction_error
    decoded = book.decode(book.codes)
    assert float(((x - decoded) ** 2).sum() / (x**2).sum()) == pytest.approx(report.reconstruction_error, rel=1e-4)
    json.dumps(report.to_json())
    assert "| 1 | 4 | 4 |" in report.to_markdown()
    book.save(tmp_path / "codebook.pt")
    loaded = Codebook.load(tmp_path / "codebook.pt", num_items=552, fingerprint=book.fingerprint)
    assert torch.equal(loaded.codes, book.codes)


def test_deterministic_per_seed_and_fingerprint_of_the_catalogue() -> None:
    config = TokenizerConfig(codebook_sizes=[16, 16], max_iter=5)
    a, _ = fit_tokenizer(_x(), config, seed=1, item_ids=[f"v{i}" for i in range(512)])
    b, _ = fit_tokenizer(_x(), config, seed=1, device="cpu", item_ids=[f"v{i}" for i in range(512)])
    c, _ = fit_tokenizer(_x(), config, seed=2)
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)
    assert a.fingerprint == catalogue_fingerprint([f"v{i}" for i in range(512)], config, seed=1) != c.fingerprint


def test_plain_residual_kmeans_and_always_disambiguate() -> None:
    config = TokenizerConfig(quantizer="residual_kmeans", codebook_sizes=[8, 8], disambiguation="always")
    book, report = fit_tokenizer(_x(), config, seed=0)
    assert book.num_levels == 3 and report.quantizer == "residual_kmeans"
    assert torch.unique(book.codes, dim=0).shape[0] == 512


def test_bad_input() -> None:
    config = TokenizerConfig(codebook_sizes=[8, 8])
    with pytest.raises(ValueError, match=r"codebook_sizes\[0\]=8 is larger than the number of items N=5"):
        fit_tokenizer(_x(5), config, seed=0)
    with pytest.raises(ValueError, match="width d=0"):
        fit_tokenizer(torch.zeros(20, 0), config, seed=0)
    bad = _x(20)
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[3\]"):
        fit_tokenizer(bad, config, seed=0)
    with pytest.raises(ValueError, match="item_ids has 3 entries for 20"):
        fit_tokenizer(_x(20), config, seed=0, item_ids=[1, 2, 3])


def test_synthetic_world_content_embedding() -> None:
    data, _ = load_synthetic(SyntheticConfig(num_users=50, num_items=300, num_topics=6, num_days=2), seed=0)
    x = item_embeddings(data, TokenizerConfig())
    book, report = fit_tokenizer(x, TokenizerConfig(codebook_sizes=[6, 5]), seed=0, item_ids=data.raw_item_ids)
    assert book.num_items == 300 and report.levels[0].min_cluster_size == 50
    topic = torch.tensor(data.items["topic"].to_numpy())
    purity = sum(int(torch.bincount(topic[book.codes[:, 0] == c]).max()) for c in range(6)) / 300
    assert purity > 0.8  # the first level recovers the world's topics
