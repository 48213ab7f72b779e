"""Reading documents from input files of every supported format, counting all that is skipped.

A plain-text file (Markdown, code, prose: anything :mod:`data_prep.formats` does not recognise
as something else) is one document. Files of records (JSON Lines, JSON arrays, Parquet, Arrow
IPC, dataset folders: :mod:`data_prep.records`) hold one document per record, under
``--text-key``. Any of them may be gzip, zstd, xz or bz2 compressed. Bad content is never fatal
and never silently dropped: each skipped file or record is counted under one reason of
:data:`megaseqpe.data.SKIP_REASONS` and the first few are kept as ``"where: why"`` examples.

Memory stays flat for inputs of any size: every reader streams, and consumers take a document as
bounded :meth:`~Document.pieces`, cut at line or word boundaries. A plain-text file above
:data:`LARGE_FILE_BYTES` is never held whole: it is read twice in blocks, once to check it
(binary, UTF-8, empty) and once, as it is consumed, for its text.
"""
from __future__ import annotations

import codecs
import hashlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

from .discovery import input_name, input_root
from .errors import UserError
from .formats import DATA_ERRORS, Format, detect, is_data_error, open_input
from .records import READERS, texts
from .skips import SkipLog

NUL = b"\0"
#: Plain-text files larger than this are checked and read in blocks instead of in one go.
LARGE_FILE_BYTES = 1 << 24
#: Bytes per read of such a file.
READ_BYTES = 1 << 20
#: Characters per piece of a document handed to the encoder.
PIECE_CHARS = 1 << 20


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
    """One document: its text, the name of its input (see :func:`~data_prep.discovery.input_name`)
    and its index among that input's documents."""

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
    path: str
    compression: str | None = None
    index: int = 0

    @property
    def key(self) -> str:
        return sample_key(self.source, self.index)

    def pieces(self, limit: int = PIECE_CHARS) -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            with open_input(Path(self.path), self.compression) as f:
                yield from split_stream((decoder.decode(block) for block in _blocks(f)), limit)
            decoder.decode(b"", final=True)
        except (OSError, UnicodeDecodeError, *DATA_ERRORS) as exc:
            raise UserError(f"{self.path} changed or became unreadable while being read ({exc})") from None


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




def _text_documents(path: Path, name: str, fmt: Format, skips: SkipLog) -> Iterator[Document | FileDocument]:
    """A plain-text file as its one document, unless it is binary, not UTF-8 or empty."""
    with open_input(path, fmt.compression) as f:
        head = f.read(LARGE_FILE_BYTES + 1)
    large = len(head) > LARGE_FILE_BYTES
    if large:
        with open_input(path, fmt.compression) as f:
            problem = _problem(_blocks(f))
    else:
        problem = _problem([head])
    if problem:
        skips.add(problem[0], str(path), problem[1])
    elif large:
        yield FileDocument(name, str(path), fmt.compression)
    else:
        yield Document(name, 0, head.decode("utf-8"))


def _documents(path: Path, name: str, fmt: Format, text_key: str,
               skips: SkipLog) -> Iterator[Document | FileDocument]:
    if fmt.kind == "text":
        yield from _text_documents(path, name, fmt, skips)
        return
    records = READERS[fmt.kind](path, fmt, text_key, skips)
    for index, text in enumerate(texts(records, text_key, path, skips)):
        yield Document(name, index, text)


def read_documents(files: Sequence[Path], skips: SkipLog, text_key: str = "text",
                   root: Path | None = None) -> Iterator[Document | FileDocument]:
    """Documents of ``files`` (and dataset folders) in order, named below ``root`` (by default
    :func:`~data_prep.discovery.input_root` of ``files``); all that is not a document goes to ``skips``."""
    root = input_root(files) if root is None else root
    for path in files:
        try:
            fmt = Format("dataset") if path.is_dir() else detect(path)
        except OSError as exc:
            skips.add("unreadable", str(path), exc.strerror or str(exc))
            continue
        if fmt.kind in ("unsupported", "corrupt"):
            skips.add(fmt.kind, str(path), fmt.detail)
            continue
        try:
            yield from _documents(path, input_name(path, root), fmt, text_key, skips)
        except (OSError, *DATA_ERRORS) as exc:
            if is_data_error(exc):
                skips.add("corrupt", str(path), f"truncated or invalid {fmt} ({exc})")
            else:
                skips.add("unreadable", str(path), exc.strerror or str(exc))
