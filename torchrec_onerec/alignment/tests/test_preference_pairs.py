"""Preference pairs: best/worst selection, skipped users counted, filler sessions never chosen, reference
log-probabilities equal to the model's, rows mapped back to the training set."""

from __future__ import annotations

from typing import List

import numpy as np
import pytest
import torch

from torchrec_onerec.alignment.candidates import scored_candidates
from torchrec_onerec.alignment.pairs import (
    PreferencePairs,
    build_preference_pairs,
    empty_pairs,
    sample_preference_rows,
    select_pairs,
)
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.generation.beam_search import constrained_beam_search
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.data.semantic_batch import to_semantic_batch
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.testing import random_samples

CODES, SIZES = random_codes(12, [3, 3], seed=0)
INDEX = PrefixIndex(CODES, vocab_sizes=SIZES)


def _model(codes_sizes: List[int] = SIZES) -> OneRecModel:
    torch.manual_seed(0)
    return OneRecModel(model_size("tiny"), codes_sizes).eval()


def test_select_pairs_takes_the_first_best_and_worst_and_counts_the_skipped() -> None:
    rewards = np.array(
        [
            [2.0, 5.0, 5.0, 1.0, 1.0],  # best: first of the two 5s; worst: first of the two 1s
            [3.0, 3.0, 3.0, 3.0, 3.0],  # all tie
            [9.0, 0.0, 4.0, 7.0, 8.0],  # slot 0 and 4 are filler: their rewards do not count
            [1.0, 2.0, 3.0, 4.0, 5.0],
        ]
    )  # one real session only
    real = np.array([[True] * 5, [True] * 5, [False, True, True, True, False], [True] + [False] * 4])
    pick = select_pairs(rewards, real)
    assert pick.users.tolist() == [0, 2] and pick.chosen.tolist() == [1, 3] and pick.rejected.tolist() == [3, 1]
    assert (pick.ties, pick.fillers) == (1, 1)


def test_pairs_are_best_and_worst_with_the_model_reference_log_probs() -> None:
    samples = random_samples(10, 12, max_history=4, session_items=2, seed=3)
    rows = np.array([1, 4, 5, 8])
    seen: List[np.ndarray] = []

    def reward(users: SampleSet, sessions: np.ndarray) -> np.ndarray:
        seen.append(users.user.copy())
        return (sessions * np.array([1.0, 0.1])).sum(axis=2)  # a distinct value for nearly every session

    model = _model()
    pairs = build_preference_pairs(
        model, samples, rows, reward, codes=CODES, prefix_index=INDEX, num_candidates=6, batch_size=3
    )
    assert np.concatenate(seen).tolist() == samples.user[rows].tolist()  # the reward saw the sampled users
    assert pairs.sample_rows.tolist() == rows.tolist() and (pairs.ties, pairs.fillers) == (0, 0)
    assert np.allclose(pairs.chosen_reward, reward(samples.subset(rows), pairs.chosen[:, None])[:, 0])
    assert (pairs.chosen_reward == pairs.candidate_reward_max).all()
    assert (pairs.chosen_reward > pairs.rejected_reward).all()
    assert (pairs.candidate_reward_mean < pairs.chosen_reward).all()
    assert (CODES[torch.from_numpy(pairs.chosen)] == torch.from_numpy(pairs.chosen_codes)).all()
    batch = to_semantic_batch(collate_samples(samples, rows), CODES)
    sessions = torch.from_numpy(np.stack([pairs.chosen_codes, pairs.rejected_codes], axis=1))
    expected = model.log_prob(batch, sessions).detach()
    assert torch.allclose(torch.from_numpy(pairs.reference_chosen), expected[:, 0], atol=1e-5)
    assert torch.allclose(torch.from_numpy(pairs.reference_rejected), expected[:, 1], atol=1e-5)


def test_filler_sessions_reach_the_reward_as_minus_one_and_are_never_chosen() -> None:
    codes, sizes = random_codes(3, [2, 2], seed=1)  # 3 items, M = 2, no repeats: 6 real sessions of the 8 asked
    samples = SampleSet.from_samples(
        [
            Sample(0, np.array([2]), np.array([0, 1]), np.zeros((2, 0), np.float32)),
            Sample(1, np.array([0, 1]), np.array([0, 1]), np.zeros((2, 0), np.float32)),
        ],
        [],
    )
    fillers: List[int] = []

    def reward(users: SampleSet, sessions: np.ndarray) -> np.ndarray:
        filler = (sessions == -1).all(axis=2)
        fillers.extend(filler.sum(axis=1).tolist())
        return np.where(filler, 100.0, sessions[:, :, 0] == 0)  # 1 when item 0 comes first

    index = PrefixIndex(codes, vocab_sizes=sizes)
    pairs = build_preference_pairs(
        _model(sizes), samples, np.array([0]), reward, codes=codes, prefix_index=index, num_candidates=8, batch_size=2
    )
    assert fillers == [2] and len(pairs) == 1
    assert pairs.chosen[0, 0] == 0 and pairs.rejected[0, 0] != 0 and (pairs.chosen >= 0).all()
    # with its two history items excluded, user 1 has one item left: no session of 2 distinct items at all
    fillers.clear()
    pairs = build_preference_pairs(
        _model(sizes),
        samples,
        np.array([0, 1]),
        reward,
        codes=codes,
        prefix_index=index,
        num_candidates=8,
        batch_size=2,
        exclude_history=True,
    )
    assert fillers == [8 - 2, 8] and pairs.sample_rows.tolist() == [0] and pairs.fillers == 1
    assert pairs.chosen.tolist() == [[0, 1]] and pairs.rejected.tolist() == [[1, 0]]
    assert np.isnan(pairs.candidate_reward_mean[1]) and pairs.summary()["skipped_fillers"] == 1


def test_constant_rewards_give_no_pairs_and_count_ties() -> None:
    samples = random_samples(4, 12, max_history=4, session_items=2, seed=0)
    pairs = build_preference_pairs(
        _model(),
        samples,
        np.arange(4),
        lambda u, s: np.ones(s.shape[:2]),
        codes=CODES,
        prefix_index=INDEX,
        num_candidates=4,
        batch_size=4,
    )
    assert len(pairs) == 0 and pairs.ties == 4 and pairs.chosen.shape == (0, 2)


def test_a_reward_of_the_wrong_shape_or_nan_is_refused() -> None:
    samples = random_samples(2, 12, max_history=4, session_items=2, seed=0)
    kwargs = dict(codes=CODES, prefix_index=INDEX, num_candidates=4, batch_size=2)
    with pytest.raises(ValueError, match="expected \\(2, 4\\)"):
        build_preference_pairs(_model(), samples, np.arange(2), lambda u, s: np.ones(2), **kwargs)
    with pytest.raises(ValueError, match="NaN"):
        build_preference_pairs(_model(), samples, np.arange(2), lambda u, s: np.full(s.shape[:2], np.nan), **kwargs)


def test_sampled_rows_are_distinct_seeded_and_change_with_the_iteration() -> None:
    first = sample_preference_rows(1000, 0.01, seed=3, iteration=0)
    assert len(first) == 10 and len(set(first.tolist())) == 10 and (np.diff(first) > 0).all()
    assert (first == sample_preference_rows(1000, 0.01, seed=3, iteration=0)).all()
    assert not (first == sample_preference_rows(1000, 0.01, seed=3, iteration=1)).all()
    assert len(sample_preference_rows(5, 0.01, seed=0, iteration=0)) == 1  # at least one


def test_concat_joins_arrays_and_sums_counts() -> None:
    a, b = empty_pairs(2, 3), empty_pairs(2, 3)
    a.ties, b.fillers = 2, 3
    joined = PreferencePairs.concat([a, b])
    assert (joined.ties, joined.fillers, len(joined), joined.chosen_codes.shape) == (2, 3, 0, (0, 2, 3))


def test_sampled_candidates_follow_the_beams_and_are_seeded() -> None:
    samples = random_samples(6, 12, max_history=4, session_items=2, seed=3)
    model = _model()

    def candidates(sampled: int, seed: int):
        return list(
            scored_candidates(
                model,
                samples,
                lambda users, s: s[:, :, 0].astype(float),
                codes=CODES,
                prefix_index=INDEX,
                num_candidates=6,
                batch_size=3,
                sampled=sampled,
                seed=seed,
            )
        )

    mixed, again, other = candidates(4, 0), candidates(4, 0), candidates(4, 1)
    for mix, same in zip(mixed, again):
        assert mix.items.shape == (3, 6, 2)
        beams = constrained_beam_search(model, mix.batch, prefix_index=INDEX, beam_size=2, num_return=2)
        assert (mix.items[:, :2] == beams.items.numpy()).all()  # a beam search of N - S = 2 leads
        assert (mix.items >= 0).all() and (mix.items[..., 0] != mix.items[..., 1]).all()
        assert np.array_equal(same.items, mix.items)
        torch.testing.assert_close(model.log_prob(mix.batch, mix.codes), mix.log_probs)
    assert not all(np.array_equal(a.items, b.items) for a, b in zip(mixed, other))
    with pytest.raises(ValueError, match="align.sampled_candidates"):
        candidates(7, 0)
