"""Item embeddings for the semantic-ID tokenizer, chosen by ``tokenizer.embedding_source`` (docs/METHOD.md section 1).

The paper quantises a multimodal content embedding e_i of each item; here any item embedding will do:

- ``content``: the data set's own content embedding (``InteractionData.item_embeddings``, e.g. the synthetic
  world's);
- ``file``: a ``.npy`` [I, d] array in contiguous item-id order, or a parquet file with ``item_id`` (the
  catalogue's raw ids, as in the source data) and either one list/array column or numeric columns; every
  catalogue item must appear exactly once and no other item may;
- ``features``: item side features (``features.py``);
- ``collaborative``: PPMI + truncated SVD of co-occurrence in the *training* interactions the caller passes
  (``collaborative.py``);
- ``text``: ``text_column`` (titles) through sentence-transformers loaded from the local folder
  ``embedding_path`` (optional dependency).

Then the rows are normalised (``l2``: unit length, zero rows stay zero; ``standardize``: each dimension mean 0,
std 1; ``none``). Rows with NaN or inf are an error naming the item ids. Shapes: I items, d width.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from torchrec_onerec.datasets.interactions import DataError, InteractionData
from torchrec_onerec.tokenizer.collaborative import collaborative_embeddings
from torchrec_onerec.tokenizer.config import NORMALIZATIONS, TokenizerConfig
from torchrec_onerec.tokenizer.features import feature_matrix

LOG = logging.getLogger("torchrec_onerec")


def item_embeddings(
    data: InteractionData,
    config: TokenizerConfig,
    *,
    train_interactions: Optional[pd.DataFrame] = None,
    seed: int = 0,
) -> torch.Tensor:
    """The [I, d] item embedding matrix the tokenizer quantises, normalised as configured.

    Args:
        data (InteractionData): the catalogue (``items``, ``raw_item_ids``, optional ``item_embeddings``).
        config (TokenizerConfig): embedding_source, embedding_path, embedding_dim, normalize and the
            source's own keys.
        train_interactions (Optional[pd.DataFrame]): ``user_id``, ``item_id`` of the training interactions,
            chronological per user; required by ``collaborative`` (the only source that reads interactions).
        seed (int): seed of the collaborative SVD.

    Returns:
        [I, d] float32 tensor, row = contiguous item id.

    Example:
        >>> data = InteractionData("toy", pd.DataFrame(), pd.DataFrame({"item_id": [0, 1]}), np.arange(1),
        ...                        np.arange(2), item_embeddings=np.array([[3.0, 4.0], [0.0, 2.0]]))
        >>> item_embeddings(data, TokenizerConfig()).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 1.0]]
    """
    source = config.embedding_source
    notes: Dict[str, Any] = {}
    if source == "content":
        if data.item_embeddings is None:
            raise DataError(
                f"{data.name}: tokenizer.embedding_source='content' but the data set has no content embedding; "
                "use 'features', 'collaborative', 'file' or 'text'"
            )
        matrix = torch.from_numpy(np.array(data.item_embeddings, dtype=np.float32))
    elif source == "file":
        matrix = torch.from_numpy(read_embedding_file(config.embedding_path, data.raw_item_ids))
    elif source == "features":
        array, notes = feature_matrix(data.items, config)
        matrix = torch.from_numpy(array)
    elif source == "collaborative":
        if train_interactions is None:
            raise ValueError(
                "tokenizer.embedding_source='collaborative' needs train_interactions: pass the training part of "
                "the interactions (never validation or test)"
            )
        matrix, notes = collaborative_embeddings(
            train_interactions, data.num_items, config.embedding_dim, window=config.collaborative_window, seed=seed
        )
    else:
        matrix = torch.from_numpy(text_embeddings(data.items, config.text_column, config.embedding_path))
    if matrix.dim() != 2 or matrix.shape[0] != data.num_items:
        raise DataError(
            f"{data.name}: {source} embeddings have shape {tuple(matrix.shape)}, expected [{data.num_items}, d]"
        )
    check_finite(matrix, f"{data.name} {source} embeddings")
    LOG.info("item embeddings: %s, %d items x %d dims, %s", source, matrix.shape[0], matrix.shape[1], notes)
    return normalize_embeddings(matrix.float(), config.normalize)


def check_finite(matrix: torch.Tensor, what: str) -> None:
    """Raise DataError naming the item ids (rows) of ``matrix`` [I, d] that hold NaN or inf.

    Example:
        >>> check_finite(torch.tensor([[0.0], [float("nan")]]), "x")
        Traceback (most recent call last):
        ...
        torchrec_onerec.datasets.interactions.DataError: x: 1 items have NaN or inf values, item ids [1]
    """
    if matrix.shape[1] == 0:
        raise DataError(f"{what} have width d=0: an embedding needs at least one dimension")
    bad = (~torch.isfinite(matrix).all(dim=1)).nonzero().squeeze(1)
    if bad.numel():
        raise DataError(f"{what}: {bad.numel()} items have NaN or inf values, item ids {bad[:20].tolist()}")


def normalize_embeddings(matrix: torch.Tensor, how: str) -> torch.Tensor:
    """Normalise an [I, d] embedding matrix: ``l2`` rows, ``standardize`` columns, or ``none``.

    Example:
        >>> normalize_embeddings(torch.tensor([[1.0, 3.0], [3.0, 3.0]]), "standardize").tolist()
        [[-1.0, 0.0], [1.0, 0.0]]
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"tokenizer.normalize={how!r} is not one of {NORMALIZATIONS}")
    if how == "l2":
        return torch.nn.functional.normalize(matrix, dim=1)
    if how == "standardize":
        std = matrix.std(dim=0, unbiased=False)
        return (matrix - matrix.mean(dim=0)) / torch.where(std > 0, std, torch.ones_like(std))
    return matrix


def read_embedding_file(path: Optional[str], raw_item_ids: np.ndarray) -> np.ndarray:
    """Read item embeddings from ``.npy`` ([I, d], contiguous id order) or parquet (``item_id`` = raw ids).

    Args:
        path (Optional[str]): the file (``tokenizer.embedding_path``).
        raw_item_ids (np.ndarray): [I] raw id of each contiguous item id.

    Returns:
        [I, d] float32 array in contiguous item-id order.
    """
    if not path:
        raise ValueError("tokenizer.embedding_source='file' needs tokenizer.embedding_path (.npy or .parquet)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer.embedding_path={path!r}: no such file")
    num_items = len(raw_item_ids)
    if path.endswith(".npy"):
        array = np.load(path, allow_pickle=False)
        if array.ndim != 2 or array.shape[0] != num_items:
            raise DataError(
                f"{path}: array of shape {array.shape} does not match the catalogue of {num_items} items: a .npy "
                "file must be [num_items, d] in contiguous item-id order (or use parquet with an item_id column)"
            )
        return array.astype(np.float32)
    if not path.endswith(".parquet"):
        raise ValueError(f"tokenizer.embedding_path={path!r}: use a .npy or .parquet file")
    frame = pd.read_parquet(path)
    if "item_id" not in frame.columns:
        raise DataError(f"{path}: no item_id column (columns: {list(frame.columns)})")
    vectors = _parquet_vectors(frame.drop(columns="item_id"), path)
    row_of, missing = _match_ids(frame["item_id"], raw_item_ids, path)
    if missing.size:
        raise DataError(
            f"{path}: {missing.size} catalogue items have no embedding, e.g. raw item ids "
            f"{np.asarray(raw_item_ids)[missing[:10]].tolist()}"
        )
    return vectors[row_of]


def _parquet_vectors(frame: pd.DataFrame, path: str) -> np.ndarray:
    listed = [c for c in frame.columns if len(frame) and isinstance(frame[c].iloc[0], (list, tuple, np.ndarray))]
    if len(listed) == 1:
        try:
            return np.stack([np.asarray(v, dtype=np.float32) for v in frame[listed[0]]])
        except ValueError as err:
            raise DataError(f"{path}: vectors in column {listed[0]!r} differ in length ({err})") from err
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    if listed or not numeric or len(numeric) != len(frame.columns):
        raise DataError(
            f"{path}: expected item_id plus either one list column or only numeric columns, got {list(frame.columns)}"
        )
    return frame[numeric].to_numpy(dtype=np.float32)


def _match_ids(file_ids: pd.Series, raw_item_ids: np.ndarray, path: str) -> Tuple[np.ndarray, np.ndarray]:
    """File row of each catalogue item, and the contiguous ids of catalogue items the file lacks."""
    catalogue = pd.Index(raw_item_ids)
    ids = pd.Index(file_ids)
    if ids.dtype.kind != catalogue.dtype.kind:  # e.g. ints in the file, strings in the catalogue
        catalogue, ids = catalogue.astype(str), ids.astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise DataError(f"{path}: item ids appear more than once, e.g. {duplicated[:10].tolist()}")
    unknown = ids[catalogue.get_indexer(ids) < 0]
    if len(unknown):
        raise DataError(
            f"{path}: {len(unknown)} item ids are not in the catalogue, e.g. {unknown[:10].tolist()} "
            "(item_id must hold the catalogue's raw item ids)"
        )
    row_of = ids.get_indexer(catalogue)
    return row_of, np.flatnonzero(row_of < 0)


def text_embeddings(items: pd.DataFrame, column: str, model_path: Optional[str]) -> np.ndarray:
    """Embed the ``column`` text of every item with a local sentence-transformers model.

    Args:
        items (pd.DataFrame): the item table.
        column (str): ``tokenizer.text_column``.
        model_path (Optional[str]): ``tokenizer.embedding_path``, a local model folder (nothing is downloaded).

    Returns:
        [I, d] float32 array.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(
            "tokenizer.embedding_source='text' needs the optional package sentence-transformers: "
            "pip install sentence-transformers, then set tokenizer.embedding_path to a local model folder"
        ) from err
    if not model_path or not os.path.isdir(model_path):
        raise ValueError(
            f"tokenizer.embedding_path={model_path!r} must be a local sentence-transformers model folder for 'text'"
        )
    if column not in items.columns:
        raise DataError(f"tokenizer.text_column={column!r} is not in the item table (columns: {list(items.columns)})")
    texts = items[column].fillna("").astype(str).tolist()
    model = SentenceTransformer(model_path, local_files_only=True)
    return np.asarray(model.encode(texts, convert_to_numpy=True), dtype=np.float32)
