"""Seeded toy training inputs (docs/METHOD.md section 2 training, at test size): a tiny run config and random samples.

Used by the tests of ``train``, the multi-process tests in ``integration_tests/`` and ``benchmarks/train.py``;
real runs get their samples from ``data.splits`` and their codes from the tokenizer.
"""

from __future__ import annotations

import os
import socket
from dataclasses import fields, replace
from typing import Any, Dict, Optional

import numpy as np
import torch

from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.data.config import LoaderConfig, SplitConfig
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.models.config import model_size
from torchrec_onerec.optim_config import OptimConfig
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.train.config import TrainConfig


def random_samples(
    num_samples: int, num_items: int, *, max_history: int, session_items: int, seed: int, full_sessions: bool = True
) -> SampleSet:
    """Random users with 1..n distinct history items and a target session of M (or 1..M) distinct items.

    Args:
        num_samples (int): N.
        num_items (int): I, item ids are drawn from [0, I) (I >= max(n, M)).
        max_history (int): n.
        session_items (int): M.
        seed (int): the random seed.
        full_sessions (bool): every session has M real items (so every sample has the same number of target
            codes); False draws 1..M.

    Returns:
        SampleSet: one label signal (``click`` = 1 on real items).

    Example:
        >>> s = random_samples(3, 10, max_history=4, session_items=2, seed=0)
        >>> len(s), s.target.shape, bool((s.target >= 0).all())
        (3, (3, 2), True)
    """
    rng = np.random.default_rng(seed)
    samples = []
    for user in range(num_samples):
        history = rng.choice(num_items, size=int(rng.integers(1, max_history + 1)), replace=False)
        size = session_items if full_sessions else int(rng.integers(1, session_items + 1))
        target = np.full(session_items, -1, dtype=np.int64)
        target[:size] = rng.choice(num_items, size=size, replace=False)
        samples.append(Sample(user, history.astype(np.int64), target, (target[:, None] >= 0).astype(np.float32)))
    return SampleSet.from_samples(samples, ["click"])


def tiny_config(
    *,
    batch_size: int = 8,
    num_users: int = 64,
    max_history: int = 8,
    session_items: int = 2,
    model: Optional[Dict[str, Any]] = None,
    **train: Any,
) -> OneRecConfig:
    """A run config with the ``tiny`` model (n = 8, M = 2 unless given), a small beam and ``train`` overrides.

    Args:
        batch_size (int): the global batch.
        num_users (int): rows of the user-id table.
        max_history (int): n (``split.max_history``, which the model follows).
        session_items (int): M (``split.session_items``).
        model (Dict[str, Any] | None): overrides of the ``tiny`` model config.
        **train: overrides of ``TrainConfig``; optimiser keys (``epochs``, ``learning_rate``, ``patience``, ...)
            override its ``optim`` (a few defaults suit tests: 2 epochs, short warm-up).

    Example:
        >>> cfg = tiny_config(epochs=2)
        >>> cfg.train.optim.epochs, cfg.model.max_history, cfg.loader.batch_size
        (2, 8, 8)
    """
    defaults: Dict[str, Any] = {
        "epochs": 2,
        "warmup_steps": 2,
        "log_every_steps": 1,
        "learning_rate": 1e-2,
        "sparse_learning_rate": 0.05,
    }
    prefix = (model or {}).get("item_head") == "prefix"  # scores the item-id level, which needs the item leaf
    return OneRecConfig(
        tokenizer=TokenizerConfig(disambiguation="item") if prefix else TokenizerConfig(),
        split=SplitConfig(max_history=max_history, session_items=session_items),
        loader=LoaderConfig(batch_size=batch_size),
        model=model_size(
            "tiny", num_users=num_users, max_history=max_history, session_items=session_items, **(model or {})
        ),
        train=_train_config({**defaults, **train}),
        eval=EvalConfig(beam_size=10, num_return=10, batch_size=32),
    )


def _train_config(values: Dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from flat keys: the optimiser's go to ``optim`` (over the ``train`` section's defaults)."""
    names = {f.name for f in fields(OptimConfig)}
    optim = replace(TrainConfig().optim, **{key: value for key, value in values.items() if key in names})
    return TrainConfig(optim=optim, **{key: value for key, value in values.items() if key not in names})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the rendezvous of spawned test ranks)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def as_torchrun_rank(rank: int, world_size: int, port: int, *, threads: int = 1) -> None:
    """Make a spawned process rank ``rank`` of ``world_size`` on this host, as ``torchrun`` would (the environment
    ``init_distributed`` reads), with ``threads`` torch threads."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
