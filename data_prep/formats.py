"""What an input file holds, told by its bytes, and a decompressing reader for it.

File names lie (a ``.json`` that is JSON Lines, a ``.gz`` that is plain text, an ``.arrow`` in
either IPC format), so nothing here looks at a suffix:

- compression by magic bytes: gzip, zstd, xz, bz2 (each read incrementally);
- containers by magic bytes: Parquet (``PAR1``), Arrow IPC file (``ARROW1``) and stream (the
  ``0xFFFFFFFF`` continuation marker); zip, 7z and tar are named and refused;
- in the (decompressed) first :data:`HEAD_BYTES`: a JSON array of records starts ``[`` then
  ``{``, ``"`` or ``]``; JSON Lines starts ``{`` then ``"`` or ``}`` and one of its complete
  lines is a JSON object (a JSON document spread over lines is refused); anything else is plain
  text (wikitext ``{{...}}`` and Markdown ``[link](...)`` included);
- a directory holding ``state.json`` with ``_data_files`` is a Hugging Face ``save_to_disk``
  dataset, read as one input; a ``dataset_dict.json`` beside split folders is metadata.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import zstandard

#: Bytes of the (decompressed) start of a file that its format is told from.
HEAD_BYTES = 1 << 16
#: Compressed bytes handed to the zstd decompressor at a time. Its output is all it can make of
#: them (zstandard's decompressobj has no max_length), so few: well under 1 MiB for any text.
ZSTD_READ_BYTES = 1 << 10
#: Decompressed bytes buffered per read of a compressed file.
BUFFER_BYTES = 1 << 20
#: What a Hugging Face ``save_to_disk`` folder and a DatasetDict folder hold besides their data.
DATASET_STATE, DATASET_DICT = "state.json", "dataset_dict.json"

_COMPRESSIONS = [("gzip", re.compile(rb"\x1f\x8b\x08")), ("zstd", re.compile(rb"\x28\xb5\x2f\xfd")),
                 ("xz", re.compile(rb"\xfd7zXZ\x00")),
                 ("bz2", re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)"))]  # block or end-of-stream magic
_CONTAINERS = [("parquet", re.compile(rb"PAR1")), ("arrow_file", re.compile(rb"ARROW1")),
               ("arrow_stream", re.compile(rb"\xff\xff\xff\xff")),
               ("zip archive", re.compile(rb"PK\x03\x04")), ("7z archive", re.compile(rb"7z\xbc\xaf\x27\x1c")),
               ("tar archive", re.compile(rb".{257}ustar", re.DOTALL))]
_JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*(?:(\[)\s*[{\"\]]|\{\s*[\"}])")  # after a UTF-8 BOM, if any

#: What decoders raise about bad data, besides an OSError without an errno (see :func:`is_data_error`).
DATA_ERRORS = (EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, pa.ArrowException)

_NAMES = {"text": "text", "jsonl": "JSON Lines", "json_array": "JSON array", "parquet": "Parquet",
          "arrow_file": "Arrow IPC file", "arrow_stream": "Arrow IPC stream",
          "dataset": "Hugging Face dataset folder"}


@dataclass(frozen=True)
class Format:
    """What a file holds: ``kind`` (a key of the readers, or ``"unsupported"`` with ``detail``
    saying why) and the compression around it, if any."""

    kind: str
    compression: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        name = _NAMES.get(self.kind, "file")
        return f"{self.compression} {name}" if self.compression else name


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about a file's bytes, not about reading them: bz2, gzip and pyarrow
    report bad data as an OSError without an errno, while a failing disk or a missing file
    always has one."""
    return isinstance(exc, DATA_ERRORS) or (isinstance(exc, OSError) and exc.errno is None)


def _match(table: list[tuple[str, re.Pattern]], head: bytes) -> str | None:
    return next((name for name, magic in table if magic.match(head)), None)


class _ZstdReader(io.RawIOBase):
    """zstd frames one after another; unlike zstandard's ``stream_reader``, which returns what it
    has without a word, a file that ends inside a frame raises EOFError (as gzip, xz, bz2 do)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.frame = None  # the decompressor of the frame being read
        self.out, self.at = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:
        while self.at == len(self.out):
            data = self.raw.read(ZSTD_READ_BYTES)
            if not data:
                if self.frame is not None and not self.frame.eof:
                    raise EOFError("zstd file ended inside a frame")
                return 0
            self.out, self.at = self._decompress(data), 0
        size = min(len(buffer), len(self.out) - self.at)
        buffer[:size] = memoryview(self.out)[self.at:self.at + size]
        self.at += size
        return size

    def _decompress(self, data: bytes) -> bytes:
        parts = []
        while data:
            if self.frame is None or self.frame.eof:
                self.frame = zstandard.ZstdDecompressor().decompressobj()
            parts.append(self.frame.decompress(data))
            data = self.frame.unused_data if self.frame.eof else b""
        return b"".join(parts)

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_input(path: Path, compression: str | None) -> BinaryIO:
    """``path`` opened for reading, decompressed as it is read."""
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "xz":
        return lzma.open(path, "rb")
    if compression == "bz2":
        return bz2.open(path, "rb")
    if compression == "zstd":
        return io.BufferedReader(_ZstdReader(open(path, "rb")), BUFFER_BYTES)
    return open(path, "rb")


def _json_lines(head: bytes, whole: bool) -> bool:
    """Whether a head that starts like a JSON object is JSON Lines: one of its complete lines is a
    JSON object, or it holds no complete line at all (a record longer than the head)."""
    lines = head.split(b"\n")
    complete = [line for line in (lines if whole else lines[:-1]) if line.strip()]
    if not complete:
        return True
    for line in complete:
        try:
            if isinstance(json.loads(line), dict):
                return True
        except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError, deep nesting
            pass
    return False


def _text_format(head: bytes, whole: bool, compression: str | None) -> Format:
    start = _JSON_START.match(head)
    if start is None:
        return Format("text", compression)
    if start.group(1):
        return Format("json_array", compression)
    if _json_lines(head, whole):
        return Format("jsonl", compression)
    return Format("unsupported", compression, "one JSON document over several lines, neither JSON Lines "
                                              "nor an array of records")


def detect(path: Path) -> Format:
    """The format of the file at ``path``: a reader's kind, or a skip reason (``unsupported``,
    ``corrupt``) with its detail; raises OSError when the file cannot be read."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    compression = _match(_COMPRESSIONS, head)
    if compression:
        try:
            with open_input(path, compression) as f:
                head = f.read(HEAD_BYTES)
        except (OSError, *DATA_ERRORS) as exc:
            if not is_data_error(exc):
                raise
            return Format("corrupt", compression, f"truncated or invalid {compression} ({exc})")
    whole = len(head) < HEAD_BYTES
    container = _match(_CONTAINERS, head)
    if container is None:
        return _text_format(head, whole, compression)
    if container.endswith("archive"):
        return Format("unsupported", compression, f"a {container}: unpack it and give its files")
    if compression:
        return Format("unsupported", compression, f"{Format(container)} inside {compression}: "
                                                  f"decompress it (it compresses its own data)")
    return Format(container)


def dataset_files(folder: Path) -> list[Path] | None:
    """The data files of a Hugging Face ``save_to_disk`` folder in order, or None when ``folder``
    is not one (no ``state.json`` listing ``_data_files``)."""
    try:
        state = json.loads((folder / DATASET_STATE).read_text(encoding="utf-8"))
        return [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, TypeError, KeyError):
        return None
