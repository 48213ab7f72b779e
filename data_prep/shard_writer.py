"""Writing one split's documents into deterministic, atomically published WebDataset shards.

Shards are plain tar files written by ``webdataset.TarWriter`` with every varying header field
pinned (mtime 0, uid/gid 0, fixed user/group names, fixed mode; members in sorted order), so the
same documents always give byte-identical shards (mtime is an int: a float would add a PAX
header to every member). Each shard is written to ``<name>.tmp``, hashed
while written, and renamed to its final name once closed.

A document that arrives in several token pieces (a long one) is spooled to an anonymous
temporary file and streamed into its tar member, so no process ever holds all its tokens; the
bytes are those ``np.save`` would have written for the whole array.
"""
from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Iterator

import numpy as np

from megaseqpe.data import SHARD_PATTERN, ShardInfo, encode_sample
from megaseqpe.data.samples import check_key, encode_meta, tokens_header

from .outputs import commit, temp_path

if TYPE_CHECKING:
    from webdataset import TarWriter


class _HashingFile:
    """A write-only file wrapper that sha256-hashes everything written through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)


class _Concatenated:
    """One readable stream over several binary files in turn, for ``tarfile.addfile``."""

    def __init__(self, *files: BinaryIO) -> None:
        self.files = list(files)

    def read(self, size: int) -> bytes:
        out = bytearray()
        while self.files and len(out) < size:
            block = self.files[0].read(size - len(out))
            if block:
                out += block
            else:
                self.files.pop(0)
        return bytes(out)


class SplitShardWriter:
    """Appends documents to ``root/split/shard-NNNNNN.tar``, starting a new shard after
    ``shard_tokens`` tokens (a shard always ends on a document boundary, so it may overshoot)
    or after ``shard_samples`` samples (image shards count images)."""

    def __init__(self, root: Path, split: str, shard_tokens: int, shard_samples: int | None = None) -> None:
        self.root = root
        self.split = split
        self.shard_tokens = shard_tokens
        self.shard_samples = shard_samples
        self.shards: list[ShardInfo] = []
        self._tar: TarWriter | None = None

    def _open(self) -> None:
        (self.root / self.split).mkdir(parents=True, exist_ok=True)
        self._path = self.root / self.split / SHARD_PATTERN.format(len(self.shards))
        self._raw = open(temp_path(self._path), "wb")
        self._file = _HashingFile(self._raw)
        # Imported here: webdataset imports torch (seconds), which no other part of megaseqpe-prep needs.
        from webdataset import TarWriter
        self._tar = TarWriter(self._file, encoder=False, mtime=0, user="megaseqpe",
                              group="megaseqpe", mode=0o444)
        self._samples = 0
        self._tokens = 0

    def write(self, key: str, tokens: np.ndarray, source: str, index: int) -> None:
        """Add one document (its tokens already in the manifest's dtype)."""
        self.write_sample(encode_sample(key, tokens, source, index), len(tokens))

    def write_document(self, key: str, pieces: Iterator[np.ndarray], source: str, index: int) -> int:
        """Add one document given as consecutive token arrays (at least one, all of one dtype);
        returns its token count. Several pieces are streamed through a temporary file."""
        first = next(pieces)
        second = next(pieces, None)
        if second is None:
            self.write(key, first, source, index)
            return len(first)
        check_key(key)
        with tempfile.TemporaryFile(dir=self.root) as spool:
            count = 0
            for tokens in chain([first, second], pieces):
                spool.write(np.ascontiguousarray(tokens).data)
                count += len(tokens)
            spool.seek(0)
            self._start()
            self._tar.write({"__key__": key, "meta.json": encode_meta(source, index)})
            self._add_member(f"{key}.tokens.npy", io.BytesIO(tokens_header(first.dtype, count)), spool)
            self._count(count)
        return count

    def _add_member(self, name: str, *parts: BinaryIO) -> None:
        """A tar member made of ``parts``, with the header fields TarWriter gives every member."""
        info = tarfile.TarInfo(name)
        info.size = sum(part.seek(0, io.SEEK_END) for part in parts)
        for part in parts:
            part.seek(0)
        info.mtime, info.mode = self._tar.mtime, self._tar.mode
        info.uname, info.gname = self._tar.user, self._tar.group
        self._tar.tarstream.addfile(info, _Concatenated(*parts))

    def write_sample(self, members: dict, size: int) -> None:
        """Add one encoded sample (tar members as bytes) that counts ``size`` tokens (or pixels)."""
        self._start()
        self._tar.write(members)
        self._count(size)

    def _start(self) -> None:
        if self._tar is None:
            self._open()

    def _count(self, size: int) -> None:
        """One sample of ``size`` tokens was written: start a new shard when this one is full."""
        self._samples += 1
        self._tokens += size
        if self._tokens >= self.shard_tokens or (self.shard_samples and self._samples >= self.shard_samples):
            self._finish()

    def _finish(self) -> None:
        self._tar.close()
        self._raw.close()
        commit(self._path)
        self.shards.append(ShardInfo(path=self._path.relative_to(self.root).as_posix(),
                                     samples=self._samples, tokens=self._tokens,
                                     sha256=self._file.digest.hexdigest()))
        self._tar = None

    def close(self) -> list[ShardInfo]:
        """Publish the last, partly filled shard; the list of all shards written."""
        if self._tar is not None:
            self._finish()
        return self.shards
