"""Finding input files and reading documents from them, counting everything that is skipped.

A plain file (any name, optionally ``.gz``) is one document. A ``.jsonl`` / ``.jsonl.gz`` file
holds one document per line, under ``--text-key``. Bad content is never fatal and never silently
dropped: each skipped file (or ``.jsonl`` line) is counted under one reason of
:data:`megaseqpe.data.SKIP_REASONS` and the first few are kept as ``"path: reason"`` examples.
Directories are recursed following symlinks; a symlink back into its own ancestry (a loop) is
counted as skipped, not followed.

Memory stays flat for documents of any length: consumers take a document as bounded
:meth:`~Document.pieces`, cut at line or word boundaries. A plain-text file above
:data:`LARGE_FILE_BYTES` is never held whole: it is read twice in blocks, once to check it
(binary, UTF-8, empty) and once, as it is consumed, for its text.
"""
from __future__ import annotations

import codecs
import fnmatch
import gzip
import hashlib
import itertools
import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

from megaseqpe.data import MAX_SKIP_EXAMPLES, SKIP_REASONS

from .errors import UserError

NUL = b"\0"
#: Plain-text files larger than this are checked and read in blocks instead of in one go.
LARGE_FILE_BYTES = 1 << 24
#: Bytes per read of such a file.
READ_BYTES = 1 << 20
#: Characters per piece of a document handed to the encoder.
PIECE_CHARS = 1 << 20
#: The gzip errors that mean a truncated or invalid archive (BadGzipFile is also an OSError).
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def sample_key(source: str, index: int) -> str:
    """Unique, stable WebDataset key (no '.' or '/'): a hash of source path and index."""
    return hashlib.sha1(f"{source}\0{index}".encode("utf-8")).hexdigest()[:24]


def _cut(text: str, start: int, limit: int) -> int:
    """Where the piece of ``text`` from ``start`` (more than ``limit`` characters remain) ends:
    after the last newline in the second half of the window, else before the whitespace run
    nearest its end (SentencePiece attaches a space to the word after it, so the word keeps its
    tokens), else at ``limit``."""
    end, floor = start + limit, start + max(1, limit // 2)  # floor > start: every piece is non-empty
    newline = text.rfind("\n", floor, end)
    if newline >= 0:
        return newline + 1
    space = max(text.rfind(" ", floor, end), text.rfind("\t", floor, end))
    while space > floor and text[space - 1] in " \t":
        space -= 1
    return space if space >= floor else end


def split_stream(chunks: Iterable[str], limit: int) -> Iterator[str]:
    """The text made of ``chunks`` (of any sizes) in consecutive pieces of at most ``limit``
    characters that join back to it exactly; the cuts depend only on the text, not the chunks."""
    rest = ""
    for chunk in chunks:
        text, start = rest + chunk, 0
        while len(text) - start > limit:
            cut = _cut(text, start, limit)
            yield text[start:cut]
            start = cut
        rest = text[start:]
    if rest:
        yield rest


def split_text(text: str, limit: int) -> Iterator[str]:
    """``text`` in pieces of at most ``limit`` characters (see :func:`split_stream`)."""
    return split_stream((text,), limit)


@dataclass(frozen=True)
class Document:
    """One document: its text, the absolute path of its file and its index within that file."""

    source: str
    index: int
    text: str

    @property
    def key(self) -> str:
        return sample_key(self.source, self.index)

    def pieces(self, limit: int = PIECE_CHARS) -> Iterator[str]:
        """The text in pieces of at most ``limit`` characters (see :func:`split_stream`)."""
        return split_text(self.text, limit)


@dataclass(frozen=True)
class FileDocument:
    """A plain-text file above :data:`LARGE_FILE_BYTES`, already checked; its text is read again
    piece by piece when consumed, never held whole. Pieces are those of :class:`Document`."""

    source: str
    index: int = 0

    @property
    def key(self) -> str:
        return sample_key(self.source, self.index)

    def pieces(self, limit: int = PIECE_CHARS) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            with _open(Path(self.source)) as f:
                yield from split_stream((decoder.decode(block) for block in _blocks(f)), limit)
            decoder.decode(b"", final=True)
        except (OSError, UnicodeDecodeError, *GZIP_ERRORS) as exc:
            raise UserError(f"{self.source} changed or became unreadable while being read ({exc})") from None


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


def _identity(path: str | Path) -> tuple[int, int]:
    """What a directory is, whichever path (through whichever symlinks) reaches it."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(root: Path, skips: SkipLog) -> Iterator[Path]:
    """Files below ``root`` in sorted order, following symlinked directories. A directory that is
    one of its own ancestors (a symlink loop) is counted as skipped instead of entered; so is a
    directory that cannot be listed (os.walk would drop it silently)."""
    def unreadable(error: OSError) -> None:
        skips.add("unreadable", str(error.filename), error.strerror or str(error))

    ancestry = {str(root): {_identity(root)}}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        above, entered = ancestry.pop(dirpath), []
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
        yield from (Path(dirpath, name) for name in sorted(filenames))


def discover_files(inputs: Sequence[str | Path], globs: Sequence[str] = (),
                   skips: SkipLog | None = None) -> list[Path]:
    """Absolute input files in a stable order: inputs as given, directories recursed sorted.

    ``globs`` filter files found inside directories (matched against the file name or its path
    below the directory); files named explicitly are always taken. Duplicates are dropped.
    Symlinked directories are followed; loops and unlistable directories are counted in ``skips``
    (when given; the CLI always gives the SkipLog whose counts go into the manifest).
    """
    skips = skips if skips is not None else SkipLog()
    found: dict[str, Path] = {}
    for item in inputs:
        path = Path(os.path.abspath(item))
        if path.is_dir():
            for candidate in _walk(path, skips):
                if _matches(candidate, path, globs):
                    found.setdefault(str(candidate), candidate)
        elif path.exists() or path.is_symlink():
            found.setdefault(str(path), path)
        else:
            raise UserError(f"input not found: {item}")
    return list(found.values())


def _open(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _blocks(f: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: f.read(READ_BYTES), b"")


def _binary(offset: int) -> tuple[str, str]:
    return "binary", f"binary file (NUL byte at offset {offset})"


def _problem(blocks: Iterable[bytes]) -> tuple[str, str] | None:
    """Why the plain text made of ``blocks`` is no document, as ``(reason, detail)``, or None.

    Checked block by block so that a file of any size can be checked in bounded memory; a NUL
    byte anywhere makes it binary, whatever else is wrong with it.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, bad_utf8, has_text = 0, None, False
    for block in itertools.chain(blocks, [b""]):  # the empty block ends the input for the decoder
        if NUL in block:
            return _binary(offset + block.index(NUL))
        if bad_utf8 is None:
            pending = len(decoder.getstate()[0])
            try:
                has_text = bool(decoder.decode(block, final=not block).strip()) or has_text
            except UnicodeDecodeError as exc:
                bad_utf8 = offset - pending + exc.start
        offset += len(block)
    if bad_utf8 is not None:
        return "bad_utf8", f"invalid UTF-8 at byte {bad_utf8}"
    return None if has_text else ("empty", "empty file")


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


def _text_documents(path: Path, text_key: str, skips: SkipLog) -> Iterator[Document | FileDocument]:
    """The documents of one file (may raise OSError or a gzip error)."""
    if _is_jsonl(path):
        with _open(path) as f:
            data = f.read()
        if NUL in data:
            reason, detail = _binary(data.index(NUL))
            skips.add(reason, str(path), detail)
            return
        if not data.strip():
            skips.add("empty", str(path), "empty file")
        yield from _jsonl_documents(path, data, text_key, skips)
        return
    with _open(path) as f:
        head = f.read(LARGE_FILE_BYTES + 1)
    large = len(head) > LARGE_FILE_BYTES
    if large:
        with _open(path) as f:
            problem = _problem(_blocks(f))
    else:
        problem = _problem([head])
    if problem:
        skips.add(problem[0], str(path), problem[1])
    elif large:
        yield FileDocument(str(path))
    else:
        yield Document(str(path), 0, head.decode("utf-8"))


def read_documents(files: Sequence[Path], skips: SkipLog,
                   text_key: str = "text") -> Iterator[Document | FileDocument]:
    """Documents of ``files`` in order; every unreadable file or line goes to ``skips`` instead."""
    for path in files:
        try:
            yield from _text_documents(path, text_key, skips)
        except GZIP_ERRORS as exc:
            skips.add("corrupt", str(path), f"truncated or invalid gzip ({exc})")
        except OSError as exc:
            skips.add("unreadable", str(path), exc.strerror or str(exc))
