"""Slate serving: sessions filled from the model's next-item distribution, spread over first-code clusters.

Beam search (``generation.beam_search``) serves the most probable whole sessions, and a model trained on logged
sessions writes sessions as narrow as the logged ones (the logging policy shows one user's favourite topic
again and again). Slate serving asks the model one question, the distribution of the next item given the history,
exactly over the whole catalogue (every item's code path, not a beam), and fills each session greedily from it:
each slot takes the unused item of highest log-probability minus ``penalty`` per earlier item of the same
session under the same first code (the coarsest cluster), the rule ``RepeatedPrefixPenalty`` applies inside
the beam search and the cascade's MMR re-rank applies to its ranked list. One encoder pass and one decoder pass
of L' tokens per distinct code prefix serve a user, whatever the session length. With three or more code
levels the same values come from decoding the prefix tree with the KV cache, one step per distinct prefix of each
length, the plain pass kept as the reference (``_next_item_log_probs_tree``; 2.9x fewer seconds at three levels
of 32 and 7,500 items). The distribution can be read level by level (``per_level``), so that two models can
serve one slate, each level's term mixed between them (``LevelMixture``: one model's choice of cluster, the
other's of the item inside it).

Shape legend: B users, I items, L code levels (L' here), P distinct (L'-1)-code prefixes, R sessions, M items.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch

from torchrec_onerec.data.semantic_batch import SemanticIdBatch, sibling_groups
from torchrec_onerec.generation.beam_search import BeamSearchOutput, history_items
from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.models.onerec import OneRecModel

_CHUNK_ELEMENTS = 1 << 22  # logits or decoder states per block of users (about 16 MB of float32)
_reused: Optional[Dict[Tuple[int, bool, str, str], torch.Tensor]] = None  # set inside ``reused_next_item_log_probs``


@contextmanager
def reused_next_item_log_probs() -> Iterator[None]:
    """Within the block, ``slate_search`` computes the next-item distribution of a batch of users once per model.

    Choosing a slate arm's penalty on validation serves the same users with the same model once per penalty, and
    only the greedy fill (``slate_sessions``) depends on the penalty. A batch is recognised by the model, the
    codes' and its history features' contents, so another batch never reads a stored one. The stored
    distributions ([users, I] float32) are freed when the block ends; the model must not change inside it.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_batch, random_codes
        >>> codes, sizes = random_codes(12, [3, 4])
        >>> model = OneRecModel(model_size("tiny"), sizes)
        >>> batch = random_batch(codes, 2, max_history=4, session_items=2)
        >>> with reused_next_item_log_probs():  # the distribution is computed by the first call, read by the rest
        ...     served = [slate_search(model, batch, codes=codes, num_return=2, session_items=2, penalty=p).items
        ...               for p in (0.0, 1.0, 2.0)]
        >>> torch.equal(served[1], slate_search(model, batch, codes=codes, num_return=2, session_items=2,
        ...                                     penalty=1.0).items)
        True
    """
    global _reused
    previous, _reused = _reused, {}
    try:
        yield
    finally:
        _reused = previous


def _stored_or_computed(
    model: OneRecModel, batch: SemanticIdBatch, codes: torch.Tensor, *, per_level: bool
) -> torch.Tensor:
    """``next_item_log_probs``, read from the store inside ``reused_next_item_log_probs`` when computed there."""
    if _reused is None:
        return next_item_log_probs(model, batch, codes, per_level=per_level)
    key = (id(model), per_level, _digest(codes), _digest(batch.features.values(), batch.features.lengths()))
    if key not in _reused:
        _reused[key] = next_item_log_probs(model, batch, codes, per_level=per_level)
    return _reused[key]


def _digest(*tensors: torch.Tensor) -> str:
    """A digest of the tensors' contents (the codes may be loaded again between calls: their identity differs)."""
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def next_item_log_probs(
    model: OneRecModel,
    batch: SemanticIdBatch,
    codes: torch.Tensor,
    chunk_elements: int = _CHUNK_ELEMENTS,
    *,
    per_level: bool = False,
) -> torch.Tensor:
    """log p(first session item = i | history) for every item i of the codebook, exactly.

    An item's log-probability is the sum of its codes' log-probabilities along its path (each a log-softmax over
    all K_l codes of its level, as ``OneRecModel.log_prob`` scores a one-item session). The decoder is causal, so
    one row [BOS, c_1 .. c_{L'-1}] per distinct prefix of L'-1 codes gives every level's distribution on that
    path; rows of a user share its encoder memory.

    Args:
        model (OneRecModel): the generator (run in eval mode here; its mode is restored).
        batch (SemanticIdBatch): B users (``features`` is read).
        codes (torch.Tensor): [I, L'] int64 codes of every item (``Codebook.codes``).
        chunk_elements (int): about how many logits (or decoder state values) one block of users may hold; the
            results do not depend on it.
        per_level (bool): return each level's term apart, log p(c_l | c_<l, history) of every item's code at
            level l, [L', B, I] (their sum over levels is the default's result).

    Returns:
        torch.Tensor: [B, I] float32 log-probabilities; each row's exponentials sum to 1 over the items when every
        code tuple of the vocabulary is an item (less when some tuples are not). [L', B, I] with ``per_level``.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_batch, random_codes
        >>> codes, sizes = random_codes(12, [3, 4])
        >>> model = OneRecModel(model_size("tiny"), sizes)
        >>> batch = random_batch(codes, 2, max_history=4, session_items=2)
        >>> lp = next_item_log_probs(model, batch, codes)
        >>> one_item_sessions = codes.view(1, 12, 1, -1).expand(2, -1, -1, -1)  # [B, I, 1, L']
        >>> lp.shape, torch.allclose(lp, model.eval().log_prob(batch, one_item_sessions), atol=1e-5)
        (torch.Size([2, 12]), True)
        >>> levels = next_item_log_probs(model, batch, codes, per_level=True)
        >>> levels.shape, torch.allclose(levels.sum(0), lp)
        (torch.Size([3, 2, 12]), True)
    """
    was_training = model.training
    model.eval()
    try:
        # the tree pays where prefixes are many and long (measured 2.9x at three levels of 32 plus a disambiguation
        # level, 1.2x at one level then the item id, whose figures the rows pass has always given)
        compute = _next_item_log_probs_tree if codes.shape[1] >= 3 else _next_item_log_probs
        levels = compute(model, batch, codes.to(torch.int64), chunk_elements)  # [L', B, I]
        return levels if per_level else _sum_levels(levels)
    finally:
        model.train(was_training)


def _sum_levels(levels: torch.Tensor) -> torch.Tensor:
    """[L', B, I] -> [B, I], added level after level (the order the search adds a path's terms in)."""
    total = levels[0].clone()
    for term in levels[1:]:
        total += term
    return total


def _next_item_log_probs(
    model: OneRecModel, batch: SemanticIdBatch, codes: torch.Tensor, chunk_elements: int
) -> torch.Tensor:
    """One decoder row [BOS, c_1 .. c_{L'-1}] per distinct prefix, every level read from it: the plain pass.
    Returns [L', B, I], each level's term apart."""
    tokens, memory = model.encode(batch.features)
    device = memory.device
    codes = codes.to(device)
    L = codes.shape[1]
    prefixes, prefix_of = torch.unique(codes[:, : L - 1], dim=0, return_inverse=True)  # [P, L'-1], [I]
    P = prefixes.shape[0]
    rows = torch.cat([prefixes, torch.zeros(P, 1, dtype=torch.long, device=device)], dim=1)  # the last code unused
    x = model.embedding.decoder_tokens(model.embedding.embed_codes(rows.unsqueeze(1)))[:, :L]  # (P, L', D)
    last = _LastLevel(model, codes, prefix_of, P)
    # a block holds b P rows of logits (the widest level) and of L' decoder states
    users_per_block = max(1, chunk_elements // (P * max(last.widest(), L * model.config.d_model)))
    out = []
    for start in range(0, memory.shape[0], users_per_block):
        block = memory[start : start + users_per_block]
        b = block.shape[0]
        mask = tokens.mask[start : start + b]
        hidden = model.decoder(
            x.repeat(b, 1, 1), model.decoder.project_memory(block, mask), mask
        ).hidden  # (b P, L', D): position l holds level l's distribution on the row's path
        terms = [
            model.level_log_probs(hidden[:, level], level).view(b, P, -1)[:, prefix_of, codes[:, level]]
            for level in range(L - 1)
        ]
        out.append(torch.stack([*terms, last.log_probs(hidden[:, L - 1], b)]))
    return torch.cat(out, dim=1)


class _LastLevel:
    """The last level of ``next_item_log_probs``: every item's log-probability given its own (L'-1)-code prefix,
    from the decoder states of the P distinct prefixes (``prefix_of`` [I] numbers each item's).

    A level scored per prefix (``model.item_head=prefix``) is scored over each prefix's codes, whose output rows
    are looked up here once for every block of users (a fixed number of table lookups per batch, which a model
    with sharded tables needs: its lookups are collectives)."""

    def __init__(self, model: OneRecModel, codes: torch.Tensor, prefix_of: torch.Tensor, P: int) -> None:
        self.model, self.level, self.P = model, codes.shape[1] - 1, P
        self.prefix_of, self.column = prefix_of, codes[:, -1]
        self.members: Optional[torch.Tensor] = None
        self.width = model.vocab_sizes[-1]  # the level's logits per prefix row
        if model.scores_per_prefix(self.level):
            groups = sibling_groups(torch.stack([prefix_of, codes[:, -1]], dim=1))  # groups numbered as prefix_of
            self.members, self.column = groups.members, groups.position
            self.rows = model.embedding.embed_siblings(self.members)  # (P, F, D)
            self.width = self.members.shape[1]

    def log_probs(self, hidden: torch.Tensor, b: int) -> torch.Tensor:
        """(b P, D) states of b users' prefix rows -> (b, I) log p(last code | the item's prefix)."""
        if self.members is None:
            log_probs = self.model.level_log_probs(hidden, self.level).view(b, self.P, -1)
        else:  # the P prefixes' rows broadcast over the b users
            states = hidden.view(b, self.P, -1)
            log_probs = self.model.level_log_probs(states, self.level, self.members, sibling_rows=self.rows)
        return log_probs[:, self.prefix_of, self.column]

    def widest(self) -> int:
        """The most logits a prefix row holds at any level."""
        return max(self.model.vocab_sizes[:-1] + [self.width])


def _next_item_log_probs_tree(
    model: OneRecModel, batch: SemanticIdBatch, codes: torch.Tensor, chunk_elements: int
) -> torch.Tensor:
    """``_next_item_log_probs`` decoded as a tree of prefixes with the KV cache: each distinct prefix of l codes
    is one decoder step whose keys and values its children read, so a user costs 1 + P_1 + .. + P_{L'-1} token
    steps instead of L' for each of the P_{L'-1} rows (about 3x fewer at three levels of 32). Returns [L', B, I]."""
    embedding, decoder = model.embedding, model.decoder
    tokens, memory = model.encode(batch.features)
    device = memory.device
    codes = codes.to(device)
    num_items, L = codes.shape
    padded = torch.zeros(1, L, dtype=torch.long, device=device)
    nodes = [padded]  # nodes[l]: [P_l, L] the distinct l-code prefixes (zero-padded), nodes[0] the root
    parents = [torch.zeros(1, dtype=torch.long, device=device)]
    node_of = [torch.zeros(num_items, dtype=torch.long, device=device)]  # node_of[l]: [I] each item's depth-l node
    for level in range(1, L):
        prefixes, inverse = torch.unique(codes[:, :level], dim=0, return_inverse=True)
        nodes.append(torch.cat([prefixes, padded[:, level:].expand(prefixes.shape[0], -1)], dim=1))
        first_of = torch.full((prefixes.shape[0],), num_items, dtype=torch.long, device=device)
        first_of.scatter_reduce_(0, inverse, torch.arange(num_items, device=device), "amin")  # an item under it
        parents.append(node_of[-1][first_of])
        node_of.append(inverse)
    # each node's last code, embedded once for every block of users (a fixed number of table lookups per batch,
    # which a model with sharded tables needs: its lookups are collectives)
    last_code = [embedding.embed_codes(nodes[level].unsqueeze(1))[:, 0, level - 1 : level] for level in range(1, L)]
    last = _LastLevel(model, codes, node_of[L - 1], nodes[L - 1].shape[0])
    widest = max(node.shape[0] for node in nodes)
    users_per_block = max(1, chunk_elements // (widest * max(last.widest(), model.config.d_model)))
    out = []
    for start in range(0, memory.shape[0], users_per_block):
        block = memory[start : start + users_per_block]
        b = block.shape[0]
        mask = tokens.mask[start : start + b]
        memory_kv = decoder.project_memory(block, mask)
        cache = decoder.new_cache(b, L, dtype=memory_kv[0][0].dtype, device=device)
        step = embedding.bos.expand(b, 1, -1)
        terms = []
        for level in range(L):
            P = nodes[level].shape[0]
            if level > 0:  # each depth-l node continues its parent's cached row with its own last code
                rows = torch.arange(b, device=device).unsqueeze(1) * nodes[level - 1].shape[0] + parents[level]
                cache = cache.select_rows(rows.view(-1))
                step = last_code[level - 1].repeat(b, 1, 1)  # (b P_l, 1, D)
            x = embedding.add_decoder_positions(step, cache.length)
            hidden = decoder(x, memory_kv, mask, cache=cache).hidden[:, -1]  # (b P_l, D)
            if level == L - 1:
                terms.append(last.log_probs(hidden, b))
            else:
                log_probs = model.level_log_probs(hidden, level)  # (b P_l, K_l)
                terms.append(log_probs.view(b, P, -1)[:, node_of[level], codes[:, level]])
        out.append(torch.stack(terms))
    return torch.cat(out, dim=1)


def slate_sessions(
    log_probs: torch.Tensor, first_codes: torch.Tensor, *, penalty: float, num_sessions: int, session_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill R sessions of M items from per-item scores, greedily, with a penalty for repeated first codes.

    Session r is filled after sessions 0..r-1 from the items they left; each of its slots takes the item
    maximising ``log_probs - penalty * (earlier items of this session under the same first code)``. The sessions
    come back ordered by their score, the sum of the penalised values of their items (the first filled is
    almost always first). A pick changes only its own first code's values, so after each slot only that code's
    items are recomputed (by the same formula, so the result is ``slate_sessions_reference``'s bit for bit).

    Args:
        log_probs (torch.Tensor): [B, I] item scores; -inf for an item that may not be served.
        first_codes (torch.Tensor): [I] int64 first code of every item.
        penalty (float): finite, >= 0, per earlier same-cluster item of the session (0: the top R M items in
            order).
        num_sessions (int): R >= 1.
        session_items (int): M >= 1.

    Returns:
        (items [B, R, M] int64, scores [B, R] float32): -1 / -inf for filler sessions (fewer than R M servable
        items); a session is filler as a whole.

    Example:
        >>> scores = torch.tensor([[3.0, 2.9, 2.0, 1.0]])
        >>> items, _ = slate_sessions(scores, torch.tensor([0, 0, 1, 1]), penalty=2.0, num_sessions=2, session_items=2)
        >>> items.tolist()
        [[[0, 2], [1, 3]]]
        >>> slate_sessions(scores, torch.tensor([0, 0, 1, 1]), penalty=0.0, num_sessions=1, session_items=2)[0].tolist()
        [[[0, 1]]]
    """
    open_items, items, values, first_codes = _slate_state(log_probs, first_codes, penalty, num_sessions, session_items)
    B, R, M = items.shape
    rows = torch.arange(B, device=open_items.device)
    clusters = int(first_codes.max()) + 1
    order = first_codes.argsort(stable=True)
    counts = torch.bincount(first_codes, minlength=clusters)
    starts = counts.cumsum(0) - counts
    slot = torch.arange(int(counts.max()), device=order.device)
    # [C, W] the items of each first code, the shorter lists padded with their own first item (rewritten alike)
    members = order[starts.unsqueeze(1) + torch.minimum(slot, (counts - 1).clamp_min(0).unsqueeze(1))]
    for r in range(R):
        shown = torch.zeros(B, clusters, device=open_items.device)
        value = open_items.clone()  # no item of the session yet: open_items - penalty * 0, exactly
        for j in range(M):
            best, pick = value.max(dim=1)
            items[:, r, j] = pick
            values[:, r, j] = best
            open_items[rows, pick] = float("-inf")
            code = first_codes[pick]
            shown[rows, code] += 1
            cols = members[code]  # [B, W]: the only values the pick changed
            value.scatter_(1, cols, open_items.gather(1, cols) - penalty * shown.gather(1, code.unsqueeze(1)))
    return _ordered_sessions(items, values)


def slate_sessions_reference(
    log_probs: torch.Tensor, first_codes: torch.Tensor, *, penalty: float, num_sessions: int, session_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``slate_sessions`` as written: every item's value recomputed at every slot (the plain reference)."""
    open_items, items, values, first_codes = _slate_state(log_probs, first_codes, penalty, num_sessions, session_items)
    B, R, M = items.shape
    rows = torch.arange(B, device=open_items.device)
    clusters = int(first_codes.max()) + 1
    for r in range(R):
        shown = torch.zeros(B, clusters, device=open_items.device)  # this session's items per first code
        for j in range(M):
            value = open_items - penalty * shown[:, first_codes]
            best, pick = value.max(dim=1)
            items[:, r, j] = pick
            values[:, r, j] = best
            open_items[rows, pick] = float("-inf")
            shown[rows, first_codes[pick]] += 1
    return _ordered_sessions(items, values)


def _slate_state(
    log_probs: torch.Tensor, first_codes: torch.Tensor, penalty: float, num_sessions: int, session_items: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Checked arguments as the fill's starting state: (open scores, items, values, first codes on the device)."""
    if not (0.0 <= penalty < math.inf):
        raise ValueError(f"penalty={penalty} must be finite and >= 0 (0 serves the most probable items in order)")
    if num_sessions < 1 or session_items < 1:
        raise ValueError(f"num_sessions={num_sessions} and session_items={session_items} must be >= 1")
    B, device = log_probs.shape[0], log_probs.device
    items = torch.full((B, num_sessions, session_items), -1, dtype=torch.long, device=device)
    values = torch.zeros(B, num_sessions, session_items, device=device)
    return log_probs.float().clone(), items, values, first_codes.to(device)


def _ordered_sessions(items: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Filled sessions as returned: fillers marked, best score first."""
    B, R, M = items.shape
    real = torch.isfinite(values).all(dim=2)  # [B, R]: every slot found a servable item
    scores = torch.where(real, values.sum(dim=2), torch.tensor(float("-inf"), device=values.device))
    items = torch.where(real.unsqueeze(2), items, torch.full_like(items, -1))
    order = scores.sort(dim=1, descending=True, stable=True).indices
    return items.gather(1, order.unsqueeze(2).expand(B, R, M)), scores.gather(1, order)


class LevelMixture(torch.nn.Module):
    """Two generators over one codebook served as one slate, level by level: item i's score is
    sum_l (1 - w_l) log p_first(c_l(i) | c_<l(i), h) + w_l log p_second(c_l(i) | c_<l(i), h).

    Each level's term is a log-linear mixture (a product of experts) of the two models' distributions at that
    level, so one model can choose among the coarse clusters and the other among the items inside them: the
    ``onerec_mix_slate`` arm (``interpolation``) takes the first code from between the NTP model and the aligned
    one, and the rest from the aligned model. Weights of 0 (1) at every level serve exactly the first (second)
    model's slate. It serves only as a slate (``slate_search``); its ``config`` is the first model's.

    Args:
        first (OneRecModel): the model at weight 0.
        second (OneRecModel): the model at weight 1, trained on the same codebook.
        level_weights (Sequence[float]): w_l in [0, 1], one per code level.

    Raises:
        ValueError: models of different codebooks, or weights of the wrong number or outside [0, 1].

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_batch, random_codes
        >>> codes, sizes = random_codes(12, [3, 4])  # two levels and a disambiguation level
        >>> ntp, aligned = OneRecModel(model_size("tiny"), sizes), OneRecModel(model_size("tiny"), sizes)
        >>> batch = random_batch(codes, 2, max_history=4, session_items=2)
        >>> mixed = LevelMixture(ntp, aligned, [0.0, 1.0, 1.0]).next_item_log_probs(batch, codes)
        >>> ntp_levels = next_item_log_probs(ntp, batch, codes, per_level=True)
        >>> aligned_levels = next_item_log_probs(aligned, batch, codes, per_level=True)
        >>> torch.allclose(mixed, ntp_levels[0] + aligned_levels[1] + aligned_levels[2])
        True
    """

    def __init__(self, first: OneRecModel, second: OneRecModel, level_weights: Sequence[float]) -> None:
        super().__init__()
        if list(first.vocab_sizes) != list(second.vocab_sizes):
            raise ValueError(
                f"the models were trained on different codebooks (vocabulary sizes {list(first.vocab_sizes)} and "
                f"{list(second.vocab_sizes)}); a level mixture needs two models of one codebook"
            )
        weights = [float(w) for w in level_weights]
        if len(weights) != len(first.vocab_sizes) or not all(0.0 <= w <= 1.0 for w in weights):
            raise ValueError(
                f"level_weights={weights} must hold one weight in [0, 1] per code level "
                f"({len(first.vocab_sizes)} levels)"
            )
        self.first, self.second, self.level_weights = first, second, tuple(weights)

    @property
    def config(self) -> OneRecModelConfig:
        return self.first.config

    @torch.no_grad()
    def next_item_log_probs(self, batch: SemanticIdBatch, codes: torch.Tensor) -> torch.Tensor:
        """[B, I] the mixed score of every item (each model's levels read from the store of
        ``reused_next_item_log_probs`` when computed inside it, so trying several weights costs one pass each)."""
        first = _stored_or_computed(self.first, batch, codes, per_level=True)
        second = _stored_or_computed(self.second, batch, codes, per_level=True)
        # the ends taken as they are, so that a weight of 0 or 1 serves that model's own slate to the bit
        terms = [
            a if w == 0.0 else b if w == 1.0 else torch.lerp(a, b, w)
            for w, a, b in zip(self.level_weights, first, second)
        ]
        return _sum_levels(torch.stack(terms))


@torch.no_grad()
def slate_search(
    model: Union[OneRecModel, LevelMixture],
    batch: SemanticIdBatch,
    *,
    codes: torch.Tensor,
    num_return: int,
    session_items: int,
    penalty: float = 0.0,
    exclude_history: bool = False,
) -> BeamSearchOutput:
    """The ``num_return`` sessions of each user that slate serving writes (module docstring).

    Args:
        model (OneRecModel | LevelMixture): the generator, or two mixed level by level.
        batch (SemanticIdBatch): the users (``features``; ``item_features`` for ``exclude_history``).
        codes (torch.Tensor): [I, L'] int64 codes of every item.
        num_return (int): R sessions per user.
        session_items (int): M items per session.
        penalty (float): per earlier item of the session under the same first code, in log-probability units.
        exclude_history (bool): never serve an item of the user's history.

    Returns:
        BeamSearchOutput: items [B, R, M] (every one a real item, no repeats across a user's sessions), codes
        [B, R, M, L'] (-1 for filler), scores [B, R] (the penalised log-probabilities summed; -inf for filler).

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> from torchrec_onerec.models.testing import random_batch, random_codes
        >>> codes, sizes = random_codes(12, [3, 4])
        >>> model = OneRecModel(model_size("tiny"), sizes)
        >>> out = slate_search(model, random_batch(codes, 2, max_history=4, session_items=2), codes=codes,
        ...                    num_return=3, session_items=2, penalty=1.0)
        >>> out.items.shape, out.codes.shape, len(set(out.items[0].flatten().tolist()))
        (torch.Size([2, 3, 2]), torch.Size([2, 3, 2, 3]), 6)
    """
    if isinstance(model, LevelMixture):
        log_probs = model.next_item_log_probs(batch, codes)
    else:
        log_probs = _stored_or_computed(model, batch, codes, per_level=False)
    if exclude_history:
        history = history_items(batch).to(log_probs.device)
        blocked = torch.zeros_like(log_probs, dtype=torch.bool)
        blocked.scatter_(1, history.clamp(min=0), history >= 0)
        log_probs = log_probs.masked_fill(blocked, float("-inf"))
    item_codes = codes.to(log_probs.device)
    items, scores = slate_sessions(
        log_probs, item_codes[:, 0], penalty=penalty, num_sessions=num_return, session_items=session_items
    )
    session_codes = torch.where(items.unsqueeze(-1) >= 0, item_codes[items.clamp(min=0)], -1)
    return BeamSearchOutput(items, session_codes, scores)
