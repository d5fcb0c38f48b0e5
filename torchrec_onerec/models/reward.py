"""The session reward model of OneRec (docs/METHOD.md section 3): R(u, S) -> one probability per feedback signal.

For a user u with history H and a session S = (v_1 .. v_M):

- v_i = the item's id embedding plus, with ``reward.semantic_ids`` (the default), the sum of the embeddings of its
  semantic-ID codes (the tokenize stage's codebook, docs/METHOD.md section 1): items that share codes share rows, so
  what the model learns about a user's interest in one item carries over to the items of similar content;
- u = MLP([user-id embedding, mean of the history items' v]) (the user representation, width D; with
  ``reward.user_id_embedding=false`` the history alone);
- e_i = v_i (.) u, each session item's embedding fused with the user (target-aware); with
  ``reward.history_attention`` v_i (.) (u + W_o a_i), where a_i is the item's attention read of the history
  (``models.history_attention``: the history items most like it count most);
- ``attention`` pooling (the paper's design): h = e + SelfAttention(e) over the session's real items (key
  padding mask), then the sum of h over the real items; two baselines in which items never see each other:
  ``sum`` (the same without the attention, the ablation that isolates it) and ``mean`` (the mean of the e_i);
- one MLP tower per signal (swt, vtr, ltr by default; any list of signals) -> a logit, sigmoid -> probability;
- loss = the sum over towers of the binary cross-entropy against the session labels (``RewardBatch.labels``);
- with ``reward.tower_level=item`` the towers read each slot's h_i instead of the pooled vector (the ``sum`` and
  ``mean`` poolings: e_i), the loss is the binary cross-entropy of every real item against its own labels
  (``RewardBatch.item_labels``), and a session's probability is the mean of its items' probabilities;
- the scalar reward = a weighted sum of the tower probabilities (``reward.weights``).

There is no position embedding: a session is scored as a set, so neither padding nor the order of the items
changes the score.

TorchRec contract: every id lookup (history items, user id, session items, their codes) goes through one
``EmbeddingCollection`` call on ``RewardBatch.features`` (tables ``reward_item`` shared by ``history_item``
and ``session_item``, ``reward_code`` shared by ``history_code`` and ``session_code``, and ``reward_user``);
the code keys hold every item's L' code tokens in item order (``code_tokens``: one vocabulary over all levels),
written at collate time from the codes the model carries, and the data-dependent reshaping of its output sits in
``torch.fx.wrap`` leaves, so ``DistributedModelParallel`` shards the tables and ``TrainPipelineSparseDist``
pipelines their input_dist. ``RewardTrainModule`` gives the train pipelines' ``(loss, (loss, logits, labels))``.

Shape legend: B batch, M session items, S signals, D width, U users, N sessions per user, I items, L' code levels.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor

from torchrec_onerec.data.batch import HISTORY_KEY, USER_KEY
from torchrec_onerec.models.history_attention import HistoryAttention
from torchrec_onerec.models.reward_batch import (
    CODE_FEATURE_KEYS,
    CODE_TABLE,
    HISTORY_CODE_KEY,
    ITEM_TABLE,
    SESSION_CODE_KEY,
    SESSION_KEY,
    USER_TABLE,
    RewardBatch,
    code_tokens,
    slot_mean,
)
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.modules.attention import AttentionConfig, SelfAttention


@torch.fx.wrap
def _jagged_mean(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of each row of a jagged [sum L, D] tensor -> [B, D] (zeros for an empty row)."""
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    sums = values.new_zeros(lengths.numel(), values.shape[1]).index_add_(0, rows, values)
    return sums / lengths.clamp(min=1).unsqueeze(1).to(values.dtype)


@torch.fx.wrap
def _with_codes(items: torch.Tensor, codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Item vectors [n, D] plus the sum of each item's ``levels`` code vectors ([n * L', D], item by item)."""
    return items + codes.view(items.shape[0], levels, items.shape[1]).sum(dim=1)


@torch.fx.wrap
def _to_slots(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place the [sum M_b, D] session-item embeddings in the True slots of ``mask`` [B, M] -> [B, M, D]."""
    B, M = mask.shape
    out = values.new_zeros(B, M, values.shape[1])
    return out.masked_scatter(mask.unsqueeze(-1), values)


@torch.fx.wrap
def _attendable(mask: torch.Tensor) -> torch.Tensor:
    """The key mask of the attention: ``mask``, with slot 0 opened in an empty session (an all-False row would
    give NaN; its output is pooled away)."""
    empty = ~mask.any(dim=1, keepdim=True)  # (B, 1)
    first = torch.zeros_like(mask)
    first[:, 0] = True
    return mask | (empty & first)


class RewardOutput(NamedTuple):
    """What ``SessionRewardModel.forward`` returns.

    Args:
        loss (torch.Tensor): [] sum over signals of the mean binary cross-entropy.
        logits (torch.Tensor): [B, S] one logit per signal tower.
        probabilities (torch.Tensor): [B, S] sigmoid of the logits.
        labels (torch.Tensor): [B, S] the session labels the loss used.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    probabilities: torch.Tensor
    labels: torch.Tensor


def _mlp(d_in: int, hidden: int, d_out: int, dropout: float, device: Optional[torch.device]) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(d_in, hidden, device=device), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out, device=device)
    )


class SessionRewardModel(nn.Module):
    """R(u, S): per-signal probabilities that a user engages with a session (module docstring).

    Args:
        config (RewardModelConfig): D, heads, tower width, pooling, dropout, reward weights.
        num_users (int): rows of the user table (user ids lie in [0, num_users)).
        num_items (int): rows of the item table (item ids lie in [0, num_items)).
        signals (Sequence[str]): the S towers, in label order (``SampleSet.signals``).
        item_codes (torch.Tensor | None): [num_items, L'] semantic-ID codes of every item (``Codebook.codes``);
            required with ``config.semantic_ids``, unused without. Kept on the CPU as ``item_tokens``
            (``code_tokens``), which ``reward_scoring.score_sessions`` and the training transform write into batches.
        device (torch.device | None): where to build ("meta" for DMP).

    Example:
        >>> import numpy as np
        >>> from torchrec_onerec.data.batch import collate_samples
        >>> from torchrec_onerec.data.samples import Sample, SampleSet
        >>> from torchrec_onerec.models.reward_batch import to_reward_batch
        >>> model = SessionRewardModel(RewardModelConfig(embedding_dim=8), num_users=2, num_items=5,
        ...                            signals=["swt", "vtr"], item_codes=torch.tensor([[0, 0], [0, 1], [1, 0],
        ...                                                                           [1, 1], [2, 0]]))
        >>> s = SampleSet.from_samples([Sample(1, np.array([4]), np.array([0, 2, -1]), np.zeros((3, 2), np.float32))],
        ...                            ["swt", "vtr"])
        >>> out = model(to_reward_batch(collate_samples(s), session_label="mean", item_tokens=model.item_tokens))
        >>> tuple(out.probabilities.shape), tuple(model.reward(out.probabilities).shape), sorted(model.ec.embeddings)
        ((1, 2), (1,), ['reward_code', 'reward_item'])
    """

    def __init__(
        self,
        config: RewardModelConfig,
        num_users: int,
        num_items: int,
        signals: Sequence[str],
        *,
        item_codes: Optional[torch.Tensor] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if num_users < 1 or num_items < 1:
            raise ValueError(f"num_users={num_users} and num_items={num_items} must both be >= 1")
        if not signals or len(set(signals)) != len(signals):
            raise ValueError(
                f"signals={list(signals)} must name at least one tower, each once (split.labels gives them)"
            )
        unknown = sorted(set(config.weights) - set(signals))
        if unknown:
            raise ValueError(
                f"reward.weights names {unknown}, which are not among the signals {list(signals)}; "
                "weight only the signals the split labels"
            )
        self.item_tokens: Optional[torch.Tensor] = None
        if config.semantic_ids:
            if item_codes is None:
                raise ValueError(
                    "reward.semantic_ids is true but no item_codes were given; pass the codebook's "
                    "codes (Codebook.codes, [num_items, L']) or set reward.semantic_ids=false"
                )
            if item_codes.shape[0] != num_items:
                raise ValueError(
                    f"item_codes has {item_codes.shape[0]} rows but num_items={num_items}; pass the "
                    "codes of this catalogue's items (one row per item id)"
                )
            self.item_tokens = code_tokens(item_codes)
        self.config, self.num_users, self.num_items = config, num_users, num_items
        self.signals: List[str] = list(signals)
        self.weights: List[float] = [float(config.weights.get(s, 0.0)) if config.weights else 1.0 for s in signals]
        D, H = config.embedding_dim, config.tower_hidden
        bounds = (
            {"weight_init_min": -config.embedding_init, "weight_init_max": config.embedding_init}
            if config.embedding_init
            else {}
        )
        tables = [
            EmbeddingConfig(
                name=ITEM_TABLE,
                embedding_dim=D,
                num_embeddings=num_items,
                feature_names=[HISTORY_KEY, SESSION_KEY],
                **bounds,
            )
        ]
        if self.item_tokens is not None:
            tables.append(
                EmbeddingConfig(
                    name=CODE_TABLE,
                    embedding_dim=D,
                    num_embeddings=int(self.item_tokens.max()) + 1,
                    feature_names=list(CODE_FEATURE_KEYS),
                    **bounds,
                )
            )
        if config.user_id_embedding:
            tables.append(
                EmbeddingConfig(
                    name=USER_TABLE, embedding_dim=D, num_embeddings=num_users, feature_names=[USER_KEY], **bounds
                )
            )
        self.ec = EmbeddingCollection(tables=tables, device=device)  # a KJT key no table reads is ignored
        self.user_mlp = _mlp((2 if config.user_id_embedding else 1) * D, H, D, config.dropout, device)
        self.history_attention = HistoryAttention(D, device=device) if config.history_attention else None
        self.attention: Optional[SelfAttention] = None
        if config.pooling == "attention":
            self.attention = SelfAttention(
                AttentionConfig(d_model=D, num_heads=config.num_heads, dropout=config.dropout), device=device
            )
        self.towers = nn.ModuleList(_mlp(D, H, 1, config.dropout, device) for _ in self.signals)

    @property
    def code_levels(self) -> int:
        """L', the codes per item (0 without ``reward.semantic_ids``)."""
        return 0 if self.item_tokens is None else int(self.item_tokens.shape[1])

    def item_vectors(self, embedded: Dict[str, JaggedTensor], item_key: str, code_key: str) -> torch.Tensor:
        """v of every item of ``item_key`` (id embedding, plus its codes' embeddings): [n, D]."""
        items = embedded[item_key].values()
        if self.item_tokens is None:
            return items
        return _with_codes(items, embedded[code_key].values(), self.code_levels)

    def user_representation(self, embedded: Dict[str, JaggedTensor], history: torch.Tensor) -> torch.Tensor:
        """u = MLP([user-id embedding, mean history item vector v]) (or MLP(mean history) alone): [B, D], from the
        history item vectors ``history`` [sum H_b, D]."""
        parts = [_jagged_mean(history, embedded[HISTORY_KEY].lengths())]
        if self.config.user_id_embedding:
            parts.insert(0, embedded[USER_KEY].values())  # one id per sample: [B, D]
        return self.user_mlp(torch.cat(parts, dim=1))

    def contextualise(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h = e + SelfAttention(e) over the real items with ``attention`` pooling, e itself otherwise: [B, M, D]."""
        if self.attention is None:
            return items
        return items + self.attention(items, key_mask=_attendable(mask))

    def pool(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Session vector from the fused items e [B, M, D] and the real-item mask [B, M] -> [B, D]."""
        if self.config.pooling == "mean":
            return slot_mean(items, mask)
        return (self.contextualise(items, mask) * mask.unsqueeze(-1).to(items.dtype)).sum(dim=1)

    def fused_items(self, batch: RewardBatch) -> torch.Tensor:
        """e_i = v_i (.) u (with ``history_attention``: v_i (.) (u + W_o a_i)) of every slot (zeros at padding),
        from one TorchRec embedding call: [B, M, D]."""
        embedded = self.ec(batch.features)
        history = self.item_vectors(embedded, HISTORY_KEY, HISTORY_CODE_KEY)  # (sum H, D)
        user = self.user_representation(embedded, history).unsqueeze(1)  # (B, 1, D)
        session = _to_slots(self.item_vectors(embedded, SESSION_KEY, SESSION_CODE_KEY), batch.session_mask)
        if self.history_attention is not None:
            user = user + self.history_attention(session, history, embedded[HISTORY_KEY].lengths())  # (B, M, D)
        return session * user

    def session_vectors(self, batch: RewardBatch) -> torch.Tensor:
        """The pooled session representations the towers read (one TorchRec embedding call).

        Args:
            batch (RewardBatch): B sessions of M slots.

        Returns:
            torch.Tensor: [B, D].
        """
        return self.pool(self.fused_items(batch), batch.session_mask)

    def forward(self, batch: RewardBatch) -> RewardOutput:
        """Tower logits, probabilities and the summed BCE loss of B sessions.

        Args:
            batch (RewardBatch): B sessions of M slots (one TorchRec embedding call on ``batch.features``).

        Returns:
            RewardOutput: loss [], logits [B, S], probabilities [B, S], labels [B, S].
        """
        if self.config.tower_level == "item":
            return self._item_level(batch)
        pooled = self.session_vectors(batch)
        logits = torch.cat([tower(pooled) for tower in self.towers], dim=1)  # (B, S)
        labels = batch.labels
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=0).sum()
        return RewardOutput(loss, logits, torch.sigmoid(logits), labels)

    def _item_level(self, batch: RewardBatch) -> RewardOutput:
        """``tower_level=item``: towers on every slot, the items' own labels, the session = the items' mean."""
        mask = batch.session_mask
        h = self.contextualise(self.fused_items(batch), mask)  # (B, M, D)
        item_logits = torch.cat([tower(h) for tower in self.towers], dim=2)  # (B, M, S)
        real = mask.unsqueeze(-1).to(item_logits.dtype)  # (B, M, 1)
        bce = F.binary_cross_entropy_with_logits(item_logits, batch.item_labels, reduction="none")
        loss = ((bce * real).sum(dim=(0, 1)) / real.sum().clamp(min=1.0)).sum()
        probabilities = slot_mean(torch.sigmoid(item_logits), mask)  # (B, S)
        logits = torch.logit(probabilities, eps=1e-6)  # a session score on the logit scale, for AUC and callers
        return RewardOutput(loss, logits, probabilities, batch.labels)

    def reward(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The scalar reward: sum over signals of weight * probability ([..., S] -> [...]).

        Example:
            >>> model = SessionRewardModel(RewardModelConfig(embedding_dim=4, num_heads=1, weights={"ltr": 2.0},
            ...                                              semantic_ids=False),
            ...                            num_users=1, num_items=1, signals=["vtr", "ltr"])
            >>> model.reward(torch.tensor([[0.5, 0.25]])).tolist()
            [0.5]
        """
        weights = torch.tensor(self.weights, dtype=probabilities.dtype, device=probabilities.device)
        return (probabilities * weights).sum(dim=-1)


class RewardTrainModule(nn.Module):
    """The train wrapper TorchRec's pipelines expect: ``forward(batch) -> (loss, (loss, logits, labels))``.

    Args:
        model (SessionRewardModel): the model to train.

    Example:
        >>> module = RewardTrainModule(SessionRewardModel(RewardModelConfig(semantic_ids=False), 3, 4, ["vtr"]))
        >>> module.model.signals
        ['vtr']
    """

    def __init__(self, model: SessionRewardModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: RewardBatch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Loss and detached (loss, logits [B, S], labels [B, S])."""
        out = self.model(batch)
        return out.loss, (out.loss.detach(), out.logits.detach(), out.labels.detach())
