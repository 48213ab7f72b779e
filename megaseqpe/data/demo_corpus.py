"""The embedded demo corpus: Python's own standard library sources, present on every machine.

Used by ``make demo`` and the tests so that nothing has to be downloaded. ``site-packages/``
(installed third-party code, machine-specific) and ``test/`` (large, repetitive) are left out.
"""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "__pycache__"})


def first_files(paths: Iterable[Path], max_files: int | None = None,
                max_bytes: int | None = None) -> list[Path]:
    """The leading ``paths`` within ``max_files`` files and ``max_bytes`` bytes in total.

    A file that would cross the byte cap is left out and later, smaller ones may still fit; a
    file whose size cannot be read counts as 0 bytes (reading it later reports why it fails).
    """
    if max_files is None and max_bytes is None:
        return list(paths)
    chosen: list[Path] = []
    total = 0
    for path in paths:
        if max_files is not None and len(chosen) >= max_files:
            break
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if max_bytes is not None and total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    return chosen


def stdlib_sources(max_files: int | None = None, max_bytes: int | None = None) -> list[Path]:
    """Sorted ``.py`` files of the standard library, optionally capped (see :func:`first_files`)."""
    root = Path(sysconfig.get_paths()["stdlib"])

    def walk() -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
            yield from (Path(dirpath, n) for n in sorted(filenames) if n.endswith(".py"))

    return first_files(walk(), max_files, max_bytes)
