"""The config reference: every key of ``OneRecConfig`` with its type, default and meaning, as markdown.

The text comes from the dataclass schemas themselves (field types and defaults, and each field's entry in its
class docstring's ``Args:`` section), so the reference cannot drift from the code: ``docs/CONFIG.md`` is this
module's output, and a test regenerates it and compares. ``onerec config-reference`` prints it.

Example:
    >>> rows = config_rows()
    >>> row = next(r for r in rows if r.key == "train.optim.epochs")
    >>> row.type_name, row.default
    ('int', '20')
    >>> "reward.pooling" in render_reference()
    True
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any, Dict, List

from torchrec_onerec.config import OneRecConfig

# "name: text", "name (type): text", or several fields sharing one entry: "a, b, c: text".
_ARG_LINE = re.compile(r"^(\w+(?:,\s*\w+)*)(?:\s*\([^)]*\))?:\s*(.*)$")


@dataclass(frozen=True)
class ConfigRow:
    """One key of the reference.

    Args:
        key: the dotted key a YAML file or an override sets (``model.num_experts``).
        type_name: the field's type as written in the schema (``int``, ``List[int]``).
        default: the schema default as YAML-ish text (before any config file).
        description: the field's entry in its dataclass docstring, on one line.
        section: the schema class the key belongs to (``TrainConfig``).
    """

    key: str
    type_name: str
    default: str
    description: str
    section: str


def docstring_args(cls: type) -> Dict[str, str]:
    """The ``Args:`` entries of a class docstring, each joined onto one line.

    Args:
        cls: a class with a Google-style docstring.

    Returns:
        field name -> description (empty when the docstring has no ``Args:`` section).

    Example:
        >>> docstring_args(ConfigRow)["key"]
        'the dotted key a YAML file or an override sets (``model.num_experts``).'
    """
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return {}
    entries: Dict[str, List[str]] = {}
    current: List[str] | None = None
    indent = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        if indent is None:
            indent = width
        if width < indent:
            break  # the next section (Example:, Raises:, ...) or the end of the docstring
        match = _ARG_LINE.match(line.strip()) if width == indent else None
        if match:
            current = [name.strip() for name in match.group(1).split(",")]
            shared = [match.group(2)]
            entries.update({name: shared for name in current})
        elif current is not None:
            entries[current[0]].append(line.strip())
    return {name: " ".join(part for part in parts if part) for name, parts in entries.items()}


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default_text(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def config_rows(cls: type = OneRecConfig, prefix: str = "", defaults: Any = None) -> List[ConfigRow]:
    """Every leaf key of a config schema, depth first in field order.

    Args:
        cls: the schema dataclass (``OneRecConfig`` for the whole run).
        prefix: the dotted path of ``cls`` inside the run config.
        defaults: the instance whose values are the defaults (None: ``cls()``); a nested section's come from its
            parent's, so that a section's own defaults show (``train.optim.epochs`` is 20, ``align.optim.epochs``
            1, though both are an ``OptimConfig``).

    Returns:
        One ``ConfigRow`` per leaf field; nested dataclass fields are expanded, not listed.
    """
    instance = cls() if defaults is None else defaults
    hints = typing.get_type_hints(cls)
    described = docstring_args(cls)
    rows: List[ConfigRow] = []
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        key = f"{prefix}{field.name}"
        value = getattr(instance, field.name)
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            rows.extend(config_rows(annotation, key + ".", value))
            continue
        rows.append(
            ConfigRow(
                key=key,
                type_name=_type_name(annotation),
                default=_default_text(value),
                description=described.get(field.name, ""),
                section=cls.__name__,
            )
        )
    return rows


def undocumented_keys(rows: List[ConfigRow]) -> List[str]:
    """Keys whose schema docstring does not describe them (the reference would show an empty cell)."""
    return [row.key for row in rows if not row.description]


def render_reference(rows: List[ConfigRow] | None = None) -> str:
    """The reference as markdown: one table per top-level section, in schema order.

    Args:
        rows: from ``config_rows()`` (the default).

    Returns:
        Markdown text, ending in a newline.
    """
    rows = config_rows() if rows is None else rows
    out = [
        "# Config reference",
        "",
        "Generated from the dataclass schemas by `onerec config-reference` (`torchrec_onerec/config_reference.py`);",
        "a test checks that this file matches them. Defaults are the schemas' own, before a file in `configs/` or",
        "a `key=value` override changes them.",
    ]
    section = None
    for row in rows:
        top = row.key.split(".")[0] if "." in row.key else "(top level)"
        if top != section:
            section = top
            out += ["", f"## {section}", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        cell = row.description.replace("|", "\\|")
        out.append(f"| `{row.key}` | `{row.type_name}` | `{row.default}` | {cell} |")
    return "\n".join(out) + "\n"
