"""Semantic-token embedding of OneRec (docs/METHOD.md section 2): the sparse tables TorchRec shards, plus dense
position, level and special-token embeddings.

Tables: one ``torchrec.EmbeddingCollection`` with a table ``code_l`` per code level (K_l rows, D columns),
shared by the history feature ``history_code_l`` and the target feature ``target_code_l``; with
``num_users > 0`` a ``user_id`` table joins the same collection (all tables of one collection share D), so
DistributedModelParallel shards them all. A model whose item level is scored per prefix (``item_output``) adds
a table ``item_output`` (K_L' rows: an output row per last-level code, read by the feature ``target_siblings``),
so the item level's output weights are sharded like the rest. The collection is called exactly once per
training forward, on the batch's feature KJT (the keys of ``torchrec_onerec.data.semantic_batch``), which is
what ``TrainPipelineSparseDist`` needs to pipeline its input_dist.

Encoder tokens: [context] then the n history items oldest to newest, each as its L' code tokens
(item-major: item 0 level 0, item 0 level 1, ...). A history token is
code_embedding + recency_embedding(age of the item, 0 = newest) + level_embedding(level); padding positions
are zeros and masked out. With ``history_tokens="items"`` each history item is one token instead, the sum of its
L' code tokens (L' times shorter attention; on ML-100K it trained faster and scored a little lower). The context
token (a learned vector, plus the user embedding when there is a user table) is always present, so no user
attends to nothing, even with an empty history.

Decoder tokens: [BOS] c_1 .. c_L' per session item, plus a position embedding over the M (L' + 1) slots.

Shape legend: B batch, T tokens, D width, L code levels (L' here), K codebook size, M session items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.batch import USER_KEY
from torchrec_onerec.data.semantic_batch import (
    SIBLINGS_KEY,
    history_code_key,
    semantic_feature_keys,
    target_code_key,
)

INIT_STD = 0.02
HISTORY_TOKENS = ("codes", "items")


@dataclass
class SemanticEmbeddingConfig:
    """Sizes of the semantic-token embedding.

    Args:
        d_model: D, the width of every table and token.
        vocab_sizes: K_l for each of the L' code levels (the codebook's per-level sizes).
        max_history: n, history items the encoder reads; longer histories must be cut before batching
            (``to_semantic_batch(..., max_history=n)`` checks it).
        session_items: M, items per generated or trained session.
        num_users: rows of the user-id table; 0 = no user feature.
        history_tokens: ``codes`` (one encoder token per code of each history item, n L' in all) or ``items``
            (one token per history item: the sum of its code tokens, n in all).
        item_output: add the ``item_output`` table, the last level's output rows (``model.item_head=prefix``).
    """

    d_model: int
    vocab_sizes: List[int] = field(default_factory=list)
    max_history: int = 50
    session_items: int = 5
    num_users: int = 0
    history_tokens: str = "codes"
    item_output: bool = False

    def __post_init__(self) -> None:
        if self.d_model < 1:
            raise ValueError(f"d_model={self.d_model} must be >= 1")
        if not self.vocab_sizes or min(self.vocab_sizes) < 1:
            raise ValueError(
                f"vocab_sizes={list(self.vocab_sizes)} needs one entry >= 1 per code level; "
                "pass the codebook's per-level sizes"
            )
        if self.max_history < 1 or self.session_items < 1:
            raise ValueError(f"max_history={self.max_history} and session_items={self.session_items} must be >= 1")
        if self.num_users < 0:
            raise ValueError(f"num_users={self.num_users} must be >= 0 (0 = no user feature)")
        if self.history_tokens not in HISTORY_TOKENS:
            raise ValueError(f"history_tokens={self.history_tokens!r} must be one of {list(HISTORY_TOKENS)}")
        if self.item_output and len(self.vocab_sizes) < 2:
            raise ValueError(
                f"item_output needs at least two code levels (the prefix, then the item level), got vocab_sizes="
                f"{list(self.vocab_sizes)}"
            )

    @property
    def num_levels(self) -> int:
        """L'."""
        return len(self.vocab_sizes)


class EncoderTokens(NamedTuple):
    """Embedded encoder input and the training targets' code embeddings.

    Args:
        tokens (torch.Tensor): [B, T, D] context token then the history tokens; T = 1 + n L' (``history_tokens``
            ``codes``) or 1 + n (``items``).
        mask (torch.Tensor): [B, T] bool, False at padding.
        targets (torch.Tensor): [B, M, L', D] code embeddings of the target items (zeros at padding).
        siblings (torch.Tensor | None): [U, D] output rows of the batch's distinct target siblings, in ascending
            code order (``item_output`` only, else None).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor
    siblings: Optional[torch.Tensor]


class SemanticTokenEmbedding(nn.Module):
    """TorchRec tables for the code levels (and user ids) plus dense position/level/special embeddings.

    Args:
        config (SemanticEmbeddingConfig): D, per-level K, n, M, user table size.
        device (torch.device | None): where to build ("meta" lets DMP materialise the sharded tables).

    Example:
        >>> from torchrec_onerec.data.semantic_batch import semantic_feature_keys
        >>> emb = SemanticTokenEmbedding(SemanticEmbeddingConfig(d_model=4, vocab_sizes=[3, 2], max_history=2,
        ...                                                      session_items=1))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(  # 1 user: history [(2, 1)], target [(0, 1)], user 9
        ...     semantic_feature_keys(2), torch.tensor([2, 1, 0, 1, 9]), torch.tensor([1, 1, 1, 1, 1]))
        >>> out = emb(kjt)
        >>> tuple(out.tokens.shape), out.mask.tolist(), tuple(out.targets.shape)
        ((1, 5, 4), [[True, True, True, False, False]], (1, 1, 2, 4))
    """

    def __init__(self, config: SemanticEmbeddingConfig, *, device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.config = config
        D, L = config.d_model, config.num_levels
        tables = [
            EmbeddingConfig(
                name=f"code_{level}",
                embedding_dim=D,
                num_embeddings=size,
                feature_names=[history_code_key(level), target_code_key(level)],
            )
            for level, size in enumerate(config.vocab_sizes)
        ]
        if config.num_users:
            tables.append(
                EmbeddingConfig(
                    name=USER_KEY, embedding_dim=D, num_embeddings=config.num_users, feature_names=[USER_KEY]
                )
            )
        if config.item_output:
            tables.append(
                EmbeddingConfig(
                    name="item_output",
                    embedding_dim=D,
                    num_embeddings=config.vocab_sizes[-1],
                    feature_names=[SIBLINGS_KEY],
                )
            )
        self.ec = EmbeddingCollection(tables=tables, device=device)
        self.recency = nn.Embedding(config.max_history, D, device=device)
        self.level = nn.Embedding(L, D, device=device)
        self.decoder_position = nn.Embedding(config.session_items * (L + 1), D, device=device)
        self.context = nn.Parameter(torch.empty(D, device=device))
        self.bos = nn.Parameter(torch.empty(D, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) for the dense embeddings (the tables keep TorchRec's own initialisation)."""
        for weight in (self.recency.weight, self.level.weight, self.decoder_position.weight, self.context, self.bos):
            nn.init.normal_(weight, std=INIT_STD)

    def forward(self, features: KeyedJaggedTensor) -> EncoderTokens:
        """Embed a semantic batch's feature KJT (one EmbeddingCollection call).

        Args:
            features (KeyedJaggedTensor): keys ``semantic_feature_keys(L', siblings=item_output)``, at most n
                history items per user.

        Returns:
            EncoderTokens: tokens [B, T, D], mask [B, T] (T = 1 + n L', or 1 + n for ``items``), targets
            [B, M, L', D], siblings [U, D] (``item_output`` only).
        """
        n, M, L = self.config.max_history, self.config.session_items, self.config.num_levels
        embedded = self.ec(features)
        history = torch.stack(
            [embedded[history_code_key(level)].to_padded_dense(n) for level in range(L)], dim=2
        )  # (B, n, L', D)
        B, _, _, D = history.shape
        lengths = embedded[history_code_key(0)].lengths()  # (B,)
        age = lengths.unsqueeze(1) - 1 - torch.arange(n, device=lengths.device)  # (B, n), newest item = 0
        valid = age >= 0
        history = history + self.recency(age.clamp(min=0)).unsqueeze(2) + self.level.weight  # (B, n, L', D)
        context = self.context.expand(B, 1, D)
        if self.config.num_users:
            context = context + embedded[USER_KEY].values().unsqueeze(1)  # one user id per sample
        if self.config.history_tokens == "items":
            tokens = torch.cat([context, history.sum(dim=2)], dim=1)  # (B, 1 + n, D)
            mask = torch.cat([valid.new_ones(B, 1), valid], dim=1)
        else:
            tokens = torch.cat([context, history.reshape(B, n * L, D)], dim=1)  # (B, 1 + n L', D)
            mask = torch.cat([valid.new_ones(B, 1), valid.unsqueeze(2).expand(B, n, L).reshape(B, n * L)], dim=1)
        targets = torch.stack(
            [embedded[target_code_key(level)].to_padded_dense(M) for level in range(L)], dim=2
        )  # (B, M, L', D)
        siblings = embedded[SIBLINGS_KEY].values() if self.config.item_output else None
        return EncoderTokens(tokens, mask, targets, siblings)

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Embed dense code tuples through the same tables (sessions for ``log_prob`` and generation).

        Args:
            codes (torch.Tensor): [B, M', L'] int64, -1 at padding (embedded as code 0; mask it downstream).

        Returns:
            torch.Tensor: [B, M', L', D].
        """
        B, M, L = codes.shape
        values = codes.clamp(min=0).permute(2, 0, 1).reshape(-1)  # (L' B M',) level-major, as the KJT keys
        zeros = codes.new_zeros(L * B)
        lengths = [zeros, codes.new_full((L * B,), M), codes.new_zeros(B)]  # history, target, user
        embedded = self.ec(self._features(values, lengths, codes.new_zeros(B)))
        D = self.config.d_model
        return torch.stack([embedded[target_code_key(level)].values().view(B, M, D) for level in range(L)], dim=2)

    def embed_siblings(self, codes: torch.Tensor) -> torch.Tensor:
        """Output rows of last-level codes through the ``item_output`` table (generation and ``log_prob``).

        Args:
            codes (torch.Tensor): [R, F] int64 last-level codes, -1 at padding (read as code 0; mask downstream).

        Returns:
            torch.Tensor: [R, F, D].
        """
        if not self.config.item_output:
            raise ValueError("embed_siblings needs the item_output table (a model built with model.item_head=prefix)")
        R, F = codes.shape
        L = self.config.num_levels
        none = codes.new_zeros(L * R)
        embedded = self.ec(
            self._features(codes.clamp(min=0).reshape(-1), [none, none, codes.new_zeros(R)], codes.new_full((R,), F))
        )
        return embedded[SIBLINGS_KEY].values().view(R, F, self.config.d_model)

    def _features(
        self, values: torch.Tensor, lengths: List[torch.Tensor], sibling_lengths: torch.Tensor
    ) -> KeyedJaggedTensor:
        """A feature KJT with every key the collection reads: ``lengths`` for history, target and user, then
        ``sibling_lengths`` for the siblings key (only with ``item_output``); ``values`` in that key order."""
        keys = semantic_feature_keys(self.config.num_levels, siblings=self.config.item_output)
        if self.config.item_output:
            lengths = lengths + [sibling_lengths]
        return KeyedJaggedTensor(keys=keys, values=values, lengths=torch.cat(lengths))

    def decoder_tokens(self, codes: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The decoder input for code embeddings: [BOS] c_1 .. c_L' per item, plus positions.

        Args:
            codes (torch.Tensor): [B, M', L', D] code embeddings of M' <= M items (``embed_codes`` output).
            start (int): decoder slot of the first token (0 for a whole session).

        Returns:
            torch.Tensor: [B, M' (L' + 1), D].
        """
        B, M, L, D = codes.shape
        bos = self.bos.expand(B, M, 1, D)
        tokens = torch.cat([bos, codes], dim=2).reshape(B, M * (L + 1), D)  # (B, M' (L'+1), D)
        return self.add_decoder_positions(tokens, start)

    def add_decoder_positions(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Add the decoder position embedding of slots ``start .. start + T - 1`` to [B, T, D] tokens."""
        T = tokens.shape[1]
        return tokens + self.decoder_position.weight[start : start + T]
