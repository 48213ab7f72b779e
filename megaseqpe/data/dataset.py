"""The training streams: shards split across ranks × DataLoader workers, shuffled, then packed
into token rows (text) or batched as images.

Every (rank, worker) pair is one *reader*, ``reader = rank * workers_per_rank + worker``. In
epoch ``e`` the split's shards are permuted with a generator seeded by ``(seed, e)``, identical
on every process, and reader ``r`` takes every ``R``-th shard from position ``r`` (``R`` readers in
all): so each sample is read exactly once per epoch across all ranks and workers. A reader's
samples then go through a seeded shuffle buffer and are packed into rows (text) or taken one
image per row (images): :class:`ShardStreamDataset` holds everything but that last step.

Readers never stop: after its last shard a reader starts its next epoch. Ranks whose readers
hold fewer tokens simply wrap sooner, so no rank runs out of batches before another (the
WebDataset + DDP hang when ranks see unequal batch counts cannot happen).

A reader's stream is a pure function of ``(seed, reader, epoch)``, which is what makes resuming
exact: :class:`ReaderState` (epoch, document, offset) is enough to regenerate it from the start
of that epoch and skip ahead. See :mod:`megaseqpe.data.loader` for the main-process side.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .manifest import KIND_TEXT, Manifest, load_manifest
from .packing import pack_rows
from .samples import decode_tokens
from .shard_reader import CorruptShardError, check_on_corrupt, iter_shard_samples


class NotEnoughShardsError(ValueError):
    """Fewer shards than readers (ranks × workers): some reader would get no data at all."""


@dataclass(frozen=True)
class ReaderState:
    """Where one reader's next row starts, plus the samples it skipped (``on_corrupt="skip"``)."""

    epoch: int = 0
    document: int = 0
    offset: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReaderState":
        return cls(**{k: int(data[k]) for k in ("epoch", "document", "offset", "skipped")})


class ShardStreamDataset(IterableDataset):
    """Endless, shuffled batches of one manifest split for one rank; subclasses say how samples
    are decoded (:meth:`decode`), turned into rows (:meth:`reader_rows`) and stacked (:meth:`collate`).

    Iterating yields dicts ``{"batch": collate(rows), "worker": logical worker id, "state":
    ReaderState dict after this batch}``; the state lets :class:`megaseqpe.data.loader.
    TokenBatchLoader` checkpoint the stream. Use that loader rather than a bare DataLoader.

    Args:
        manifest_path: ``manifest.json`` (or its directory) written by ``megaseqpe-prep``.
        split: manifest split to read, normally ``"train"``.
        micro_batch_size: rows per yielded batch.
        seed: seeds shard order per epoch and the sample shuffle buffer.
        rank, world_size: this process's place among the data-parallel ranks.
        num_workers: DataLoader workers per rank (0 = read in the main process).
        shuffle_buffer: samples held in the shuffle buffer (1 disables sample shuffling).
        on_corrupt: ``"error"`` (default) stops at a corrupt shard naming it (sha256 mismatch,
            unreadable tar or sample, token id outside the vocabulary, missing file); ``"skip"``
            counts the samples lost (``ReaderState.skipped``) and goes on.
    """

    #: The manifest kind this stream reads, and how to get more shards when there are too few.
    kind = KIND_TEXT
    more_shards_hint = "re-run `megaseqpe-prep shards` with a smaller --shard-tokens"

    def __init__(self, manifest_path: str | Path, split: str = "train", *, micro_batch_size: int = 1,
                 seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                 shuffle_buffer: int = 1000, on_corrupt: str = "error") -> None:
        super().__init__()
        if micro_batch_size < 1 or shuffle_buffer < 1:
            raise ValueError("micro_batch_size and shuffle_buffer must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.manifest: Manifest = load_manifest(manifest_path, expect=self.kind)
        self.split = split
        self.shards = self.manifest.split(split).shards
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.on_corrupt = check_on_corrupt(on_corrupt)
        readers = world_size * self.workers_per_rank
        if len(self.shards) < readers:
            raise NotEnoughShardsError(
                f"{self.manifest.root / 'manifest.json'}: split {split!r} has {len(self.shards)} "
                f"shard(s), but {world_size} rank(s) x {self.workers_per_rank} worker(s) need at least "
                f"{readers}; {self.more_shards_hint}, or use fewer data workers")
        # Set by the loader before each DataLoader is built; pickled into the workers with self.
        self.resume_states: dict[int, ReaderState] = {}
        self.worker_rotation = 0

    # ------------------------------------------------------------------ what subclasses define
    def decode(self, sample: dict[str, Any]) -> Any:
        """One raw tar sample → what a row is made of (raises SampleFormatError when bad)."""
        raise NotImplementedError

    def reader_rows(self, reader: int, start: ReaderState = ReaderState()) -> Iterator[tuple[Any, ReaderState]]:
        """Endless rows of one reader from ``start``, each with the state after it."""
        raise NotImplementedError

    def collate(self, rows: Sequence[Any]) -> Any:
        """One micro-batch from ``micro_batch_size`` rows."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared machinery
    @property
    def workers_per_rank(self) -> int:
        """Readers per rank: the main process counts as one when ``num_workers == 0``."""
        return max(1, self.num_workers)

    @property
    def num_readers(self) -> int:
        return self.world_size * self.workers_per_rank

    def reader_id(self, worker: int) -> int:
        """Global reader index of this rank's logical worker ``worker``."""
        return self.rank * self.workers_per_rank + worker

    def epoch_shards(self, reader: int, epoch: int) -> list[int]:
        """Indices (into the split's shard list) that ``reader`` reads in ``epoch``."""
        order = list(range(len(self.shards)))
        random.Random(f"megaseqpe-shards/{self.seed}/{epoch}").shuffle(order)
        return order[reader::self.num_readers]

    def reader_documents(self, reader: int, epoch: int,
                         skipped: list[int] | None = None) -> Iterator[tuple[str, Any]]:
        """``(key, decoded sample)`` of one reader's epoch, in its shuffled order (a pure function).

        ``skipped``, when given, is a one-element list incremented by corrupt samples skipped.
        """
        counter = skipped if skipped is not None else [0]

        def count(n: int) -> None:
            counter[0] += n

        samples = (doc for index in self.epoch_shards(reader, epoch)
                   for doc in iter_shard_samples(self.manifest.shard_path(self.shards[index]),
                                                 self.shards[index], self.on_corrupt, count, self.decode))
        # Imported here: models, tasks and `benchmarks/gpu.py` import this package on machines without webdataset.
        from webdataset.filters import shuffle as wds_shuffle

        rng = random.Random(f"megaseqpe-samples/{self.seed}/{reader}/{epoch}")
        initial = min(self.shuffle_buffer, 100)
        return iter(wds_shuffle(self.shuffle_buffer, initial, rng=rng)(samples))

    def epoch_documents(self, reader: int, start: ReaderState, skipped: list[int]
                        ) -> Iterator[tuple[int, int, Any]]:
        """Endless ``(epoch, index in epoch, document)`` of one reader, from ``start``.

        Fast-forwards by re-reading the start epoch up to the saved position. The document being
        packed mid-way (``offset > 0``) had been pulled already, so it is pulled too; then the
        skip counter (``skipped[0]``) stands exactly where it stood when the state was saved.
        """
        epoch = start.epoch
        while True:
            docs = self.reader_documents(reader, epoch, skipped)
            count = 0  # documents of this epoch pulled so far
            if epoch == start.epoch:
                current = None
                for _, current in islice(docs, start.document + (1 if start.offset else 0)):
                    count += 1
                skipped[0] = start.skipped
                if start.offset and current is not None:
                    yield epoch, start.document, current
            for _, document in docs:
                yield epoch, count, document
                count += 1
            if count == 0:
                raise CorruptShardError(f"{self.manifest.root / 'manifest.json'}: reader {reader} found no readable "
                                        f"sample in epoch {epoch} of split {self.split!r} (all its shards are "
                                        "empty or corrupt; see the warnings above)")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError(f"{type(self).__name__} was built for num_workers={self.num_workers} but "
                               f"the DataLoader has {info.num_workers}")
        worker = (physical + self.worker_rotation) % self.workers_per_rank
        rows = self.reader_rows(self.reader_id(worker), self.resume_states.get(worker, ReaderState()))
        while True:
            batch = list(islice(rows, self.micro_batch_size))
            state = batch[-1][1]
            yield {"batch": self.collate([row for row, _ in batch]), "worker": worker, "state": state.to_dict()}


class TextShardDataset(ShardStreamDataset):
    """Endless, shuffled, packed token batches: ``LongTensor[micro_batch_size, max_seq_len + 1]``.

    Args: those of :class:`ShardStreamDataset`, plus ``max_seq_len``, the model context: rows
    hold ``max_seq_len + 1`` tokens (inputs + shifted targets); ``bos_id``, when given, goes in
    front of every document (document masking, see :mod:`megaseqpe.data.packing`).
    """

    def __init__(self, manifest_path: str | Path, split: str = "train", *, max_seq_len: int,
                 bos_id: Optional[int] = None, **kwargs: Any) -> None:
        if max_seq_len < 1:
            raise ValueError("max_seq_len, micro_batch_size and shuffle_buffer must be >= 1")
        super().__init__(manifest_path, split, **kwargs)
        self.max_seq_len, self.bos_id = max_seq_len, bos_id

    def decode(self, sample: dict[str, Any]) -> np.ndarray:
        return decode_tokens(sample, self.manifest.tokenizer.vocab_size)

    def reader_rows(self, reader: int, start: ReaderState = ReaderState()
                    ) -> Iterator[tuple[np.ndarray, ReaderState]]:
        skipped = [start.skipped]
        row_len = self.max_seq_len + 1
        documents = self.epoch_documents(reader, start, skipped)
        for row, pos in pack_rows(documents, row_len, self.manifest.tokenizer.eos_id, start.offset, self.bos_id):
            yield row, ReaderState(pos.epoch, pos.document, pos.offset, skipped[0])

    def collate(self, rows: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(rows))
