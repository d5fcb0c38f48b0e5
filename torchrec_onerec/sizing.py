"""Sizes derived from the data (the ``sizes_from_data`` key): one recipe for data sets of any size.

A config lists the keys it wants set from the loaded data instead of by hand; the run sets them before any stage
fingerprint is taken, logs each value with the statistic behind it, and keeps the resolved values in the run's
``config.yaml``. The rules are anchored on the sizes chosen on ML-100K (1,682 items, long histories) and checked
on amazon-instruments (9,922 items, 8 interactions per user), so a new data set needs no hand tuning:

- ``tokenizer.codebook_sizes``: the same number of levels L as configured, every level of one size K, a power of
  two. With the item-id leaf (``tokenizer.disambiguation=item``) the levels group items into K^L prefixes of
  about sqrt(I) items each, so the prefix choice and the item choice within it are equally hard: K^L = the
  largest power of two <= sqrt(I) (ML-100K, L = 1: K = 32). Codes only (``auto`` / ``always``), every item
  needs a tuple of its own and a level needs room to split what the level before left together: K = twice the
  smallest power of two with K^L >= I (ML-100K, L = 3: 32; amazon-instruments: 64, which gave every item a
  tuple of its own with ``tokenizer.codebook_scope=prefix``).
- ``split.max_history``: the configured n, or fewer when 95% of the users have fewer interactions: the 95th
  percentile of the per-user interaction count, rounded up to a multiple of 10 (amazon-instruments: 20 rather
  than 50). The encoder then pays for no padding that almost no user fills.

``model.max_history`` follows ``split.max_history`` (``OneRecConfig``), so it is not listed separately.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
from omegaconf import OmegaConf

from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.datasets.interactions import InteractionData

LOG = logging.getLogger("torchrec_onerec")
MIN_CODEBOOK, MAX_CODEBOOK = 8, 4096
HISTORY_QUANTILE = 95  # percent of users whose whole history fits in the derived n
HISTORY_STEP = 10


@dataclass(frozen=True)
class DataShape:
    """The statistics the rules read.

    Args:
        num_items (int): I, the catalogue size.
        history_quantile (int): the ``HISTORY_QUANTILE``-th percentile of the per-user interaction count.
    """

    num_items: int
    history_quantile: int

    @classmethod
    def of(cls, data: InteractionData) -> "DataShape":
        """The shape of loaded data.

        Example:
            >>> import pandas as pd
            >>> from torchrec_onerec.datasets.interactions import InteractionData
            >>> inter = pd.DataFrame({"user_id": [0, 0, 0, 1], "item_id": [0, 1, 2, 0], "timestamp": [1, 2, 3, 1]})
            >>> data = InteractionData("toy", inter, pd.DataFrame({"item_id": [0, 1, 2]}), np.arange(2), np.arange(3))
            >>> DataShape.of(data)
            DataShape(num_items=3, history_quantile=3)
        """
        users = [data.interactions["user_id"].to_numpy()]
        if data.histories is not None:  # pre-period histories (KuaiRand) lengthen what the encoder reads
            users.append(data.histories["user_id"].to_numpy())
        counts = np.bincount(np.concatenate(users), minlength=data.num_users)
        quantile = int(math.ceil(np.percentile(counts, HISTORY_QUANTILE))) if len(counts) else 0
        return cls(num_items=data.num_items, history_quantile=quantile)


def _power_of_two_at_most(x: float) -> int:
    return 2 ** max(0, int(math.floor(math.log2(max(x, 1.0)))))


def _power_of_two_at_least(x: float) -> int:
    return 2 ** max(0, int(math.ceil(math.log2(max(x, 1.0)) - 1e-9)))


def derived_codebook_sizes(num_items: int, levels: int, item_leaf: bool) -> List[int]:
    """L equal codebook sizes for a catalogue of I items (module docstring), each within [8, 4096].

    Example:
        >>> derived_codebook_sizes(1682, 1, True), derived_codebook_sizes(9922, 1, True)
        ([32], [64])
        >>> derived_codebook_sizes(1682, 3, False), derived_codebook_sizes(9922, 3, False)
        ([32, 32, 32], [64, 64, 64])
    """
    if num_items < 1 or levels < 1:
        raise ValueError(f"need num_items >= 1 and levels >= 1, got {num_items} and {levels}")
    if item_leaf:
        size = _power_of_two_at_most(math.sqrt(num_items) ** (1.0 / levels))
    else:
        size = 2 * _power_of_two_at_least(num_items ** (1.0 / levels))
    return [min(MAX_CODEBOOK, max(MIN_CODEBOOK, size))] * levels


def derived_max_history(history_quantile: int, configured: int) -> int:
    """The configured n, or the history quantile rounded up to a multiple of 10 when that is smaller.

    Example:
        >>> derived_max_history(18, 50), derived_max_history(300, 50), derived_max_history(0, 50)
        (20, 50, 10)
    """
    rounded = HISTORY_STEP * max(1, math.ceil(history_quantile / HISTORY_STEP))
    return min(configured, rounded)


Rule = Callable[[OneRecConfig, DataShape], Tuple[Any, str]]


def _codebook_rule(cfg: OneRecConfig, shape: DataShape) -> Tuple[Any, str]:
    tok = cfg.tokenizer
    leaf = tok.disambiguation == "item"
    sizes = derived_codebook_sizes(shape.num_items, len(tok.codebook_sizes), leaf)
    why = f"{shape.num_items} items, {len(sizes)} level(s) " + (
        "then the item id: about sqrt(I) items per prefix" if leaf else "of codes only: K^L >= 2^L I"
    )
    return sizes, why


def _history_rule(cfg: OneRecConfig, shape: DataShape) -> Tuple[Any, str]:
    n = derived_max_history(shape.history_quantile, cfg.split.max_history)
    return n, (
        f"{HISTORY_QUANTILE}% of the users have at most {shape.history_quantile} interactions "
        f"(configured n = {cfg.split.max_history})"
    )


SIZE_RULES: Dict[str, Rule] = {
    "tokenizer.codebook_sizes": _codebook_rule,
    "split.max_history": _history_rule,
}


def with_sizes_from_data(cfg: OneRecConfig, data: InteractionData) -> Tuple[OneRecConfig, Dict[str, Any]]:
    """``cfg`` with every key of ``cfg.sizes_from_data`` set from ``data``, and what was set and why.

    Example:
        >>> from torchrec_onerec.config import load_config
        >>> from torchrec_onerec.datasets.load import load_dataset
        >>> cfg = load_config("configs/tiny.yaml", ["sizes_from_data=[tokenizer.codebook_sizes,split.max_history]"])
        >>> new, report = with_sizes_from_data(cfg, load_dataset(cfg.data, seed=cfg.seed))
        >>> new.tokenizer.codebook_sizes, new.split.max_history == new.model.max_history, sorted(report)
        ([32, 32], True, ['split.max_history', 'tokenizer.codebook_sizes'])

    Returns:
        (the new config, checked like a loaded one; ``{key: {"value": ..., "why": ...}}``), or ``cfg`` itself
        and ``{}`` when nothing is listed.
    """
    if not cfg.sizes_from_data:
        return cfg, {}
    shape = DataShape.of(data)
    derived = {key: SIZE_RULES[key](cfg, shape) for key in cfg.sizes_from_data}
    merged = OmegaConf.structured(cfg)
    for key, (value, _) in derived.items():
        OmegaConf.update(merged, key, value, merge=False)
        if key == "split.max_history":  # OneRecConfig refuses a model section that disagrees with the split
            OmegaConf.update(merged, "model.max_history", value, merge=False)
    new = OmegaConf.to_object(merged)
    assert isinstance(new, OneRecConfig)
    report = {key: {"value": value, "why": why} for key, (value, why) in derived.items()}
    for key, entry in report.items():
        LOG.info("sizes_from_data: %s = %s (%s)", key, entry["value"], entry["why"])
    return new, report
