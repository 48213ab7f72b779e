"""``megaseqpe-prep shards``: documents → parallel SentencePiece encoding → train/val shards + manifest.

The main process reads the corpus (and does all the skip accounting) while a pool of workers
encodes batches of document pieces; ``Pool.imap`` returns results in submission order, so the
shards do not depend on ``--workers``. A semaphore bounds the batches in flight, so memory stays
flat however large the corpus. A document longer than :data:`~data_prep.corpus.PIECE_CHARS`
is encoded as bounded pieces cut at line or word boundaries (SentencePiece segments words
independently, so its tokens barely change) and stays one sample with one EOS: its token pieces
are streamed into the shard (:meth:`SplitShardWriter.write_document`), so memory stays flat
however long a document is. A document goes to ``val`` when a hash of its key falls below
``val_fraction``: the split never changes between runs, nor when other documents are added. The
key hashes the document's input name (its path below the inputs' root, never an absolute path)
and its index there, so the split, and every shard byte, stay the same when the corpus moves.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from itertools import chain, groupby
from multiprocessing import Pool
from operator import attrgetter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

import megaseqpe
from megaseqpe.data import InputsInfo, Manifest, SplitInfo, TokenizerInfo, token_dtype
from megaseqpe.data.manifest import PartInfo

from .corpus import Document, FileDocument
from .errors import UserError
from .outputs import write_json_atomic
from .shard_writer import SplitShardWriter
from .skips import SkipLog
from .tokenizer import file_sha256

BATCH_BYTES = 1 << 16  # text per task: amortises IPC, yet keeps every worker busy
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class Piece:
    """A bounded piece of a document; ``document`` numbers documents in input order, so that
    consecutive pieces with the same number make up one document."""

    document: int
    key: str
    source: str
    index: int
    text: str


@dataclass(frozen=True)
class EncodedPiece:
    """What a worker sends back: the piece's document and its token ids."""

    document: int
    key: str
    source: str
    index: int
    tokens: np.ndarray


def is_val(key: str, val_fraction: float) -> bool:
    """Stable split assignment: the first 8 bytes of sha256(key) as a fraction of 2**64."""
    value = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
    return value < val_fraction * 2**64


_processor: spm.SentencePieceProcessor | None = None
_dtype: np.dtype | None = None


def _init_worker(model_path: str, dtype: str) -> None:
    global _processor, _dtype
    _processor = spm.SentencePieceProcessor(model_file=model_path)
    _dtype = np.dtype(dtype)


def _encode_batch(batch: list[Piece]) -> list[EncodedPiece]:
    ids = _processor.encode([piece.text for piece in batch], num_threads=1)
    return [EncodedPiece(piece.document, piece.key, piece.source, piece.index,
                         np.fromiter(tokens, dtype=_dtype, count=len(tokens)))
            for piece, tokens in zip(batch, ids)]


def document_pieces(documents: Iterable[Document | FileDocument]) -> Iterator[Piece]:
    """Every document as its bounded pieces, in order."""
    for number, doc in enumerate(documents):
        for text in doc.pieces():
            yield Piece(number, doc.key, doc.source, doc.index, text)


class _Feeder:
    """Groups pieces into ~BATCH_BYTES tasks for ``Pool.imap``, at most ``limit`` in flight.

    ``imap`` pulls tasks from a thread of its own with no back-pressure; the semaphore supplies
    it. ``stop()`` unblocks that thread when the consumer ends early (an error while writing),
    otherwise the pool could not shut down.
    """

    def __init__(self, pieces: Iterable[Piece], limit: int) -> None:
        self.pieces = pieces
        self.slots = threading.Semaphore(limit)
        self.stopped = threading.Event()

    def _wait_slot(self) -> bool:
        self.slots.acquire()
        return not self.stopped.is_set()

    def __iter__(self) -> Iterator[list[Piece]]:
        batch: list[Piece] = []
        size = 0
        for piece in self.pieces:
            batch.append(piece)
            size += len(piece.text)
            if size >= BATCH_BYTES:
                if not self._wait_slot():
                    return
                yield batch
                batch, size = [], 0
        if batch and self._wait_slot():
            yield batch

    def done(self) -> None:
        """One task's result has been consumed."""
        self.slots.release()

    def stop(self) -> None:
        self.stopped.set()
        self.slots.release()


def encode_documents(documents: Iterable[Document | FileDocument], model_path: Path, dtype: np.dtype,
                     workers: int) -> Iterator[EncodedPiece]:
    """The encoded pieces of ``documents`` in input order, encoded by ``workers`` processes."""
    feeder = _Feeder(document_pieces(documents), workers * IN_FLIGHT_PER_WORKER)
    with Pool(workers, initializer=_init_worker, initargs=(str(model_path), dtype.str)) as pool:
        try:
            for encoded in pool.imap(_encode_batch, feeder):
                feeder.done()
                yield from encoded
        finally:
            feeder.stop()


def build_shards(documents: Iterable[Document | FileDocument], skips: SkipLog, files_seen: int, *,
                 tokenizer: Path, processor: spm.SentencePieceProcessor, out: Path,
                 val_fraction: float, shard_tokens: int, workers: int,
                 part: PartInfo | None = None) -> Manifest:
    """Write ``out/{train,val}/shard-*.tar`` and then ``out/manifest.json``; return the manifest.

    ``part`` marks the manifest partial (``shards --part``); a part may hold no documents, since
    the merge of all parts is what must not be empty."""
    dtype = token_dtype(processor.vocab_size())
    writers = {name: SplitShardWriter(out, name, shard_tokens) for name in ("train", "val")}
    documents_written = tokens_written = 0
    start = time.perf_counter()
    with tqdm(desc="shards", unit="doc", disable=None) as bar:
        for _, pieces in groupby(encode_documents(documents, tokenizer, dtype, workers),
                                 key=attrgetter("document")):
            doc = next(pieces)
            split = "val" if is_val(doc.key, val_fraction) else "train"
            tokens = chain([doc.tokens], (piece.tokens for piece in pieces))
            tokens_written += writers[split].write_document(doc.key, tokens, doc.source, doc.index)
            documents_written += 1
            bar.update(1)
            if documents_written % 64 == 0:
                rate = tokens_written / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate:,.0f} tokens/s")
    if documents_written == 0 and part is None:
        raise UserError(f"no documents to write: {files_seen} input file(s), {skips.summary()}")
    manifest = Manifest(
        created_by=f"megaseqpe-prep {megaseqpe.__version__}",
        tokenizer=TokenizerInfo(path=relative_path(tokenizer, out), sha256=file_sha256(tokenizer),
                                vocab_size=processor.vocab_size(), eos_id=processor.eos_id()),
        splits={name: SplitInfo(tuple(writer.close())) for name, writer in writers.items()},
        inputs=InputsInfo(files_seen=files_seen, documents=documents_written,
                          skipped=skips.as_dict(), examples_skipped=tuple(skips.examples)),
        root=out, part=part)
    write_json_atomic(out / "manifest.json", manifest.to_dict())
    return manifest


def relative_path(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (manifest paths are relative to the manifest's directory)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def split_summary(manifest: Manifest, names: Sequence[str] = ("train", "val")) -> str:
    """``train 1,234 docs / 5,678,901 tokens in 3 shards; val ...`` for the closing line."""
    return "; ".join(f"{n} {manifest.splits[n].samples:,} docs / {manifest.splits[n].tokens:,} "
                     f"tokens in {len(manifest.splits[n].shards)} shard(s)" for n in names)
