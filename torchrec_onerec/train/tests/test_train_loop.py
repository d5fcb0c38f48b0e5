"""``train_generative`` in one process: the loss falls, a stopped run resumes to the uninterrupted result
bit for bit, early stopping keeps the best model, a finished run is not retrained, a foreign run is refused."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch
import torch.distributed as dist

from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.data.batch import collate_samples
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.semantic_batch import to_semantic_batch
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.models.testing import random_codes
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train import loop
from torchrec_onerec.train.checkpoint import CheckpointMismatchError
from torchrec_onerec.train.export import load_checkpoint_model, load_exported
from torchrec_onerec.train.loop import TrainResult, train_generative
from torchrec_onerec.train.testing import random_samples, tiny_config
from torchrec_onerec.train.validation import Validator
from torchrec_onerec.context import generative_validator

CODES, SIZES = random_codes(30, [4, 4], seed=0)
INDEX = PrefixIndex(CODES, vocab_sizes=SIZES)
TRAIN = random_samples(48, 30, max_history=8, session_items=2, seed=0)
VALID = random_samples(12, 30, max_history=8, session_items=2, seed=1)
CPU = torch.device("cpu")
MODEL = tiny_config(model={"dropout": 0.1}).model


@pytest.fixture(autouse=True)
def no_process_group() -> None:
    if dist.is_initialized():
        pytest.skip("a default process group already exists in this process")


def _rows(run_dir: Path) -> List[Dict[str, str]]:
    with open(run_dir / "train" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _train(run_dir: Path, valid: SampleSet = VALID, **train: object) -> TrainResult:
    config = tiny_config(model={"dropout": 0.1}, **train)
    return _generative(config, valid, run_dir)


def _generative(
    config: OneRecConfig,
    valid: SampleSet,
    run_dir: Path,
    *,
    codes: torch.Tensor = CODES,
    index: PrefixIndex = INDEX,
    validator: Optional[Validator] = None,
) -> TrainResult:
    """``train_generative`` on TRAIN, validated by ``validator`` (default: the config's beam search)."""
    return train_generative(
        config.model,
        config.train,
        config.loader,
        TRAIN,
        valid,
        codes,
        SIZES,
        run_dir,
        validator=validator or generative_validator(config, codes, index, progress=False),
        seed=config.seed,
        device=CPU,
        progress=False,
    )


def test_loss_falls_and_the_final_model_is_exported(tmp_path: Path) -> None:
    result = _train(tmp_path, valid=SampleSet.empty(2, ["click"]), epochs=3, log_every_steps=6)
    losses = [float(row["loss"]) for row in _rows(tmp_path)]
    assert result.steps == 18 and len(losses) == 3 and losses[-1] < losses[0] - 0.1
    assert result.stop_reason == "epochs" and result.best_value is None and result.tokens_per_s > 0
    model = load_exported(Path(result.best_model_path), MODEL, SIZES)
    _assert_same(model, load_checkpoint_model(sorted((tmp_path / "train" / "checkpoints").iterdir())[-1], MODEL, SIZES))
    batch = to_semantic_batch(collate_samples(TRAIN), CODES)
    assert float(model(batch).loss.detach()) < losses[-1]


def test_bf16_autocast_trains_through_the_pipeline(tmp_path: Path) -> None:
    runs = {
        amp: _train(tmp_path / amp, valid=SampleSet.empty(2, ["click"]), epochs=3, log_every_steps=6, amp=amp)
        for amp in ("none", "bf16")
    }
    losses = {amp: [float(row["loss"]) for row in _rows(tmp_path / amp)] for amp in runs}
    assert losses["bf16"][-1] < losses["bf16"][0] - 0.1 and losses["bf16"] != losses["none"]
    assert all(abs(a - b) < 0.05 * b for a, b in zip(losses["bf16"], losses["none"]))


def _assert_same(a: OneRecModel, b: OneRecModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_stopped_and_resumed_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    full = _train(tmp_path / "full", checkpoint_every_steps=4)
    stopped = _train(tmp_path / "resumed", checkpoint_every_steps=4, max_steps=8)  # mid epoch 1 (6 steps/epoch)
    assert (stopped.steps, stopped.stop_reason, len(stopped.validations)) == (8, "max_steps", 1)
    resumed = _train(tmp_path / "resumed", checkpoint_every_steps=4)
    assert resumed.steps == full.steps == 12 and resumed.validations == full.validations
    final = [
        load_checkpoint_model(sorted((d / "train" / "checkpoints").iterdir())[-1], MODEL, SIZES)
        for d in (tmp_path / "full", tmp_path / "resumed")
    ]
    _assert_same(*final)  # dropout is on: the RNG streams were restored too
    drop = ("tokens_per_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "resumed")] == [
        {k: v for k, v in r.items() if k not in drop} for r in _rows(tmp_path / "full")
    ]


def test_early_stopping_keeps_the_best_validated_model(tmp_path: Path) -> None:
    scores = iter([0.3, 0.5, 0.4, 0.2, 0.9])

    def validator(model: OneRecModel, samples: SampleSet) -> Dict[str, float]:
        return {"ndcg@10": next(scores)}

    config = tiny_config(epochs=5, patience=2)
    result = _generative(config, VALID, tmp_path, validator=validator)
    assert (result.stop_reason, result.epochs, result.best_epoch, result.best_value) == ("early_stopping", 4, 2, 0.5)
    assert result.best_checkpoint is not None and Path(result.best_checkpoint).is_dir()
    _assert_same(
        load_exported(Path(result.best_model_path), config.model, SIZES),
        load_checkpoint_model(Path(result.best_checkpoint), config.model, SIZES),
    )
    assert len(list((tmp_path / "train" / "checkpoints").iterdir())) == 2  # the best and the latest


def test_user_ids_beyond_the_user_table_are_refused(tmp_path: Path) -> None:
    largest = int(max(TRAIN.user.max(), VALID.user.max()))
    config = tiny_config(num_users=largest)
    with pytest.raises(ValueError, match=rf"model.num_users={largest} is too small: .* user id {largest}"):
        _generative(config, VALID, tmp_path)
    assert not (tmp_path / "train").exists()  # refused before anything was written


def test_finished_run_is_not_retrained_and_a_foreign_run_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _train(tmp_path, valid=SampleSet.empty(2, ["click"]), epochs=1)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was rebuilt")

    monkeypatch.setattr(loop, "fit", fail)
    assert _train(tmp_path, valid=SampleSet.empty(2, ["click"]), epochs=1) == first
    monkeypatch.undo()
    with pytest.raises(CheckpointMismatchError, match="resume=False"):
        flipped = CODES.flip(0)
        _generative(
            tiny_config(epochs=2), VALID, tmp_path, codes=flipped, index=PrefixIndex(flipped, vocab_sizes=SIZES)
        )
