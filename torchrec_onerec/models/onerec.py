"""The OneRec generative model (docs/METHOD.md section 2): history codes -> encoder -> MoE decoder -> session codes.

Training is session-wise next-token prediction. The decoder reads [BOS] s_1^1 .. s_1^L' [BOS] s_2^1 .. (teacher
forcing, causal); the output at [BOS] predicts an item's first code, the output at its level-l code predicts
level l + 1, and one linear head per level scores the K_l codes of that level. The loss is the mean
cross-entropy over every code of every real target item, plus ``moe_aux_weight`` times the MoE balance loss.

With ``item_head="prefix"`` the last level (the item id) has no linear head: its output rows are the
``item_output`` table of the EmbeddingCollection (sharded like the others), and it is scored only over the
last-level codes that share the first L'-1 codes (the item's siblings: a cluster's items), its softmax
normalised over them. p(item) = p(c_1 .. c_{L'-1}) p(item | c_1 .. c_{L'-1}) is then a proper distribution over
the catalogue, and neither training nor a generation step builds anything of the catalogue's size. Training
reads each target's siblings from the batch (``SemanticIdBatch.target_siblings``), so the collection is still
called once per forward.

The forward is fx-traceable (no data-dependent Python; the MoE dispatch is an ``fx.wrap`` leaf) and calls the
TorchRec ``EmbeddingCollection`` once, on ``batch.features``, so ``TrainPipelineSparseDist`` can pipeline it.
``OneRecTrainModule`` gives the ``(loss, (loss, logits, labels))`` contract of TorchRec's train pipelines.

Shape legend: B batch, T tokens, D width, L code levels (L' with the disambiguation level), K codebook size,
E experts, N sessions per user, M session items.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.semantic_batch import SemanticIdBatch, batch_siblings
from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.modules.embedding import EncoderTokens, SemanticTokenEmbedding
from torchrec_onerec.modules.moe import MoEFeedForward
from torchrec_onerec.modules.transformer import DecoderBlock, TransformerDecoder, TransformerEncoder
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex


class OneRecOutput(NamedTuple):
    """What ``OneRecModel.forward`` returns.

    Args:
        loss (torch.Tensor): [] ntp_loss + moe_aux_weight * aux_loss.
        logits (torch.Tensor): [B, M, L', K_max] code logits, -inf beyond each level's K_l. With
            ``item_head="prefix"`` the last level's slot f scores the target's f-th sibling
            (``batch.target_siblings``), and K_max covers the F siblings.
        labels (torch.Tensor): [B, M, L'] target codes, -1 at padding (with ``item_head="prefix"`` the last
            level's label is the target's position among its siblings).
        ntp_loss (torch.Tensor): [] mean cross-entropy over the real target codes.
        aux_loss (torch.Tensor): [] MoE balance loss, mean over decoder layers.
        expert_load (torch.Tensor): [decoder layers, E] share of token assignments per expert.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    ntp_loss: torch.Tensor
    aux_loss: torch.Tensor
    expert_load: torch.Tensor


class OneRecModel(nn.Module):
    """Encoder over the history's semantic tokens, MoE decoder writing the session's codes.

    Args:
        config (OneRecModelConfig): sizes and loss weights.
        vocab_sizes (Sequence[int]): K_l of each of the L' code levels (``PrefixIndex.vocab_sizes``).
        device (torch.device | None): where to build ("meta" for DMP, or to count parameters).

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> model = OneRecModel(model_size("tiny"), vocab_sizes=[4, 4, 2])
        >>> sum(p.numel() for p in model.parameters()) > 0
        True
    """

    def __init__(
        self, config: OneRecModelConfig, vocab_sizes: Sequence[int], *, device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        self.config = config
        self.vocab_sizes = list(vocab_sizes)
        self.embedding = SemanticTokenEmbedding(config.embedding(self.vocab_sizes), device=device)
        self.encoder = TransformerEncoder(config.encoder(), device=device)
        self.decoder = TransformerDecoder(config.decoder(), device=device)
        dense_levels = self.vocab_sizes[:-1] if config.item_head == "prefix" else self.vocab_sizes
        self.heads = nn.ModuleList(nn.Linear(config.d_model, size, device=device) for size in dense_levels)

    @property
    def num_levels(self) -> int:
        """L'."""
        return len(self.vocab_sizes)

    def scores_per_prefix(self, level: int) -> bool:
        """Whether ``level`` is scored only over the codes under its prefix (the last level, ``item_head=prefix``)."""
        return self.config.item_head == "prefix" and level == self.num_levels - 1

    def level_log_probs(
        self,
        hidden: torch.Tensor,
        level: int,
        columns: Optional[torch.Tensor] = None,
        *,
        sibling_rows: Optional[torch.Tensor] = None,
        groups: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
        chunk_elements: int = 1 << 21,
    ) -> torch.Tensor:
        """Log-probabilities of level ``level``'s codes from decoder states.

        Args:
            hidden (torch.Tensor): [R, D] decoder states (for the prefix-scored level, leading dimensions that
                broadcast against ``columns`` and ``sibling_rows``: [b, R, D] states over [R, F] columns).
            level (int): the code level.
            columns (torch.Tensor | None): [R, F] int64 codes to score per row, -1 at padding (-inf there). A
                linear level normalises over all its K_l codes and returns these columns, a block of rows at a
                time (no [R, K_l] tensor held); the prefix-scored level normalises over them (a row's columns must
                then be every code under its prefix, ``PrefixIndex.children_of``) and needs them. None: all
                K_l codes of a linear level.
            sibling_rows (torch.Tensor | None): [R, F, D] the columns' ``item_output`` rows, when already looked up.
            groups (Tuple[torch.Tensor, torch.Tensor] | None): (distinct [U, F], which [R]) with ``columns`` equal
                to ``distinct[which]``, when the caller already knows them (beam search: the beams' prefixes), so
                the prefix-scored level need not find its distinct column lists again.
            chunk_elements (int): about how many logits one block of a linear level holds.

        Returns:
            torch.Tensor: [R, F] (or [R, K_l]) float32.
        """
        if self.scores_per_prefix(level):
            if columns is None:
                raise ValueError(
                    f"level {level} is scored per prefix (model.item_head=prefix): pass columns, the codes under "
                    "each row's prefix"
                )
            logits = (
                _sibling_logits(hidden, columns, sibling_rows)
                if sibling_rows is not None
                else self._grouped_sibling_logits(hidden, columns, groups)
            )
            return logits.log_softmax(dim=-1).masked_fill(columns < 0, float("-inf"))
        if columns is None:
            return self.heads[level](hidden).float().log_softmax(dim=-1)
        step = max(1, chunk_elements // self.vocab_sizes[level])
        picked = torch.cat(
            [
                self.heads[level](hidden[start : start + step])
                .float()
                .log_softmax(dim=-1)
                .gather(1, columns[start : start + step].clamp(min=0))
                for start in range(0, hidden.shape[0], step)
            ]
        )
        return picked.masked_fill(columns < 0, float("-inf"))

    def _grouped_sibling_logits(
        self, hidden: torch.Tensor, columns: torch.Tensor, groups: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
    ) -> torch.Tensor:
        """``_sibling_logits`` for rows [R, D] over columns [R, F], with each distinct list of columns (a prefix:
        beams share a few clusters) looked up once and scored as one matrix product, so no [R, F, D] copy of the
        rows is made. ``_sibling_logits`` over every row's own lookup is the plain reference (tested equal).
        ``groups``: (distinct [U, F], which [R]) when known, else found here with ``torch.unique``."""
        hidden = bias_input(hidden)
        distinct, which = groups if groups is not None else torch.unique(columns, dim=0, return_inverse=True)
        rows = self.embedding.embed_siblings(distinct)  # (U, F, D): one lookup, a collective when sharded
        logits = hidden.new_empty(columns.shape, dtype=torch.float32)
        order = torch.argsort(which, stable=True)
        for group, members in enumerate(order.split(torch.bincount(which, minlength=len(distinct)).tolist())):
            logits[members] = (hidden[members] @ rows[group].t()).float()
        pad = columns < 0
        return logits.masked_fill(pad & ~pad.all(dim=-1, keepdim=True), float("-inf"))

    def encode(self, features: KeyedJaggedTensor) -> Tuple[EncoderTokens, torch.Tensor]:
        """Embed the feature KJT (one EmbeddingCollection call) and encode the history.

        Args:
            features (KeyedJaggedTensor): a ``SemanticIdBatch.features``.

        Returns:
            (EncoderTokens, memory [B, T, D]); T = 1 + n L' (1 + n with ``history_tokens=items``); the memory
            mask is ``EncoderTokens.mask``.
        """
        tokens = self.embedding(features)
        return tokens, self.encoder(tokens.tokens, tokens.mask)

    def code_logits(
        self,
        hidden: torch.Tensor,
        siblings: Optional[torch.Tensor] = None,
        sibling_rows: Optional[torch.Tensor] = None,
        sibling_log_ratio: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Per-level logits of a whole teacher-forced session.

        Args:
            hidden (torch.Tensor): [B, M (L' + 1), D] decoder output over [BOS] c_1 .. c_L' per item.
            siblings (torch.Tensor | None): [B, M, F] each item's siblings (``item_head=prefix`` only).
            sibling_rows (torch.Tensor | None): [B, M, F, D] their ``item_output`` rows; None: each distinct
                list of siblings (a cluster) is looked up once here (``_grouped_sibling_logits``), which is what
                scoring many sessions of few clusters wants (training passes the batch's rows: one table call).
            sibling_log_ratio (torch.Tensor | None): [B, M] for sampled siblings (``sample_siblings``: the target
                first), added to every sibling's logit but the first (the sampled-softmax correction).

        Returns:
            torch.Tensor: [B, M, L', K_max]; level l's slot k >= K_l is -inf (for the prefix-scored level:
            slot f scores sibling f, -inf past the siblings).
        """
        B, T, D = hidden.shape
        L = self.num_levels
        per_item = hidden.view(B, T // (L + 1), L + 1, D)  # (B, M, L'+1, D): slot l predicts level l
        logits = [self.heads[level](per_item[:, :, level]) for level in range(len(self.heads))]
        if self.config.item_head == "prefix":
            if siblings is None:
                raise ValueError("model.item_head=prefix scores the item level over siblings: pass them")
            last = per_item[:, :, L - 1]
            if sibling_rows is None:
                flat = self._grouped_sibling_logits(last.reshape(-1, D), siblings.reshape(-1, siblings.shape[-1]))
                logits.append(flat.view(siblings.shape).to(logits[0].dtype))
            else:
                item_logits = _sibling_logits(last, siblings, sibling_rows)
                if sibling_log_ratio is not None:
                    item_logits = correct_sampled(item_logits, sibling_log_ratio)
                logits.append(item_logits.to(logits[0].dtype))
        return stack_levels(logits)

    def forward(self, batch: SemanticIdBatch, item_weights: Optional[torch.Tensor] = None) -> OneRecOutput:
        """Teacher-forced session NTP loss.

        Args:
            batch (SemanticIdBatch): features with at most n history items per user, M = ``session_items``
                target items (padding trailing), and at least one real target item in the batch.
            item_weights (torch.Tensor | None): [B, M] > 0, how much each target item's codes count: the loss is
                the weighted mean of the code cross-entropies (``train.label_weights`` sets them from the items'
                feedback). None: the plain mean over real target codes.

        Returns:
            OneRecOutput: loss, logits [B, M, L', K_max], labels [B, M, L'], its parts and the expert load.
        """
        tokens, memory = self.encode(batch.features)
        B, M, L = batch.target_codes.shape
        x = self.embedding.decoder_tokens(tokens.targets)  # (B, M (L'+1), D)
        token_mask = batch.target_mask.unsqueeze(2).expand(B, M, L + 1).reshape(B, M * (L + 1))
        decoded = self.decoder(x, self.decoder.project_memory(memory), tokens.mask, token_mask)
        labels = batch.target_codes
        if self.config.item_head == "prefix":
            siblings = batch.target_siblings
            logits = self.code_logits(
                decoded.hidden, siblings, place_siblings(tokens.siblings, siblings), batch.sibling_log_ratio
            )
            labels = torch.cat([labels[..., :-1], sibling_positions(siblings, labels[..., -1])], dim=-1)
        else:
            logits = self.code_logits(decoded.hidden)
        if item_weights is None:
            ntp_loss = F.cross_entropy(logits.reshape(B * M * L, -1).float(), labels.reshape(-1), ignore_index=-1)
        else:
            per_code = F.cross_entropy(
                logits.reshape(B * M * L, -1).float(), labels.reshape(-1), ignore_index=-1, reduction="none"
            ).view(B, M, L)
            weights = item_weights.float().unsqueeze(-1) * (labels >= 0)  # (B, M, L'), 0 at padding
            ntp_loss = (per_code * weights).sum() / weights.sum()
        loss = ntp_loss + self.config.moe_aux_weight * decoded.aux_loss
        return OneRecOutput(loss, logits, labels, ntp_loss, decoded.aux_loss, decoded.expert_load)

    def log_prob(
        self, batch: SemanticIdBatch, sessions: torch.Tensor, *, prefix_index: Optional[PrefixIndex] = None
    ) -> torch.Tensor:
        """Log-probability of given sessions: the sum of their code log-probabilities (for DPO).

        Args:
            batch (SemanticIdBatch): the users (only ``features`` is read).
            sessions (torch.Tensor): [B, N, M', L'] int64 code tuples (M' <= M items, -1 at trailing padding
                items, which add nothing).
            prefix_index (PrefixIndex | None): the codebook's index, which gives each item's siblings; needed
                with ``item_head="prefix"`` only.

        Returns:
            torch.Tensor: [B, N] sum over the real items' codes of log p(code | history, earlier codes).
        """
        tokens, memory = self.encode(batch.features)
        B, N, M, L = sessions.shape
        flat = sessions.reshape(B * N, M, L)  # a user's N sessions are adjacent rows (they share its memory K/V)
        x = self.embedding.decoder_tokens(self.embedding.embed_codes(flat))  # (B N, M (L'+1), D)
        decoded = self.decoder(x, self.decoder.project_memory(memory), tokens.mask)
        labels = flat
        if self.config.item_head == "prefix":
            if prefix_index is None:
                raise ValueError("log_prob of a model with item_head=prefix needs prefix_index (its siblings)")
            parents = prefix_index.prefix_ids(flat[..., : L - 1].reshape(B * N * M, L - 1).to(prefix_index.device))
            siblings = prefix_index.children_of(L - 1, parents)[0].to(flat.device).view(B * N, M, -1)
            logits = self.code_logits(decoded.hidden, siblings)  # each cluster's rows looked up once
            labels = torch.cat([flat[..., :-1], sibling_positions(siblings, flat[..., -1])], dim=-1)
        else:
            logits = self.code_logits(decoded.hidden)
        log_probs = logits.float().log_softmax(dim=-1)  # (B N, M, L', K_max)
        picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B N, M, L')
        return picked.masked_fill(flat < 0, 0.0).sum(dim=(1, 2)).view(B, N)


@torch.fx.wrap
def stack_levels(logits: List[torch.Tensor]) -> torch.Tensor:
    """Per-level logits [B, M, K_l] -> [B, M, L', K_max], -inf past each level's K_l (an fx leaf: the widths may
    be the batch's)."""
    K = max(level.shape[-1] for level in logits)
    return torch.stack([F.pad(level, (0, K - level.shape[-1]), value=float("-inf")) for level in logits], dim=2)


@torch.fx.wrap
def correct_sampled(logits: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """Sampled siblings' logits [B, M, F] (the target's own first) with ``log_ratio`` [B, M] added to every slot
    but the first: log(F_c / S), the inverse of the chance that a sibling was drawn (an fx leaf: F is the batch's).

    Example:
        >>> correct_sampled(torch.zeros(1, 1, 3), torch.tensor([[0.5]])).tolist()
        [[[0.0, 0.5, 0.5]]]
    """
    return logits + F.pad(log_ratio.unsqueeze(-1).expand(*log_ratio.shape, logits.shape[-1] - 1), (1, 0))


@torch.fx.wrap
def place_siblings(rows: Optional[torch.Tensor], siblings: torch.Tensor) -> torch.Tensor:
    """The batch's distinct sibling rows [U, D] (of ``batch_siblings(siblings)``, ascending codes) -> [B, M, F, D]
    for siblings [B, M, F]; padding reads an arbitrary row, masked downstream (an fx leaf: the shapes are the
    batch's)."""
    if rows is None:
        raise ValueError("the batch carries no sibling rows; build it with SemanticIdTransform(siblings=True)")
    distinct = batch_siblings(siblings)
    if len(distinct) == 0:
        return rows.new_zeros(siblings.shape + (rows.shape[-1],))
    slots = torch.searchsorted(distinct, siblings.clamp(min=0)).clamp(max=len(distinct) - 1)
    return rows[slots]


def bias_input(hidden: torch.Tensor) -> torch.Tensor:
    """Decoder states [..., D] as the prefix-scored level reads them: the last coordinate set to 1, so that the last
    coordinate of each ``item_output`` row is the item's own bias (a popularity prior, as the dense head's bias;
    the tables of one collection share D, so the bias cannot be a table of its own).

    Example:
        >>> bias_input(torch.tensor([[0.5, -2.0, 3.0]])).tolist()
        [[0.5, -2.0, 1.0]]
    """
    return F.pad(hidden[..., :-1], (0, 1), value=1.0)


def _sibling_logits(hidden: torch.Tensor, siblings: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Scores of each row's siblings: hidden [..., D] . rows [..., F, D] -> [..., F] float32; -inf at padding
    siblings, except in rows with no sibling at all (padding items), which stay finite so that no NaN reaches a
    log-softmax or its gradient."""
    logits = (rows @ bias_input(hidden).unsqueeze(-1)).squeeze(-1).float()
    pad = siblings < 0
    return logits.masked_fill(pad & ~pad.all(dim=-1, keepdim=True), float("-inf"))


def sibling_positions(siblings: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Where each code sits among its siblings: siblings [..., F], codes [...] -> [..., 1] int64 (-1 for a code
    absent from its row, such as padding).

    Example:
        >>> sibling_positions(torch.tensor([[3, 4, -1], [2, 5, 7]]), torch.tensor([4, -1])).tolist()
        [[1], [-1]]
    """
    hit = (siblings == codes.unsqueeze(-1)) & (codes.unsqueeze(-1) >= 0)
    return torch.where(hit.any(dim=-1), hit.int().argmax(dim=-1), -1).unsqueeze(-1)


class OneRecTrainModule(nn.Module):
    """The train wrapper TorchRec's pipelines expect: ``forward(batch) -> (loss, (loss, logits, labels))``.

    Args:
        model (OneRecModel): the model to train.

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> module = OneRecTrainModule(OneRecModel(model_size("tiny"), vocab_sizes=[4, 2]))
        >>> isinstance(module.model, OneRecModel)
        True
    """

    def __init__(self, model: OneRecModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: SemanticIdBatch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Loss and detached (loss, logits [B, M, L', K_max], labels [B, M, L'])."""
        out = self.model(batch)
        return out.loss, (out.loss.detach(), out.logits.detach(), out.labels.detach())


def count_parameters(config: OneRecModelConfig, vocab_sizes: Sequence[int]) -> Dict[str, int]:
    """Parameter counts of the model a config builds, on the meta device (no memory allocated).

    Args:
        config (OneRecModelConfig): sizes.
        vocab_sizes (Sequence[int]): K_l per code level.

    Returns:
        Dict[str, int]: ``total``; ``tables`` (the TorchRec embedding tables), ``dense`` (everything else);
        ``encoder``, ``decoder``, ``heads``; ``active`` (parameters a decoder token uses: the experts it is not
        routed to left out).

    Example:
        >>> from torchrec_onerec.models.config import model_size
        >>> counts = count_parameters(model_size("1b"), [8192, 8192, 8192, 64])
        >>> 0.9e9 < counts["total"] < 1.3e9, counts["active"] < counts["total"]
        (True, True)
    """
    model = OneRecModel(config, vocab_sizes, device=torch.device("meta"))

    def numel(module: nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    total, tables = numel(model), numel(model.embedding.ec)
    experts_per_layer = 0
    if config.use_moe:
        expert = cast(MoEFeedForward, cast(DecoderBlock, model.decoder.blocks[0]).ffn)
        experts_per_layer = sum(p.numel() for p in (expert.w_in, expert.b_in, expert.w_out, expert.b_out))
    idle = config.decoder_layers * experts_per_layer * (config.num_experts - config.top_k) // config.num_experts
    return {
        "total": total,
        "tables": tables,
        "dense": total - tables,
        "encoder": numel(model.encoder),
        "decoder": numel(model.decoder),
        "heads": numel(model.heads),
        "active": total - idle,
    }
