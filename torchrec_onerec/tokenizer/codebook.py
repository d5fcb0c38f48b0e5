"""The semantic-ID codebook: every item's unique code tuple, the centroids, and the maps both ways
(docs/METHOD.md section 1).

``codes`` is [I, L']: the L quantised levels, plus one disambiguation level when items collide (see
``uniqueness.py``). Item -> tuple is a row of ``codes``; tuple -> item and the valid-next-code masks of
constrained decoding go through a :class:`PrefixIndex`. A saved codebook carries a fingerprint of the item
catalogue (its raw ids), the tokenizer config and the seed; loading it against another catalogue or config is
an error, never a silent mismatch. Shapes: I items, L quantised levels, L' = L (+1) code levels, d width.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from omegaconf import OmegaConf

from torchrec_onerec.run_dir import load_torch_file, save_tagged
from torchrec_onerec.tokenizer.config import fingerprint_settings
from torchrec_onerec.tokenizer.prefix_index import PrefixIndex
from torchrec_onerec.tokenizer.residual import decode
from torchrec_onerec.tokenizer.uniqueness import Collisions, disambiguate

FORMAT = "torchrec_onerec.codebook/1"


def catalogue_fingerprint(item_ids: Union[np.ndarray, Sequence[Any]], config: Any, *, seed: int) -> str:
    """A hash of the item catalogue (raw ids in contiguous-id order), the tokenizer config and the seed.

    Args:
        item_ids: the raw id of each contiguous item id (``InteractionData.raw_item_ids``), [I].
        config: the TokenizerConfig (a dataclass, an OmegaConf node or a mapping).
        seed (int): the run's seed.

    Returns:
        A hex string.

    Example:
        >>> from torchrec_onerec.tokenizer.config import TokenizerConfig
        >>> a = catalogue_fingerprint(np.arange(3), TokenizerConfig(), seed=0)
        >>> a == catalogue_fingerprint([0, 1, 2], TokenizerConfig(), seed=0)
        True
        >>> a == catalogue_fingerprint([0, 1, 5], TokenizerConfig(), seed=0)
        False
    """
    if OmegaConf.is_config(config):
        settings = OmegaConf.to_container(config, resolve=True)
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        settings = dataclasses.asdict(config)
    elif isinstance(config, Mapping):
        settings = dict(config)
    else:
        raise TypeError(
            f"config must be a TokenizerConfig, an OmegaConf node or a mapping, got {type(config).__name__}"
        )
    ids = np.asarray(item_ids)
    digest = hashlib.sha256()
    digest.update(f"{len(ids)}|{ids.dtype.kind}|".encode())
    digest.update(ids.astype(np.int64).tobytes() if ids.dtype.kind in "iub" else "\x1f".join(map(str, ids)).encode())
    digest.update(json.dumps(fingerprint_settings(settings), sort_keys=True, default=str).encode())
    digest.update(f"|seed={seed}".encode())
    return digest.hexdigest()


@dataclass
class Codebook:
    """Unique semantic IDs of a catalogue.

    Args:
        codes (torch.Tensor): [I, L'] int64, one unique tuple per item (row = item id).
        centroids (List[torch.Tensor]): L codebooks, [K_l, d] each.
        fingerprint (str): ``catalogue_fingerprint`` of the catalogue, config and seed it was built for.
        disambiguation_size (int): vocabulary of the extra level (its largest group, or I when it is the item
            id), 0 when there is none.
        centroid_keys (List[torch.Tensor] | None): under ``tokenizer.codebook_scope=prefix``, each level's sorted
            row keys (``residual.decode``), ``centroids`` then holding [M_l, d] rows; None: [K_l, d] per level.
        level_sizes (List[int] | None): K_l of each level; required with ``centroid_keys``.

    Example:
        >>> cb, collisions = Codebook.build(
        ...     torch.tensor([[0, 1], [1, 0], [0, 1]]), [torch.zeros(2, 3), torch.zeros(2, 3)], fingerprint="f"
        ... )
        >>> cb.codes.tolist(), cb.vocab_sizes, collisions.collision_rate
        ([[0, 1, 0], [1, 0, 0], [0, 1, 1]], [2, 2, 2], 0.3333333333333333)
        >>> cb.item_of(torch.tensor([[0, 1, 1], [1, 1, 0]])).tolist()
        [2, -1]
    """

    codes: torch.Tensor
    centroids: List[torch.Tensor]
    fingerprint: str
    disambiguation_size: int = 0
    centroid_keys: Optional[List[torch.Tensor]] = None
    level_sizes: Optional[List[int]] = None
    _index: Optional[PrefixIndex] = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        codes: torch.Tensor,
        centroids: List[torch.Tensor],
        *,
        fingerprint: str,
        disambiguation: str = "auto",
        centroid_keys: Optional[List[torch.Tensor]] = None,
        level_sizes: Optional[List[int]] = None,
    ) -> Tuple["Codebook", Collisions]:
        """Codebook from quantised codes, with the disambiguation level made as configured.

        Args:
            codes (torch.Tensor): [I, L] int64 quantised codes.
            centroids (List[torch.Tensor]): L codebooks [K_l, d].
            fingerprint (str): see ``catalogue_fingerprint``.
            disambiguation (str): ``auto`` (extra level only when tuples collide), ``always``, or ``item`` (the
                extra level is the item id itself, vocabulary I).
            centroid_keys (List[torch.Tensor] | None): see the class (``ResidualFit.centroid_keys``).
            level_sizes (List[int] | None): K_l of each level; required with ``centroid_keys``.

        Returns:
            (the Codebook on CPU, the collision counts before disambiguation).
        """
        if codes.dim() != 2 or codes.shape[1] != len(centroids):
            raise ValueError(f"codes {tuple(codes.shape)} must be [I, L] with L = {len(centroids)} centroid tables")
        if centroid_keys is not None and (
            level_sizes is None or len(level_sizes) != len(centroids) or len(centroid_keys) != len(centroids)
        ):
            raise ValueError(f"centroid_keys need one key tensor and one level size per level ({len(centroids)})")
        codes = codes.to(torch.int64).cpu()
        collisions = disambiguate(codes)
        extra_size = 0
        if disambiguation == "item":
            codes = torch.cat([codes, torch.arange(codes.shape[0]).unsqueeze(1)], dim=1)
            extra_size = codes.shape[0]
        elif disambiguation == "always" or collisions.max_group > 1:
            codes = torch.cat([codes, collisions.extra.unsqueeze(1)], dim=1)
            extra_size = collisions.max_group
        keys = None if centroid_keys is None else [k.detach().cpu() for k in centroid_keys]
        sizes = None if centroid_keys is None else [int(k) for k in level_sizes or []]
        return cls(codes, [c.detach().cpu() for c in centroids], fingerprint, extra_size, keys, sizes), collisions

    @property
    def num_items(self) -> int:
        """I."""
        return self.codes.shape[0]

    @property
    def num_levels(self) -> int:
        """L', code levels per item including the disambiguation level."""
        return self.codes.shape[1]

    @property
    def num_quantized_levels(self) -> int:
        """L, the levels with centroids."""
        return len(self.centroids)

    @property
    def codebook_sizes(self) -> List[int]:
        """K_l of the L quantised levels."""
        return list(self.level_sizes) if self.level_sizes is not None else [c.shape[0] for c in self.centroids]

    @property
    def vocab_sizes(self) -> List[int]:
        """Vocabulary of each of the L' levels (the extra level's is its largest group)."""
        return self.codebook_sizes + ([self.disambiguation_size] if self.disambiguation_size else [])

    def tuple_of(self, items: torch.Tensor) -> torch.Tensor:
        """Code tuples of items: [B] item ids -> [B, L'] int64 (on the items' device)."""
        return self.codes.to(items.device)[items]

    def prefix_index(self, device: Optional[torch.device] = None) -> PrefixIndex:
        """The PrefixIndex of the codes on ``device`` (CPU by default); built once, moved on request."""
        if self._index is None:
            self._index = PrefixIndex(self.codes, vocab_sizes=self.vocab_sizes)
        if device is not None and torch.device(device) != self._index.device:
            self._index.to(device)
        return self._index

    def item_of(self, tuples: torch.Tensor) -> torch.Tensor:
        """Items of code tuples: [B, L'] -> [B] int64, -1 where no item has the tuple."""
        return self.prefix_index(tuples.device).item_of(tuples)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Sum of the centroids of the L quantised levels: [B, L'] codes -> [B, d]."""
        keys = None if self.centroid_keys is None else [k.to(codes.device) for k in self.centroid_keys]
        return decode([c.to(codes.device) for c in self.centroids], codes, keys=keys, sizes=self.level_sizes)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the codebook to ``path`` (a torch file through a temporary name; parents are created)."""
        state: Dict[str, Any] = {
            "codes": self.codes,
            "centroids": self.centroids,
            "fingerprint": self.fingerprint,
            "disambiguation_size": self.disambiguation_size,
            "centroid_keys": self.centroid_keys,
            "level_sizes": self.level_sizes,
        }
        save_tagged(Path(path), FORMAT, state)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *, num_items: int, fingerprint: str) -> "Codebook":
        """Read a codebook and check that it belongs to this catalogue and config.

        Args:
            path: a file written by :meth:`save`.
            num_items (int): I of the catalogue in use.
            fingerprint (str): ``catalogue_fingerprint`` of the catalogue, config and seed in use.

        Returns:
            The Codebook on CPU.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is truncated, not a codebook, or built for another catalogue or config.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no codebook at {path}: run the tokenize stage (onerec tokenize CONFIG, "
                "or onerec run CONFIG --force tokenize when the stage is marked done)"
            )
        state = load_torch_file(Path(path), "tokenize: Codebook.save")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a codebook written by Codebook.save (format {FORMAT})")
        keys = state.get("centroid_keys")  # absent in codebooks written before codebook_scope existed
        book = cls(
            state["codes"],
            list(state["centroids"]),
            state["fingerprint"],
            state["disambiguation_size"],
            None if keys is None else list(keys),
            state.get("level_sizes"),
        )
        if book.num_items != num_items:
            raise ValueError(
                f"codebook {path} has codes for {book.num_items} items but the catalogue has {num_items}: "
                "it was built for another item set; re-run the tokenize stage"
            )
        if book.fingerprint != fingerprint:
            raise ValueError(
                f"codebook {path} was built for another item catalogue, tokenizer config or seed "
                f"(fingerprint {book.fingerprint[:12]}..., expected {fingerprint[:12]}...): re-run the tokenize stage"
            )
        return book
