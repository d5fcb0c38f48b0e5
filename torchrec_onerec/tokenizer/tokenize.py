"""Entry point of the tokenize stage: item embeddings -> unique semantic IDs + quality report
(docs/METHOD.md section 1).

``fit_tokenizer`` fits the residual quantiser (balanced or plain K-means per level), makes every item's code
tuple unique, and measures the result. Embedding construction and normalisation are ``embeddings.py``'s job;
this takes the finished [I, d] matrix.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from torchrec_onerec.tokenizer.codebook import Codebook, catalogue_fingerprint
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.tokenizer.kmeans import check_points
from torchrec_onerec.tokenizer.report import TokenizerReport
from torchrec_onerec.tokenizer.residual import ResidualQuantizer


def fit_tokenizer(
    embeddings: torch.Tensor,
    config: TokenizerConfig,
    *,
    seed: int,
    device: Optional[Union[str, torch.device]] = None,
    item_ids: Optional[Union[np.ndarray, Sequence[Any]]] = None,
) -> Tuple[Codebook, TokenizerReport]:
    """Fit the semantic-ID codebook of a catalogue.

    Args:
        embeddings (torch.Tensor): [I, d] item embeddings (row = contiguous item id), finite, already normalised.
        config (TokenizerConfig): quantizer, codebook_sizes (K per level, L levels), max_iter, chunk_size,
            balanced_algorithm, disambiguation.
        seed (int): seeds the K-means initialisations (level l uses seed + l).
        device: where to fit (default: the embeddings' device); the codebook is returned on CPU.
        item_ids: raw item ids [I] for the codebook's fingerprint (default 0..I-1); pass
            ``InteractionData.raw_item_ids`` so that ``Codebook.load`` can refuse another catalogue.

    Returns:
        (Codebook with [I, L'] unique codes, TokenizerReport).

    Example:
        >>> x = torch.nn.functional.normalize(torch.randn(200, 8), dim=1)
        >>> book, report = fit_tokenizer(x, TokenizerConfig(codebook_sizes=[8, 8]), seed=0)
        >>> book.num_items, len(book.item_of(book.codes).unique())
        (200, 200)
        >>> report.levels[0].min_cluster_size, report.levels[0].max_cluster_size
        (25, 25)
    """
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"embeddings must be a torch.Tensor [I, d], got {type(embeddings).__name__}")
    check_points(embeddings, 1, "embeddings")
    x = embeddings.to(device) if device is not None else embeddings
    start = time.perf_counter()
    fit = ResidualQuantizer(config, seed=seed).fit(x)
    ids = item_ids if item_ids is not None else np.arange(x.shape[0])
    if len(ids) != x.shape[0]:
        raise ValueError(f"item_ids has {len(ids)} entries for {x.shape[0]} embedding rows")
    book, collisions = Codebook.build(
        fit.codes,
        fit.centroids,
        fingerprint=catalogue_fingerprint(ids, config, seed=seed),
        disambiguation=config.disambiguation,
        centroid_keys=fit.centroid_keys,
        level_sizes=fit.codebook_sizes,
    )
    seconds = time.perf_counter() - start
    report = TokenizerReport.build(fit, book, collisions, quantizer=config.quantizer, seconds=seconds)
    return book, report
