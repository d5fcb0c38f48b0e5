"""Serving a finished run: sessions for users, in their raw ids, from the saved model and codebook.

``Recommender.from_run_dir`` reads a run directory that ``onerec run`` completed (its ``config.yaml``, the
tokenize stage's codebook and the selected model of ``train/`` or, for ``arm="onerec_ipa"``, of ``align/``)
and the run's data (the config that stage completed with, kept beside its ``done.json``),
and builds every user's history the way the model was trained on it: the user's most recent n positives
(protocol B: rows with ``split.positive_col = 1``, after the pre-period histories; protocol A: every
interaction), up to the end of the data. ``recommend`` beam-searches sessions for a list of
raw user ids; ``onerec recommend RUN_DIR --users ...`` prints them as JSON lines.

``CascadeServer`` serves the run's cascade (``cascade``, or ``cascade_rerank`` with the re-rank weight its
evaluation chose) to the same users from the same histories, in the same output format, so both arms of an A/B
come from one run directory; ``load_recommender`` picks the class for an arm.

Shape legend: U users, R sessions, M session items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from torchrec_onerec.arm_scoring import chosen_setting
from torchrec_onerec.arms import ARMS, SERVABLE_ARMS
from torchrec_onerec.config import OneRecConfig, load_config
from torchrec_onerec.data.batch import make_dataloader
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet, take_slices
from torchrec_onerec.data.semantic_batch import SemanticIdTransform
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.generation.serving import serve_sessions
from torchrec_onerec.generation.slate import LevelMixture
from torchrec_onerec.models.cascade import CascadeRecommender, load_cascade
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.pipeline import STAGE_SECTIONS, stage_closure, stage_fingerprint
from torchrec_onerec.run_dir import RunDir, read_json
from torchrec_onerec.runtime import resolve_device
from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.train.export import load_exported


CASCADE_ARMS = ("cascade", "cascade_rerank")  # served by CascadeServer
SERVED_ARMS = SERVABLE_ARMS + CASCADE_ARMS  # what ``onerec recommend --arm`` accepts


class UnknownUserError(ValueError):
    """A user id the run's data does not hold, or a user without any history to condition on."""


def positive_histories(data: InteractionData, config: OneRecConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every user's positives in time order: (item ids sorted by user, user offsets [num_users + 1]).

    Protocol B: pre-period ``histories`` rows, then logged rows with ``split.positive_col == 1`` (every row when
    it is empty); protocol A: every logged interaction. Ties in time keep file order.
    """
    inter = data.interactions
    if config.split.protocol == "B" and config.split.positive_col:
        inter = inter[inter[config.split.positive_col].to_numpy() == 1]
    order = np.lexsort((inter["timestamp"].to_numpy(), inter["user_id"].to_numpy()))
    parts = [inter.iloc[order][["user_id", "item_id"]]]
    if config.split.protocol == "B" and data.histories is not None and len(data.histories):
        parts.insert(0, data.histories[["user_id", "item_id"]])
    frame = pd.concat(parts, ignore_index=True)
    users = frame["user_id"].to_numpy(np.int64)
    by_user = np.argsort(users, kind="stable")  # pre-period rows stay before the logged ones of each user
    offsets = np.zeros(data.num_users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=data.num_users), out=offsets[1:])
    return frame["item_id"].to_numpy(np.int64)[by_user], offsets


@dataclass
class Recommender:
    """A trained OneRec model ready to write sessions for the users of its run.

    Args:
        config (OneRecConfig): the run's resolved config.
        data (InteractionData): the run's data (raw-id maps, histories).
        codebook (Codebook): the run's semantic IDs.
        model (OneRecModel | LevelMixture): the served model, in eval mode (two mixed level by level for an arm
            that serves them so, ``onerec_mix_slate``).
        device (torch.device): where generation runs.
        diversity_penalty (float): the penalty per earlier session item under the same first code (0: none; the
            ``*_diverse`` and ``*_slate`` arms serve with the penalty their evaluation chose on the validation users).
        slate (bool): serve by ``generation.slate.slate_search`` (the ``*_slate`` arms) instead of beam search.
    """

    config: OneRecConfig
    data: InteractionData
    codebook: Codebook
    model: Union[OneRecModel, LevelMixture]
    device: torch.device
    diversity_penalty: float = 0.0
    slate: bool = False

    @classmethod
    def from_run_dir(
        cls, run_dir: Union[str, Path], *, arm: str = "onerec", device: Optional[str] = None
    ) -> "Recommender":
        """Load a completed run: its config, data, codebook and the model of ``arm``.

        Args:
            run_dir (str | Path): a run directory whose ``train`` stage (and ``align`` for ``onerec_ipa``)
                completed.
            arm (str): one of ``arms.SERVABLE_ARMS``: ``onerec`` (the NTP-trained model), ``onerec_ipa``
                (the aligned one), or either's ``_diverse`` or ``_slate`` arm (the same model, served with the
                diversity penalty its ``evaluate`` stage chose on the validation users).
            device (str | None): ``cpu``, ``cuda`` ...; None = the run's ``device`` setting.

        Raises:
            FileNotFoundError: the run directory lacks a completed stage the arm needs (the message names it).
            ValueError: an unknown arm; a ``config.yaml`` other than the one the arm's stage completed with; a
                codebook or model file from another catalogue or config, or cut short.
        """
        run = Path(run_dir)
        if arm not in SERVABLE_ARMS:
            raise ValueError(f"arm={arm!r} cannot be served; pick one of {list(SERVABLE_ARMS)}")
        served, stage = ARMS[arm], ARMS[arm].serves_from
        config = _completed_stage_config(run, stage, also=("tokenize",))
        data = load_dataset(config.data, seed=config.seed)
        codebook = Codebook.load(
            run / "tokenize" / "codebook.pt",
            num_items=data.num_items,
            fingerprint=catalogue_fingerprint(data.raw_item_ids, config.tokenizer, seed=config.seed),
        )
        summary = read_json(run / stage / "summary.json")
        if "not_applicable" in summary:
            raise ValueError(f"arm {arm!r} is not available in {run}: {summary['not_applicable']}")
        assert served.model_path is not None  # every servable arm has one (arms.Arm)
        path = served.model_path(RunDir(run))
        penalty = served.serving_penalty(RunDir(run)) if served.serving_penalty is not None else 0.0
        target = resolve_device(device or config.device)
        exported = load_exported(path, config.model, codebook.vocab_sizes, device=target)
        model: Union[OneRecModel, LevelMixture] = exported
        if served.serving_mixture is not None:
            start, weights = served.serving_mixture(RunDir(run))
            first = load_exported(start, config.model, codebook.vocab_sizes, device=target)
            model = LevelMixture(first, exported, weights).eval()
        return cls(config, data, codebook, model, target, penalty, served.slate)

    def user_samples(self, raw_user_ids: Sequence[Any]) -> SampleSet:
        """The users' current histories (most recent n positives) as a SampleSet, in the given order.

        Raises:
            UnknownUserError: an id the data does not hold, or a user with no positive to condition on.
        """
        return current_histories(self.data, self.config, raw_user_ids, session_items=self.config.model.session_items)

    def recommend(
        self, raw_user_ids: Sequence[Any], *, num_sessions: Optional[int] = None, exclude_history: Optional[bool] = None
    ) -> List[Dict[str, Any]]:
        """The best sessions for each user, best first, with raw item ids and sequence log-probabilities.

        Args:
            raw_user_ids (Sequence): users as the data names them.
            num_sessions (int | None): R sessions per user (default ``eval.num_return``; the beam is
                ``max(R, eval.beam_size)``).
            exclude_history (bool | None): never recommend a history item (default ``eval.exclude_history``).

        Returns:
            One dict per user: ``{"user": raw id, "sessions": [{"items": [raw item ids], "score": float}, ...]}``
            (filler sessions, when the search finds fewer than R, are left out).
        """
        cfg = self.config
        R, exclude = _serving_settings(cfg, num_sessions, exclude_history)
        samples = self.user_samples(raw_user_ids)
        index = self.codebook.prefix_index().to(self.device)
        loader = make_dataloader(
            samples,
            LoaderConfig(batch_size=cfg.eval.batch_size, shuffle=False),
            seed=0,
            shuffle=False,
            transform=SemanticIdTransform(
                self.codebook.codes, max_history=cfg.model.max_history, siblings=cfg.model.reads_siblings
            ),
        )
        out: List[Dict[str, Any]] = []
        with torch.no_grad():
            for batch in loader:
                found = serve_sessions(
                    self.model,
                    batch.to(self.device),
                    codes=self.codebook.codes,
                    prefix_index=index,
                    beam_size=max(R, cfg.eval.beam_size),
                    num_return=R,
                    penalty=self.diversity_penalty,
                    slate=self.slate,
                    exclude_history=exclude,
                )
                for items, scores in zip(found.items.cpu().numpy(), found.scores.float().cpu().numpy()):
                    out.append(_user_record(self.data, samples.user[len(out)], items, scores))
        return out


@dataclass
class CascadeServer:
    """The run's cascade (two-tower retrieval -> ranker, re-ranked for ``cascade_rerank``) ready to write sessions
    for the users of its run, from the same histories and in the same format as ``Recommender``.

    Args:
        config (OneRecConfig): the config the run's cascade stage completed with.
        data (InteractionData): the run's data (raw-id maps, histories).
        cascade (CascadeRecommender): the trained models.
        diversity_weight (float): the MMR re-rank's weight (0 for ``cascade``; for ``cascade_rerank`` the weight
            the run's evaluation chose on the validation users).
    """

    config: OneRecConfig
    data: InteractionData
    cascade: CascadeRecommender
    diversity_weight: float = 0.0

    @classmethod
    def from_run_dir(
        cls, run_dir: Union[str, Path], *, arm: str = "cascade", device: Optional[str] = None
    ) -> "CascadeServer":
        """Load a completed run's cascade for ``arm`` (``cascade`` or ``cascade_rerank``).

        Raises:
            FileNotFoundError: the run lacks a completed cascade stage, or (``cascade_rerank``) an evaluation that
                chose its weight (the message says what to run).
            ValueError: an arm that is not the cascade's; a ``config.yaml`` other than the cascade stage's.
        """
        run = Path(run_dir)
        if arm not in CASCADE_ARMS:
            raise ValueError(f"arm={arm!r} is not a cascade arm; pick one of {list(CASCADE_ARMS)}")
        config = _completed_stage_config(run, "cascade")
        weight = float(chosen_setting(RunDir(run), arm, "diversity_weight")) if arm == "cascade_rerank" else 0.0
        cascade = load_cascade(run / "cascade", config=config.cascade, device=resolve_device(device or config.device))
        return cls(config, load_dataset(config.data, seed=config.seed), cascade, weight)

    def recommend(
        self, raw_user_ids: Sequence[Any], *, num_sessions: Optional[int] = None, exclude_history: Optional[bool] = None
    ) -> List[Dict[str, Any]]:
        """The cascade's sessions for each user, best first, with raw item ids and session scores (the mean of the
        items' combined ranker scores, or of their re-rank values); arguments and output as
        ``Recommender.recommend`` (a session the candidates cannot fill is left out)."""
        cfg = self.config
        R, exclude = _serving_settings(cfg, num_sessions, exclude_history)
        M = 1 if cfg.split.protocol == "A" else cfg.split.session_items  # as the evaluation serves it
        samples = current_histories(self.data, cfg, raw_user_ids, session_items=M)
        sessions, scores = self.cascade.recommend(
            samples, num_sessions=R, session_items=M, exclude_history=exclude, diversity_weight=self.diversity_weight
        )
        return [_user_record(self.data, *user) for user in zip(samples.user, sessions, scores)]


def load_recommender(
    run_dir: Union[str, Path], *, arm: str = "onerec", device: Optional[str] = None
) -> Union[Recommender, CascadeServer]:
    """The server of ``arm`` (one of ``SERVED_ARMS``) for a completed run: ``CascadeServer`` for the cascade's
    arms, ``Recommender`` for OneRec's; both ``recommend(raw_user_ids, ...)`` in the same format."""
    if arm in CASCADE_ARMS:
        return CascadeServer.from_run_dir(run_dir, arm=arm, device=device)
    return Recommender.from_run_dir(run_dir, arm=arm, device=device)


def current_histories(
    data: InteractionData, config: OneRecConfig, raw_user_ids: Sequence[Any], *, session_items: int
) -> SampleSet:
    """The users' current histories (most recent n positives, as the run's models read them) as a SampleSet, in
    the given order, with empty targets of width ``session_items``.

    Raises:
        UnknownUserError: an id the data does not hold, or a user with no positive to condition on.
    """
    index = {str(raw): i for i, raw in enumerate(data.raw_user_ids)}
    unknown = [u for u in raw_user_ids if str(u) not in index]
    if unknown:
        raise UnknownUserError(
            f"user id(s) {unknown[:5]} are not in the run's data ({data.name}, "
            f"{data.num_users} users); the run's models condition on a user's history, so "
            "they can only serve users seen in the data"
        )
    users = np.array([index[str(u)] for u in raw_user_ids], dtype=np.int64)
    items, offsets = positive_histories(data, config)
    end = offsets[users + 1]
    start = np.maximum(offsets[users], end - config.split.max_history)
    empty = [raw_user_ids[int(i)] for i in np.flatnonzero(end == start)]
    if empty:
        raise UnknownUserError(f"user id(s) {empty[:5]} have no positive interaction to condition on")
    values, hist_offsets = take_slices(items, start, end - start)
    return SampleSet(
        users,
        values,
        hist_offsets,
        np.full((len(users), session_items), PAD_ITEM, np.int64),
        np.zeros((len(users), session_items, 0), np.float32),
        [],
    )


def _completed_stage_config(run: Path, stage: str, *, also: Sequence[str] = ()) -> OneRecConfig:
    """The config ``stage`` completed with, once the run's ``config.yaml`` and the ``done.json`` of ``also`` and
    ``stage`` are there (else a FileNotFoundError naming the missing file and the stage to run)."""
    for needed in (run / "config.yaml", *(run / name / "done.json" for name in (*also, stage))):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} is missing: run `onerec run` (at least up to the {stage} stage) for this run directory first"
            )
    return _config_of_stage(run, stage)


def _serving_settings(
    config: OneRecConfig, num_sessions: Optional[int], exclude_history: Optional[bool]
) -> tuple[int, bool]:
    """(R sessions per user, whether history items are left out): the arguments, else the eval section's."""
    R = config.eval.num_return if num_sessions is None else num_sessions
    if R < 1:
        raise ValueError(f"num_sessions={R} must be >= 1")
    return R, config.eval.exclude_history if exclude_history is None else exclude_history


def _user_record(data: InteractionData, user: int, items: np.ndarray, scores: np.ndarray) -> Dict[str, Any]:
    """One user's output record in raw ids: its [R, M] sessions, filler ones (a non-finite score or a missing
    item) left out."""
    raw_items = np.asarray(data.raw_item_ids)
    sessions = [
        {"items": [_plain(raw_items[i]) for i in row], "score": float(score)}
        for row, score in zip(items, scores)
        if np.isfinite(score) and (row != PAD_ITEM).all()
    ]
    return {"user": _plain(data.raw_user_ids[user]), "sessions": sessions}


def _config_of_stage(run: Path, stage: str) -> OneRecConfig:
    """The config ``stage`` completed with: its own copy, or (a run directory of an older version) the run's
    ``config.yaml`` when that is still the same; the run's file is the last command's, which may differ."""
    if (run / stage / "config.yaml").is_file():
        return load_config(str(run / stage / "config.yaml"))
    config = load_config(str(run / "config.yaml"))
    if read_json(run / stage / "done.json").get("fingerprint") != stage_fingerprint(config, stage):
        sections = sorted({name for earlier in stage_closure(stage, config) for name in STAGE_SECTIONS[earlier]})
        raise ValueError(
            f"{run / 'config.yaml'} is not the config the {stage} stage completed with: a later "
            f"command in {run} changed one of {sections}; complete the stage with the config to serve "
            f"(onerec run CONFIG run_dir={run}), then recommend"
        )
    return config


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, so the result is JSON-ready."""
    return value.item() if isinstance(value, np.generic) else value
