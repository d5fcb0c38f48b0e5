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
    torchrec_onerec.errors.ConfigError: unknown config key 'data.no_such_key' ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Union

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from torchrec_onerec.data.config import LoaderConfig, SplitConfig
from torchrec_onerec.datasets.config import DataConfig
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.alignment.config import AlignConfig
from torchrec_onerec.eval.config import CompareConfig, EvalConfig
from torchrec_onerec.models.cascade_config import CascadeConfig
from torchrec_onerec.models.reward_config import RewardModelConfig
from torchrec_onerec.models.config import OneRecModelConfig
from torchrec_onerec.models.sasrec_config import SASRecConfig
from torchrec_onerec.tokenizer.config import TokenizerConfig
from torchrec_onerec.train.config import TrainConfig
from torchrec_onerec.tune_config import TuneConfig

SIZES_FROM_DATA = ("tokenizer.codebook_sizes", "split.max_history")  # the keys torchrec_onerec.sizing derives


@dataclass
class OneRecConfig:
    """The whole run: one file in ``configs/`` plus overrides.

    Args:
        name: run name; the default run directory is ``runs/<name>``.
        run_dir: where every artefact of the run is written.
        seed: the one seed all randomness derives from.
        device: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:N]``.
        sizes_from_data: keys the run sets from the loaded data instead of the values given here
            (``torchrec_onerec/sizing.py`` states each rule): ``tokenizer.codebook_sizes`` (from the catalogue
            size), ``split.max_history`` (from the users' history lengths). The run logs each value and why, and
            its ``config.yaml`` keeps the values used.

    ``model.max_history`` and ``model.session_items`` follow ``split.max_history`` and ``split.session_items``
    (set those); a model section that sets them to other values is an error.
    """

    name: str = "synthetic"
    run_dir: str = "runs/${name}"
    seed: int = 0
    device: str = "auto"
    sizes_from_data: List[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: OneRecModelConfig = field(default_factory=OneRecModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: RewardModelConfig = field(default_factory=RewardModelConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def __post_init__(self) -> None:
        unknown = [key for key in self.sizes_from_data if key not in SIZES_FROM_DATA]
        if unknown:
            raise ConfigError(
                f"sizes_from_data={list(self.sizes_from_data)}: no rule derives {unknown}; the keys "
                f"it can set are {list(SIZES_FROM_DATA)}"
            )
        defaults = OneRecModelConfig()
        for name in ("max_history", "session_items"):
            wanted, given = getattr(self.split, name), getattr(self.model, name)
            if given not in (wanted, getattr(defaults, name)):
                raise ConfigError(f"model.{name}={given} differs from split.{name}={wanted}; set split.{name} only")
            setattr(self.model, name, wanted)
        if self.model.item_head == "prefix" and self.tokenizer.disambiguation != "item":
            raise ConfigError(
                f"model.item_head=prefix scores the item-id level per cluster, but tokenizer.disambiguation="
                f"{self.tokenizer.disambiguation!r} writes no item-id level; set tokenizer.disambiguation=item"
            )
        if self.train.sampled_siblings and self.model.item_head != "prefix":
            raise ConfigError(
                f"train.sampled_siblings={self.train.sampled_siblings} samples the item level within a cluster, "
                f"which model.item_head={self.model.item_head!r} does not have; set model.item_head=prefix or "
                "train.sampled_siblings=0"
            )


def _check_keys(node: Any, schema: DictConfig, prefix: str) -> None:
    """Raise ConfigError naming the first key of ``node`` that the schema does not have."""
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key not in schema:
            if "optim" in schema and key in schema.optim:
                raise ConfigError(
                    f"unknown config key {path!r}: the optimiser settings of a section live in its optim "
                    f"section now; set {prefix}optim.{key}"
                )
            allowed = ", ".join(sorted(str(k) for k in schema.keys()))
            raise ConfigError(f"unknown config key {path!r} (allowed here: {allowed})")
        child = schema._get_node(key)
        if isinstance(child, DictConfig) and not _is_free_dict(schema, key):
            if value is not None and not isinstance(value, dict):
                keys = sorted(str(k) for k in child.keys())
                raise ConfigError(
                    f"config key {path!r} is a section, not a value: set its keys ({', '.join(keys)}), "
                    f"e.g. {path}.{keys[0]}=..., not {path}={value!r}"
                )
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
    sources: List[tuple[str, Union[DictConfig, ListConfig]]] = []
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
        try:
            OmegaConf.from_dotlist([item])
        except Exception as exc:  # yaml.YAMLError: a value YAML cannot read
            key, _, value = item.partition("=")
            reason = (str(exc).splitlines() or [""])[0]
            raise ConfigError(
                f"override {item!r}: YAML cannot read the value {value!r} ({reason}); quote it, "
                f"e.g. \"{key}='{value}'\""
            ) from None
    if overrides:
        sources.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    merged = schema
    for origin, src in sources:
        _check_keys(OmegaConf.to_container(src, resolve=False), schema, "")
        try:
            merged = OmegaConf.merge(merged, src)
        except (ValidationError, ConfigKeyError, ConfigAttributeError) as exc:
            key = getattr(exc, "full_key", None) or "?"
            detail = exc.msg if hasattr(exc, "msg") else exc
            raise ConfigError(f"{origin}: bad value for config key {key!r}: {detail}") from exc
    try:
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config: {exc}") from exc
    assert isinstance(obj, OneRecConfig)
    return obj


def to_yaml(cfg: OneRecConfig) -> str:
    """The resolved config as YAML text (what a run directory keeps as ``config.yaml``)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)
