"""The megaseqpe source files an exported model runs, copied flat into the export folder.

`transformers` loads remote code from the files of the model folder and follows `from .x import y`
between them, one level deep. So every module that the GPT and the position registry import is
copied as `<subpackage>_<module>.py` (megaseqpe/positions/seqpe.py → positions_seqpe.py) with its
imports of megaseqpe rewritten to those flat names. The copy is taken from the installed sources at
export time, so the folder runs the code that trained the model, and works without megaseqpe.

megaseqpe.config is not copied: its validation looks up registries by importing megaseqpe. The
exported config sections are already valid, so a stand-in `config.py` serves them as plain
attribute records (`types.SimpleNamespace`) under the names the copied modules import.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any

from ..config import Config

PACKAGE = "megaseqpe"
CONFIG_MODULE = "megaseqpe.config"
# What the modelling file imports (hf_code/modeling_megaseqpe.py): everything else follows from these.
ROOTS = ("megaseqpe.model.gpt", "megaseqpe.positions.registry")
# The config sections the copied modules read (registry: `config.model`, `config.position`).
SECTIONS = ("model", "position")
_FROM = re.compile(r"from\s+\.*[\w.]*\s+import")


class ExportError(ValueError):
    """A model or run that this export cannot write."""


def flat_name(module: str) -> str:
    """`megaseqpe.positions.seqpe` → `positions_seqpe` (the file name in the export folder, less .py)."""
    return module[len(PACKAGE) + 1:].replace(".", "_")


def _imported_modules(module: str, tree: ast.Module) -> list[tuple[ast.ImportFrom, str]]:
    """Every `from <megaseqpe module> import ...` of `module`, resolved to absolute module names."""
    is_package = Path(importlib.util.find_spec(module).origin).name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise ExportError(f"{module}: `import {PACKAGE}...` cannot be copied into an export folder; "
                              "use `from ... import`")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level and not node.module:
            raise ExportError(f"{module}:{node.lineno}: `from . import ...` cannot be flattened; name the module")
        target = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
            if node.level else node.module
        if target == PACKAGE or target.startswith(PACKAGE + "."):
            found.append((node, target))
    return found


def _rewritten(module: str) -> tuple[str, list[str], set[str]]:
    """(flattened source of `module`, the megaseqpe modules it imports, names it takes from the config)."""
    path = Path(importlib.util.find_spec(module).origin)
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    needed, config_names = [], set()
    for node, target in _imported_modules(module, ast.parse(source, filename=str(path))):
        line = lines[node.lineno - 1]
        lines[node.lineno - 1] = _FROM.sub(f"from .{flat_name(target)} import", line, count=1)
        if target == CONFIG_MODULE:
            config_names.update(alias.name for alias in node.names)
        else:
            needed.append(target)
    return "".join(lines), needed, config_names


def config_stand_in(names: set[str]) -> str:
    """The source of the folder's `config.py`: ConfigError, and a record type for each config class."""
    config = importlib.import_module(CONFIG_MODULE)
    records = []
    for name in sorted(names - {"ConfigError"}):
        if not dataclasses.is_dataclass(getattr(config, name, None)):
            raise ExportError(f"{CONFIG_MODULE}.{name} is not a config class: the export folder's config.py "
                              "cannot stand in for it")
        records.append(name)
    return ('"""Stand-in for megaseqpe.config, written by megaseqpe-export: the config sections arrive\n'
            'validated in config.json and are served as plain attribute records."""\n'
            "from types import SimpleNamespace\n\n\n"
            "class ConfigError(ValueError):\n"
            '    """A configuration value is missing, of the wrong type, or out of range."""\n\n\n'
            + "".join(f"{name} = SimpleNamespace\n" for name in records))


def copy_sources(folder: Path) -> list[str]:
    """Write the flattened modules behind ROOTS and the config stand-in into `folder`; their file names."""
    pending, done, config_names = list(ROOTS), {}, set()
    while pending:
        module = pending.pop()
        if module in done:
            continue
        done[module], needed, names = _rewritten(module)
        config_names |= names
        pending.extend(needed)
    written = []
    for module, source in sorted(done.items()):
        written.append(f"{flat_name(module)}.py")
        (folder / written[-1]).write_text(source, encoding="utf-8")
    (folder / f"{flat_name(CONFIG_MODULE)}.py").write_text(config_stand_in(config_names), encoding="utf-8")
    return [*written, f"{flat_name(CONFIG_MODULE)}.py"]


def _record(section: Any) -> dict[str, Any]:
    """A config section's fields and derived properties (head_dim, grid_size, ...) as plain values."""
    values = dataclasses.asdict(section)
    for name, member in inspect.getmembers(type(section)):
        if isinstance(member, property):
            values[name] = getattr(section, name)
    return values


def config_sections(config: Config) -> dict[str, dict[str, Any]]:
    """The sections the copied modules read, for config.json (JSON turns tuples into lists)."""
    return {name: _record(getattr(config, name)) for name in SECTIONS}
