"""Constrained beam search over whole sessions (docs/METHOD.md section 2, serving: beam search, KV cache, fp16).

For each user the decoder writes M items, each as its L' codes, keeping the N best partial sessions (beams)
by sequence log-probability. Per user the encoder runs once and every decoder layer projects the memory's
cross-attention keys/values once; the N beams share them (they ride on the query axis, see
``modules.attention.CrossAttention``). Decoder self-attention reads a ``KVCache`` (``use_cache=False``
re-runs the decoder over the whole prefix each step, as the reference). Constraints are logits processors
(``generation.processors``): by default every finished tuple is a real item and no item repeats within a
session; ``exclude_history`` also blocks the user's history items. The item constraints look ahead at every
code level (a prefix is taken only if it still leads to an allowed item), so a beam never dies half-way.

Scores are sums of the model's code log-probabilities (log-softmax over all K_l codes, before constraints;
over the codes under the prefix at a level scored per prefix, ``model.item_head=prefix``), so they equal
``OneRecModel.log_prob`` of the returned sessions. Unconstrained search cannot leave the catalogue at such a
level: a prefix of no item has nothing to score there, and its beam dies. A returned session with score -inf is filler,
with arbitrary items and codes: with the default constraints it comes back only when the user has fewer than
``num_return`` valid sessions in all (fewer than M items outside the history give none; a tiny catalogue may
give a few). Extra ``processors`` that block codes without look-ahead can make beams die, and filler, again.

Shape legend: B batch (users), N beams, M session items, L code levels (L' here), K codebook size, D width.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Protocol, Sequence, Tuple

import torch
from torch.nn.utils.rnn import pad_sequence

from torchrec_onerec.data.batch import HISTORY_KEY
from torchrec_onerec.data.semantic_batch import SemanticIdBatch
from torchrec_onerec.generation.processors import BeamState, BlockedItemsProcessor, LogitsProcessor, ValidCodeProcessor
from torchrec_onerec.models.onerec import OneRecModel
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


class BeamSearchOutput(NamedTuple):
    """The best sessions of each user, best first.

    Args:
        items (torch.Tensor): [B, R, M] int64 item ids (-1 only in unconstrained search or filler sessions).
        codes (torch.Tensor): [B, R, M, L'] int64 code tuples.
        scores (torch.Tensor): [B, R] float32 sequence log-probabilities.
    """

    items: torch.Tensor
    codes: torch.Tensor
    scores: torch.Tensor


def history_items(batch: SemanticIdBatch) -> torch.Tensor:
    """[B, H_max] int64 history item ids per user, -1 padded (H_max = longest history in the batch)."""
    history = batch.item_features[HISTORY_KEY]
    rows = history.values().split(history.lengths().tolist())
    return pad_sequence(list(rows), batch_first=True, padding_value=-1)


def default_processors(
    prefix_index: PrefixIndex, batch: SemanticIdBatch, *, exclude_history: bool = False
) -> List[LogitsProcessor]:
    """Valid items only, no repeats, and (optionally) none of the user's history items."""
    excluded = history_items(batch) if exclude_history else None
    return [ValidCodeProcessor(prefix_index), BlockedItemsProcessor(excluded, no_repeat=True)]


def follow_columns(processors: Sequence[LogitsProcessor]) -> bool:
    """Whether every processor reads a compact step's score columns (``follows_columns``)."""
    return all(getattr(processor, "follows_columns", False) for processor in processors)


@torch.no_grad()
def constrained_beam_search(
    model: OneRecModel,
    batch: SemanticIdBatch,
    *,
    prefix_index: PrefixIndex,
    beam_size: int,
    num_return: int,
    session_items: Optional[int] = None,
    exclude_history: bool = False,
    constrained: bool = True,
    processors: Sequence[LogitsProcessor] = (),
    use_cache: bool = True,
    amp_dtype: Optional[torch.dtype] = None,
    compact: bool = True,
) -> BeamSearchOutput:
    """Write the ``num_return`` most probable sessions of each user of ``batch`` (the model runs in eval mode).

    Args:
        model (OneRecModel): the trained model (unsharded; dropout is switched off during the search).
        batch (SemanticIdBatch): the users (``features``, and ``item_features`` for ``exclude_history``).
        prefix_index (PrefixIndex): the codebook's prefix index (valid codes, tuple -> item), on the batch's
            device.
        beam_size (int): N, beams kept per user.
        num_return (int): R <= N sessions returned per user.
        session_items (int | None): M items per session (default: the model's ``session_items``, the most).
        exclude_history (bool): never emit an item of the user's history.
        constrained (bool): apply the default constraints (valid items, no repeats, history exclusion);
            False searches freely (``processors`` still apply).
        processors (Sequence[LogitsProcessor]): extra constraints or preferences, applied after the default ones.
        use_cache (bool): decode with a self-attention KV cache (False: recompute the prefix each step).
        amp_dtype (torch.dtype | None): autocast dtype (torch.float16 / torch.bfloat16), None = full precision.
        compact (bool): under the default constraints, rank only each beam's valid next codes at a level where a
            prefix leads to at most half of its codes (an item-id level: a cluster's items, not the catalogue);
            the log-probabilities are the same, so are the sessions. Only when every extra processor reads
            ``BeamState.column_codes`` (says so by ``follows_columns = True``). False ranks every code of every
            level (the plain reference).

    Returns:
        BeamSearchOutput: items [B, R, M], codes [B, R, M, L'], scores [B, R], best first; scores -inf mark
        filler sessions, which the default constraints return only for a user with fewer than R valid sessions.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_batch, random_codes
        >>> codes, sizes = random_codes(12, [3, 3])
        >>> model = OneRecModel(model_size("tiny"), sizes)
        >>> batch = random_batch(codes, 2, max_history=4, session_items=2)
        >>> index = PrefixIndex(codes, vocab_sizes=sizes)
        >>> out = constrained_beam_search(model, batch, prefix_index=index, beam_size=4, num_return=2)
        >>> tuple(out.items.shape), bool((out.items >= 0).all()), bool((out.items[..., 0] != out.items[..., 1]).all())
        ((2, 2, 2), True, True)
    """
    M = check_search_arguments(model, batch, prefix_index, session_items, beam_size, num_return)
    device = batch.target_codes.device
    steps = list(default_processors(prefix_index, batch, exclude_history=exclude_history)) if constrained else []
    steps += list(processors)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return decode_sessions(
                model,
                batch,
                prefix_index,
                steps,
                beam_size,
                num_return,
                M,
                use_cache,
                compact=compact and constrained and follow_columns(processors),
                select=BeamSelect(),
            )
    finally:
        model.train(was_training)


def check_search_arguments(
    model: OneRecModel,
    batch: SemanticIdBatch,
    prefix_index: PrefixIndex,
    session_items: Optional[int],
    beam_size: int,
    num_return: int,
) -> int:
    """Refuse arguments a search cannot run with, naming them; returns M, the session items to write."""
    M = model.config.session_items if session_items is None else session_items
    if not 1 <= M <= model.config.session_items:
        raise ValueError(
            f"session_items={session_items} must lie in [1, {model.config.session_items}] "
            "(the model's positions cover config.session_items items)"
        )
    if beam_size < 1 or not 1 <= num_return <= beam_size:
        raise ValueError(
            f"need beam_size >= 1 and 1 <= num_return <= beam_size, got beam_size={beam_size}, "
            f"num_return={num_return}; raise beam_size or lower num_return"
        )
    if list(prefix_index.vocab_sizes) != model.vocab_sizes:
        raise ValueError(
            f"prefix_index.vocab_sizes={list(prefix_index.vocab_sizes)} differ from the model's "
            f"{model.vocab_sizes}; use the codebook the model was trained on"
        )
    device = batch.target_codes.device
    if prefix_index.device.type != device.type:
        raise ValueError(
            f"prefix_index is on {prefix_index.device}, the batch on {device}; move it with prefix_index.to(device)"
        )
    return M


Selection = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Select(Protocol):
    """How a decoding step picks the N surviving rows of each user (``BeamSelect``, ``sampling.SampleSelect``)."""

    def initial_scores(self, B: int, N: int, device: torch.device) -> torch.Tensor:
        """[B, N] scores of the N rows before the first step."""

    def __call__(self, scores: torch.Tensor, log_probs: torch.Tensor) -> Selection:
        """[B, N] scores and [B N, K] next-code log-probs (-inf where blocked) -> the new scores [B, N], the row
        of its user each new row extends [B, N] and the column it takes [B N]."""


class BeamSelect:
    """Keeps the N most probable extensions of each user's beams (beam search)."""

    def initial_scores(self, B: int, N: int, device: torch.device) -> torch.Tensor:
        scores = torch.full((B, N), float("-inf"), device=device)
        scores[:, 0] = 0.0  # the beams start identical: expand only the first
        return scores

    def __call__(self, scores: torch.Tensor, log_probs: torch.Tensor) -> Selection:
        B, N = scores.shape
        K = log_probs.shape[1]
        total = (scores.view(B * N, 1) + log_probs).view(B, N * K)
        values, best = stable_top(total, N)
        return values, best // K, (best % K).view(B * N)


def stable_top(values: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` largest entries of each row, best first, equal values in column order: the first ``n`` of a stable
    descending sort (so the compact and the dense search pick alike), in time linear in the row length.

    ``topk`` gives the n-th largest value t of each row; every entry above t is kept, and of the entries equal to t
    the first ones in column order fill the rest (rows with more ties than room are the only ones scanned again);
    only those n are sorted.

    Args:
        values (torch.Tensor): [B, C] with C >= n (no NaN; -inf allowed).
        n (int): entries to keep per row.

    Returns:
        (torch.Tensor, torch.Tensor): [B, n] the values and [B, n] their columns.

    Example:
        >>> v = torch.tensor([[1.0, 3.0, 3.0, float("-inf"), 3.0, 2.0]])
        >>> top = stable_top(v, 3)
        >>> top[0].tolist(), top[1].tolist()
        ([[3.0, 3.0, 3.0]], [[1, 2, 4]])
        >>> ranked = v.sort(dim=1, descending=True, stable=True)
        >>> top[1].tolist() == ranked.indices[:, :3].tolist()
        True
    """
    threshold = values.topk(n, dim=1).values[:, -1:]  # [B, 1]
    keep = values >= threshold
    extra = keep.sum(dim=1) - n  # tied entries beyond the n (0 in most rows)
    rows = (extra > 0).nonzero()[:, 0]
    if len(rows):  # drop the last tied entries of those rows
        tied = values[rows] == threshold[rows]
        kept_ties = tied.sum(dim=1, keepdim=True) - extra[rows, None]
        keep[rows] &= ~(tied & (tied.cumsum(dim=1) > kept_ties))
    columns = keep.nonzero()[:, 1].view(values.shape[0], n)  # column order within each row
    kept = values.gather(1, columns)
    order = kept.sort(dim=1, descending=True, stable=True).indices
    return kept.gather(1, order).contiguous(), columns.gather(1, order)


def spread_columns(log_probs: torch.Tensor, columns: torch.Tensor, size: int) -> torch.Tensor:
    """[R, F] log-probabilities of codes ``columns`` (-1 padded) -> [R, size], -inf at every other code.

    Example:
        >>> spread_columns(torch.tensor([[-0.5, -1.0]]), torch.tensor([[2, -1]]), 3).tolist()
        [[-inf, -inf, -0.5]]
    """
    out = log_probs.new_full((log_probs.shape[0], size + 1), float("-inf"))  # column ``size`` takes the padding
    return out.scatter_(1, torch.where(columns >= 0, columns, size), log_probs)[:, :size]


def decode_sessions(
    model: OneRecModel,
    batch: SemanticIdBatch,
    prefix_index: PrefixIndex,
    processors: List[LogitsProcessor],
    N: int,
    num_return: int,
    M: int,
    use_cache: bool,
    compact: bool,
    select: Select,
) -> BeamSearchOutput:
    """The decoding loop of ``constrained_beam_search`` and ``constrained_sample`` (arguments already checked):
    ``select`` (``BeamSelect`` or ``sampling.SampleSelect``) decides which extensions survive each step."""
    embedding, decoder, L = model.embedding, model.decoder, model.num_levels
    compact_levels = {
        level for level in range(L) if compact and 2 * prefix_index.fanout(level) <= prefix_index.vocab_sizes[level]
    }
    # a level scored per prefix (model.item_head=prefix) is normalised over the prefix's codes: it is always
    # computed on them, and spread over all K_l codes only for processors that read every column
    column_levels = compact_levels | {level for level in range(L) if model.scores_per_prefix(level)}
    tokens, memory = model.encode(batch.features)
    memory_kv = decoder.project_memory(memory, tokens.mask)  # once per user, shared by its beams
    B, _, D = memory.shape
    device = memory.device
    codes = torch.full((B * N, M, L), -1, dtype=torch.long, device=device)
    items = torch.full((B * N, M), -1, dtype=torch.long, device=device)
    scores = select.initial_scores(B, N, device)
    user_rows = torch.arange(B, device=device).unsqueeze(1) * N  # (B, 1) first row of each user
    # a user's N rows start as the same [BOS]: the first step decodes and scores one row per user (its cache holds
    # B rows, widened to B N when the first beams are picked), which at one item per session is half the decoding
    cache = decoder.new_cache(B, M * (L + 1), dtype=memory_kv[0][0].dtype, device=device) if use_cache else None
    step_tokens = embedding.bos.expand(B, 1, D)  # (B or BN, 1, D): tokens not yet fed to the cached decoder
    for j in range(M):
        for level in range(L):
            first = j == 0 and level == 0
            step_codes = codes[user_rows.view(B)] if first else codes  # (B or BN, M, L): the rows decoded
            if cache is not None:
                x = embedding.add_decoder_positions(step_tokens, cache.length)
                hidden = decoder(x, memory_kv, tokens.mask, cache=cache).hidden[:, -1]  # (B or BN, D)
            else:
                x = embedding.decoder_tokens(embedding.embed_codes(step_codes[:, : j + 1]))
                hidden = decoder(x[:, : j * (L + 1) + level + 1], memory_kv, tokens.mask).hidden[:, -1]
            columns = nodes = None
            if level in column_levels:  # only the valid codes compete (a linear level's normaliser spans all K_l)
                # beams share a few prefixes: list each one's children once, then give every beam its row
                parents, which = prefix_index.prefix_ids(step_codes[:, j, :level]).unique(return_inverse=True)
                children, child_nodes = prefix_index.children_of(level, parents)  # (P, F) each
                columns, nodes = children[which], child_nodes[which]
                log_probs = model.level_log_probs(hidden, level, columns, groups=(children, which))  # (B or BN, F)
                if level not in compact_levels:
                    log_probs, columns, nodes = spread_columns(log_probs, columns, model.vocab_sizes[level]), None, None
            else:
                log_probs = model.level_log_probs(hidden, level)  # (B or BN, K_l)
            if first:  # each of a user's N rows takes its one scored row's distribution
                log_probs = log_probs.repeat_interleave(N, dim=0)
                columns = None if columns is None else columns.repeat_interleave(N, dim=0)
                nodes = None if nodes is None else nodes.repeat_interleave(N, dim=0)
            state = BeamState(codes, items, j, level, N, prefix_index, columns, nodes)
            for processor in processors:
                log_probs = processor(state, log_probs)
            scores, beam, chosen = select(scores, log_probs)  # (B, N), (B, N), (BN,)
            rows = (user_rows + beam).view(B * N)  # the row each new beam extends
            if columns is not None:
                chosen = columns[rows, chosen]
            codes, items = codes[rows], items[rows]
            codes[:, j, level] = chosen
            if level == L - 1:
                items[:, j] = prefix_index.item_of(codes[:, j])
            if cache is not None:
                if first:
                    cache = cache.select_rows(rows // N)  # every row of user u reads its one decoded row u
                else:
                    cache.reorder(rows)
                step_tokens = embedding.embed_codes(codes[:, j : j + 1])[:, 0, level : level + 1]  # (BN, 1, D)
                if level == L - 1:  # the item is complete: the next one starts with [BOS]
                    step_tokens = torch.cat([step_tokens, embedding.bos.expand(B * N, 1, D)], dim=1)
    # best first (beam search keeps them so already: a stable sort leaves its order as it is)
    order = scores.sort(dim=1, descending=True, stable=True).indices[:, :num_return]  # (B, R)
    picked = (user_rows + order).view(-1)
    R = num_return
    return BeamSearchOutput(items[picked].view(B, R, M), codes[picked].view(B, R, M, L), scores.gather(1, order))
