"""Finding input files and reading documents from them, counting everything that is skipped.

A plain file (any name, optionally ``.gz``) is one document. A ``.jsonl`` / ``.jsonl.gz`` file
holds one document per line, under ``--text-key``. Bad content is never fatal and never silently
dropped: each skipped file (or ``.jsonl`` line) is counted under one reason of
:data:`megaseqpe.data.SKIP_REASONS` and the first few are kept as ``"path: reason"`` examples.
"""
from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from megaseqpe.data import MAX_SKIP_EXAMPLES, SKIP_REASONS

from .errors import UserError

NUL = b"\0"


def sample_key(source: str, index: int) -> str:
    """Unique, stable WebDataset key (no '.' or '/'): a hash of source path and index."""
    return hashlib.sha1(f"{source}\0{index}".encode("utf-8")).hexdigest()[:24]


@dataclass(frozen=True)
class Document:
    """One document: its text, the absolute path of its file and its index within that file."""

    source: str
    index: int
    text: str

    @property
    def key(self) -> str:
        return sample_key(self.source, self.index)


@dataclass
class SkipLog:
    """Counts per skip reason plus the first :data:`MAX_SKIP_EXAMPLES` ``"path: reason"`` lines."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, where: str, detail: str) -> None:
        assert reason in SKIP_REASONS, reason
        self.counts[reason] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{where}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {reason: self.counts[reason] for reason in SKIP_REASONS}

    def summary(self) -> str:
        """One line for the terminal, e.g. ``skipped 3 inputs: binary 1, bad_utf8 2 (...)``."""
        if not self.total:
            return "skipped 0 inputs"
        parts = ", ".join(f"{r} {self.counts[r]}" for r in SKIP_REASONS if self.counts[r])
        return f"skipped {self.total} inputs: {parts} (first: {self.examples[0]})"


def _matches(path: Path, root: Path, globs: Sequence[str]) -> bool:
    rel = path.relative_to(root).as_posix()
    return not globs or any(fnmatch.fnmatch(path.name, g) or fnmatch.fnmatch(rel, g) for g in globs)


def discover_files(inputs: Sequence[str | Path], globs: Sequence[str] = ()) -> list[Path]:
    """Absolute input files in a stable order: inputs as given, directories recursed sorted.

    ``globs`` filter files found inside directories (matched against the file name or its path
    below the directory); files named explicitly are always taken. Duplicates are dropped.
    """
    found: dict[str, Path] = {}
    for item in inputs:
        path = Path(os.path.abspath(item))
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames.sort()
                for name in sorted(filenames):
                    candidate = Path(dirpath, name)
                    if _matches(candidate, path, globs):
                        found.setdefault(str(candidate), candidate)
        elif path.exists() or path.is_symlink():
            found.setdefault(str(path), path)
        else:
            raise UserError(f"input not found: {item}")
    return list(found.values())


def _read_bytes(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _jsonl_documents(path: Path, data: bytes, text_key: str,
                     skips: SkipLog) -> Iterator[Document]:
    index = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            skips.add("bad_utf8", where, f"invalid UTF-8 at byte {exc.start}")
            continue
        except json.JSONDecodeError as exc:
            skips.add("corrupt", where, f"undecodable JSON line ({exc.msg})")
            continue
        text = record.get(text_key) if isinstance(record, dict) else None
        if not isinstance(text, str):
            skips.add("corrupt", where, f"no string {text_key!r} key")
        elif not text.strip():
            skips.add("empty", where, f"empty {text_key!r}")
        else:
            yield Document(str(path), index, text)
            index += 1


def read_documents(files: Sequence[Path], skips: SkipLog, text_key: str = "text") -> Iterator[Document]:
    """Documents of ``files`` in order; every unreadable file or line goes to ``skips`` instead."""
    for path in files:
        try:
            data = _read_bytes(path)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            skips.add("corrupt", str(path), f"truncated or invalid gzip ({exc})")
            continue
        except OSError as exc:
            skips.add("unreadable", str(path), exc.strerror or str(exc))
            continue
        if NUL in data:
            skips.add("binary", str(path), f"binary file (NUL byte at offset {data.index(NUL)})")
        elif _is_jsonl(path):
            if not data.strip():
                skips.add("empty", str(path), "empty file")
            yield from _jsonl_documents(path, data, text_key, skips)
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                skips.add("bad_utf8", str(path), f"invalid UTF-8 at byte {exc.start}")
                continue
            if not text.strip():
                skips.add("empty", str(path), "empty file")
            else:
                yield Document(str(path), 0, text)
