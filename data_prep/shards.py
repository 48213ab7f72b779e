"""``megaseqpe-prep shards``: documents → parallel SentencePiece encoding → train/val shards + manifest.

The main process reads the corpus (and does all the skip accounting) while a pool of workers
encodes batches of documents; ``Pool.imap`` returns results in submission order, so the shards
do not depend on ``--workers``. A semaphore bounds the batches in flight, so memory stays flat
however large the corpus. A document goes to ``val`` when a hash of its key falls below
``val_fraction``: the split never changes between runs, nor when other documents are added.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

import megaseqpe
from megaseqpe.data import InputsInfo, Manifest, SplitInfo, TokenizerInfo, token_dtype

from .corpus import Document, SkipLog
from .errors import UserError
from .outputs import write_json_atomic
from .shard_writer import SplitShardWriter
from .tokenizer import file_sha256

BATCH_BYTES = 1 << 16  # text per task: amortises IPC, yet keeps every worker busy
IN_FLIGHT_PER_WORKER = 4


@dataclass(frozen=True)
class EncodedDocument:
    """What a worker sends back: the document's identity and its token ids."""

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


def _encode_batch(batch: list[Document]) -> list[EncodedDocument]:
    ids = _processor.encode([doc.text for doc in batch], num_threads=1)
    return [EncodedDocument(doc.key, doc.source, doc.index,
                            np.fromiter(tokens, dtype=_dtype, count=len(tokens)))
            for doc, tokens in zip(batch, ids)]


class _Feeder:
    """Groups documents into ~BATCH_BYTES tasks for ``Pool.imap``, at most ``limit`` in flight.

    ``imap`` pulls tasks from a thread of its own with no back-pressure; the semaphore supplies
    it. ``stop()`` unblocks that thread when the consumer ends early (an error while writing),
    otherwise the pool could not shut down.
    """

    def __init__(self, documents: Iterable[Document], limit: int) -> None:
        self.documents = documents
        self.slots = threading.Semaphore(limit)
        self.stopped = threading.Event()

    def _wait_slot(self) -> bool:
        self.slots.acquire()
        return not self.stopped.is_set()

    def __iter__(self) -> Iterator[list[Document]]:
        batch: list[Document] = []
        size = 0
        for doc in self.documents:
            batch.append(doc)
            size += len(doc.text)
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


def encode_documents(documents: Iterable[Document], model_path: Path, dtype: np.dtype,
                     workers: int) -> Iterator[EncodedDocument]:
    """Encoded documents in input order, encoded by ``workers`` processes."""
    feeder = _Feeder(documents, workers * IN_FLIGHT_PER_WORKER)
    with Pool(workers, initializer=_init_worker, initargs=(str(model_path), dtype.str)) as pool:
        try:
            for encoded in pool.imap(_encode_batch, feeder):
                feeder.done()
                yield from encoded
        finally:
            feeder.stop()


def build_shards(documents: Iterable[Document], skips: SkipLog, files_seen: int, *,
                 tokenizer: Path, processor: spm.SentencePieceProcessor, out: Path,
                 val_fraction: float, shard_tokens: int, workers: int) -> Manifest:
    """Write ``out/{train,val}/shard-*.tar`` and then ``out/manifest.json``; return the manifest."""
    dtype = token_dtype(processor.vocab_size())
    writers = {name: SplitShardWriter(out, name, shard_tokens) for name in ("train", "val")}
    documents_written = tokens_written = 0
    start = time.perf_counter()
    with tqdm(desc="shards", unit="doc", disable=None) as bar:
        for doc in encode_documents(documents, tokenizer, dtype, workers):
            split = "val" if is_val(doc.key, val_fraction) else "train"
            writers[split].write(doc.key, doc.tokens, doc.source, doc.index)
            documents_written += 1
            tokens_written += len(doc.tokens)
            bar.update(1)
            if documents_written % 64 == 0:
                rate = tokens_written / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{rate:,.0f} tokens/s")
    if documents_written == 0:
        raise UserError(f"no documents to write: {files_seen} input file(s), {skips.summary()}")
    manifest = Manifest(
        created_by=f"megaseqpe-prep {megaseqpe.__version__}",
        tokenizer=TokenizerInfo(path=_relative(tokenizer, out), sha256=file_sha256(tokenizer),
                                vocab_size=processor.vocab_size(), eos_id=processor.eos_id()),
        splits={name: SplitInfo(tuple(writer.close())) for name, writer in writers.items()},
        inputs=InputsInfo(files_seen=files_seen, documents=documents_written,
                          skipped=skips.as_dict(), examples_skipped=tuple(skips.examples)),
        root=out)
    write_json_atomic(out / "manifest.json", manifest.to_dict())
    return manifest


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (manifest paths are relative to the manifest's directory)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def split_summary(manifest: Manifest, names: Sequence[str] = ("train", "val")) -> str:
    """``train 1,234 docs / 5,678,901 tokens in 3 shards; val ...`` for the closing line."""
    return "; ".join(f"{n} {manifest.splits[n].samples:,} docs / {manifest.splits[n].tokens:,} "
                     f"tokens in {len(manifest.splits[n].shards)} shard(s)" for n in names)
