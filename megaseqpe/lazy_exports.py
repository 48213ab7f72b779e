"""Package namespaces that import a submodule only when one of its names is first used (PEP 562).

`megaseqpe-prep` needs the torch-free parts of `megaseqpe.data` (manifests, sample encoding) and one
argument parser of `megaseqpe.evaluation`; importing torch with them costs seconds on every call,
`--help` and every one-line error included.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(package: str, names_by_submodule: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level `__getattr__` and `__dir__` of `package`, serving each submodule's names."""
    exports = {name: submodule for submodule, names in names_by_submodule.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(exports)
    return __getattr__, __dir__
