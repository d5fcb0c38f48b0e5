"""What every stage and arm of one ``onerec`` invocation shares: the config, the run directory and the data,
loaded lazily (seconds, deterministic per seed) rather than pickled between stages; and this process's
torchrun rank."""

from __future__ import annotations

import functools
import os
from typing import List, Optional, Union

import torch

from torchrec_onerec.alignment.candidates import RewardFn
from torchrec_onerec.alignment.rewards import mixed_reward_fn, ranker_reward_fn
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.splits import SplitA, SplitB, split_data
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.datasets.synthetic import SyntheticWorld, load_synthetic
from torchrec_onerec.eval.simulated import world_reward_fn
from torchrec_onerec.models.cascade import load_cascade
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_scoring import session_rewards
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.runtime import resolve_device
from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.distributed import rank_device
from torchrec_onerec.train.reward_io import REWARD_MODEL_FILE, load_reward_model
from torchrec_onerec.train.validation import GenerativeValidator


def rank() -> int:
    """This process's torchrun rank (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The torchrun world size (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class PipelineContext:
    """What the stages of one invocation share: the config, the run directory and the loaded data (lazily)."""

    def __init__(self, config: OneRecConfig, run: RunDir) -> None:
        self.config = config
        self.run = run
        self.fresh = True  # the running stage starts over (vs. resuming its own partial work)
        self._data: Optional[InteractionData] = None
        self._split: Optional[Union[SplitA, SplitB]] = None
        self._world: Optional[SyntheticWorld] = None

    @property
    def data(self) -> InteractionData:
        if self._data is None:
            self._data = load_dataset(self.config.data, seed=self.config.seed)
        return self._data

    @property
    def split(self) -> Union[SplitA, SplitB]:
        if self._split is None:
            self._split = split_data(self.data, self.config.split)
        return self._split

    @property
    def world(self) -> Optional[SyntheticWorld]:
        """The synthetic world behind the data (protocol C), or None for logged data."""
        if self.config.data.source != "synthetic":
            return None
        if self._world is None:
            self._world = load_synthetic(self.config.data.synthetic, seed=self.config.seed)[1]
        return self._world

    @property
    def scored_samples(self) -> SampleSet:
        """The samples every arm is scored on: the test split, or the validation split under eval.split=valid."""
        return self.split.test if self.config.eval.split == "test" else self.split.valid

    @property
    def ab_world(self) -> Optional[SyntheticWorld]:
        """The world whose truth scores the A/B (protocol C): only on the test split, never to choose a config."""
        return self.world if self.config.eval.split == "test" else None

    @property
    def codebook(self) -> Codebook:
        """The tokenize stage's codebook, refused if it belongs to another catalogue or tokenizer config."""
        cfg = self.config
        return Codebook.load(
            self.run.path / "tokenize" / "codebook.pt",
            num_items=self.data.num_items,
            fingerprint=catalogue_fingerprint(self.data.raw_item_ids, cfg.tokenizer, seed=cfg.seed),
        )

    def reward_model(self) -> SessionRewardModel:
        """The train-reward stage's model on this rank's device, refused if it was trained on another catalogue."""
        device = rank_device(resolve_device(self.config.device), int(os.environ.get("LOCAL_RANK", "0")))
        return load_reward_model(
            self.run.path / "train-reward" / REWARD_MODEL_FILE,
            num_items=self.data.num_items,
            signals=self.split.train.signals,
            device=device,
        )

    def alignment_reward(self) -> RewardFn:
        """The reward function ``align.reward_source`` names (``alignment.config.AlignConfig``): what alignment
        maximises, and what the ``*_select`` arms pick the served session by."""
        cfg = self.config
        source = cfg.align.reward_source
        if source == "world":
            if self.world is None:
                raise ValueError(
                    f"align.reward_source='world' needs the synthetic world (data.source=synthetic), not "
                    f"data.source={cfg.data.source!r}; use align.reward_source=model"
                )
            return world_reward_fn(self.world, self.data)
        fns: List[RewardFn] = []
        if source in ("model", "mix"):
            reward_model = self.reward_model()
            fns.append(
                functools.partial(
                    session_rewards,
                    reward_model,
                    batch_size=cfg.eval.batch_size,
                    device=next(reward_model.parameters()).device,
                )
            )
        if source in ("ranker", "mix"):
            # Loaded on the CPU like the generative model: alignment scores candidates on the host.
            fns.append(
                ranker_reward_fn(
                    load_cascade(self.run.path / "cascade", config=cfg.cascade),
                    diversity_weight=cfg.align.ranker_diversity,
                )
            )
        if source == "mix":
            return mixed_reward_fn(fns, [1.0 - cfg.align.ranker_weight, cfg.align.ranker_weight])
        return fns[0]

    def generative_validator(self) -> GenerativeValidator:
        """What validates the generative model during training (``generative_validator``), the bar on rank 0."""
        return generative_validator(
            self.config, self.codebook.codes, self.codebook.prefix_index(), progress=rank() == 0
        )


def generative_validator(
    config: OneRecConfig, codes: torch.Tensor, prefix_index: PrefixIndex, *, progress: bool
) -> GenerativeValidator:
    """The run's validator of the generative model: constrained beam search on the validation users with the
    ``eval`` section, ``split.protocol`` and ``model.max_history``, checked against ``train.selection_metric``."""
    return GenerativeValidator(
        config.eval,
        codes,
        prefix_index,
        protocol=config.split.protocol,
        max_history=config.model.max_history,
        selection_metric=config.train.selection_metric,
        progress=progress,
    )
