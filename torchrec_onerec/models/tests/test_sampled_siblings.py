"""Tests of training the per-cluster item level with a sampled softmax (``train.sampled_siblings``): each target
against its own row and a shared draw from its cluster, each drawn logit corrected by log(F_c / S)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchrec.fx import Tracer

from torchrec_onerec.config import load_config
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample
from torchrec_onerec.data.semantic_batch import SemanticIdTransform, batch_siblings, sample_siblings, sibling_groups
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule, bias_input
from torchrec_onerec.models.testing import random_batch
from torchrec_onerec.train.metrics_log import batch_sizes


def _codes(num_items: int, clusters: int) -> torch.Tensor:
    items = torch.arange(num_items)
    return torch.stack([items % clusters, items], dim=1)


def test_each_target_comes_first_then_distinct_draws_from_its_own_cluster() -> None:
    codes = _codes(60, 3)  # clusters of 20
    groups = sibling_groups(codes)
    target = torch.tensor([[0, 3, 1, -1], [6, 2, 5, -1]])
    mask = target >= 0
    rows, ratio = sample_siblings(groups, target, mask, 5, torch.Generator().manual_seed(0))
    assert rows.shape == (2, 4, 6)
    for b in range(2):
        for m in range(4):
            if not mask[b, m]:
                assert (rows[b, m] == -1).all() and ratio[b, m] == 0
                continue
            own, drawn = int(rows[b, m, 0]), rows[b, m, 1:]
            assert own == int(codes[target[b, m], 1])
            drawn = drawn[drawn >= 0].tolist()
            assert len(set(drawn)) == len(drawn) and own not in drawn and len(drawn) in (4, 5)
            assert all(item % 3 == own % 3 for item in drawn)
            assert ratio[b, m] == pytest.approx(math.log(20 / 5))
    # one draw per cluster: targets 0, 3 and 6 share theirs (less each one's own code)
    shared = [set(rows[b, m, 1:].tolist()) - {-1, 0, 3, 6} for b, m in ((0, 0), (0, 1), (1, 0))]
    assert shared[0] == shared[1] == shared[2]
    # the rows a batch reads: at most S per cluster plus the targets' own
    assert len(batch_siblings(rows)) <= 3 * 5 + int(mask.sum())


def test_a_cluster_no_larger_than_the_draw_is_taken_whole_and_uncorrected() -> None:
    groups = sibling_groups(_codes(12, 3))  # clusters of 4
    target = torch.tensor([[4, 5]])
    rows, ratio = sample_siblings(groups, target, target >= 0, 8, torch.Generator().manual_seed(1))
    assert rows.shape == (1, 2, 5)  # 1 + the widest cluster's 4, not 1 + 8
    assert set(rows[0, 0].tolist()) - {-1} == {1, 4, 7, 10}
    assert rows[0, 0, 0] == 4 and rows[0, 1, 0] == 5
    assert torch.equal(ratio, torch.zeros(1, 2))


def test_the_corrected_sampled_normaliser_is_unbiased() -> None:
    """E[exp(l_t) + sum_drawn exp(l_j + log(F/S))] = sum over the whole cluster of exp(l_j)."""
    codes = _codes(40, 1)  # one cluster of 40
    groups = sibling_groups(codes)
    logits = torch.linspace(-2.0, 2.0, 40)
    target = torch.tensor([[7]])
    generator = torch.Generator().manual_seed(2)
    estimates = []
    for _ in range(3000):
        rows, ratio = sample_siblings(groups, target, target >= 0, 6, generator)
        row = rows[0, 0]
        present = row >= 0
        corrected = logits[row.clamp(min=0)] + torch.where(torch.arange(len(row)) > 0, ratio[0, 0], 0.0)
        estimates.append(float(corrected[present].exp().sum()))
    assert np.mean(estimates) == pytest.approx(float(logits.exp().sum()), rel=0.02)
    without = float((logits[7].exp() + logits[torch.arange(40) != 7].exp().mean() * 6))
    assert without < 0.3 * float(logits.exp().sum())  # uncorrected, the sampled normaliser is far smaller


def _model_and_batches(sampled: int):
    codes = _codes(60, 3)
    sizes = [3, 60]
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny", session_items=3, item_head="prefix"), sizes).eval()
    kwargs = {"max_history": model.config.max_history, "session_items": 3, "seed": 4, "siblings": True}
    return model, random_batch(codes, 4, **kwargs), random_batch(codes, 4, sampled_siblings=sampled, **kwargs)


def test_the_sampled_loss_scores_the_full_heads_logits_plus_the_correction() -> None:
    model, full, sampled = _model_and_batches(5)
    assert torch.equal(full.target_codes, sampled.target_codes)
    assert sampled.target_siblings.shape[-1] == 6 < full.target_siblings.shape[-1] == 20
    out = model(sampled)
    assert torch.isfinite(out.loss)
    assert (out.labels[..., -1][sampled.target_mask] == 0).all()  # the target's own row comes first
    # recompute the item level by hand from the table and the hidden state the full batch's forward sees
    table = model.embedding.ec.embeddings["item_output"].weight
    hidden = {}

    def keep(module: torch.nn.Module, args: object, result) -> None:
        hidden["h"] = result.hidden

    handle = model.decoder.register_forward_hook(keep)
    model(full)
    handle.remove()
    B, M, L = full.target_codes.shape
    last = bias_input(hidden["h"].view(B, M, L + 1, -1)[:, :, L - 1])  # (B, M, D)
    siblings = sampled.target_siblings
    expected = (table[siblings.clamp(min=0)] @ last.unsqueeze(-1)).squeeze(-1)
    expected = expected + torch.nn.functional.pad(sampled.sibling_log_ratio.unsqueeze(-1).expand(B, M, 5), (1, 0))
    expected = expected.masked_fill(siblings < 0, float("-inf"))
    real = sampled.target_mask
    torch.testing.assert_close(out.logits[..., -1, :6][real], expected[real])


def test_a_draw_as_large_as_every_cluster_gives_the_full_loss() -> None:
    model, full, sampled = _model_and_batches(20)
    torch.testing.assert_close(model(sampled).loss, model(full).loss)


def test_the_sampled_train_module_traces_with_one_table_call() -> None:
    model, _, sampled = _model_and_batches(5)
    module = OneRecTrainModule(model)
    graph = Tracer(leaf_modules=["EmbeddingCollection"]).trace(module)
    torch.testing.assert_close(torch.fx.GraphModule(module, graph)(sampled)[0], module(sampled)[0])


def test_the_transform_draws_the_same_for_the_same_batch_and_seed() -> None:
    codes = _codes(60, 3)
    batch = collate_samples(
        [Sample(u, np.array([1, 2]), np.array([u, u + 3]), np.ones((2, 1), np.float32)) for u in range(4)]
    )
    one, again, other = (SemanticIdTransform(codes, siblings=True, sampled_siblings=4, seed=s) for s in (0, 0, 9))
    assert torch.equal(one(batch).target_siblings, again(batch).target_siblings)
    assert not torch.equal(one(batch).target_siblings, other(batch).target_siblings)
    with pytest.raises(ValueError, match="sampled_siblings=-1"):
        SemanticIdTransform(codes, siblings=True, sampled_siblings=-1)


def test_config_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="train.sampled_siblings=8 .* model.item_head='dense'"):
        load_config(None, ["train.sampled_siblings=8"])
    with pytest.raises(ConfigError, match="train.sampled_siblings=-2"):
        load_config(None, ["train.sampled_siblings=-2", "model.item_head=prefix", "tokenizer.disambiguation=item"])
    config = load_config(None, ["train.sampled_siblings=8", "model.item_head=prefix", "tokenizer.disambiguation=item"])
    assert config.train.sampled_siblings == 8


def test_the_logged_token_count_leaves_the_sibling_rows_out() -> None:
    _, full, sampled = _model_and_batches(5)
    history = int(full.features["history_code_0"].lengths().sum())
    expected = (history + int(full.target_mask.sum())) * full.num_levels
    assert batch_sizes(full) == batch_sizes(sampled) == (4, expected)
