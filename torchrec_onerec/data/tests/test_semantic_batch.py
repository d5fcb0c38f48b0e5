"""Tests of the semantic-ID batch: KJT layout, target codes, checks, Pipelineable methods."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import Sample
from torchrec_onerec.data.semantic_batch import (
    SemanticIdTransform,
    history_code_key,
    semantic_feature_keys,
    target_code_key,
    to_semantic_batch,
)

CODES = torch.tensor([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1], [2, 2, 0]])  # I = 5, L' = 3


def _batch():
    samples = [
        Sample(10, np.array([3, 1, 4]), np.array([2, 0, -1]), np.ones((3, 2), np.float32)),
        Sample(11, np.array([], dtype=np.int64), np.array([4, -1, -1]), np.zeros((3, 2), np.float32)),
    ]
    return collate_samples(samples)


def test_history_keys_align_item_by_item() -> None:
    sb = to_semantic_batch(_batch(), CODES)
    assert sb.features.keys() == semantic_feature_keys(3)
    for level in range(3):
        jt = sb.features[history_code_key(level)]
        assert jt.lengths().tolist() == [3, 0]
        assert jt.values().tolist() == CODES[[3, 1, 4], level].tolist()
        target = sb.features[target_code_key(level)]
        assert target.lengths().tolist() == [2, 1]
        assert target.values().tolist() == CODES[[2, 0, 4], level].tolist()
    assert sb.features["user_id"].values().tolist() == [10, 11]


def test_target_codes_are_dense_with_padding() -> None:
    sb = to_semantic_batch(_batch(), CODES)
    assert sb.target_codes.shape == (2, 3, 3)
    assert sb.target_codes[0, :2].tolist() == CODES[[2, 0]].tolist()
    assert (sb.target_codes[0, 2] == -1).all() and (sb.target_codes[1, 1:] == -1).all()
    assert sb.num_levels == 3 and sb.batch_size == 2
    assert sb.labels.shape == (2, 3, 2) and sb.item_features["history_item"].values().tolist() == [3, 1, 4]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="item ids in"):
        to_semantic_batch(_batch(), CODES[:3])
    with pytest.raises(ValueError, match="int64"):
        to_semantic_batch(_batch(), CODES.float())
    with pytest.raises(ValueError, match="max_history=2"):
        to_semantic_batch(_batch(), CODES, max_history=2)
    batch = _batch()
    batch.target_mask = torch.tensor([[False, True, False], [True, False, False]])
    with pytest.raises(ValueError, match="real target items must come first"):
        to_semantic_batch(batch, CODES)


def test_pipelineable_and_picklable_transform() -> None:
    step = pickle.loads(pickle.dumps(SemanticIdTransform(CODES)))
    sb = step(_batch())
    moved = sb.to(torch.device("cpu"))
    assert torch.equal(moved.target_codes, sb.target_codes)
    assert moved.features["history_code_2"].values().tolist() == sb.features["history_code_2"].values().tolist()
    sb.record_stream(torch.cpu.Stream())  # host tensors: nothing to record
    assert sb.pin_memory().target is not None
