"""Evaluate the generative model: constrained beam search over a SampleSet, scored by docs/EVAL.md protocol A or B.

The samples are batched in order (no shuffle), each item written as its semantic IDs, and the model writes
``eval.num_return`` sessions per user with ``generation.beam_search.constrained_beam_search`` (eval mode, no
gradients, KV cache). Protocol A generates ``eval.protocol_a_session_items`` items per sequence (default 1:
the sequence score is the first item's log-probability) and ranks the first items; protocol B generates
sessions of m = the samples' target width. ``eval.protocols`` turns the sessions into metrics. Samples without
a target item are skipped and counted (``info["users_without_target"]``).

Filler sessions: beam search keeps the N best prefixes without looking ahead, so a beam whose prefix leads only
to excluded items (a repeat, or a history item under ``exclude_history``) dies at the item's last level; when
fewer than R beams survive, the rest come back with score -inf. Their items are set to -1 here, they are left
out of every list and rate, and ``filler_rate`` (per user) and ``info["filler_sessions"]`` count them. A high
filler rate means the beam is too narrow for the constraints (raise ``eval.beam_size``).

Shape legend: N samples, U evaluated users, R returned sessions, M session items, L' code levels, I items.
"""

from __future__ import annotations

import time
from typing import List, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from torchrec_onerec.data.batch import make_dataloader
from torchrec_onerec.data.config import LoaderConfig
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.data.semantic_batch import SemanticIdBatch, SemanticIdTransform
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.metrics import legality_rate
from torchrec_onerec.eval.protocols import EvalResult, check_protocol, evaluation_users, score_sessions
from torchrec_onerec.eval.user_shards import gather_rows, group_size, has_sharded_tables, lockstep_batches, rank_rows
from torchrec_onerec.generation.beam_search import BeamSearchOutput
from torchrec_onerec.generation.serving import serve_sessions
from torchrec_onerec.generation.slate import LevelMixture
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


def generated_session_items(
    model: Union[OneRecModel, LevelMixture], samples: SampleSet, config: EvalConfig, protocol: str
) -> int:
    """M, the items per generated sequence: ``config.protocol_a_session_items`` (A) or the target width m (B).

    Raises ValueError when the model cannot write that many items, or when protocol A's ranked list could not
    reach max(ks) items (num_return < K).
    """
    check_protocol(protocol)
    M = config.protocol_a_session_items if protocol == "A" else samples.session_items
    if M > model.config.session_items:
        source = "eval.protocol_a_session_items" if protocol == "A" else "the samples' target width m"
        raise ValueError(
            f"{source}={M} exceeds the model's session_items={model.config.session_items}; "
            "evaluate with the m the model was trained for"
        )
    if protocol == "A" and config.num_return < max(config.ks):
        raise ValueError(
            f"eval.num_return={config.num_return} (eval.beam_size={config.beam_size}) is below "
            f"max(eval.ks)={max(config.ks)}: protocol A ranks the first items of the returned "
            "sequences, so it needs beam_size >= num_return >= K; raise both"
        )
    return M


def evaluate_generative(
    model: Union[OneRecModel, LevelMixture],
    samples: SampleSet,
    *,
    codes: torch.Tensor,
    prefix_index: PrefixIndex,
    config: EvalConfig,
    protocol: str,
    max_history: int,
    device: Optional[Union[str, torch.device]] = None,
    progress: bool = True,
    diversity_penalty: float = 0.0,
    distributed: bool = False,
    slate: bool = False,
) -> EvalResult:
    """Generate sessions for every sample with a target and score them by ``protocol``.

    Args:
        model (OneRecModel | LevelMixture): the model (a ``LevelMixture`` with ``slate`` only), unsharded (moved
            to ``device`` in place) or with DMP-sharded tables (left on its rank's device; see ``distributed``);
            left in its mode.
        samples (SampleSet): N validation or test samples (histories at most ``max_history`` items).
        codes (torch.Tensor): [I, L'] int64 item codes (``Codebook.codes``) the model was trained on.
        prefix_index (PrefixIndex): the same codebook's index (``Codebook.prefix_index()``); moved to
            ``device`` in place.
        config (EvalConfig): beam_size, num_return, ks, exclude_history, batch_size, constrained,
            protocol_a_session_items.
        protocol (str): ``"A"`` (next item, ranked first items) or ``"B"`` (sessions), see ``eval.protocols``.
        max_history (int): n, the history length the samples were cut to (<= the model's ``max_history``).
        device (str | torch.device | None): where to generate (None: the model's device).
        progress (bool): show a tqdm bar over batches.
        diversity_penalty (float): ``RepeatedPrefixPenalty`` in the search (0: none): a session item's first
            code costs this much per earlier item of the session under the same first code; the sessions are
            then ranked by the penalised score.
        distributed (bool): under torchrun, every rank of the default process group calls this together: each
            searches a block of whole batches (``eval.user_shards``) and every rank gets the merged result, the
            same as one process's. False (the default): this process searches every user, group or not (what a
            rank-0-only caller needs). A model with sharded tables (the DMP-wrapped model itself, as validation
            during training passes) needs True: its lookups are collectives, so the ranks run the same number
            of batches (``lockstep_batches``; padding batches are searched and dropped).

    Returns:
        EvalResult: metrics, per-user arrays [U], sessions [U, R, M], scores [U, R] and info.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_codes
        >>> codes, sizes = random_codes(12, [3, 3])
        >>> model = OneRecModel(model_size("tiny"), sizes)
        >>> samples = SampleSet.from_samples([Sample(0, np.array([1, 2]), np.array([3, -1]),
        ...                                          np.zeros((2, 0), np.float32))], [])
        >>> index = PrefixIndex(codes, vocab_sizes=sizes)
        >>> result = evaluate_generative(model, samples, codes=codes, prefix_index=index, protocol="B",
        ...                              config=EvalConfig(beam_size=4, num_return=4, ks=[2, 4]), max_history=8,
        ...                              progress=False)
        >>> result.sessions.shape, result.metrics["legality"], result.metrics["repeat_rate"]
        ((1, 4, 2), 1.0, 0.0)
    """
    M = generated_session_items(model, samples, config, protocol)
    if codes.dim() != 2 or codes.shape[0] != prefix_index.num_items:
        raise ValueError(
            f"codes has shape {tuple(codes.shape)} but prefix_index covers {prefix_index.num_items} "
            "items; pass one codebook's codes and index"
        )
    if not 1 <= max_history <= model.config.max_history:
        raise ValueError(
            f"max_history={max_history} must lie in [1, {model.config.max_history}] "
            "(the model's max_history); cut the samples' histories to what the model reads"
        )
    rows, skipped = evaluation_users(samples)
    users = samples.subset(rows)
    rank, world = group_size() if distributed else (0, 1)
    sharded = has_sharded_tables(model)
    if sharded and group_size()[1] > 1 and not distributed:
        raise ValueError(
            "the model's tables are sharded over the process group, so every rank must evaluate together; "
            "pass distributed=True on every rank (or evaluate an unsharded copy)"
        )
    local = users.subset(rank_rows(len(users), config.batch_size, rank, world)) if world > 1 else users
    target_device = torch.device(device) if device is not None else next(model.parameters()).device
    if not sharded:  # a sharded model stays where DMP placed its shards
        model.to(target_device)
    if prefix_index.device != target_device:
        prefix_index.to(target_device)

    def batches(subset: SampleSet) -> DataLoader:
        return make_dataloader(
            subset,
            LoaderConfig(batch_size=config.batch_size, shuffle=False),
            seed=0,
            shuffle=False,
            transform=SemanticIdTransform(codes, max_history=max_history, siblings=model.config.reads_siblings),
        )

    def serve(batch: SemanticIdBatch) -> BeamSearchOutput:
        return serve_sessions(
            model,
            batch.to(target_device),
            codes=codes,
            prefix_index=prefix_index,
            beam_size=config.beam_size,
            num_return=config.num_return,
            session_items=M,
            penalty=diversity_penalty,
            slate=slate,
            exclude_history=config.exclude_history,
            constrained=config.constrained,
        )

    loader = batches(local)
    items: List[torch.Tensor] = []
    generated: List[torch.Tensor] = []
    scores: List[torch.Tensor] = []
    start = time.perf_counter()
    with torch.no_grad():
        bar = tqdm(loader, desc=f"evaluate (protocol {protocol})", unit="batch", disable=not progress or rank != 0)
        for batch in bar:
            out = serve(batch)
            items.append(out.items.cpu())
            generated.append(out.codes.cpu())
            scores.append(out.scores.float().cpu())
        padding = lockstep_batches(len(users), config.batch_size, world) - len(loader) if sharded else 0
        for _ in range(padding):  # the sharded lookups are collectives: match the ranks with more batches
            serve(next(iter(batches(users.subset(np.arange(min(config.batch_size, len(users))))))))
    R, L = config.num_return, codes.shape[1]
    found, session_codes_np, session_scores = gather_rows(
        [
            torch.cat(items).numpy() if items else np.empty((0, R, M), np.int64),
            torch.cat(generated).numpy() if generated else np.empty((0, R, M, L), np.int64),
            torch.cat(scores).numpy() if scores else np.empty((0, R), np.float32),
        ],
        world,
    )  # [U, R, M], [U, R, M, L'], [U, R]: every rank's users, in order
    seconds = time.perf_counter() - start
    session_codes = torch.from_numpy(session_codes_np)
    real = np.isfinite(session_scores)  # False: filler, the search found fewer than R sessions
    sessions = np.where(real[:, :, None], found, PAD_ITEM)  # [U, R, M]
    legality = legality_rate(session_codes, prefix_index, real)
    metrics, per_user = score_sessions(
        protocol,
        sessions,
        session_scores,
        users.target,
        ks=config.ks,
        num_items=prefix_index.num_items,
        legality=legality,
    )
    per_user["user"] = users.user.copy()
    per_user["sample"] = rows
    info = {
        "protocol": protocol,
        "arm": "generative",
        "beam_size": config.beam_size,
        "num_return": config.num_return,
        "ks": list(config.ks),
        "session_items": M,
        "max_history": max_history,
        "exclude_history": config.exclude_history,
        "constrained": config.constrained,
        "diversity_penalty": diversity_penalty,
        "serving": "slate" if slate else "beam",
        "num_samples": len(samples),
        "users_without_target": skipped,
        "device": str(target_device),
        "ranks": world,
        "sharded_tables": sharded,
        "filler_sessions": int((~real).sum()),
        "seconds": seconds,
        "users_per_second": len(rows) / max(seconds, 1e-9),
    }
    return EvalResult(metrics, per_user, sessions, session_scores, info)
