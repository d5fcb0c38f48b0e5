"""The multi-task ranker of the cascade baseline (docs/METHOD.md introduction): TorchRec's DLRM with one logit per task.

Features of one (user, candidate item) pair:

- sparse, through one ``EmbeddingBagCollection`` that DistributedModelParallel shards: ``user_id`` (table
  ``rank_user``), the candidate ``item_id`` and the mean of the ``history_item`` bag (both in table
  ``rank_item``, so the candidate and the history live in one space and their dot product is meaningful);
- dense: the item's standardised log training popularity; when the data has an item content embedding, the
  item's (L2-normalised) content and its cosine similarity with the mean content of the history; and
  log(1 + history length).

``torchrec.models.dlrm.DLRM`` embeds the dense features to D (bottom MLP), takes the pairwise dot products of
the dense and sparse embeddings, and maps them with the top MLP to T logits, one per task. Protocol B trains
on impressions with the split's signals as tasks (e.g. swt / vtr / ltr); protocol A, which has positives only,
on the positive item vs ``negatives_per_positive`` uniformly drawn items with one task, ``positive``.

Shape legend: B batch, T tasks, F dense features, I items, C content width, U users, K candidates.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.metrics.auc import compute_auc
from torchrec.models.dlrm import DLRM
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.batch import HISTORY_KEY, USER_KEY, OneRecBatch, TensorFieldsBatch, collate_samples
from torchrec_onerec.data.samples import PAD_ITEM, SampleSet
from torchrec_onerec.models.cascade_config import RankerConfig
from torchrec_onerec.models.two_tower import ITEM_KEY
from torchrec_onerec.run_dir import load_tagged, save_tagged
from torchrec_onerec.optim_config import section_with_optim

USER_TABLE, ITEM_TABLE = "rank_user", "rank_item"
RANKER_FEATURE_KEYS = (USER_KEY, ITEM_KEY, HISTORY_KEY)
POSITIVE_TASK = "positive"
EXPORT_FORMAT = "torchrec_onerec.cascade.ranker/1"


@dataclass
class RankerBatch(TensorFieldsBatch):
    """B (user, candidate) pairs; implements TorchRec's ``Pipelineable``.

    Args:
        features (KeyedJaggedTensor): keys ``RANKER_FEATURE_KEYS``: ``user_id`` and ``item_id`` one per row,
            ``history_item`` the history (any length).
        dense (torch.Tensor): [B, F] float32 dense features.
        labels (torch.Tensor): [B, T] float32 task labels (0 when unknown, e.g. at inference).
    """

    features: KeyedJaggedTensor
    dense: torch.Tensor
    labels: torch.Tensor


def item_dense_features(item_counts: np.ndarray, item_content: Optional[np.ndarray]) -> np.ndarray:
    """[I, 1 + C] float32 per-item dense features: standardised log(1 + training count), then the L2-normalised
    content (C = 0 without content).

    Example:
        >>> item_dense_features(np.array([0, 3]), None).round(3).tolist()
        [[-1.0], [1.0]]
        >>> item_dense_features(np.array([1, 1]), np.array([[3.0, 4.0], [0.0, 2.0]])).astype(float).round(3).tolist()
        [[0.0, 0.6, 0.8], [0.0, 0.0, 1.0]]
    """
    popularity = np.log1p(np.asarray(item_counts, dtype=np.float64))
    popularity = (popularity - popularity.mean()) / max(float(popularity.std()), 1e-6)
    parts = [popularity[:, None]]
    if item_content is not None:
        content = np.asarray(item_content, np.float64)
        parts.append(content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12))
    return np.concatenate(parts, axis=1).astype(np.float32)


def dense_width(item_features: torch.Tensor) -> int:
    """F, the width of ``RankerBatch.dense`` that ``RankerTransform(item_features)`` writes.

    Example:
        >>> dense_width(torch.zeros(5, 1)), dense_width(torch.zeros(5, 4))
        (2, 6)
    """
    has_content = item_features.shape[1] > 1
    return int(item_features.shape[1]) + 1 + int(has_content)


class RankerTransform:
    """A picklable ``OneRecBatch -> RankerBatch`` collate step: target slot 0 is the candidate, its labels the tasks'.

    Dense features: the item's row of ``item_features``, log(1 + history length) and, when ``item_features`` has
    content columns, the cosine similarity of the item's content with the history's mean content (0 for an
    empty history): ``dense_width(item_features)`` columns.

    Args:
        item_features (torch.Tensor): [I, 1 + C] ``item_dense_features``.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> s = SampleSet.from_samples([Sample(0, np.array([1, 2]), np.array([3]), np.ones((1, 2), np.float32))],
        ...                            ["vtr", "swt"])
        >>> b = RankerTransform(torch.zeros(4, 1))(collate_samples(s))
        >>> b.features[ITEM_KEY].values().tolist(), tuple(b.dense.shape), b.labels.tolist()
        ([3], (1, 2), [[1.0, 1.0]])
    """

    def __init__(self, item_features: torch.Tensor) -> None:
        if item_features.dim() != 2:
            raise ValueError(f"item_features must be [I, F], got shape {tuple(item_features.shape)}")
        self.item_features = item_features.float()

    def __call__(self, batch: OneRecBatch) -> RankerBatch:
        items = batch.target[:, 0]
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= len(self.item_features)):
            raise ValueError(
                f"candidate items span [{int(items.min())}, {int(items.max())}], outside [0, "
                f"{len(self.item_features)}); every sample needs a real item in target slot 0"
            )
        history, users = batch.features[HISTORY_KEY], batch.features[USER_KEY]
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=list(RANKER_FEATURE_KEYS),
            values=torch.cat([users.values(), items, history.values()]),
            lengths=torch.cat([users.lengths(), torch.ones_like(items), history.lengths()]),
        )
        item_rows = self.item_features[items]  # [B, 1 + C]
        dense = [item_rows, torch.log1p(history.lengths().float()).unsqueeze(1)]
        if self.item_features.shape[1] > 1:
            content = self.item_features[:, 1:]
            owner = torch.repeat_interleave(torch.arange(len(items), device=items.device), history.lengths())
            profile = content.new_zeros(len(items), content.shape[1]).index_add_(0, owner, content[history.values()])
            dense.append((F.normalize(profile, dim=1) * item_rows[:, 1:]).sum(dim=1, keepdim=True))
        return RankerBatch(features, torch.cat(dense, dim=1), batch.labels[:, 0, :])


class MultiTaskRanker(nn.Module):
    """DLRM over (user, candidate, history) with one logit per task (module docstring).

    Args:
        config (RankerConfig): D, bottom and top MLP sizes.
        num_users (int): rows of ``rank_user``.
        num_items (int): rows of ``rank_item``.
        tasks (Sequence[str]): the T task names, in logit order.
        dense_features (int): F, width of ``RankerBatch.dense``.
        device (torch.device | None): where to build ("meta" lets DMP materialise the tables).

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> ranker = MultiTaskRanker(RankerConfig(embedding_dim=4), num_users=2, num_items=5, tasks=["vtr", "swt"],
        ...                          dense_features=2)
        >>> s = SampleSet.from_samples([Sample(1, np.array([0]), np.array([4]), np.zeros((1, 2), np.float32))],
        ...                            ["vtr", "swt"])
        >>> tuple(ranker(RankerTransform(torch.zeros(5, 1))(collate_samples(s))).shape)
        (1, 2)
    """

    def __init__(
        self,
        config: RankerConfig,
        *,
        num_users: int,
        num_items: int,
        tasks: Sequence[str],
        dense_features: int,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks={list(tasks)} must name at least one task, each once")
        if num_users < 1 or num_items < 1 or dense_features < 1:
            raise ValueError(
                f"num_users={num_users}, num_items={num_items} and dense_features={dense_features} must all be >= 1"
            )
        self.config, self.tasks = config, list(tasks)
        self.num_users, self.num_items, self.dense_features = num_users, num_items, dense_features
        D = config.embedding_dim
        ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=USER_TABLE,
                    embedding_dim=D,
                    num_embeddings=num_users,
                    feature_names=[USER_KEY],
                    pooling=PoolingType.SUM,
                ),
                EmbeddingBagConfig(
                    name=ITEM_TABLE,
                    embedding_dim=D,
                    num_embeddings=num_items,
                    feature_names=[ITEM_KEY, HISTORY_KEY],
                    pooling=PoolingType.MEAN,
                ),
            ],
            device=device,
        )
        self.dlrm = DLRM(
            embedding_bag_collection=ebc,
            dense_in_features=dense_features,
            dense_arch_layer_sizes=[*config.bottom_mlp, D],
            over_arch_layer_sizes=[*config.top_mlp, len(self.tasks)],
            dense_device=device,
        )

    def forward(self, batch: RankerBatch) -> torch.Tensor:
        """[B, T] logits."""
        return self.dlrm(dense_features=batch.dense, sparse_features=batch.features)


class RankerTrainStep(nn.Module):
    """``forward(batch) -> (loss, (loss, logits, labels) detached)``, TorchRec's train-pipeline contract; the loss
    is the mean binary cross-entropy over the B x T labels. The model is ``self.model`` (``gather_model_state``)."""

    def __init__(self, model: MultiTaskRanker) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: RankerBatch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())


def negative_samples(samples: SampleSet, *, num_items: int, negatives_per_positive: int, seed: int) -> SampleSet:
    """Protocol A ranker data: each sample's slot-0 target (label 1) and k uniform other items (label 0).

    Args:
        samples (SampleSet): N samples; those without a real slot-0 target are skipped.
        num_items (int): I >= 2, negatives are drawn from the catalogue minus the positive.
        negatives_per_positive (int): k >= 1.
        seed (int): fixes the draw.

    Returns:
        SampleSet: N' (1 + k) samples (positive first), target [., 1], labels [., 1, 1], signal ``positive``.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> s = SampleSet.from_samples([Sample(0, np.array([1]), np.array([2]), np.zeros((1, 0), np.float32))], [])
        >>> n = negative_samples(s, num_items=3, negatives_per_positive=2, seed=0)
        >>> int(n.target[0, 0]), bool((n.target[1:, 0] != 2).all()), n.labels.ravel().tolist()
        (2, True, [1.0, 0.0, 0.0])
    """
    if num_items < 2 or negatives_per_positive < 1:
        raise ValueError(f"num_items={num_items} must be >= 2 and negatives_per_positive={negatives_per_positive} >= 1")
    keep = np.flatnonzero(samples.target[:, 0] != PAD_ITEM)
    k = negatives_per_positive
    positives = samples.target[keep, 0]
    draws = np.random.default_rng(seed).integers(0, num_items - 1, size=(len(keep), k))
    negatives = draws + (draws >= positives[:, None])  # uniform over the items other than the positive
    target = np.concatenate([positives[:, None], negatives], axis=1).reshape(-1, 1)
    labels = np.zeros((len(keep), 1 + k), np.float32)
    labels[:, 0] = 1.0
    repeated = samples.subset(np.repeat(keep, 1 + k))
    return SampleSet(
        repeated.user,
        repeated.history_values,
        repeated.history_offsets,
        target.astype(np.int64),
        labels.reshape(-1, 1, 1),
        [POSITIVE_TASK],
    )


@torch.no_grad()
def predict(
    ranker: MultiTaskRanker, samples: SampleSet, item_features: torch.Tensor, *, batch_size: int = 4096
) -> np.ndarray:
    """[N, T] float32 task probabilities of each sample's slot-0 target item (a plain ranker, on its device).

    Args:
        ranker (MultiTaskRanker): the unsharded ranker (set to eval mode).
        samples (SampleSet): N samples with a real item in target slot 0.
        item_features (torch.Tensor): [I, 1 + C] the ``item_dense_features`` it was trained with.
        batch_size (int): samples per forward.
    """
    device = next(ranker.parameters()).device
    ranker.eval()
    transform = RankerTransform(item_features)
    out = [
        torch.sigmoid(
            ranker(transform(collate_samples(samples, np.arange(lo, min(lo + batch_size, len(samples))))).to(device))
        ).cpu()
        for lo in range(0, len(samples), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, len(ranker.tasks)), np.float32)


def candidate_samples(samples: SampleSet, candidates: np.ndarray) -> SampleSet:
    """[U * K] samples, one per (sample, candidate), user-major; a -1 candidate becomes item 0 (mask it after).

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> s = SampleSet.from_samples([Sample(7, np.array([1]), np.array([2]), np.zeros((1, 0), np.float32))], [])
        >>> c = candidate_samples(s, np.array([[4, -1]]))
        >>> c.user.tolist(), c.target.ravel().tolist()
        ([7, 7], [4, 0])
    """
    U, K = candidates.shape
    repeated = samples.subset(np.repeat(np.arange(U), K))
    target = np.maximum(candidates.reshape(-1, 1), 0).astype(np.int64)
    return SampleSet(
        repeated.user,
        repeated.history_values,
        repeated.history_offsets,
        target,
        np.zeros((U * K, 1, 0), np.float32),
        [],
    )


def task_aucs(probabilities: np.ndarray, labels: np.ndarray, tasks: Sequence[str]) -> Dict[str, float]:
    """``auc_<task>`` (TorchRec's ``torchrec.metrics.auc.compute_auc``; NaN when a task's labels hold one class)
    and ``auc_mean`` (over the defined ones; NaN if none).

    Args:
        probabilities (np.ndarray): [N, T] predicted probabilities (any monotone score works).
        labels (np.ndarray): [N, T] 0/1 labels.
        tasks (Sequence[str]): the T task names.

    Example:
        >>> task_aucs(np.array([[0.9, 0.2], [0.1, 0.3]]), np.array([[1, 0], [0, 0]]), ["vtr", "ltr"])
        {'auc_vtr': 1.0, 'auc_ltr': nan, 'auc_mean': 1.0}
    """
    out: Dict[str, float] = {}
    for t, task in enumerate(tasks):
        y = torch.as_tensor(labels[:, t] > 0.5, dtype=torch.float32).unsqueeze(0)  # [1, N]
        defined = 0 < float(y.sum()) < y.numel()
        score = torch.as_tensor(probabilities[:, t], dtype=torch.float32).unsqueeze(0)
        out[f"auc_{task}"] = float(compute_auc(1, [score], [y], [torch.ones_like(y)])) if defined else float("nan")
    defined_values: List[float] = [v for v in out.values() if not np.isnan(v)]
    out["auc_mean"] = float(np.mean(defined_values)) if defined_values else float("nan")
    return out


def save_ranker(
    path: Path,
    state: dict,
    model_config: RankerConfig,
    *,
    num_users: int,
    num_items: int,
    tasks: Sequence[str],
    item_features: torch.Tensor,
) -> None:
    """Write a plain ranker state dict with what rebuilds it (config, sizes, tasks, item features), atomically."""
    save_tagged(
        path,
        EXPORT_FORMAT,
        {
            "config": asdict(model_config),
            "num_users": int(num_users),
            "num_items": int(num_items),
            "tasks": list(tasks),
            "item_features": item_features.float().cpu(),
            "state_dict": state,
        },
    )


def load_ranker(path: Path, *, device: Optional[torch.device] = None) -> Tuple[MultiTaskRanker, torch.Tensor]:
    """Read a ``save_ranker`` file: (the ranker in eval mode, its item features [I, 1 + C])."""
    data = load_tagged(path, EXPORT_FORMAT, "save_ranker")
    features = data["item_features"]
    ranker = MultiTaskRanker(
        RankerConfig(**section_with_optim(data["config"])),
        num_users=data["num_users"],
        num_items=data["num_items"],
        tasks=data["tasks"],
        dense_features=dense_width(features),
        device=torch.device("meta"),
    )
    ranker.load_state_dict(data["state_dict"], assign=True)
    return ranker.to(device or torch.device("cpu")).eval(), features
