"""Codebook: unique tuples by disambiguation, collision counts, save/load with the catalogue check."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.tokenizer.tokenize import fit_tokenizer
from torchrec_onerec.tokenizer.uniqueness import disambiguate


def _book(disambiguation: str = "auto") -> Codebook:
    codes = torch.tensor([[0, 1], [1, 0], [0, 1], [2, 2], [0, 1], [1, 0]])
    centroids = [torch.randn(3, 4), torch.randn(3, 4)]
    return Codebook.build(codes, centroids, fingerprint="fp", disambiguation=disambiguation)[0]


def test_disambiguation_makes_every_tuple_unique_and_counts_collisions() -> None:
    codes = torch.tensor([[0, 1], [1, 0], [0, 1], [2, 2], [0, 1], [1, 0]])
    collisions = disambiguate(codes)
    assert collisions.extra.tolist() == [0, 0, 1, 0, 2, 1]
    assert (collisions.num_distinct, collisions.unique_items, collisions.max_group) == (3, 1, 3)
    assert collisions.collision_rate == pytest.approx(0.5) and collisions.unique_fraction == pytest.approx(1 / 6)
    book = _book()
    assert book.num_levels == 3 and book.num_quantized_levels == 2 and book.vocab_sizes == [3, 3, 3]
    assert torch.unique(book.codes, dim=0).shape[0] == book.num_items
    assert torch.equal(book.item_of(book.codes), torch.arange(6))
    assert torch.equal(book.tuple_of(torch.tensor([4, 0])), book.codes[[4, 0]])


def test_no_extra_level_without_collisions_unless_always() -> None:
    codes = torch.tensor([[0, 1], [1, 0]])
    auto, col = Codebook.build(codes, [torch.zeros(2, 1)] * 2, fingerprint="")
    assert auto.num_levels == 2 and col.collision_rate == 0.0 and col.unique_fraction == 1.0
    always, _ = Codebook.build(codes, [torch.zeros(2, 1)] * 2, fingerprint="", disambiguation="always")
    assert always.num_levels == 3 and always.vocab_sizes == [2, 2, 1] and always.codes[:, 2].eq(0).all()


def test_item_disambiguation_appends_the_item_id() -> None:
    codes = torch.tensor([[0, 1], [1, 0], [0, 1]])
    book, col = Codebook.build(codes, [torch.zeros(2, 1)] * 2, fingerprint="", disambiguation="item")
    assert book.vocab_sizes == [2, 2, 3] and book.codes[:, 2].tolist() == [0, 1, 2]
    assert col.max_group == 2  # the report still counts the semantic collisions
    assert torch.equal(book.item_of(book.codes), torch.arange(3))
    assert book.item_of(torch.tensor([[1, 0, 0]])).tolist() == [-1]  # a real prefix with another item's id


def test_wide_codes_take_the_row_unique_path() -> None:
    codes = torch.tensor([[2**40, 2**40, 5], [2**40, 2**40, 5], [1, 2, 3]])  # radix product overflows int64
    assert disambiguate(codes).extra.tolist() == [0, 1, 0]


def test_save_load_round_trip_and_refuses_other_catalogue(tmp_path) -> None:
    book = _book()
    path = tmp_path / "tok" / "codebook.pt"
    book.save(path)
    loaded = Codebook.load(path, num_items=6, fingerprint="fp")
    assert torch.equal(loaded.codes, book.codes) and loaded.vocab_sizes == book.vocab_sizes
    assert all(torch.equal(a, b) for a, b in zip(loaded.centroids, book.centroids))
    assert torch.equal(loaded.decode(loaded.codes), book.decode(book.codes))
    with pytest.raises(ValueError, match="codes for 6 items but the catalogue has 7"):
        Codebook.load(path, num_items=7, fingerprint="fp")
    with pytest.raises(ValueError, match="another item catalogue, tokenizer config or seed"):
        Codebook.load(path, num_items=6, fingerprint="other")
    with pytest.raises(FileNotFoundError, match="run the tokenize stage"):
        Codebook.load(tmp_path / "missing.pt", num_items=6, fingerprint="fp")
    torch.save({"codes": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a codebook"):
        Codebook.load(tmp_path / "other.pt", num_items=6, fingerprint="fp")


def test_fingerprint_tracks_items_config_and_seed() -> None:
    cfg = TokenizerConfig()
    base = catalogue_fingerprint(np.array([10, 20, 30]), cfg, seed=0)
    assert base == catalogue_fingerprint(np.array([10, 20, 30]), OmegaConf.structured(cfg), seed=0)
    assert base != catalogue_fingerprint(np.array([10, 20, 31]), cfg, seed=0)
    assert base != catalogue_fingerprint(np.array([10, 20, 30]), TokenizerConfig(codebook_sizes=[8, 8]), seed=0)
    assert base != catalogue_fingerprint(np.array([10, 20, 30]), cfg, seed=1)
    assert catalogue_fingerprint(np.array(["a", "b"]), cfg, seed=0) != catalogue_fingerprint(["a", "c"], cfg, seed=0)


def test_truncated_codebook_is_named_and_saving_leaves_no_temporary_file(tmp_path) -> None:
    path = tmp_path / "codebook.pt"
    _book().save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["codebook.pt"]
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(ValueError, match=f"{path} cannot be read .*truncated or corrupt"):
        Codebook.load(path, num_items=6, fingerprint="fp")


def test_a_prefix_scope_codebook_decodes_the_same_after_a_round_trip(tmp_path) -> None:
    x = torch.nn.functional.normalize(torch.randn(300, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    book, report = fit_tokenizer(x, TokenizerConfig(codebook_sizes=[4, 4, 32], codebook_scope="prefix"), seed=0)
    assert report.unique_fraction == 1.0 and book.vocab_sizes == [4, 4, 32] and book.num_levels == 3
    assert [level.codebook_size for level in report.levels] == [4, 4, 32]
    assert report.reconstruction_error < 1e-9  # <= 32 items under each level-1 prefix: each is its own centroid
    book.save(tmp_path / "codebook.pt")
    loaded = Codebook.load(tmp_path / "codebook.pt", num_items=300, fingerprint=book.fingerprint)
    assert loaded.vocab_sizes == [4, 4, 32] and torch.allclose(loaded.decode(loaded.codes), x, atol=1e-5)
