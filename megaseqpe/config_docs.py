"""Generate the configuration reference (docs/config.md) from the dataclasses of `megaseqpe.config`.

The meaning of each key is its attribute docstring: the string literal on the line after the
field in config.py, read with `ast` (Python keeps no such docstrings at runtime). Types and
defaults come from `dataclasses.fields` and `typing.get_type_hints`, the choices of registry-backed
keys from `megaseqpe.config.registered`. A field without a docstring is an error, so an
undocumented key cannot land.

    python -m megaseqpe.config_docs > docs/config.md      # or: make docs
"""
from __future__ import annotations

import ast
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from . import config as config_module

REGENERATE = "python -m megaseqpe.config_docs > docs/config.md"


class ConfigDocsError(RuntimeError):
    """The reference cannot be generated: a field has no docstring, or a registry cannot be read."""


# ----------------------------------------------------------------------------- reading config.py
def _is_dataclass_decorator(node: ast.expr) -> bool:
    """`@dataclass`, `@dataclasses.dataclass`, or either called with arguments."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Attribute):
        return node.attr == "dataclass"
    return isinstance(node, ast.Name) and node.id == "dataclass"


def _docstring_after(body: list[ast.stmt], index: int) -> str | None:
    """The string literal that directly follows statement `index` of a class body, if any."""
    if index + 1 >= len(body):
        return None
    following = body[index + 1]
    if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
            and isinstance(following.value.value, str):
        return " ".join(following.value.value.split())
    return None


def _class_field_docs(node: ast.ClassDef, filename: str) -> dict[str, str]:
    """Field name → docstring for one dataclass; raises ConfigDocsError for an undocumented field."""
    docs = {}
    for index, statement in enumerate(node.body):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        name = statement.target.id
        doc = _docstring_after(node.body, index)
        if not doc:
            raise ConfigDocsError(
                f"{filename}:{statement.lineno}: {node.name}.{name} has no attribute docstring: add a one-line "
                f"string literal on the line after the field saying what the key means, then run `{REGENERATE}`")
        docs[name] = doc
    return docs


def parse_field_docs(source: str, filename: str = "<config>") -> dict[str, dict[str, str]]:
    """Class name → {field name → docstring} for every dataclass defined in `source`.

    Raises ConfigDocsError naming the first field (class, name, line) that has no docstring.
    """
    tree = ast.parse(source, filename=filename)
    return {node.name: _class_field_docs(node, filename) for node in tree.body
            if isinstance(node, ast.ClassDef) and any(map(_is_dataclass_decorator, node.decorator_list))}


# ----------------------------------------------------------------------------- table cells
def format_type(hint: Any) -> str:
    """A type hint as a reader writes it: `int`, `str`, `tuple`, `int | None`."""
    if typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        named = [format_type(arg) for arg in args if arg is not type(None)]
        return " | ".join(named + (["None"] if type(None) in args else []))
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def format_default(item: dataclasses.Field) -> str:
    """The default of a field, as Python writes it (`"auto"` for a string, `None`, `(0.9, 0.95)`)."""
    if item.default is not dataclasses.MISSING:
        value = item.default
    elif item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
    else:
        return "(required)"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def registry_choices(key: str) -> tuple[str, ...]:
    """The names `config.registered(key)` accepts; fails loudly when the registry cannot be imported."""
    try:
        return config_module.registered(key)
    except (ImportError, AttributeError) as error:
        raise ConfigDocsError(f"{key}: cannot list its choices from its registry "
                              f"{config_module._REGISTRIES[key]}: {error}") from error


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _meaning(key: str, doc: str) -> str:
    if key in config_module._REGISTRIES:
        doc = f"{doc} One of: {', '.join(registry_choices(key))}."
    return _cell(doc)


# ----------------------------------------------------------------------------- the document
def _sections() -> tuple[list[dataclasses.Field], list[tuple[dataclasses.Field, type]]]:
    """Config's top-level scalar fields (`task`), and its section fields with their dataclasses."""
    hints = typing.get_type_hints(config_module.Config)
    scalars, sections = [], []
    for item in dataclasses.fields(config_module.Config):
        if dataclasses.is_dataclass(hints[item.name]):
            sections.append((item, hints[item.name]))
        else:
            scalars.append(item)
    return scalars, sections


def _table(owner: type, items: list[dataclasses.Field], prefix: str, docs: dict[str, dict[str, str]]) -> list[str]:
    """The `| key | type | default | meaning |` rows of `items`, fields of the dataclass `owner`."""
    hints = typing.get_type_hints(owner)
    class_docs = docs.get(owner.__name__, {})
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for item in items:
        key = f"{prefix}{item.name}"
        if item.name not in class_docs:
            raise ConfigDocsError(f"{owner.__name__}.{item.name} ({key}) has no attribute docstring in config.py")
        lines.append(f"| `{key}` | `{_cell(format_type(hints[item.name]))}` | `{_cell(format_default(item))}` "
                     f"| {_meaning(key, class_docs[item.name])} |")
    return lines


def _header() -> list[str]:
    return [
        "# Configuration reference",
        "",
        "<!-- Generated by megaseqpe/config_docs.py from megaseqpe/config.py; do not edit by hand. -->",
        "",
        "This file is generated from the dataclasses in [`megaseqpe/config.py`](../megaseqpe/config.py): "
        "each key's meaning is the docstring on the line after its field. Do not edit it; change the "
        f"docstrings and regenerate with `{REGENERATE}` (or `make docs`).",
        "",
        "A YAML config (see `configs/`) has the top-level key `task` and one mapping per section; any key "
        "can be overridden on the command line as `section.key=value` (`task=value` for `task`). Unknown "
        "keys and wrong types stop the run at start-up, naming the key.",
    ]


def _aliases() -> list[str]:
    lines = ["## Aliases", "",
             "Old key names still accepted in YAML files and overrides (setting both names of one key is an error):",
             "", "| old name | current name |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in config_module.ALIASES.items()]
    return lines


def render(source: str | None = None) -> str:
    """The whole Markdown reference; `source` is config.py's text (default: read from disk)."""
    path = Path(config_module.__file__)
    docs = parse_field_docs(path.read_text(encoding="utf-8") if source is None else source, filename=path.name)
    scalars, sections = _sections()
    lines = _header()
    for item in scalars:
        lines += ["", f"## {item.name}", "", *_table(config_module.Config, [item], "", docs)]
    config_docs = docs.get(config_module.Config.__name__, {})
    for item, section in sections:
        intro = config_docs.get(item.name)
        if intro is None:
            raise ConfigDocsError(f"Config.{item.name} (section {item.name}) has no attribute docstring in config.py")
        lines += ["", f"## {item.name}", "", intro, "",
                  *_table(section, list(dataclasses.fields(section)), f"{item.name}.", docs)]
    lines += ["", *_aliases()]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Print the reference to stdout."""
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
