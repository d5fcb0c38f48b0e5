"""Tests of the item level scored per prefix (``model.item_head=prefix``): a sharded output table and a softmax
over the items under each item's cluster. Training, ``log_prob``, beam search, slate serving and the DPO code
log-probabilities must all read the same distribution, which is a proper one over the catalogue."""

from __future__ import annotations

import itertools

import pytest
import torch

from torchrec_onerec.alignment.train_step import code_log_probs
from torchrec_onerec.data.semantic_batch import batch_siblings, sibling_groups
from torchrec_onerec.generation.beam_search import constrained_beam_search
from torchrec_onerec.generation.slate import next_item_log_probs
from torchrec_onerec.models.config import model_size
from torchrec.fx import Tracer

from torchrec_onerec.models.onerec import OneRecModel, OneRecTrainModule, count_parameters
from torchrec_onerec.models.testing import random_batch
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def _item_codes(num_items: int, clusters: int, levels: int = 1) -> torch.Tensor:
    """[I, levels + 1]: ``levels`` cluster codes, then the item id (``tokenizer.disambiguation=item``)."""
    items = torch.arange(num_items)
    prefix = [(items // clusters**level) % clusters for level in range(levels)]
    return torch.stack(prefix + [items], dim=1)


def _setup(num_items: int = 24, clusters: int = 4, levels: int = 1, session_items: int = 2, seed: int = 0):
    codes = _item_codes(num_items, clusters, levels)
    sizes = [clusters] * levels + [num_items]
    torch.manual_seed(seed)
    model = OneRecModel(model_size("tiny", session_items=session_items, item_head="prefix"), sizes).eval()
    batch = random_batch(
        codes, 3, max_history=model.config.max_history, session_items=session_items, seed=seed, siblings=True
    )
    return codes, PrefixIndex(codes, vocab_sizes=sizes), model, batch


def test_sibling_groups_list_each_clusters_items_and_their_positions() -> None:
    codes = _item_codes(10, 3)
    groups = sibling_groups(codes)
    for item in range(10):
        row = groups.members[groups.group[item]]
        assert row[groups.position[item]] == item
        assert set(row[row >= 0].tolist()) == {i for i in range(10) if i % 3 == item % 3}


def test_the_item_level_has_a_table_and_no_dense_head_of_the_catalogues_size() -> None:
    dense = count_parameters(model_size("tiny"), [4, 1000])
    prefix = count_parameters(model_size("tiny", item_head="prefix"), [4, 1000])
    D = model_size("tiny").d_model
    assert dense["heads"] - prefix["heads"] == 1000 * (D + 1)  # the item level's linear layer is gone
    assert prefix["tables"] - dense["tables"] == 1000 * D  # ... and its rows are a table TorchRec shards
    model = OneRecModel(model_size("tiny", item_head="prefix"), [4, 1000])
    assert "item_output" in model.embedding.ec.embeddings and len(model.heads) == 1


def test_forward_loss_and_log_prob_read_the_same_per_cluster_softmax() -> None:
    codes, index, model, batch = _setup()
    looked_up = batch.features["target_siblings"].values()  # each cluster's rows once, not once per target
    assert torch.equal(looked_up, batch_siblings(batch.target_siblings))
    assert len(looked_up) < int(batch.target_mask.sum()) * batch.target_siblings.shape[-1]
    out = model(batch)
    per_code = code_log_probs(out.logits, out.labels)  # (B, M, L'), 0 at padding
    assert torch.isfinite(out.loss) and torch.isfinite(per_code).all()
    torch.testing.assert_close(out.ntp_loss, -per_code.sum() / (out.labels >= 0).sum())
    sessions = batch.target_codes.unsqueeze(1)  # (B, 1, M, L')
    # log_prob looks each cluster's rows up once (grouped), forward reads the batch's: the same values and gradients
    scored = model.log_prob(batch, sessions, prefix_index=index)[:, 0]
    torch.testing.assert_close(scored, per_code.sum(dim=(1, 2)))
    table = model.embedding.ec.embeddings["item_output"].weight
    grouped = torch.autograd.grad(scored.sum(), table)[0]
    by_batch = torch.autograd.grad(code_log_probs(model(batch).logits, out.labels).sum(), table)[0]
    assert grouped.abs().sum() > 0
    torch.testing.assert_close(grouped, by_batch)
    with pytest.raises(ValueError, match="prefix_index"):
        model.log_prob(batch, sessions)


@pytest.mark.parametrize("levels", [1, 2])
def test_the_next_item_distribution_sums_to_one_over_the_catalogue(levels: int) -> None:
    codes, index, model, batch = _setup(num_items=32, clusters=4 if levels == 1 else 2, levels=levels)
    log_probs = next_item_log_probs(model, batch, codes)  # the rows pass (two levels) and the tree (three)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(3))
    one_item = codes.view(1, -1, 1, codes.shape[1]).expand(3, -1, -1, -1)
    torch.testing.assert_close(log_probs, model.log_prob(batch, one_item, prefix_index=index), atol=1e-5, rtol=0)


def test_beam_search_is_exact_on_a_tiny_catalogue_and_every_path_agrees() -> None:
    codes, index, model, batch = _setup(num_items=6, clusters=2, session_items=2, seed=3)
    sessions = torch.tensor(list(itertools.permutations(range(6), 2)))  # all 30 sessions
    all_scores = model.log_prob(batch, codes[sessions].unsqueeze(0).expand(3, -1, -1, -1), prefix_index=index)
    out = constrained_beam_search(model, batch, prefix_index=index, beam_size=36, num_return=10)
    best = all_scores.topk(10, dim=1)
    torch.testing.assert_close(out.scores, best.values)
    assert torch.equal(out.items, sessions[best.indices])
    for kwargs in ({"use_cache": False}, {"compact": False}):  # no KV cache; every code of the level spread out
        other = constrained_beam_search(model, batch, prefix_index=index, beam_size=36, num_return=10, **kwargs)
        assert torch.equal(other.items, out.items)
        torch.testing.assert_close(other.scores, out.scores)


def test_training_steps_lower_the_loss_with_padding_targets() -> None:
    codes, _, model, batch = _setup(num_items=40, clusters=4, session_items=3)
    assert not batch.target_mask.all()  # some padding targets, whose rows have no siblings
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(batch).loss
        optimiser.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_the_train_module_traces_with_one_table_call_as_the_sharded_pipeline_needs() -> None:
    _, _, model, batch = _setup(num_items=40, clusters=4, session_items=3)
    module = OneRecTrainModule(model)
    loss, (_, logits, labels) = module(batch)
    assert logits.shape[-1] == batch.target_siblings.shape[-1] == 10  # the widest level: a cluster's 10 items
    assert (labels[..., -1][batch.target_mask] < 10).all()  # positions among the siblings, not item ids
    graph = Tracer(leaf_modules=["EmbeddingCollection"]).trace(module)  # as TrainPipelineSparseDist traces
    torch.testing.assert_close(torch.fx.GraphModule(module, graph)(batch)[0], loss)
    assert [n.target for n in graph.nodes if n.op == "call_module"].count("model.embedding.ec") == 1


def test_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="model.item_head='items'"):
        model_size("tiny", item_head="items")
    with pytest.raises(ValueError, match="two code levels"):
        OneRecModel(model_size("tiny", item_head="prefix"), [50])


def test_grouped_scoring_equals_scoring_each_row_over_its_own_lookup() -> None:
    codes, index, model, _ = _setup(num_items=40, clusters=4)
    parents = torch.tensor([0, 2, 2, 3, 0, -1, 1, 2])  # repeated clusters, and a row of no prefix
    columns = index.children_of(1, parents)[0]
    hidden = torch.randn(len(parents), model.config.d_model)
    with torch.no_grad():
        grouped = model.level_log_probs(hidden, 1, columns)
        plain = model.level_log_probs(hidden, 1, columns, sibling_rows=model.embedding.embed_siblings(columns))
        distinct, which = parents.unique(return_inverse=True)  # the grouping beam search passes along
        given = model.level_log_probs(hidden, 1, columns, groups=(index.children_of(1, distinct)[0], which))
    torch.testing.assert_close(grouped, plain)
    torch.testing.assert_close(given, grouped, rtol=0, atol=0)
    assert torch.isneginf(grouped[5]).all() and torch.isfinite(grouped[0, :10]).all()


def test_the_last_coordinate_of_an_output_row_is_the_items_bias() -> None:
    _, index, model, _ = _setup(num_items=40, clusters=4)
    columns = index.children_of(1, torch.tensor([2, 2]))[0]  # the 10 items of cluster 2, twice
    weight = model.embedding.ec.embeddings["item_output"].weight
    with torch.no_grad():
        weight[columns[0, 3], -1] = 30.0  # whatever the state, this item takes the cluster's mass
        hidden = torch.randn(2, model.config.d_model) * torch.tensor([[1.0], [5.0]])
        log_probs = model.level_log_probs(hidden, 1, columns)
    assert (log_probs[:, 3] > -1e-6).all()
