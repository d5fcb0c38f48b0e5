"""Tests of ``evaluate_generative`` on a tiny untrained model: legal, repeat-free, deterministic; protocol A's list
is the exact score order; a model that always writes one item is credited exactly for the users who wanted it."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import pytest
import torch

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.data.semantic_batch import to_semantic_batch
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.generative import evaluate_generative
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex

NUM_ITEMS = 12
RATES = ("recall@1", "recall@4", "ndcg@1", "ndcg@4", "legality", "repeat_rate", "repeat_slot_rate", "filler_rate")


def _samples(num: int, width: int, *, seed: int = 0) -> SampleSet:
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num):
        history = rng.choice(NUM_ITEMS, size=int(rng.integers(0, 6)), replace=False)
        target = np.full(width, -1, dtype=np.int64)
        size = int(rng.integers(1, width + 1))
        target[:size] = rng.choice(NUM_ITEMS, size=size, replace=False)
        rows.append(Sample(user, history.astype(np.int64), target, np.zeros((width, 0), np.float32)))
    return SampleSet.from_samples(rows, [])


def _setup(session_items: int = 2) -> Tuple[torch.Tensor, PrefixIndex, OneRecModel]:
    codes, sizes = random_codes(NUM_ITEMS, [3, 3], seed=0)
    torch.manual_seed(0)
    model = OneRecModel(model_size("tiny", session_items=session_items), sizes)
    return codes, PrefixIndex(codes, vocab_sizes=sizes), model


def _evaluate(model, samples, codes, index, protocol, **config):
    settings = {"beam_size": 6, "num_return": 4, "ks": [1, 4], "batch_size": 5, **config}
    return evaluate_generative(
        model,
        samples,
        codes=codes,
        prefix_index=index,
        config=EvalConfig(**settings),
        protocol=protocol,
        max_history=8,
        progress=False,
    )


@pytest.mark.parametrize("protocol", ["A", "B"])
def test_legal_repeat_free_bounded_and_deterministic(protocol: str) -> None:
    codes, index, model = _setup()
    samples = _samples(11, 2)
    first = _evaluate(model, samples, codes, index, protocol)
    again = _evaluate(model, samples, codes, index, protocol)
    M = 1 if protocol == "A" else 2
    assert first.sessions.shape == (11, 4, M) and first.scores.shape == (11, 4)
    assert first.metrics["legality"] == 1.0 and first.metrics["repeat_rate"] == 0.0
    assert first.metrics["num_users"] == 11.0 and first.info["users_without_target"] == 0
    for name in RATES + (("recall@m", "ndcg@m") if protocol == "B" else ()):
        assert 0.0 <= first.metrics[name] <= 1.0, name
        assert first.per_user[name].shape == (11,)
    assert np.array_equal(first.sessions, again.sessions) and np.array_equal(first.scores, again.scores)
    assert first.metrics == again.metrics
    assert first.per_user["user"].tolist() == list(range(11))


def test_protocol_a_list_is_the_exact_score_order() -> None:
    codes, index, model = _setup()
    samples = _samples(4, 1, seed=1)
    result = _evaluate(model, samples, codes, index, "A", beam_size=NUM_ITEMS, num_return=NUM_ITEMS)
    # With as many beams as items the search is exhaustive: the list is every item by log p(item | history).
    batch = to_semantic_batch(collate_samples(samples), codes)
    every_item = codes.view(1, NUM_ITEMS, 1, -1).expand(4, -1, -1, -1)  # [B, I, M=1, L']
    with torch.no_grad():
        log_p = model.eval().log_prob(batch, every_item)  # [B, I]
    expected = torch.argsort(log_p, dim=1, descending=True)
    assert np.array_equal(result.sessions[:, :, 0], expected.numpy())
    assert np.allclose(result.scores, log_p.sort(dim=1, descending=True).values.numpy(), atol=1e-5)
    assert result.metrics["list_length"] == NUM_ITEMS


def _always_writes(model: OneRecModel, codes: torch.Tensor, item: int) -> OneRecModel:
    """Zero the output heads and bias them to the codes of ``item``: every user gets ``item`` first."""
    with torch.no_grad():
        for level, head in enumerate(model.heads):
            assert isinstance(head, torch.nn.Linear)
            head.weight.zero_()
            head.bias.fill_(-5.0)
            head.bias[codes[item, level]] = 5.0
    return model


def test_a_model_that_always_writes_one_item() -> None:
    codes, index, model = _setup()
    samples = _samples(20, 2, seed=2)
    item = int(samples.target[0, 0])
    model = _always_writes(model, codes, item)
    a = _evaluate(model, samples, codes, index, "A")
    assert (a.sessions[:, 0, 0] == item).all()
    wanted = samples.target[:, 0] == item
    assert wanted.any() and not wanted.all()
    assert np.array_equal(a.per_user["recall@1"], wanted.astype(float))
    assert np.array_equal(a.per_user["ndcg@1"], wanted.astype(float))
    b = _evaluate(model, samples, codes, index, "B")
    assert (b.sessions[:, 0] == item).any(axis=1).all()  # every top session holds the item
    # recall@m is the share of each user's positives in the top session; the item is one of them where wanted
    found = [len(set(t[t >= 0]) & set(s)) / (t >= 0).sum() for t, s in zip(samples.target, b.sessions[:, 0])]
    np.testing.assert_allclose(b.per_user["recall@m"], found)
    wanted = (samples.target == item).any(axis=1)
    expected = np.where(wanted, 1.0 / (samples.target >= 0).sum(axis=1), 0.0)  # one of |P| positives found
    assert (b.per_user["recall@m"] >= expected).all() and (b.per_user["recall@m"][wanted] > 0).all()


def test_history_exclusion_and_unconstrained_decoding() -> None:
    codes, index, model = _setup()
    samples = _samples(9, 2, seed=3)
    masked = _evaluate(model, samples, codes, index, "B", exclude_history=True)
    real = np.isfinite(masked.scores)
    for u in range(len(samples)):
        assert not np.isin(masked.sessions[u], samples[u].history).any()
        assert (masked.sessions[u][~real[u]] == -1).all()  # filler sessions come back empty
    # The search looks ahead (a prefix is taken only while an allowed item lies below it), so no beam dies.
    assert masked.info["exclude_history"] is True and masked.info["filler_sessions"] == (~real).sum() == 0
    assert masked.metrics["filler_rate"] == pytest.approx(1.0 - real.mean())
    free = _evaluate(model, samples, codes, index, "B", constrained=False)
    assert free.metrics["legality"] < 1.0  # 12 of 27 code tuples are items; the untrained model strays
    assert np.allclose(free.per_user["legality"], (free.sessions >= 0).mean(axis=(1, 2)))


def test_samples_without_target_are_skipped_and_counted() -> None:
    codes, index, model = _setup()
    samples = _samples(6, 2, seed=4)
    samples.target[2] = -1
    result = _evaluate(model, samples, codes, index, "B")
    assert result.info["users_without_target"] == 1 and result.metrics["num_users"] == 5.0
    assert result.per_user["sample"].tolist() == [0, 1, 3, 4, 5]


def test_bad_arguments_are_named() -> None:
    codes, index, model = _setup()
    samples = _samples(3, 2)
    with pytest.raises(ValueError, match="eval.num_return=4 .* max\\(eval.ks\\)=10"):
        _evaluate(model, samples, codes, index, "A", ks=[5, 10])
    with pytest.raises(ValueError, match="max_history=9"):
        evaluate_generative(
            model,
            samples,
            codes=codes,
            prefix_index=index,
            config=EvalConfig(ks=[1]),
            protocol="B",
            max_history=9,
            progress=False,
        )
    with pytest.raises(ValueError, match="target width m=3 exceeds the model's session_items=2"):
        _evaluate(model, _samples(3, 3), codes, index, "B")
    with pytest.raises(ValueError, match="protocol='b'"):
        _evaluate(model, samples, codes, index, "b")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    codes, index, model = _setup()
    samples = _samples(8, 2, seed=5)
    cpu = _evaluate(model, samples, codes, index, "B")
    cuda = evaluate_generative(
        model,
        samples,
        codes=codes,
        prefix_index=index,
        config=EvalConfig(beam_size=6, num_return=4, ks=[1, 4], batch_size=5),
        protocol="B",
        max_history=8,
        device="cuda",
        progress=False,
    )
    assert cuda.info["device"].startswith("cuda") and cuda.metrics["legality"] == 1.0
    assert np.allclose(cuda.scores, cpu.scores, atol=1e-4)
