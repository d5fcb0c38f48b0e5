"""Two-tower retrieval: unit vectors, the logQ-corrected in-batch loss by hand, learning, exact top-K retrieval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.models.cascade_config import RetrievalConfig
from torchrec_onerec.models.two_tower import (
    TwoTowerRetrieval,
    TwoTowerTransform,
    in_batch_softmax_loss,
    item_kjt,
    load_two_tower,
    retrieve,
    save_two_tower,
    training_pairs,
)

NUM_USERS, NUM_ITEMS, CONTENT = 12, 20, 3


def _samples(num: int, seed: int, *, max_history: int = 4) -> SampleSet:
    rng = np.random.default_rng(seed)
    return SampleSet.from_samples(
        [
            Sample(
                u % NUM_USERS,
                rng.choice(NUM_ITEMS, size=int(rng.integers(0, max_history + 1)), replace=False),
                np.array([int(rng.integers(NUM_ITEMS))]),
                np.zeros((1, 0), np.float32),
            )
            for u in range(num)
        ],
        [],
    )


def _model(**overrides) -> TwoTowerRetrieval:
    torch.manual_seed(0)
    config = RetrievalConfig(embedding_dim=8, tower_hidden=[16], **overrides)
    return TwoTowerRetrieval(config, num_users=NUM_USERS, num_items=NUM_ITEMS, content_dim=CONTENT)


def _content() -> torch.Tensor:
    return torch.randn(NUM_ITEMS, CONTENT, generator=torch.Generator().manual_seed(1))


def test_user_and_item_vectors_are_unit_length_even_for_an_empty_history():
    model = _model()
    samples = SampleSet.from_samples(
        [
            Sample(0, np.array([], np.int64), np.array([3]), np.zeros((1, 0), np.float32)),
            Sample(5, np.array([1, 2, 7]), np.array([4]), np.zeros((1, 0), np.float32)),
        ],
        [],
    )
    batch = TwoTowerTransform(_content(), torch.zeros(NUM_ITEMS))(collate_samples(samples))
    users = model.user_vectors(batch.user_features)
    items = model.item_vectors(batch.item_features, batch.item_content)
    assert users.shape == items.shape == (2, 8)
    assert torch.allclose(users.norm(dim=1), torch.ones(2)) and torch.allclose(items.norm(dim=1), torch.ones(2))
    assert torch.equal(batch.items, torch.tensor([3, 4]))


def test_logq_corrected_loss_equals_the_hand_computed_value():
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    log_q = torch.log(torch.tensor([0.5, 0.25]))
    loss = in_batch_softmax_loss(user, item, torch.tensor([3, 7]), log_q, 0.5)
    # logits = <u, v> / 0.5 - log q: row 0 = [2 + ln 2, 1.2 + ln 4], row 1 = [0 + ln 2, 1.6 + ln 4]
    rows = [[2 + math.log(2), 1.2 + math.log(4)], [math.log(2), 1.6 + math.log(4)]]
    expected = np.mean([math.log(sum(math.exp(v) for v in row)) - row[i] for i, row in enumerate(rows)])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    plain = in_batch_softmax_loss(user, item, torch.tensor([3, 7]), None, 0.5)
    assert float(plain) != pytest.approx(expected, rel=1e-3)  # the correction changes the loss


def test_accidental_hits_are_not_negatives():
    user, item = torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # each user prefers the other row's vector
    assert float(in_batch_softmax_loss(user, item, torch.tensor([5, 5]), None, 1.0)) == pytest.approx(0.0)
    assert float(in_batch_softmax_loss(user, item, torch.tensor([5, 6]), None, 1.0)) > 1.0


def test_training_lowers_the_in_batch_loss():
    model = _model(temperature=0.1)
    pairs = SampleSet.from_samples(
        [
            Sample(u, np.array([u % 5]), np.array([(3 * u) % NUM_ITEMS]), np.zeros((1, 0), np.float32))
            for u in range(NUM_USERS)
        ],
        [],
    )
    batch = TwoTowerTransform(_content(), torch.full((NUM_ITEMS,), -math.log(NUM_ITEMS)))(collate_samples(pairs))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        loss = model(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.3 * losses[0]


def test_retrieve_returns_the_brute_force_top_k():
    model, content = _model(), _content()
    samples = _samples(9, seed=3)
    items, scores = retrieve(model, samples, k=5, item_content=content, batch_size=4)
    with torch.no_grad():
        vectors = model.item_vectors(item_kjt(torch.arange(NUM_ITEMS)), content)
        for u in range(len(samples)):
            user = model.user_vectors(collate_samples(samples, [u]).features)[0]
            brute = (vectors @ user).numpy()
            order = np.argsort(-brute, kind="stable")[:5]
            assert items[u].tolist() == order.tolist()
            assert np.allclose(scores[u], brute[order], atol=1e-5)


def test_retrieve_can_exclude_history_items():
    model, content = _model(), _content()
    samples = _samples(9, seed=4, max_history=6)
    full, _ = retrieve(model, samples, k=NUM_ITEMS, item_content=content)
    excluded, scores = retrieve(model, samples, k=NUM_ITEMS, item_content=content, exclude_history=True)
    for u in range(len(samples)):
        history = set(samples[u].history.tolist())
        kept = [i for i in full[u].tolist() if i not in history]
        assert excluded[u].tolist() == kept + [-1] * len(history)
        assert np.isneginf(scores[u, len(kept) :]).all()


def test_retrieve_rejects_k_beyond_the_catalogue():
    with pytest.raises(ValueError, match="num_candidates"):
        retrieve(_model(), _samples(2, seed=0), k=NUM_ITEMS + 1, item_content=_content())


def test_transform_rejects_a_padded_target():
    pairs = SampleSet.from_samples([Sample(0, np.array([1]), np.array([-1]), np.zeros((1, 0), np.float32))], [])
    with pytest.raises(ValueError, match="training_pairs"):
        TwoTowerTransform(_content(), torch.zeros(NUM_ITEMS))(collate_samples(pairs))


def test_training_pairs_keep_every_real_target_once_with_its_labels():
    samples = SampleSet.from_samples(
        [
            Sample(0, np.array([1]), np.array([2, 3, -1]), np.array([[1.0], [0.5], [0.0]], np.float32)),
            Sample(1, np.array([], np.int64), np.array([4, -1, -1]), np.array([[0.25], [0.0], [0.0]], np.float32)),
        ],
        ["vtr"],
    )
    pairs = training_pairs(samples)
    assert pairs.target.ravel().tolist() == [2, 3, 4]
    assert pairs.labels.ravel().tolist() == [1.0, 0.5, 0.25]
    assert [pairs[i].history.tolist() for i in range(3)] == [[1], [1], []]


def test_save_and_load_round_trip(tmp_path):
    model, content = _model(), _content()
    save_two_tower(
        tmp_path / "tt.pt",
        model.state_dict(),
        model.config,
        num_users=NUM_USERS,
        num_items=NUM_ITEMS,
        item_content=content,
    )
    loaded, loaded_content = load_two_tower(tmp_path / "tt.pt")
    samples = _samples(4, seed=5)
    assert torch.equal(loaded_content, content)
    assert np.array_equal(
        retrieve(loaded, samples, k=3, item_content=loaded_content)[0],
        retrieve(model, samples, k=3, item_content=content)[0],
    )
