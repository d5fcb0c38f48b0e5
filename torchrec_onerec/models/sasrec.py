"""SASRec (Kang and McAuley, ICDM 2018), the sequential baseline arm: a causal transformer over the history items
whose last output scores every item of the catalogue.

- Items: one TorchRec ``EmbeddingCollection`` table, ``sasrec_item`` [I, D], read by two features of the batch's
  KeyedJaggedTensor: ``history_item`` (each sample's history, oldest first) and ``catalogue_item`` (every item id
  once, on the batch's first row). The catalogue's rows are the output embeddings, so input and output embeddings
  are one table (as in RecBole's SASRec), and DistributedModelParallel shards it like any other table.
- Sequence: history rows padded at the end to n = ``max_history`` positions, plus a learnt position embedding
  (position 0 = the oldest item kept), dropout, then ``TransformerEncoder`` with causal self-attention: a position
  sees only itself and earlier items, so the padding after a row's last item needs no mask.
- Score: the output at each sample's last history position (the user vector u [D]) dotted with every item
  embedding; training minimises the cross-entropy of the next item over the whole catalogue (full softmax).
- Serving: the top-K items by that score (``rank_items``), optionally without the history's items.

Shape legend: B batch, n history positions, D width, I items, U users, K ranked items.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from torchrec_onerec.data.batch import HISTORY_KEY, OneRecBatch, TensorFieldsBatch, collate_samples
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.models.catalogue import top_k_items
from torchrec_onerec.models.sasrec_config import SASRecConfig
from torchrec_onerec.modules.transformer import EncoderConfig, TransformerEncoder
from torchrec_onerec.run_dir import load_tagged, save_tagged
from torchrec_onerec.optim_config import section_with_optim

CATALOGUE_KEY = "catalogue_item"
ITEM_TABLE = "sasrec_item"
EXPORT_FORMAT = "torchrec_onerec.sasrec/1"
INIT_STD = 0.02


@dataclass
class SASRecBatch(TensorFieldsBatch):
    """B (history, next item) samples; implements TorchRec's ``Pipelineable``.

    Args:
        features (KeyedJaggedTensor): keys ``history_item`` (each history, at most n items, oldest first) and
            ``catalogue_item`` (items 0 .. I-1 on row 0, empty on the other rows).
        target (torch.Tensor): [B] int64 the next item (-1 where there is none, at evaluation).
    """

    features: KeyedJaggedTensor
    target: torch.Tensor


class SASRecTransform:
    """A picklable ``OneRecBatch -> SASRecBatch`` collate step: target slot 0 is the next item.

    Args:
        num_items (int): I, the catalogue size.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> s = SampleSet.from_samples([Sample(0, np.array([1, 2]), np.array([3]), np.zeros((1, 0), np.float32))], [])
        >>> b = SASRecTransform(4)(collate_samples(s))
        >>> b.features[HISTORY_KEY].values().tolist(), b.features[CATALOGUE_KEY].values().tolist(), b.target.tolist()
        ([1, 2], [0, 1, 2, 3], [3])
    """

    def __init__(self, num_items: int) -> None:
        if num_items < 1:
            raise ValueError(f"num_items={num_items} must be >= 1")
        self.num_items = num_items

    def __call__(self, batch: OneRecBatch) -> SASRecBatch:
        history = batch.features[HISTORY_KEY]
        B = batch.batch_size
        catalogue_lengths = torch.zeros(B, dtype=torch.int64)
        catalogue_lengths[:1] = self.num_items
        features = KeyedJaggedTensor.from_lengths_sync(
            keys=[HISTORY_KEY, CATALOGUE_KEY],
            values=torch.cat([history.values(), torch.arange(self.num_items, dtype=torch.int64)]),
            lengths=torch.cat([history.lengths(), catalogue_lengths]),
        )
        return SASRecBatch(features, batch.target[:, 0].clone())


class SASRec(nn.Module):
    """The SASRec model and its full-softmax loss (module docstring).

    Args:
        config (SASRecConfig): D, layers, heads, FFN width, dropout.
        num_items (int): I, rows of the item table.
        max_history (int): n, the longest history it reads (the split's ``max_history``).
        device (torch.device | None): where to build ("meta" lets DMP materialise the table).

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> model = SASRec(SASRecConfig(embedding_dim=8, num_heads=2, ffn_hidden=16), num_items=5, max_history=3)
        >>> s = SampleSet.from_samples([Sample(0, np.array([1, 2]), np.array([3]), np.zeros((1, 0), np.float32)),
        ...                             Sample(1, np.array([4]), np.array([0]), np.zeros((1, 0), np.float32))], [])
        >>> batch = SASRecTransform(5)(collate_samples(s))
        >>> user, items = model.encode(batch.features)
        >>> tuple(user.shape), tuple(items.shape), model(batch).requires_grad
        ((2, 8), (5, 8), True)
    """

    def __init__(
        self, config: SASRecConfig, *, num_items: int, max_history: int, device: Optional[torch.device] = None
    ) -> None:
        super().__init__()
        if num_items < 1 or max_history < 1:
            raise ValueError(f"num_items={num_items} and max_history={max_history} must be >= 1")
        self.config, self.num_items, self.max_history = config, num_items, max_history
        D = config.embedding_dim
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=ITEM_TABLE,
                    embedding_dim=D,
                    num_embeddings=num_items,
                    feature_names=[HISTORY_KEY, CATALOGUE_KEY],
                )
            ],
            device=device,
        )
        self.position = nn.Parameter(torch.empty(max_history, D, device=device))
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = TransformerEncoder(
            EncoderConfig(D, config.num_heads, config.num_layers, config.ffn_hidden, config.dropout, causal=True),
            device=device,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) for the position embedding (the item table keeps TorchRec's own initialisation)."""
        nn.init.normal_(self.position, std=INIT_STD)

    def encode(self, features: KeyedJaggedTensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(user vectors [B, D] at each history's last position, item embeddings [I, D]) from a batch's KJT.

        A sample with an empty history reads position 0, which then holds only the position embedding.
        """
        embedded = self.ec(features)
        history = embedded[HISTORY_KEY]
        n = self.max_history
        x = history.to_padded_dense(n)  # (B, n, D), padding after each row's items
        lengths = history.lengths().clamp(max=n)
        x = self.dropout(x + self.position)
        hidden = self.encoder(x, None)  # (B, n, D), causal: padding never reaches a real position
        last = (lengths - 1).clamp(min=0)
        user = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return user, embedded[CATALOGUE_KEY].values()

    def forward(self, batch: SASRecBatch) -> torch.Tensor:
        """[] the mean cross-entropy of each sample's next item over the catalogue."""
        user, items = self.encode(batch.features)
        return F.cross_entropy(user @ items.t(), batch.target)


@torch.no_grad()
def rank_items(
    model: SASRec, samples: SampleSet, *, k: int, exclude_history: bool = False, batch_size: int = 256
) -> Tuple[np.ndarray, np.ndarray]:
    """The top-``k`` items of every sample by the model's score over the whole catalogue.

    Args:
        model (SASRec): a plain (unsharded) model; run on its own device, in eval mode.
        samples (SampleSet): U samples (histories are read; targets are not).
        k (int): items per sample, 1 <= k <= I.
        exclude_history (bool): never return an item of the sample's history.
        batch_size (int): samples per matrix product.

    Returns:
        (items [U, k] int64, scores [U, k] float32), best first; -1 and -inf where exclusion left fewer than k.

    Example:
        >>> from torchrec_onerec.data.samples import Sample
        >>> model = SASRec(SASRecConfig(embedding_dim=8, num_heads=2, ffn_hidden=16), num_items=4, max_history=2)
        >>> s = SampleSet.from_samples([Sample(0, np.array([1, 2]), np.array([3]), np.zeros((1, 0), np.float32))], [])
        >>> items, scores = rank_items(model, s, k=4, exclude_history=True)
        >>> sorted(items[0, :2].tolist()), items[0, 2:].tolist(), bool(np.isinf(scores[0, 2:]).all())
        ([0, 3], [-1, -1], True)
    """
    if not 1 <= k <= model.num_items:
        raise ValueError(f"k={k} must lie in [1, num_items={model.num_items}]")
    device = next(model.parameters()).device
    model.eval()
    transform = SASRecTransform(model.num_items)
    items, scores = [], []
    for start in range(0, len(samples), batch_size):
        rows = np.arange(start, min(start + batch_size, len(samples)))
        batch = transform(collate_samples(samples, rows)).to(device)
        user, catalogue = model.encode(batch.features)
        top_items, top_scores = top_k_items(
            user @ catalogue.t(), batch.features[HISTORY_KEY], k, exclude_history=exclude_history
        )
        items.append(top_items)
        scores.append(top_scores)
    if not items:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return torch.cat(items).numpy(), torch.cat(scores).numpy()


def save_sasrec(path: Path, state: dict, config: SASRecConfig, *, num_items: int, max_history: int) -> None:
    """Write a plain SASRec state dict with what rebuilds it (config and sizes), atomically."""
    save_tagged(
        path,
        EXPORT_FORMAT,
        {"config": asdict(config), "num_items": int(num_items), "max_history": int(max_history), "state_dict": state},
    )


def load_sasrec(path: Path, *, device: Optional[torch.device] = None) -> SASRec:
    """Read a ``save_sasrec`` file: the model, in eval mode, on ``device`` (default CPU)."""
    data = load_tagged(path, EXPORT_FORMAT, "save_sasrec")
    model = SASRec(
        SASRecConfig(**section_with_optim(data["config"])),
        num_items=data["num_items"],
        max_history=data["max_history"],
        device=torch.device("meta"),
    )
    model.load_state_dict(data["state_dict"], assign=True)
    return model.to(device or torch.device("cpu")).eval()
