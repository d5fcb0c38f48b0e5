"""SASRec: causal reading of the history, one table for input and output, ranking, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.models.sasrec import SASRec, SASRecTransform, load_sasrec, rank_items, save_sasrec
from torchrec_onerec.models.sasrec_config import SASRecConfig
from torchrec_onerec.optim_config import OptimConfig

CONFIG = SASRecConfig(embedding_dim=8, num_layers=2, num_heads=2, ffn_hidden=16, dropout=0.0)
NO_LABELS = np.zeros((1, 0), np.float32)


def _samples(histories) -> SampleSet:
    return SampleSet.from_samples(
        [Sample(u, np.array(h, np.int64), np.array([0]), NO_LABELS) for u, h in enumerate(histories)], []
    )


def _model(num_items: int = 7, max_history: int = 4) -> SASRec:
    torch.manual_seed(0)
    return SASRec(CONFIG, num_items=num_items, max_history=max_history).eval()


def test_a_users_vector_reads_only_its_own_items_not_the_padding_or_other_rows():
    model = _model()
    alone, _ = model.encode(SASRecTransform(7)(collate_samples(_samples([[1, 2]]))).features)
    mixed, _ = model.encode(SASRecTransform(7)(collate_samples(_samples([[1, 2], [3, 4, 5, 6]]))).features)
    assert torch.allclose(alone[0], mixed[0], atol=1e-6)
    other, _ = model.encode(SASRecTransform(7)(collate_samples(_samples([[1, 3]]))).features)
    assert not torch.allclose(alone[0], other[0])  # the last item matters


def test_the_catalogue_scores_come_from_the_history_table():
    model = _model()
    user, items = model.encode(SASRecTransform(7)(collate_samples(_samples([[1, 2]]))).features)
    table = model.ec.embeddings["sasrec_item"].weight
    assert items.shape == (7, CONFIG.embedding_dim) and torch.equal(items, table)


def test_training_lowers_the_loss_of_a_repeated_pattern():
    model = _model(num_items=5, max_history=3)
    model.train()
    samples = SampleSet.from_samples(
        [Sample(u, np.array([u % 5, (u + 1) % 5]), np.array([(u + 2) % 5]), NO_LABELS) for u in range(20)], []
    )
    batch = SASRecTransform(5)(collate_samples(samples))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = float(model(batch).detach())
    for _ in range(60):
        optimizer.zero_grad()
        model(batch).backward()
        optimizer.step()
    assert float(model(batch).detach()) < 0.2 * first
    items, _ = rank_items(model, samples, k=1)
    assert (items[:, 0] == samples.target[:, 0]).mean() == 1.0


def test_rank_items_excludes_the_history_and_matches_a_plain_argsort():
    model = _model()
    samples = _samples([[1, 2], [0, 6, 3]])
    items, scores = rank_items(model, samples, k=7)
    with torch.no_grad():
        user, catalogue = model.encode(SASRecTransform(7)(collate_samples(samples)).features)
    reference = np.argsort(-(user @ catalogue.t()).numpy(), axis=1, kind="stable")
    assert np.array_equal(items, reference)
    assert np.all(np.diff(scores, axis=1) <= 0)
    excluded, _ = rank_items(model, samples, k=7, exclude_history=True)
    assert set(excluded[0, :5].tolist()) == {0, 3, 4, 5, 6} and excluded[0, 5:].tolist() == [-1, -1]
    assert set(excluded[1, :4].tolist()) == {1, 2, 4, 5}
    with pytest.raises(ValueError, match="k=8"):
        rank_items(model, samples, k=8)


def test_save_and_load_give_the_same_ranking(tmp_path):
    model = _model()
    save_sasrec(tmp_path / "sasrec.pt", model.state_dict(), CONFIG, num_items=7, max_history=4)
    back = load_sasrec(tmp_path / "sasrec.pt")
    samples = _samples([[1, 2], [4]])
    assert np.array_equal(rank_items(model, samples, k=5)[0], rank_items(back, samples, k=5)[0])


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="sasrec.dropout=1.0"):
        SASRecConfig(dropout=1.0)
    with pytest.raises(ValueError, match="sasrec.optim.patience=-1"):
        SASRecConfig(optim=OptimConfig(patience=-1))
