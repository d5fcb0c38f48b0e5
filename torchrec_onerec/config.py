"""Typed configuration: dataclass schemas that OmegaConf turns into structured configs.

Every key a YAML file in ``configs/`` or a command-line override may set is a field here; OmegaConf's struct
mode makes an unknown key or a wrongly typed value an error that names the key. One ``seed`` drives all
randomness. Sections of later pipeline stages live beside their code and are composed here.

Example:
    >>> cfg = load_config(None, ["data.synthetic.num_users=300", "seed=7"])
    >>> cfg.seed, cfg.data.synthetic.num_users
    (7, 300)
    >>> load_config(None, ["data.no_such_key=1"])
    Traceback (most recent call last):
    ...
    torchrec_onerec.config.ConfigError: unknown config key 'data.no_such_key' ...
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
from torchrec_onerec.tokenizer.config import TokenizerConfig


class ConfigError(ValueError):
    """A configuration file or override that does not match the schema."""


DATA_SOURCES = ("synthetic", "kuairand", "movielens", "sequence", "table")
TIMESTAMP_UNITS = ("s", "ms", "us", "ns", "datetime")


@dataclass
class DataConfig:
    """Where the interactions come from and how to read them.

    Args:
        source: one of ``synthetic`` (the embedded world, no files), ``kuairand`` (the KuaiRand-Pure layout),
            ``movielens`` (RecBole atomic files or GroupLens ``u.data``/``u.item``), ``sequence`` (one line per
            user: ``user item item ...``), ``table`` (a CSV/parquet interaction table).
        path: a folder (kuairand, movielens) or a file (sequence, table); ignored for synthetic.
        user_col, item_col, time_col: column names of a ``table`` source.
        timestamp_unit: unit of ``time_col`` in a ``table`` source: s, ms, us, ns or ``datetime`` (parsed text).
        feedback_cols: extra 0/1 or numeric feedback columns of a ``table`` source to keep.
        sep: field separator of a ``table`` CSV or a ``sequence`` file (``"whitespace"`` for any run of blanks);
            ``auto`` means ``,`` for a table and whitespace for a sequence file.
        drop_duplicates: (movielens and table sources) drop duplicate (user, item, timestamp) rows, counted in
            the statistics; if false, duplicates are an error. KuaiRand keeps its log as released.
    """

    source: str = "synthetic"
    path: Optional[str] = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    timestamp_unit: str = "s"
    feedback_cols: List[str] = field(default_factory=list)
    sep: str = "auto"
    drop_duplicates: bool = True
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        if self.source not in DATA_SOURCES:
            raise ConfigError(f"data.source={self.source!r} is not one of {DATA_SOURCES}")
        if self.timestamp_unit not in TIMESTAMP_UNITS:
            raise ConfigError(f"data.timestamp_unit={self.timestamp_unit!r} is not one of {TIMESTAMP_UNITS}")


@dataclass
class SplitConfig:
    """How samples and evaluation targets are cut (../EVAL.md protocols A and B).

    Args:
        protocol: ``A`` (leave-one-out next item) or ``B`` (day split, sessions with feedback).
        max_history: n, the most recent history items kept per sample.
        session_items: m, items per target session.
        positive_col: feedback column that marks a positive impression (protocol B); ``""`` = every row.
        session_rule: ``window`` (all of a user's impressions in one split window form one session) or
            ``gap`` (runs of impressions with gaps under ``session_gap_minutes``).
        valid_start, test_start, test_end: protocol B day boundaries, ``YYYY-MM-DD``; train is every day
            before ``valid_start``, test runs to ``test_end`` inclusive (``""``: to the end of the data).
            An empty ``valid_start``/``test_start`` defaults to the data's last 4 / last 2 calendar days.
        utc_offset_hours: the time zone the day boundaries are read in (KuaiRand's dates are UTC+8).
        labels: reward signal -> feedback column (protocol B labels, e.g. ``swt: long_view``).
        min_history: samples whose history is shorter are dropped and counted (0 keeps cold-start samples).
    """

    protocol: str = "A"
    max_history: int = 50
    session_items: int = 5
    positive_col: str = "click"
    session_rule: str = "window"
    session_gap_minutes: float = 30.0
    valid_start: str = ""
    test_start: str = ""
    test_end: str = ""
    utc_offset_hours: float = 0.0
    labels: Dict[str, str] = field(default_factory=lambda: {"swt": "long_view", "vtr": "click", "ltr": "like"})
    min_history: int = 1

    def __post_init__(self) -> None:
        if self.protocol not in ("A", "B"):
            raise ConfigError(f"split.protocol={self.protocol!r} must be 'A' or 'B'")
        if self.session_rule not in ("window", "gap"):
            raise ConfigError(f"split.session_rule={self.session_rule!r} must be 'window' or 'gap'")
        for name in ("max_history", "session_items"):
            if getattr(self, name) < 1:
                raise ConfigError(f"split.{name}={getattr(self, name)} must be >= 1")
        if self.min_history < 0:
            raise ConfigError(f"split.min_history={self.min_history} must be >= 0")
        if self.session_gap_minutes <= 0:
            raise ConfigError(f"split.session_gap_minutes={self.session_gap_minutes} must be > 0")
        if not -24 < self.utc_offset_hours < 24:
            raise ConfigError(f"split.utc_offset_hours={self.utc_offset_hours} must lie in (-24, 24)")
        days = {}
        for name in ("valid_start", "test_start", "test_end"):
            value = getattr(self, name)
            if value:
                try:
                    days[name] = datetime.date.fromisoformat(value)
                except ValueError:
                    raise ConfigError(f"split.{name}={value!r} is not a date; write it as YYYY-MM-DD or leave it empty") from None
        ordered = [days[k] for k in ("valid_start", "test_start", "test_end") if k in days]
        if ordered != sorted(ordered):
            raise ConfigError(
                f"split day boundaries must satisfy valid_start <= test_start <= test_end, got "
                f"{self.valid_start!r}, {self.test_start!r}, {self.test_end!r}"
            )


@dataclass
class LoaderConfig:
    """Batching of samples into TorchRec batches.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 = in the main process).
        shuffle: shuffle training samples each epoch (seeded by ``seed`` and the epoch).
    """

    batch_size: int = 256
    num_workers: int = 0
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"loader.batch_size={self.batch_size} must be >= 1")


@dataclass
class OneRecConfig:
    """The whole run: one file in ``configs/`` plus overrides.

    Args:
        name: run name; the default run directory is ``runs/<name>``.
        run_dir: where every artefact of the run is written.
        seed: the one seed all randomness derives from.
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
    """

    name: str = "synthetic"
    run_dir: str = "runs/${name}"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


def _check_keys(node: Any, schema: DictConfig, prefix: str) -> None:
    """Raise ConfigError naming the first key of ``node`` that the schema does not have."""
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key not in schema:
            allowed = ", ".join(sorted(str(k) for k in schema.keys()))
            raise ConfigError(f"unknown config key {path!r} (allowed here: {allowed})")
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and not _is_free_dict(schema, key):
            _check_keys(value, child, path + ".")


def _is_free_dict(schema: DictConfig, key: str) -> bool:
    """A ``Dict[str, X]`` field accepts any key; a nested dataclass does not."""
    node = schema._get_node(key)
    return isinstance(node, DictConfig) and node._metadata.object_type in (None, dict)


def load_config(path: Optional[str], overrides: Sequence[str] = ()) -> OneRecConfig:
    """Build a checked config from the schema, an optional YAML file and ``key=value`` overrides.

    Args:
        path: a YAML file (see ``configs/``) or None for the defaults (the synthetic world).
        overrides: dotlist entries such as ``model.num_experts=8``.

    Returns:
        The merged config as a typed ``OneRecConfig`` object (dataclass instance; ``__post_init__`` checks ran).

    Raises:
        ConfigError: unknown key, wrong type or invalid value, naming the key and the file.
        FileNotFoundError: ``path`` does not exist.
    """
    schema = OmegaConf.structured(OneRecConfig)
    sources: List[tuple[str, DictConfig]] = []
    if path is not None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config file {path!r} does not exist (see the configs/ folder)")
        try:
            sources.append((path, OmegaConf.load(path)))
        except Exception as exc:  # yaml.YAMLError and friends: report the file
            raise ConfigError(f"cannot parse config file {path!r}: {exc}") from exc
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. seed=1)")
    if overrides:
        sources.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    merged = schema
    for origin, src in sources:
        _check_keys(OmegaConf.to_container(src, resolve=False), schema, "")
        try:
            merged = OmegaConf.merge(merged, src)
        except (ValidationError, ConfigKeyError, ConfigAttributeError) as exc:
            key = getattr(exc, "full_key", None) or "?"
            raise ConfigError(f"{origin}: bad value for config key {key!r}: {exc.msg if hasattr(exc, 'msg') else exc}") from exc
    try:
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
    assert isinstance(obj, OneRecConfig)
    return obj


def to_yaml(cfg: OneRecConfig) -> str:
    """The resolved config as YAML text (what a run directory keeps as ``config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)

