"""Item embeddings by source: content, file (.npy / parquet), features, collaborative, text; bad input."""

import numpy as np
import pandas as pd
import pytest
import torch

from torchrec_onerec.datasets.interactions import DataError, InteractionData
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.tokenizer.embeddings import item_embeddings


def _data(items: pd.DataFrame, raw_ids=None, content=None) -> InteractionData:
    n = len(items)
    inter = pd.DataFrame({"user_id": [0], "item_id": [0], "timestamp": [0]}).astype("int64")
    raw = np.asarray(raw_ids) if raw_ids is not None else np.arange(n)
    return InteractionData("toy", inter, items, np.arange(1), raw, item_embeddings=content)


def test_content_normalised_and_missing_content_is_an_error() -> None:
    content = np.array([[3.0, 4.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    data = _data(pd.DataFrame({"item_id": [0, 1, 2]}), content=content)
    x = item_embeddings(data, TokenizerConfig())
    assert torch.allclose(x.norm(dim=1), torch.tensor([1.0, 1.0, 0.0]))
    z = item_embeddings(data, TokenizerConfig(normalize="standardize"))
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(2))
    assert torch.equal(item_embeddings(data, TokenizerConfig(normalize="none")), torch.from_numpy(content))
    with pytest.raises(DataError, match="no content embedding"):
        item_embeddings(_data(pd.DataFrame({"item_id": [0]})), TokenizerConfig())


def test_nan_rows_are_named() -> None:
    content = np.ones((5, 3), dtype=np.float32)
    content[[1, 3], 0] = [np.nan, np.inf]
    with pytest.raises(DataError, match=r"2 items have NaN or inf values, item ids \[1, 3\]"):
        item_embeddings(_data(pd.DataFrame({"item_id": range(5)}), content=content), TokenizerConfig())
    with pytest.raises(DataError, match="width d=0"):
        item_embeddings(_data(pd.DataFrame({"item_id": range(5)}), content=np.zeros((5, 0))), TokenizerConfig())


def test_npy_and_parquet_files(tmp_path) -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = _data(pd.DataFrame({"item_id": range(4)}), raw_ids=["a", "b", "c", "d"])
    np.save(tmp_path / "e.npy", vectors)
    cfg = TokenizerConfig(embedding_source="file", embedding_path=str(tmp_path / "e.npy"), normalize="none")
    assert np.array_equal(item_embeddings(data, cfg).numpy(), vectors)
    # parquet in another order, keyed by raw ids, vectors in one list column or in numeric columns
    shuffled = pd.DataFrame({"item_id": ["c", "a", "d", "b"], "vec": [list(vectors[i]) for i in (2, 0, 3, 1)]})
    shuffled.to_parquet(tmp_path / "list.parquet")
    cfg.embedding_path = str(tmp_path / "list.parquet")
    assert np.array_equal(item_embeddings(data, cfg).numpy(), vectors)
    wide = pd.DataFrame({"item_id": ["b", "a", "c", "d"], **{f"f{j}": vectors[[1, 0, 2, 3], j] for j in range(3)}})
    wide.to_parquet(tmp_path / "wide.parquet")
    cfg.embedding_path = str(tmp_path / "wide.parquet")
    assert np.array_equal(item_embeddings(data, cfg).numpy(), vectors)


def test_file_that_does_not_match_the_catalogue(tmp_path) -> None:
    data = _data(pd.DataFrame({"item_id": range(3)}), raw_ids=[10, 11, 12])
    cfg = TokenizerConfig(embedding_source="file", embedding_path=str(tmp_path / "e.npy"))
    np.save(tmp_path / "e.npy", np.zeros((4, 2)))
    with pytest.raises(DataError, match=r"shape \(4, 2\) does not match the catalogue of 3 items"):
        item_embeddings(data, cfg)
    cfg.embedding_path = str(tmp_path / "p.parquet")
    pd.DataFrame({"item_id": [10, 11, 12, 99], "v": [[0.0]] * 4}).to_parquet(cfg.embedding_path)
    with pytest.raises(DataError, match=r"1 item ids are not in the catalogue, e.g. \[99\]"):
        item_embeddings(data, cfg)
    pd.DataFrame({"item_id": [10, 12], "v": [[0.0]] * 2}).to_parquet(cfg.embedding_path)
    with pytest.raises(DataError, match=r"1 catalogue items have no embedding, e.g. raw item ids \[11\]"):
        item_embeddings(data, cfg)
    pd.DataFrame({"item_id": [10, 11, 12, 12], "v": [[0.0]] * 4}).to_parquet(cfg.embedding_path)
    with pytest.raises(DataError, match=r"more than once, e.g. \[12\]"):
        item_embeddings(data, cfg)
    with pytest.raises(ValueError, match="needs tokenizer.embedding_path"):
        item_embeddings(data, TokenizerConfig(embedding_source="file"))


def test_features_kuairand_and_movielens_like() -> None:
    kuairand = pd.DataFrame(
        {
            "item_id": range(6),
            "video_type": ["NORMAL", "AD", "NORMAL", "NORMAL", None, "AD"],
            "upload_type": pd.Categorical(["ShortImport", "Web", "ShortImport", "Kmovie", "Web", "Web"]),
            "video_duration": [5.2, 12.0, np.nan, 7.9, 30.1, 9.0],
            "music_type": [9, 4, 9, 11, 4, 9],
            "author_id": [101, 102, 101, 103, 104, 105],
            "tag": ["1,5,7", "5", "", "7,28", None, "1"],
        }
    )
    cfg = TokenizerConfig(embedding_source="features", normalize="none")
    x = item_embeddings(_data(kuairand), cfg)
    assert x.shape == (6, 2 + 3 + 1 + 3 + 5 + 4)
    assert x[0, -4:].tolist() == [1.0, 0.0, 1.0, 1.0]  # tags 1, 28, 5, 7 (sorted tokens): 1, 5, 7
    movielens = pd.DataFrame(
        {
            "item_id": range(4),
            "title": ["Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)"],
            "year": pd.array([1995, 1995, 1994, pd.NA], dtype="Int64"),
            "genres": ["Animation Children's Comedy", "Action Adventure Thriller", "Thriller", "Action Comedy Drama"],
        }
    )
    small_vocab = TokenizerConfig(embedding_source="features", normalize="none", max_feature_categories=7)
    y = item_embeddings(_data(movielens), small_vocab)  # title: 8 distinct words > 7, free text, skipped
    assert y.shape == (4, 2 + 7)  # year one-hot (2 values), 7 genres
    explicit = TokenizerConfig(embedding_source="features", feature_columns=["genres"], max_feature_categories=3)
    assert item_embeddings(_data(movielens), explicit).shape == (4, 3)
    with pytest.raises(DataError, match=r"names \['rating'\], not in the item table"):
        item_embeddings(_data(movielens), TokenizerConfig(embedding_source="features", feature_columns=["rating"]))
    with pytest.raises(DataError, match="no usable item feature columns"):
        item_embeddings(_data(pd.DataFrame({"item_id": range(3), "c": [1.0, 1.0, 1.0]})), cfg)


def test_collaborative_reads_only_the_given_interactions() -> None:
    data = _data(pd.DataFrame({"item_id": range(6)}))
    train = pd.DataFrame(
        {
            "user_id": [0, 0, 0, 1, 1, 1, 2, 2],
            "item_id": [0, 1, 2, 0, 1, 2, 3, 4],
            "timestamp": [1, 2, 3, 1, 2, 3, 1, 2],
        }
    )
    cfg = TokenizerConfig(embedding_source="collaborative", embedding_dim=3, collaborative_window=2)
    x = item_embeddings(data, cfg, train_interactions=train)
    assert x.shape == (6, 3) and float(x[5].abs().sum()) == 0.0  # item 5 never trained: zero row
    assert float(x[0] @ x[1]) > 0.9 and abs(float(x[0] @ x[3])) < 0.1
    assert torch.equal(x, item_embeddings(data, cfg, train_interactions=train))
    with_test = pd.concat([train, pd.DataFrame({"user_id": [3, 3], "item_id": [5, 0], "timestamp": [1, 2]})])
    assert not torch.equal(x, item_embeddings(data, cfg, train_interactions=with_test))
    with pytest.raises(ValueError, match="needs train_interactions"):
        item_embeddings(data, cfg)
    with pytest.raises(ValueError, match="embedding_dim=7 exceeds the number of items 6"):
        wide = TokenizerConfig(embedding_source="collaborative", embedding_dim=7)
        item_embeddings(data, wide, train_interactions=train)
    with pytest.raises(DataError, match=r"item ids \[9\] outside the catalogue"):
        item_embeddings(data, cfg, train_interactions=pd.DataFrame({"user_id": [0, 0], "item_id": [1, 9]}))


def test_text_without_sentence_transformers_says_how_to_install() -> None:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        data = _data(pd.DataFrame({"item_id": range(2), "title": ["a", "b"]}))
        with pytest.raises(ImportError, match="pip install sentence-transformers"):
            item_embeddings(data, TokenizerConfig(embedding_source="text", embedding_path="/nowhere"))
    else:
        pytest.skip("sentence-transformers is installed")
