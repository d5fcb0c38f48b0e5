"""Tests of the semantic-token embedding: TorchRec tables, token layout, recency/level terms, masks, meta build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingCollection

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample
from torchrec_onerec.data.semantic_batch import to_semantic_batch
from torchrec_onerec.models.testing import random_batch, random_codes
from torchrec_onerec.modules.embedding import SemanticEmbeddingConfig, SemanticTokenEmbedding

SIZES = [4, 3]
CODES = torch.tensor([[0, 0], [1, 2], [3, 1], [2, 0]])


def _embedding(num_users: int = 0) -> SemanticTokenEmbedding:
    torch.manual_seed(0)
    return SemanticTokenEmbedding(
        SemanticEmbeddingConfig(d_model=6, vocab_sizes=SIZES, max_history=3, session_items=2, num_users=num_users)
    )


def test_tables_are_one_embedding_collection_shared_by_history_and_target() -> None:
    emb = _embedding(num_users=10)
    assert isinstance(emb.ec, EmbeddingCollection)
    configs = {c.name: c for c in emb.ec.embedding_configs()}
    assert configs["code_1"].num_embeddings == 3 and configs["code_1"].feature_names == [
        "history_code_1",
        "target_code_1",
    ]
    assert configs["user_id"].num_embeddings == 10 and emb.ec.embedding_dim() == 6


def test_history_tokens_are_code_plus_recency_plus_level() -> None:
    emb = _embedding(num_users=10)
    samples = [
        Sample(7, np.array([2, 1]), np.array([3, -1]), np.zeros((2, 0), np.float32)),
        Sample(8, np.array([], dtype=np.int64), np.array([0, 1]), np.zeros((2, 0), np.float32)),
    ]
    batch = to_semantic_batch(collate_samples(samples), CODES)
    out = emb(batch.features)
    assert out.tokens.shape == (2, 1 + 3 * 2, 6)
    assert out.mask.tolist() == [[True, True, True, True, True, False, False], [True] + [False] * 6]
    table = emb.ec.embeddings
    # user 0, history item 1 (the newest, recency 0) sits at item position 1, tokens 3 and 4
    for level in range(2):
        expected = table[f"code_{level}"].weight[CODES[1, level]] + emb.recency.weight[0] + emb.level.weight[level]
        torch.testing.assert_close(out.tokens[0, 1 + 2 + level], expected)
    torch.testing.assert_close(
        out.tokens[0, 1], table["code_0"].weight[CODES[2, 0]] + emb.recency.weight[1] + emb.level.weight[0]
    )
    torch.testing.assert_close(out.tokens[1, 0], emb.context + table["user_id"].weight[8])
    torch.testing.assert_close(out.targets[0, 0, 1], table["code_1"].weight[CODES[3, 1]])
    assert (out.targets[0, 1] == 0).all()  # padding target item


def test_item_history_tokens_sum_each_item_s_code_tokens() -> None:
    torch.manual_seed(0)
    per_code = _embedding(num_users=10)
    per_item = SemanticTokenEmbedding(
        SemanticEmbeddingConfig(
            d_model=6, vocab_sizes=SIZES, max_history=3, session_items=2, num_users=10, history_tokens="items"
        )
    )
    per_item.load_state_dict(per_code.state_dict())
    samples = [
        Sample(7, np.array([2, 1]), np.array([3, -1]), np.zeros((2, 0), np.float32)),
        Sample(8, np.array([], dtype=np.int64), np.array([0, 1]), np.zeros((2, 0), np.float32)),
    ]
    features = to_semantic_batch(collate_samples(samples), CODES).features
    codes, items = per_code(features), per_item(features)
    assert items.tokens.shape == (2, 1 + 3, 6)
    assert items.mask.tolist() == [[True, True, True, False], [True, False, False, False]]
    torch.testing.assert_close(items.tokens[:, 0], codes.tokens[:, 0])  # the context token
    for position in range(2):  # item at history position p = the sum of its L' code tokens
        torch.testing.assert_close(
            items.tokens[0, 1 + position], codes.tokens[0, 1 + 2 * position : 3 + 2 * position].sum(dim=0)
        )
    torch.testing.assert_close(items.targets, codes.targets)
    with pytest.raises(ValueError, match="history_tokens='levels'"):
        SemanticEmbeddingConfig(d_model=4, vocab_sizes=[2], history_tokens="levels")


def test_embed_codes_matches_the_batch_target_lookup() -> None:
    codes, sizes = random_codes(20, [3, 3], seed=1)
    emb = SemanticTokenEmbedding(SemanticEmbeddingConfig(d_model=4, vocab_sizes=sizes, max_history=4, session_items=3))
    batch = random_batch(codes, 5, max_history=4, session_items=3)
    real = batch.target_mask
    torch.testing.assert_close(emb.embed_codes(batch.target_codes)[real], emb(batch.features).targets[real])


def test_decoder_tokens_put_bos_before_each_item() -> None:
    emb = _embedding()
    codes = torch.randn(2, 2, 2, 6)
    tokens = emb.decoder_tokens(codes)
    assert tokens.shape == (2, 6, 6)
    position = emb.decoder_position.weight
    torch.testing.assert_close(tokens[:, 3], emb.bos.expand(2, 6) + position[3])
    torch.testing.assert_close(tokens[:, 5], codes[:, 1, 1] + position[5])
    torch.testing.assert_close(emb.decoder_tokens(codes[:, 1:], start=3), tokens[:, 3:])


def test_meta_build_allocates_nothing_and_config_checks() -> None:
    emb = SemanticTokenEmbedding(
        SemanticEmbeddingConfig(d_model=1024, vocab_sizes=[8192] * 3, num_users=10**6), device=torch.device("meta")
    )
    assert all(p.is_meta for p in emb.parameters())
    with pytest.raises(ValueError, match="vocab_sizes"):
        SemanticEmbeddingConfig(d_model=4, vocab_sizes=[])
