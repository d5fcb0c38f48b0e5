"""Two-tower retrieval, the first stage of the cascade baseline that OneRec replaces (docs/METHOD.md introduction).

- User tower: a TorchRec ``EmbeddingBagCollection`` with a ``tt_user`` table (the user id) and a ``tt_history``
  table (the history items, mean-pooled), concatenated -> MLP -> L2-normalised vector [D].
- Item tower: an ``EmbeddingBagCollection`` with a ``tt_item`` table (the item id), optionally concatenated with
  the item's fixed content embedding (a dense batch field) -> MLP -> L2-normalised vector [D].
- Training: pairs (a user's history, one positive item); in-batch softmax over the batch's positive items at
  temperature tau, with the sampling-bias (logQ) correction of Yi et al. (RecSys 2019): the logit of item j is
  ``<u, v_j> / tau - log q_j``, q_j = the item's share of the training pairs; other pairs of the batch with the
  same item (accidental hits) are masked out.
- Retrieval: exact inner products of each user vector with every item vector of the catalogue, top K.

Every lookup goes through a KeyedJaggedTensor of the batch (``TwoTowerBatch``), so DistributedModelParallel
shards the three tables and ``TrainPipelineSparseDist`` pipelines their input_dist.

Shape legend: B batch, D width, C content width, I items, U users, K retrieved items, P pairs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.modules.mlp import MLP
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.batch import HISTORY_KEY, USER_KEY, OneRecBatch, TensorFieldsBatch, collate_samples
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.models.cascade_config import RetrievalConfig
from torchrec_onerec.models.catalogue import top_k_items
from torchrec_onerec.run_dir import load_tagged, save_tagged
from torchrec_onerec.optim_config import section_with_optim

ITEM_KEY = "item_id"
USER_TABLE, HISTORY_TABLE, ITEM_TABLE = "tt_user", "tt_history", "tt_item"
EXPORT_FORMAT = "torchrec_onerec.cascade.two_tower/1"


@dataclass
class TwoTowerBatch(TensorFieldsBatch):
    """B (history, positive item) pairs; implements TorchRec's ``Pipelineable``.

    Args:
        user_features (KeyedJaggedTensor): keys ``history_item`` (the history, any length) and ``user_id``.
        item_features (KeyedJaggedTensor): key ``item_id``, the positive item of each pair.
        item_content (torch.Tensor): [B, C] float32 content embedding of each positive item (C may be 0).
        item_log_q (torch.Tensor): [B] float32 log of each positive item's share of the training pairs.
        items (torch.Tensor): [B] int64 the positive item ids (to mask accidental hits).
    """

    user_features: KeyedJaggedTensor
    item_features: KeyedJaggedTensor
    item_content: torch.Tensor
    item_log_q: torch.Tensor
    items: torch.Tensor


def item_kjt(items: torch.Tensor) -> KeyedJaggedTensor:
    """A KJT with one ``item_id`` per row: ``items`` [B] int64."""
    return KeyedJaggedTensor.from_lengths_sync(keys=[ITEM_KEY], values=items, lengths=torch.ones_like(items))


class TwoTowerTransform:
    """A picklable ``OneRecBatch -> TwoTowerBatch`` collate step: target slot 0 is the positive item.

    Args:
        item_content (torch.Tensor): [I, C] float32 content of every item (C = 0: none).
        item_log_q (torch.Tensor): [I] float32 ``item_log_frequency`` of the training pairs.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> pairs = SampleSet.from_samples([Sample(0, np.array([1]), np.array([2]), np.zeros((1, 0), np.float32))], [])
        >>> b = TwoTowerTransform(torch.zeros(3, 0), torch.log(torch.tensor([0.5, 0.25, 0.25])))(collate_samples(pairs))
        >>> b.items.tolist(), b.item_features[ITEM_KEY].values().tolist(), round(float(b.item_log_q[0]), 4)
        ([2], [2], -1.3863)
    """

    def __init__(self, item_content: torch.Tensor, item_log_q: torch.Tensor) -> None:
        if item_content.dim() != 2 or item_log_q.shape != (item_content.shape[0],):
            raise ValueError(
                f"item_content {tuple(item_content.shape)} must be [I, C] and item_log_q "
                f"{tuple(item_log_q.shape)} must be [I] for the same I"
            )
        self.item_content, self.item_log_q = item_content.float(), item_log_q.float()

    def __call__(self, batch: OneRecBatch) -> TwoTowerBatch:
        items = batch.target[:, 0]
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= len(self.item_log_q)):
            raise ValueError(
                f"pair items span [{int(items.min())}, {int(items.max())}], outside [0, "
                f"{len(self.item_log_q)}); build the pairs with training_pairs from this catalogue"
            )
        return TwoTowerBatch(batch.features, item_kjt(items), self.item_content[items], self.item_log_q[items], items)


def training_pairs(samples: SampleSet) -> SampleSet:
    """One sample per real target item: the sample's user and history with that item as target [P, 1].

    Args:
        samples (SampleSet): N samples with targets [N, M].

    Returns:
        SampleSet: P = number of real target items, in (sample, slot) order, labels [P, 1, S].

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> s = SampleSet.from_samples([Sample(0, np.array([1]), np.array([2, 3]), np.zeros((2, 0), np.float32)),
        ...                             Sample(1, np.array([4]), np.array([5, -1]), np.zeros((2, 0), np.float32))], [])
        >>> p = training_pairs(s)
        >>> p.target.ravel().tolist(), p.user.tolist(), p[1].history.tolist()
        ([2, 3, 5], [0, 0, 1], [1])
    """
    rows, slots = np.nonzero(samples.target != PAD_ITEM)
    repeated = samples.subset(rows)
    return SampleSet(
        repeated.user,
        repeated.history_values,
        repeated.history_offsets,
        samples.target[rows, slots][:, None],
        samples.labels[rows, slots][:, None, :],
        list(samples.signals),
    )


def item_log_frequency(items: np.ndarray, num_items: int) -> np.ndarray:
    """log q_i: the log of each item's share of ``items`` (an item never seen counts once, so it stays finite).

    Example:
        >>> np.exp(item_log_frequency(np.array([0, 0, 1, 0]), 3)).round(2).tolist()
        [0.75, 0.25, 0.25]
    """
    counts = np.maximum(np.bincount(np.asarray(items, dtype=np.int64), minlength=num_items), 1)
    return (np.log(counts) - np.log(max(len(items), 1))).astype(np.float32)


@torch.fx.wrap
def in_batch_softmax_loss(
    user: torch.Tensor, item: torch.Tensor, items: torch.Tensor, log_q: Optional[torch.Tensor], temperature: float
) -> torch.Tensor:
    """Mean cross-entropy of each pair's own item against the batch's other items (module docstring).

    Args:
        user (torch.Tensor): [B, D] user vectors.
        item (torch.Tensor): [B, D] positive item vectors, row b belongs to user b.
        items (torch.Tensor): [B] int64 item ids; off-diagonal columns with the row's own item are masked.
        log_q (torch.Tensor | None): [B] log sampling probability of each column's item (None: no correction).
        temperature (float): tau.

    Returns:
        torch.Tensor: [] the loss.

    Example:
        >>> u, v = torch.eye(2), torch.eye(2)  # each user matches its own item
        >>> round(float(in_batch_softmax_loss(u, v, torch.tensor([0, 1]), None, 1.0)), 4)  # log(1 + e^-1)
        0.3133
    """
    logits = user @ item.t() / temperature  # [B, B]
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    rows = torch.arange(items.shape[0], device=items.device)
    accidental = (items.unsqueeze(1) == items.unsqueeze(0)) & (rows.unsqueeze(1) != rows.unsqueeze(0))
    return F.cross_entropy(logits.masked_fill(accidental, float("-inf")), rows)


def _tower(in_features: int, hidden: List[int], out_features: int, device: Optional[torch.device]) -> nn.Module:
    """MLP (ReLU) over ``hidden`` then a linear layer to ``out_features`` (no activation before normalising)."""
    layers: List[nn.Module] = [MLP(in_features, list(hidden), device=device)] if hidden else []
    layers.append(nn.Linear(hidden[-1] if hidden else in_features, out_features, device=device))
    return nn.Sequential(*layers)


class TwoTowerRetrieval(nn.Module):
    """The two towers and their in-batch softmax loss (module docstring).

    Args:
        config (RetrievalConfig): D, tower sizes, temperature, logQ correction.
        num_users (int): rows of ``tt_user``.
        num_items (int): rows of ``tt_history`` and ``tt_item`` (I).
        content_dim (int): C, width of the item content the item tower reads (0: none).
        device (torch.device | None): where to build ("meta" lets DMP materialise the tables).

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> model = TwoTowerRetrieval(RetrievalConfig(embedding_dim=4), num_users=2, num_items=5)
        >>> pairs = SampleSet.from_samples([Sample(u, np.array([1, 2]), np.array([u + 3]), np.zeros((1, 0), np.float32))
        ...                                 for u in range(2)], [])
        >>> batch = TwoTowerTransform(torch.zeros(5, 0), torch.zeros(5))(collate_samples(pairs))
        >>> tuple(model.user_vectors(batch.user_features).shape), model(batch).requires_grad
        ((2, 4), True)
    """

    def __init__(
        self,
        config: RetrievalConfig,
        *,
        num_users: int,
        num_items: int,
        content_dim: int = 0,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if num_users < 1 or num_items < 1 or content_dim < 0:
            raise ValueError(
                f"num_users={num_users} and num_items={num_items} must be >= 1, content_dim={content_dim} >= 0"
            )
        self.config, self.num_users, self.num_items, self.content_dim = config, num_users, num_items, content_dim
        D = config.embedding_dim
        self.user_ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=USER_TABLE,
                    embedding_dim=D,
                    num_embeddings=num_users,
                    feature_names=[USER_KEY],
                    pooling=PoolingType.SUM,
                ),
                EmbeddingBagConfig(
                    name=HISTORY_TABLE,
                    embedding_dim=D,
                    num_embeddings=num_items,
                    feature_names=[HISTORY_KEY],
                    pooling=PoolingType.MEAN,
                ),
            ],
            device=device,
        )
        self.item_ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=ITEM_TABLE,
                    embedding_dim=D,
                    num_embeddings=num_items,
                    feature_names=[ITEM_KEY],
                    pooling=PoolingType.SUM,
                ),
            ],
            device=device,
        )
        self.user_tower = _tower(2 * D, config.tower_hidden, D, device)
        self.item_tower = _tower(D + content_dim, config.tower_hidden, D, device)

    def user_vectors(self, features: KeyedJaggedTensor) -> torch.Tensor:
        """[B, D] unit user vectors from a KJT with ``user_id`` and ``history_item`` (an empty history pools to 0)."""
        return F.normalize(self.user_tower(self.user_ebc(features).values()), dim=-1)

    def item_vectors(self, features: KeyedJaggedTensor, content: torch.Tensor) -> torch.Tensor:
        """[B, D] unit item vectors from a KJT with one ``item_id`` per row and their content [B, C]."""
        pooled = self.item_ebc(features).values()
        if self.content_dim:
            pooled = torch.cat([pooled, content], dim=-1)
        return F.normalize(self.item_tower(pooled), dim=-1)

    def forward(self, batch: TwoTowerBatch) -> torch.Tensor:
        """[] the in-batch softmax loss of the batch's pairs."""
        user = self.user_vectors(batch.user_features)
        item = self.item_vectors(batch.item_features, batch.item_content)
        log_q = batch.item_log_q if self.config.logq_correction else None
        return in_batch_softmax_loss(user, item, batch.items, log_q, self.config.temperature)


@torch.no_grad()
def retrieve(
    model: TwoTowerRetrieval,
    samples: SampleSet,
    *,
    k: int,
    item_content: torch.Tensor,
    exclude_history: bool = False,
    batch_size: int = 1024,
) -> Tuple[np.ndarray, np.ndarray]:
    """The top-``k`` items of every sample by exact inner product with the whole catalogue.

    Args:
        model (TwoTowerRetrieval): a plain (unsharded) model; run on its own device, in eval mode.
        samples (SampleSet): U samples (user and history are read).
        k (int): items per sample, 1 <= k <= I.
        item_content (torch.Tensor): [I, C] the content the model was trained with.
        exclude_history (bool): never return an item of the sample's history.
        batch_size (int): samples per matrix product.

    Returns:
        (items [U, k] int64, scores [U, k] float32), best first; -1 and -inf where exclusion left fewer than k.
    """
    if not 1 <= k <= model.num_items:
        raise ValueError(f"k={k} must lie in [1, num_items={model.num_items}]; lower cascade.retrieval.num_candidates")
    device = next(model.parameters()).device
    model.eval()
    catalogue = torch.arange(model.num_items, device=device)
    item_vectors = model.item_vectors(item_kjt(catalogue), item_content.to(device).float())  # [I, D]
    items, scores = [], []
    for start in range(0, len(samples), batch_size):
        rows = np.arange(start, min(start + batch_size, len(samples)))
        batch = collate_samples(samples, rows).to(device)
        logits = model.user_vectors(batch.features) @ item_vectors.t()  # [b, I]
        top_items, top_scores = top_k_items(logits, batch.features[HISTORY_KEY], k, exclude_history=exclude_history)
        items.append(top_items)
        scores.append(top_scores)
    if not items:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return torch.cat(items).numpy(), torch.cat(scores).numpy()


def save_two_tower(
    path: Path,
    state: dict,
    model_config: RetrievalConfig,
    *,
    num_users: int,
    num_items: int,
    item_content: torch.Tensor,
) -> None:
    """Write a plain two-tower state dict with what rebuilds it (config, sizes, item content), atomically."""
    save_tagged(
        path,
        EXPORT_FORMAT,
        {
            "config": asdict(model_config),
            "num_users": int(num_users),
            "num_items": int(num_items),
            "item_content": item_content.float().cpu(),
            "state_dict": state,
        },
    )


def load_two_tower(path: Path, *, device: Optional[torch.device] = None) -> Tuple[TwoTowerRetrieval, torch.Tensor]:
    """Read a ``save_two_tower`` file: (the model in eval mode, its item content [I, C])."""
    data = load_tagged(path, EXPORT_FORMAT, "save_two_tower")
    content = data["item_content"]
    model = TwoTowerRetrieval(
        RetrievalConfig(**section_with_optim(data["config"])),
        num_users=data["num_users"],
        num_items=data["num_items"],
        content_dim=int(content.shape[1]),
        device=torch.device("meta"),
    )
    model.load_state_dict(data["state_dict"], assign=True)
    return model.to(device or torch.device("cpu")).eval(), content
