"""The config reference is generated from the schemas, documents every key, and docs/CONFIG.md is current."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from torchrec_onerec.cli import main
from torchrec_onerec.config import OneRecConfig
from torchrec_onerec.config_reference import config_rows, docstring_args, render_reference, undocumented_keys

REPO = Path(__file__).resolve().parents[2]


@dataclass
class _Documented:
    """A schema.

    Args:
        alpha: first line
            and its continuation.
        beta, gamma (int): shared entry.

    Example:
        >>> 1
        1
    """

    alpha: int = 1
    beta: int = 2
    gamma: int = 3


def test_docstring_args_joins_continuations_and_shared_entries() -> None:
    assert docstring_args(_Documented) == {
        "alpha": "first line and its continuation.",
        "beta": "shared entry.",
        "gamma": "shared entry.",
    }


def _leaf_keys(container: dict, schema: object, prefix: str = "") -> list:
    """Leaf keys of a structured config, descending only into nested schema dataclasses (not free dicts)."""
    out = []
    for key, value in container.items():
        node = schema._get_node(key)  # type: ignore[attr-defined]
        if OmegaConf.is_dict(node) and node._metadata.object_type not in (None, dict):
            out += _leaf_keys(value, node, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def test_rows_are_exactly_the_leaf_keys_of_the_schema() -> None:
    schema = OmegaConf.structured(OneRecConfig)
    rows = config_rows()
    keys = [row.key for row in rows]
    assert len(set(keys)) == len(keys)
    assert {"model.num_experts", "data.synthetic.num_users", "seed", "split.labels"} <= set(keys)
    assert "data.synthetic" not in keys  # nested schemas are expanded, not listed
    assert keys == _leaf_keys(OmegaConf.to_container(schema, resolve=False), schema)


def test_every_config_key_is_documented_in_its_schema() -> None:
    assert undocumented_keys(config_rows()) == []


def test_defaults_match_the_schema() -> None:
    rows = {row.key: row for row in config_rows()}
    cfg = OneRecConfig()
    assert rows["train.optim.epochs"].default == str(cfg.train.optim.epochs)
    assert rows["tokenizer.codebook_sizes"].default == str(cfg.tokenizer.codebook_sizes)
    assert rows["name"].default == f'"{cfg.name}"'


def test_docs_config_md_is_the_generated_reference() -> None:
    committed = (REPO / "docs" / "CONFIG.md").read_text()
    assert committed == render_reference(), "docs/CONFIG.md is stale: run `onerec config-reference > docs/CONFIG.md`"


def test_cli_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == render_reference()
