"""Iterative Preference Alignment (IPA, docs/METHOD.md section 4): the loop over iterations, its log and its resume.

Iteration t (t = 0 .. ``align.iterations`` - 1), with M_t the current plain model (M_0 = the trained model):

1. draw r_DPO of the training samples (``pairs.sample_preference_rows``; each rank takes its share), write N
   candidates per sample with M_t (beam search; ``align.sampled_candidates`` of them sampled), score them with
   the reward function, keep (best, worst) and M_t's log-probabilities of both (``pairs.build_preference_pairs``;
   under ``align.objective=grpo``, a group of candidates with standardised rewards as advantages,
   ``groups.build_candidate_groups``), and gather every rank's pairs (or groups);
2. train the policy from M_t with L_NTP + lambda * L_DPO (or L_GRPO, ``grpo``; + mu * L_chosen) on TorchRec
   (``trainer.train_iteration``);
3. measure: DPO loss, accuracy (chosen implicit reward above rejected), mean implicit reward margin and the
   log-ratios log M_{t+1} - log M_t of the pairs' sessions under the trained policy (eval mode); on a fixed set
   of ``align.eval_users`` held-out users, the mean, best and top-beam reward of the N sessions that M_{t+1}
   writes (and that M_t wrote: the "before" columns), and the KL of M_{t+1} to M_t estimated on those
   generated sessions, mean of log M_{t+1}(S) - log M_t(S) (beam search, not sampling: a biased estimate);
4. M_{t+1} becomes the reference of the next iteration.

Under torchrun steps 1 and 3 run on M_t and M_{t+1} with their tables sharded over the ranks as training shards
them (``export.sharded_model``): no rank generates with a whole table, and the ranks generate in lockstep
(``candidates.sharded_lockstep``). Each rank still receives the trained state dict whole (step 2's result) and
shards it from there.

Run-directory layout (``out_dir``, the pipeline's ``align/``)::

    iterations.jsonl            one JSON object per completed iteration (the columns above; rewritten whole)
    models/iteration-<t>.pt     the aligned model after iteration t (1-based), ``export.save_exported`` format,
                                so ``load_exported`` and ``eval.generative`` read it like ``train/best_model.pt``
    state.json                  the small checkpoint: fingerprint, iterations completed, records, last model
    result.json                 ``AlignResult``

Resume: an interrupted run restarts the first unfinished iteration from the last saved model. An iteration
depends only on M_t, the seed and t (fresh optimisers, seeded rows, data order and dropout), so a resumed run
ends with the same weights as an uninterrupted one. ``state.json`` is refused when the inputs changed (the
``align`` section except ``iterations``, the model, codebook, seed, data sizes, the starting weights); raising
``align.iterations`` and resuming continues a finished run. The reward function cannot be fingerprinted: resume
with the same one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.alignment.groups import build_candidate_groups
from torchrec_onerec.alignment.ipa_stats import generation_stats, pair_stats, rank_share
from torchrec_onerec.alignment.candidates import RewardFn
from torchrec_onerec.alignment.pairs import (
    PreferencePairs,
    build_preference_pairs,
    gather_preferences,
    sample_preference_rows,
)
from torchrec_onerec.alignment.train_step import PreferenceData
from torchrec_onerec.alignment.trainer import train_iteration
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.run_dir import atomic_write_text
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.train.checkpoint import training_fingerprint
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.train.distributed import DistContext, barrier, init_distributed, teardown_distributed
from torchrec_onerec.train.export import load_exported, plain_model, save_exported, sharded_model

LOG = logging.getLogger("torchrec_onerec")
STATE_FORMAT = "torchrec_onerec.align_state/1"


@dataclass
class AlignResult:
    """What an alignment run achieved (also ``result.json``).

    Args:
        iterations (int): iterations completed.
        records (List[Dict[str, Any]]): the per-iteration records (``iterations.jsonl``).
        model_path (str): the last aligned model (``export.load_exported``).
        initial_generation (Dict[str, float]): held-out generation metrics of the starting model M_0.
        fingerprint (str): the inputs' fingerprint (see the module docstring).
        seconds (float): wall seconds over every iteration (and every invocation).
    """

    iterations: int
    records: List[Dict[str, Any]]
    model_path: str
    initial_generation: Dict[str, float]
    fingerprint: str
    seconds: float


def _weights_digest(state: Dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def alignment_fingerprint(
    align: AlignConfig,
    model: OneRecModel,
    codes: torch.Tensor,
    train_config: TrainConfig,
    *,
    seed: int,
    num_train: int,
    num_held_out: int,
) -> str:
    """Hash of everything an alignment run's results depend on, except ``align.iterations`` and the reward.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_codes
        >>> codes, sizes = random_codes(6, [2, 2])
        >>> model = OneRecModel(model_size("tiny"), sizes)
        >>> a = alignment_fingerprint(AlignConfig(), model, codes, TrainConfig(), seed=0, num_train=5, num_held_out=0)
        >>> a == alignment_fingerprint(AlignConfig(iterations=9), model, codes, TrainConfig(), seed=0, num_train=5,
        ...                            num_held_out=0)
        True
        >>> a == alignment_fingerprint(AlignConfig(beta=0.5), model, codes, TrainConfig(), seed=0, num_train=5,
        ...                            num_held_out=0)
        False
    """
    section = {k: v for k, v in asdict(align).items() if k != "iterations"}
    stack = {k: getattr(train_config, k) for k in ("grad_clip", "sparse_optimizer", "sharding_type")}
    text = json.dumps(
        {
            "align": section,
            "train": stack,
            "seed": seed,
            "num_train": num_train,
            "num_held_out": num_held_out,
            "weights": _weights_digest(model.state_dict()),
            "model": training_fingerprint(model.config, model.vocab_sizes, codes, ""),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def model_file(iteration: int) -> str:
    """The aligned model after ``iteration`` (1-based), relative to ``out_dir``.

    Example:
        >>> model_file(2)
        'models/iteration-2.pt'
    """
    return f"models/iteration-{iteration}.pt"


def _held_out_users(held_out: SampleSet, count: int, seed: int) -> SampleSet:
    """``count`` held-out samples drawn once from the seed (all of them when there are fewer)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1BB]))
    rows = np.sort(rng.permutation(len(held_out))[:count])
    return held_out.subset(rows)


def _prefixed(prefix: str, values: Dict[str, Any], suffix: str = "") -> Dict[str, Any]:
    return {f"{prefix}{key}{suffix}": value for key, value in values.items()}


class _Store:
    """The run's files under ``out_dir`` (written by rank 0 only)."""

    def __init__(self, out_dir: Path, ctx: DistContext, fingerprint: str) -> None:
        self.root, self.ctx, self.fingerprint = Path(out_dir), ctx, fingerprint

    def clear(self) -> None:
        if self.ctx.is_rank0:
            for name in ("state.json", "iterations.jsonl", "result.json"):
                (self.root / name).unlink(missing_ok=True)
            shutil.rmtree(self.root / "models", ignore_errors=True)
        barrier(self.ctx)

    def read(self) -> Optional[Dict[str, Any]]:
        path = self.root / "state.json"
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if state.get("format") != STATE_FORMAT or state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{path} belongs to an alignment run with other inputs (fingerprint "
                f"{state.get('fingerprint')}, this run {self.fingerprint}); resume=False starts over, "
                "or point out_dir to a new folder"
            )
        return state

    def write(self, state: Dict[str, Any]) -> None:
        if not self.ctx.is_rank0:
            return
        lines = "".join(json.dumps(record, sort_keys=True) + "\n" for record in state["records"])
        atomic_write_text(self.root / "iterations.jsonl", lines)
        atomic_write_text(self.root / "state.json", json.dumps(state, indent=2, sort_keys=True) + "\n")


def align_iteratively(
    align: AlignConfig,
    initial_model: OneRecModel,
    train: SampleSet,
    held_out: SampleSet,
    reward_fn: RewardFn,
    *,
    codes: torch.Tensor,
    prefix_index: PrefixIndex,
    train_config: TrainConfig,
    out_dir: Path,
    seed: int,
    device: torch.device,
    resume: bool = True,
    progress: bool = False,
) -> AlignResult:
    """Align ``initial_model`` to ``reward_fn`` for ``align.iterations`` iterations (module docstring).

    Runs in one process or under ``torchrun`` (every rank calls it with the same arguments; a world-size-1 gloo
    group is created when there is none).

    Args:
        align (AlignConfig): the ``align`` section.
        initial_model (OneRecModel): M_0, the trained plain model (``load_exported`` of ``train/best_model.pt``).
        train (SampleSet): training samples (L_NTP on all, pairs for a sampled fraction); sessions of
            M = ``train.session_items`` items are generated.
        held_out (SampleSet): users for the per-iteration generation metrics (e.g. the validation split);
            empty, or ``align.eval_users = 0``, skips them.
        reward_fn (RewardFn): ``(samples, sessions [U, N, M]) -> rewards [U, N]`` (``pairs`` module docstring).
        codes (torch.Tensor): [I, L'] int64 item codes of the model's codebook.
        prefix_index (PrefixIndex): the codebook's prefix index (moved to this rank's device in place).
        train_config (TrainConfig): the ``train`` section (weight decay, clipping, sparse optimiser, sharding
            type, collective timeout).
        out_dir (Path): the run's ``align/`` folder.
        seed (int): the run's seed.
        device (torch.device): ``cpu`` or ``cuda`` (each torchrun process takes ``cuda:<LOCAL_RANK>``).
        resume (bool): continue from ``out_dir/state.json`` when it exists; False starts over.
        progress (bool): tqdm bars on rank 0.

    Returns:
        AlignResult: on every rank.
    """
    if train.session_items > initial_model.config.session_items or len(train) == 0:
        raise ValueError(
            f"train has {len(train)} samples of {train.session_items} target items; need >= 1 sample "
            f"and at most the model's session_items={initial_model.config.session_items}"
        )
    ctx = init_distributed(device, timeout_s=train_config.collective_timeout_s)
    try:
        return _Alignment(
            align,
            initial_model,
            train,
            held_out,
            reward_fn,
            codes,
            prefix_index,
            train_config,
            Path(out_dir),
            seed,
            ctx,
            progress,
        ).run(resume)
    finally:
        teardown_distributed(ctx)


class _Alignment:
    """State of one ``align_iteratively`` invocation on one rank."""

    def __init__(
        self,
        align: AlignConfig,
        initial_model: OneRecModel,
        train: SampleSet,
        held_out: SampleSet,
        reward_fn: RewardFn,
        codes: torch.Tensor,
        prefix_index: PrefixIndex,
        train_config: TrainConfig,
        out_dir: Path,
        seed: int,
        ctx: DistContext,
        progress: bool,
    ) -> None:
        self.align, self.initial_model, self.train, self.reward_fn = align, initial_model, train, reward_fn
        self.codes, self.prefix_index, self.train_config, self.seed, self.ctx, self.progress = (
            codes,
            prefix_index.to(ctx.device),
            train_config,
            seed,
            ctx,
            progress,
        )
        self.model_config, self.vocab_sizes = initial_model.config, list(initial_model.vocab_sizes)
        self.held_out = (
            _held_out_users(held_out, align.eval_users, seed) if align.eval_users and len(held_out) else None
        )
        fingerprint = alignment_fingerprint(
            align, initial_model, codes, train_config, seed=seed, num_train=len(train), num_held_out=len(held_out)
        )
        self.store = _Store(out_dir, ctx, fingerprint)
        self.export_fingerprint = training_fingerprint(
            self.model_config, self.vocab_sizes, codes, train_config.sparse_optimizer
        )

    def _generator(self, state: Dict[str, torch.Tensor]) -> OneRecModel:
        """The model that generates and scores with ``state``: sharded under torchrun (a collective), else plain."""
        if self.ctx.world_size > 1:
            return sharded_model(state, self.model_config, self.vocab_sizes, self.train_config, self.ctx)
        return plain_model(state, self.model_config, self.vocab_sizes, device=self.ctx.device)

    def _generation(self, model: OneRecModel, reference: Optional[OneRecModel] = None) -> Dict[str, float]:
        if self.held_out is None:
            return {}
        return generation_stats(
            model,
            self.held_out,
            self.reward_fn,
            codes=self.codes,
            prefix_index=self.prefix_index,
            align=self.align,
            ctx=self.ctx,
            reference=reference,
        )

    def run(self, resume: bool) -> AlignResult:
        if not resume:
            self.store.clear()
        stored = self.store.read() if resume else None
        if stored is None:
            current = {k: v.detach().cpu().clone() for k, v in self.initial_model.state_dict().items()}
            stored = {
                "format": STATE_FORMAT,
                "fingerprint": self.store.fingerprint,
                "completed": 0,
                "records": [],
                "model": "",
                "generation": [self._generation(self._generator(current))],
            }
        else:
            current = load_exported(self.store.root / stored["model"], self.model_config, self.vocab_sizes).state_dict()
            LOG.info("align: resuming after iteration %d of %d", stored["completed"], self.align.iterations)
        for iteration in range(stored["completed"], self.align.iterations):
            start = time.perf_counter()
            current, record, generation = self._iteration(iteration, current, stored["generation"][-1])
            record["seconds"] = time.perf_counter() - start
            name = model_file(iteration + 1)
            if self.ctx.is_rank0:
                save_exported(
                    self.store.root / name, current, self.model_config, self.vocab_sizes, self.export_fingerprint
                )
            stored.update(completed=iteration + 1, model=name)
            stored["records"].append(record)
            stored["generation"].append(generation)
            self.store.write(stored)
            barrier(self.ctx)
            if "pairs" in record:
                done = f"{record['pairs']} pairs, DPO accuracy {record['dpo_accuracy']:.3f}"
            else:
                done = f"{record['groups']} groups, GRPO ratio {record.get('train_grpo_ratio', float('nan')):.3f}"
            LOG.info(
                "align: iteration %d: %s, held-out reward_top %s -> %s",
                iteration + 1,
                done,
                record.get("heldout_reward_top_before"),
                record.get("heldout_reward_top_after"),
            )
        model_path = str(self.store.root / stored["model"]) if stored["model"] else ""
        result = AlignResult(
            stored["completed"],
            stored["records"],
            model_path,
            stored["generation"][0],
            self.store.fingerprint,
            float(sum(r["seconds"] for r in stored["records"])),
        )
        if self.ctx.is_rank0:
            atomic_write_text(self.store.root / "result.json", json.dumps(asdict(result), indent=2, sort_keys=True))
        return result

    def _iteration(
        self, iteration: int, current: Dict[str, torch.Tensor], before: Dict[str, float]
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], Dict[str, float]]:
        """One iteration from the plain state ``current`` (M_t): (M_{t+1} state, record, its generation stats)."""
        align, ctx = self.align, self.ctx
        reference = self._generator(current)
        rows = sample_preference_rows(len(self.train), align.sample_fraction, seed=self.seed, iteration=iteration)
        candidates: Dict[str, Any] = dict(
            codes=self.codes,
            prefix_index=self.prefix_index,
            num_candidates=align.num_candidates,
            batch_size=align.generation_batch_size,
            exclude_history=align.exclude_history,
            device=ctx.device,
            progress=self.progress and ctx.is_rank0,
            sampled=align.sampled_candidates,
            temperature=align.sample_temperature,
            seed=int(np.random.SeedSequence([self.seed, iteration, ctx.rank]).generate_state(1)[0]),
        )
        mine = rows[rank_share(len(rows), ctx)]
        prefs: PreferenceData
        if align.objective == "grpo":
            prefs = gather_preferences(
                build_candidate_groups(
                    reference, self.train, mine, self.reward_fn, group_size=align.group_size, **candidates
                ),
                ctx,
            )
        else:
            prefs = gather_preferences(
                build_preference_pairs(reference, self.train, mine, self.reward_fn, **candidates), ctx
            )
        trained = train_iteration(
            current,
            prefs,
            self.train,
            model_config=self.model_config,
            vocab_sizes=self.vocab_sizes,
            codes=self.codes,
            align=align,
            train_config=self.train_config,
            ctx=ctx,
            seed=self.seed,
            iteration=iteration,
            progress=self.progress,
        )
        policy = self._generator(trained.state)
        after = self._generation(policy, reference)
        record: Dict[str, Any] = {"iteration": iteration + 1, **prefs.summary(), **_prefixed("train_", trained.metrics)}
        if isinstance(prefs, PreferencePairs):
            record.update(
                pair_stats(
                    policy, prefs, self.train, codes=self.codes, prefix_index=self.prefix_index, align=align, ctx=ctx
                )
            )
        record.update(**_prefixed("heldout_", before, "_before"), **_prefixed("heldout_", after, "_after"))
        return trained.state, record, after
