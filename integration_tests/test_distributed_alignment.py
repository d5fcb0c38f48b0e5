"""Alignment's generation on a model whose tables are sharded over two gloo processes, as IPA runs under torchrun.

Each worker joins a two-rank group, shards the same tiny model row-wise (``train.export.sharded_model``: every
lookup is a collective) and runs what an IPA iteration generates and measures with it: DPO pairs and GRPO groups
of candidates (beam search plus sampling) for its own training rows, the held-out generation statistics and the
pairs' DPO statistics. The ranks are given unequal shares, so the one with fewer batches must search padding ones
for the other to finish. The test process computes the same on an unsharded copy. Results travel through files.
Checked: each rank's pairs and groups are the plain model's for its rows, and the statistics are the one process's.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
import torch.multiprocessing as mp

from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.alignment.groups import build_candidate_groups
from torchrec_onerec.alignment.ipa_stats import generation_stats, pair_stats
from torchrec_onerec.alignment.pairs import PreferencePairs, build_preference_pairs
from torchrec_onerec.models.config import model_size
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, init_distributed, teardown_distributed
from torchrec_onerec.train.export import sharded_model
from torchrec_onerec.train.testing import as_torchrun_rank, free_port, random_samples

WORLD_SIZE = 2
CODES, SIZES = random_codes(40, [4, 4], seed=0)
CONFIG = model_size("tiny", max_history=8, session_items=2)
SAMPLES = random_samples(12, 40, max_history=8, session_items=2, seed=1)
ROWS = [np.arange(0, 7), np.array([9])]  # 4 batches of 2 on rank 0, 1 on rank 1
ALIGN = AlignConfig(num_candidates=6, group_size=4, generation_batch_size=2, sampled_candidates=2, eval_users=5)
ALONE = DistContext(0, 1, 0, 1, torch.device("cpu"), "gloo", False)


def _reward(users: object, sessions: np.ndarray) -> np.ndarray:
    """A toy reward that tells sessions apart: the first item's id plus half the second's."""
    return sessions[:, :, 0] + 0.5 * sessions[:, :, 1]


def _plain_model() -> OneRecModel:
    torch.manual_seed(0)
    return OneRecModel(CONFIG, SIZES).eval()


def _generate(model: OneRecModel, rows: np.ndarray, ctx: DistContext, pairs: PreferencePairs) -> Dict[str, Any]:
    index = PrefixIndex(CODES, vocab_sizes=SIZES)
    candidates: Dict[str, Any] = dict(
        codes=CODES,
        prefix_index=index,
        num_candidates=ALIGN.num_candidates,
        batch_size=ALIGN.generation_batch_size,
        sampled=ALIGN.sampled_candidates,
        seed=7,
    )
    return {
        "pairs": build_preference_pairs(model, SAMPLES, rows, _reward, **candidates),
        "groups": build_candidate_groups(model, SAMPLES, rows, _reward, group_size=ALIGN.group_size, **candidates),
        "generation": generation_stats(
            model,
            SAMPLES.subset(np.arange(5)),
            _reward,
            codes=CODES,
            prefix_index=index,
            align=ALIGN,
            ctx=ctx,
            reference=model,
        ),
        "pair_stats": pair_stats(model, pairs, SAMPLES, codes=CODES, prefix_index=index, align=ALIGN, ctx=ctx),
    }


def _all_pairs() -> PreferencePairs:
    """Five pairs every rank holds (as ``gather_preferences`` leaves them): 3 batches of 2, 2 + 1 per rank."""
    model = _plain_model()
    index = PrefixIndex(CODES, vocab_sizes=SIZES)
    return build_preference_pairs(
        model, SAMPLES, np.arange(5), _reward, codes=CODES, prefix_index=index, num_candidates=6, batch_size=2
    )


def _worker(rank: int, port: int, out: str) -> None:
    as_torchrun_rank(rank, WORLD_SIZE, port)
    ctx = init_distributed(torch.device("cpu"), timeout_s=60)
    try:
        model = sharded_model(_plain_model().state_dict(), CONFIG, SIZES, TrainConfig(sharding_type="row_wise"), ctx)
        result = _generate(model, ROWS[rank], ctx, _all_pairs())
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    finally:
        teardown_distributed(ctx)


def test_sharded_generation_gives_the_plain_models_pairs_groups_and_statistics(tmp_path: Path) -> None:
    pairs = _all_pairs()
    assert len(pairs) == 5
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn")
    plain = _plain_model()
    alone_stats = _generate(plain, ROWS[0], ALONE, pairs)
    for rank in range(WORLD_SIZE):
        shared = pickle.loads((tmp_path / f"rank{rank}.pkl").read_bytes())
        alone = _generate(plain, ROWS[rank], ALONE, pairs)
        assert len(shared["pairs"]) > 0 and len(shared["groups"]) > 0
        for name in ("pairs", "groups"):
            for field, value in vars(alone[name]).items():
                got = getattr(shared[name], field)
                if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                    np.testing.assert_allclose(got, value, rtol=1e-5, atol=1e-5, err_msg=f"{name}.{field}")
                else:
                    np.testing.assert_array_equal(got, value, err_msg=f"{name}.{field}")
        for name in ("generation", "pair_stats"):  # the sums over both ranks are the one process's
            assert shared[name].keys() == alone_stats[name].keys()
            for key, value in alone_stats[name].items():
                assert np.isclose(shared[name][key], value, rtol=1e-5, atol=1e-6), (name, key)
