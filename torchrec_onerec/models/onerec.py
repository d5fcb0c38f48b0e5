"""The OneRec generative model (docs/METHOD.md section 2): history codes -> encoder -> MoE decoder -> session codes.

Training is session-wise next-token prediction. The decoder reads [BOS] s_1^1 .. s_1^L' [BOS] s_2^1 .. (teacher
forcing, causal); the output at [BOS] predicts an item's first code, the output at its level-l code predicts
level l + 1, and one linear head per level scores the K_l codes of that level. The loss is the mean
cross-entropy over every code of every real target item, plus ``moe_aux_weight`` times the MoE balance loss.

The forward is fx-traceable (no data-dependent Python; the MoE dispatch is an ``fx.wrap`` leaf) and calls the
TorchRec ``EmbeddingCollection`` once, on ``batch.features``, so ``TrainPipelineSparseDist`` can pipeline it.
``OneRecTrainModule`` gives the ``(loss, (loss, logits, labels))`` contract of TorchRec's train pipelines.

Shape legend: B batch, T tokens, D width, L code levels (L' with the disambiguation level), K codebook size,
E experts, N sessions per user, M session items.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Sequence, Tuple, cast

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.semantic_batch import SemanticIdBatch
from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.modules.embedding import EncoderTokens, SemanticTokenEmbedding
from torchrec_onerec.modules.moe import MoEFeedForward
from torchrec_onerec.modules.transformer import DecoderBlock, TransformerDecoder, TransformerEncoder


class OneRecOutput(NamedTuple):
    """What ``OneRecModel.forward`` returns.

    Args:
        loss (torch.Tensor): [] ntp_loss + moe_aux_weight * aux_loss.
        logits (torch.Tensor): [B, M, L', K_max] code logits, -inf beyond each level's K_l.
        labels (torch.Tensor): [B, M, L'] target codes, -1 at padding.
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
        self.heads = nn.ModuleList(nn.Linear(config.d_model, size, device=device) for size in self.vocab_sizes)

    @property
    def num_levels(self) -> int:
        """L'."""
        return len(self.vocab_sizes)

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

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Scores of the K_level codes of ``level`` from decoder states [..., D] -> [..., K_level]."""
        return self.heads[level](hidden)

    def code_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Per-level logits of a whole teacher-forced session.

        Args:
            hidden (torch.Tensor): [B, M (L' + 1), D] decoder output over [BOS] c_1 .. c_L' per item.

        Returns:
            torch.Tensor: [B, M, L', K_max]; level l's slot k >= K_l is -inf.
        """
        B, T, D = hidden.shape
        L, K = self.num_levels, max(self.vocab_sizes)
        per_item = hidden.view(B, T // (L + 1), L + 1, D)  # (B, M, L'+1, D): slot l predicts level l
        logits = [
            F.pad(self.heads[level](per_item[:, :, level]), (0, K - size), value=float("-inf"))
            for level, size in enumerate(self.vocab_sizes)
        ]  # each (B, M, K_max)
        return torch.stack(logits, dim=2)

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
        logits = self.code_logits(decoded.hidden)
        labels = batch.target_codes
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

    def log_prob(self, batch: SemanticIdBatch, sessions: torch.Tensor) -> torch.Tensor:
        """Log-probability of given sessions: the sum of their code log-probabilities (for DPO).

        Args:
            batch (SemanticIdBatch): the users (only ``features`` is read).
            sessions (torch.Tensor): [B, N, M', L'] int64 code tuples (M' <= M items, -1 at trailing padding
                items, which add nothing).

        Returns:
            torch.Tensor: [B, N] sum over the real items' codes of log p(code | history, earlier codes).
        """
        tokens, memory = self.encode(batch.features)
        B, N, M, L = sessions.shape
        flat = sessions.reshape(B * N, M, L)  # a user's N sessions are adjacent rows (they share its memory K/V)
        x = self.embedding.decoder_tokens(self.embedding.embed_codes(flat))  # (B N, M (L'+1), D)
        decoded = self.decoder(x, self.decoder.project_memory(memory), tokens.mask)
        log_probs = self.code_logits(decoded.hidden).float().log_softmax(dim=-1)  # (B N, M, L', K_max)
        picked = log_probs.gather(-1, flat.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B N, M, L')
        return picked.masked_fill(flat < 0, 0.0).sum(dim=(1, 2)).view(B, N)


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
