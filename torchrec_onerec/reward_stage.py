"""The ``train-reward`` stage: the session reward model trained on the training days, its epoch chosen on the
validation days, its AUCs measured on the test days (docs/EVAL.md protocol B).

Its samples are the windows' impressions cut into sessions of m (``data.impressions``). Where the data marks
what a randomly exposing policy showed (``is_rand``: KuaiRand's random log, the synthetic world's randomised
sessions), ``test_auc.json`` also holds each model's AUCs over those sessions alone (under ``randomised``): the
reward model's job in alignment and selection is to score sessions that no logging policy chose, and the
randomised ones are the logged sessions most like those.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, NamedTuple

import numpy as np

from torchrec_onerec.context import PipelineContext, rank
from torchrec_onerec.data.impressions import impression_samples, randomised_chunks
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.splits import SplitB
from torchrec_onerec.eval.reward_auc import evaluate_reward_model
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.runtime import resolve_device
from torchrec_onerec.train.reward_io import load_reward_model
from torchrec_onerec.train.reward_training import train_reward_model


def _window_samples(ctx: PipelineContext, window: str, items_per_sample: int) -> SampleSet:
    assert isinstance(ctx.split, SplitB)
    return impression_samples(
        ctx.split,
        window,
        num_users=ctx.data.num_users,
        items_per_sample=items_per_sample,
        max_history=ctx.config.split.max_history,
    )


class _AucWindow(NamedTuple):
    """A window's sessions of m and its impressions, with which of them a random policy showed."""

    sessions: SampleSet
    impressions: SampleSet
    randomised_sessions: np.ndarray  # [sessions] bool (``randomised_chunks``)
    randomised_impressions: np.ndarray  # [impressions] bool


def _auc_window(ctx: PipelineContext, window: str, m: int) -> _AucWindow:
    assert isinstance(ctx.split, SplitB)
    return _AucWindow(
        _window_samples(ctx, window, m),
        _window_samples(ctx, window, 1),
        randomised_chunks(ctx.split, window, items_per_sample=m),
        randomised_chunks(ctx.split, window, items_per_sample=1),
    )


def _reward_aucs(ctx: PipelineContext, model: SessionRewardModel, data: _AucWindow) -> Dict[str, object]:
    """The reward model's AUCs on a window: over all its sessions, and under ``randomised`` over the randomly
    exposed ones (when there are any)."""
    cfg, device = ctx.config, resolve_device(ctx.config.device)
    aucs: Dict[str, object] = dict(
        evaluate_reward_model(model, data.sessions, data.impressions, batch_size=cfg.eval.batch_size, device=device)
    )
    if data.randomised_sessions.any():
        aucs["randomised"] = evaluate_reward_model(
            model,
            data.sessions.subset(np.flatnonzero(data.randomised_sessions)),
            data.impressions.subset(np.flatnonzero(data.randomised_impressions)),
            batch_size=cfg.eval.batch_size,
            device=device,
        )
    return aucs


def train_reward_stage(ctx: PipelineContext) -> Dict[str, object]:
    """Train the session reward model on the training days (every torchrun rank takes part), select it on the
    validation days and measure its per-tower test AUC (docs/EVAL.md protocol B); artefacts under ``train-reward/``.
    ``test_auc.json`` holds each model's AUCs over all sessions and, under ``randomised``, over the randomly
    exposed ones (module docstring)."""
    cfg = ctx.config
    m, device = cfg.split.session_items, resolve_device(cfg.device)
    train, valid, impressions = (
        _window_samples(ctx, "train", m),
        _window_samples(ctx, "valid", m),
        _window_samples(ctx, "train", 1),
    )
    folder = ctx.run.path / "train-reward"
    variants = {cfg.reward.pooling: (cfg.reward, folder)}
    if cfg.reward.baseline_pooling and cfg.reward.baseline_pooling != cfg.reward.pooling:
        variants[cfg.reward.baseline_pooling] = (
            replace(cfg.reward, pooling=cfg.reward.baseline_pooling),
            folder / "baseline",
        )
    summary: Dict[str, object] = {}
    test: Dict[str, object] = {}
    test_window = _auc_window(ctx, "test", m) if rank() == 0 else None  # one build for every variant
    for pooling, (reward_config, out_dir) in variants.items():
        result = train_reward_model(
            reward_config,
            train,
            valid,
            num_users=ctx.data.num_users,
            num_items=ctx.data.num_items,
            out_dir=out_dir,
            train_config=cfg.train,
            seed=cfg.seed,
            device=device,
            train_impressions=impressions,
            item_codes=ctx.codebook.codes,
            progress=rank() == 0,
        )
        summary[pooling] = asdict(result)
        if rank() == 0:
            model = load_reward_model(
                Path(result.model_path), num_items=ctx.data.num_items, signals=ctx.split.train.signals, device=device
            )
            assert test_window is not None
            test[pooling] = _reward_aucs(ctx, model, test_window)
    summary.update(
        model_path=summary[cfg.reward.pooling]["model_path"],  # type: ignore[index]
        world_size=summary[cfg.reward.pooling]["world_size"],  # type: ignore[index]
        test_auc=test,
    )
    if rank() == 0:
        ctx.run.write_json("train-reward/test_auc.json", test)
    return summary
