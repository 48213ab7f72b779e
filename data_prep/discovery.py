"""Finding the input files (and dataset folders) of a corpus, and the names they go by.

Directories are recursed in sorted order following symlinks; a symlink back into its own
ancestry (a loop) is counted as skipped, not followed. A Hugging Face ``save_to_disk`` folder is
one input, not a directory of files: its ``.arrow`` data is read as one dataset and its JSON
metadata never becomes documents (nor does a DatasetDict's ``dataset_dict.json``).

Documents are named by their input's path relative to :func:`input_root`, never by an absolute
path, so the shards (their keys, their split, the ``source`` they record) stay byte-identical
when the corpus directory is moved or copied elsewhere.
"""
from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import UserError
from .formats import DATASET_DICT, dataset_files
from .skips import SkipLog


def _matches(path: Path, root: Path, globs: Sequence[str]) -> bool:
    rel = path.relative_to(root).as_posix()
    return not globs or any(fnmatch.fnmatch(path.name, g) or fnmatch.fnmatch(rel, g) for g in globs)


def _identity(path: str | Path) -> tuple[int, int]:
    """What a directory is, whichever path (through whichever symlinks) reaches it."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(root: Path, skips: SkipLog) -> Iterator[Path]:
    """Inputs below ``root`` in sorted order, following symlinked directories: files, and dataset
    folders as a whole. A directory that is one of its own ancestors (a symlink loop) is counted
    as skipped instead of entered; so is one that cannot be listed (os.walk would drop it silently)."""
    def unreadable(error: OSError) -> None:
        skips.add("unreadable", str(error.filename), error.strerror or str(error))

    ancestry = {str(root): {_identity(root)}}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        above, entered = ancestry.pop(dirpath), []
        if dataset_files(Path(dirpath)) is not None:
            dirnames.clear()
            yield Path(dirpath)
            continue
        for name in sorted(dirnames):
            sub = os.path.join(dirpath, name)
            try:
                identity = _identity(sub)
            except OSError as exc:
                unreadable(exc)
                continue
            if identity in above:
                skips.add("unreadable", sub, f"symlink loop to {os.path.realpath(sub)}, not followed")
            else:
                ancestry[sub] = above | {identity}
                entered.append(name)
        dirnames[:] = entered
        yield from (Path(dirpath, name) for name in sorted(filenames)
                    if not (name == DATASET_DICT and entered))


def discover_files(inputs: Sequence[str | Path], globs: Sequence[str] = (),
                   skips: SkipLog | None = None) -> list[Path]:
    """Absolute input files (and dataset folders) in a stable order: inputs as given,
    directories recursed sorted.

    ``globs`` filter what is found inside directories (matched against the name or its path
    below the directory); inputs named explicitly are always taken. Duplicates are dropped.
    Symlinked directories are followed; loops and unlistable directories are counted in ``skips``
    (when given; the CLI always gives the SkipLog whose counts go into the manifest).
    """
    skips = skips if skips is not None else SkipLog()
    found: dict[str, Path] = {}
    for item in inputs:
        path = Path(os.path.abspath(item))
        if path.is_dir():
            for candidate in _walk(path, skips):
                if candidate == path or _matches(candidate, path, globs):
                    found.setdefault(str(candidate), candidate)
        elif path.exists() or path.is_symlink():
            found.setdefault(str(path), path)
        else:
            raise UserError(f"input not found: {item}")
    return list(found.values())


def input_root(inputs: Iterable[str | Path]) -> Path:
    """The deepest directory holding every input: a directory to recurse holds itself, a file or
    a dataset folder is held by its parent (so a lone input is named by its own name)."""
    holders = []
    for item in inputs:
        path = Path(os.path.abspath(item))
        whole = path.is_dir() and dataset_files(path) is None
        holders.append(str(path if whole else path.parent))
    return Path(os.path.commonpath(holders)) if holders else Path.cwd()


def input_name(path: Path, root: Path) -> str:
    """How documents of the input at ``path`` are named: its path below ``root``, with ``/``."""
    return Path(os.path.relpath(path, root)).as_posix()
