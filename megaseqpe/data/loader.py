"""The main-process side of the training stream: a DataLoader with exact, checkpointable position.

PyTorch's DataLoader asks its workers for batches strictly round-robin (worker 0, 1, ..., 0, ...)
and hands them over in that order, so batch ``n`` of a run came from logical worker
``n % workers``. Each batch carries its worker's :class:`ReaderState` after it; the loader keeps
the latest one per worker for the batches actually handed to the training loop (prefetched
batches do not count). Restoring gives every worker its saved state and rotates the worker
numbering so that the first batch after the restore comes from the worker that was next: the
rows that follow are identical to those of an uninterrupted run, for any ``num_workers``.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch
from torch.utils.data import DataLoader

from .dataset import ReaderState, ShardStreamDataset, TextShardDataset
from .shard_reader import CorruptShardError, worker_error

STATE_VERSION = 1


class DataStreamMismatch(ValueError):
    """A saved stream position that does not belong to this stream (other shards, seed, layout);
    the message starts with the manifest's path and names the setting that changed."""


def _guard_stop_signals(exiting, worker_id: int) -> None:
    """A scheduler's SIGTERM/SIGUSR1 reach every process of the job. Workers leave them to the
    training process, which checkpoints and then shuts them down: a worker killed by the signal
    would fail the step in flight, and with it the checkpoint. Only when the training process
    itself is exiting (`exiting` is set at its exit, before multiprocessing terminates its
    children with SIGTERM) does SIGTERM end a worker."""
    def on_terminate(signum, frame) -> None:
        if exiting.is_set():
            os._exit(0)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class TokenBatchLoader:
    """Iterable of training batches, endless: ``LongTensor[micro_batch_size, max_seq_len + 1]``
    from a :class:`TextShardDataset`, ``(images, labels)`` from an image dataset.

    Iterating again (after a ``break``) continues where the last iteration's consumer stopped.
    ``state_dict()`` / ``load_state_dict()`` save and restore that position; save it with the
    model checkpoint of the same step, per rank.
    """

    def __init__(self, dataset: ShardStreamDataset, *, pin_memory: bool = False,
                 prefetch_factor: int = 2) -> None:
        self.dataset = dataset
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.batches_consumed = 0
        self.reader_states: dict[int, ReaderState] = {}
        # Runs before multiprocessing's own exit handler (atexit is last-in, first-out).
        self._exiting = multiprocessing.Event()
        atexit.register(self._exiting.set)

    @property
    def skipped_samples(self) -> int:
        """Corrupt samples skipped so far by this rank (``on_corrupt="skip"``)."""
        return sum(state.skipped for state in self.reader_states.values())

    @property
    def epoch(self) -> int:
        """The lowest epoch any of this rank's workers is in (workers wrap independently)."""
        workers = range(self.dataset.workers_per_rank)
        return min(self.reader_states.get(w, ReaderState()).epoch for w in workers)

    def _data_loader(self) -> DataLoader:
        workers = self.dataset.workers_per_rank
        self.dataset.resume_states = dict(self.reader_states)
        self.dataset.worker_rotation = self.batches_consumed % workers
        extra: dict[str, Any] = {}
        if self.dataset.num_workers > 0:
            extra = {"prefetch_factor": self.prefetch_factor, "persistent_workers": False,
                     "worker_init_fn": functools.partial(_guard_stop_signals, self._exiting)}
        return DataLoader(self.dataset, batch_size=None, num_workers=self.dataset.num_workers,
                          pin_memory=self.pin_memory, **extra)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # The DataLoader starts here, not at the first next(): starting one draws its base seed from
        # the global RNG, and a mixture must start all its sources' loaders at the same moment
        # whichever source its first row comes from (see megaseqpe.data.mixture).
        return _BatchStream(self, iter(self._data_loader()))

    def _accept(self, item: Mapping[str, Any]) -> torch.Tensor:
        """Record the state a batch carries, as the batch is handed over; check the worker order."""
        expected = self.batches_consumed % self.dataset.workers_per_rank
        if item["worker"] != expected:
            raise RuntimeError(f"DataLoader returned a batch of worker {item['worker']} "
                               f"where worker {expected} was due; resumable order is lost")
        self.reader_states[expected] = ReaderState.from_dict(item["state"])
        self.batches_consumed += 1
        return item["batch"]

    def _identity(self) -> dict[str, Any]:
        """What must not change between save and restore for the saved position to mean the same."""
        d = self.dataset
        shards = hashlib.sha256("".join(s.sha256 for s in d.shards).encode()).hexdigest()
        return {"split": d.split, "shards_sha256": shards, "seed": d.seed, "rank": d.rank,
                "world_size": d.world_size, "num_workers": d.num_workers,
                "shuffle_buffer": d.shuffle_buffer}

    def state_dict(self) -> dict[str, Any]:
        """A small, JSON/torch-serialisable position in the stream (per rank)."""
        return {"version": STATE_VERSION, **self._identity(),
                "batches_consumed": self.batches_consumed,
                "readers": {str(w): s.to_dict() for w, s in sorted(self.reader_states.items())}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`; the next batch continues the stream.

        Raises :class:`DataStreamMismatch` naming the setting when the data or the layout changed
        (other shards, seed, rank count, workers): the saved position would point at different rows.
        """
        where = self.dataset.manifest.root / "manifest.json"
        if state.get("version") != STATE_VERSION:
            raise DataStreamMismatch(f"{where}: data-loader state version {state.get('version')!r} "
                                     f"is not {STATE_VERSION}")
        for key, now in self._identity().items():
            if state.get(key) != now:
                hint = (" (the shards changed since the checkpoint: resume with the data it was saved with, "
                        "or start a new run.dir)" if key == "shards_sha256" else "")
                raise DataStreamMismatch(f"{where}: cannot resume the data stream: {key} was "
                                         f"{state.get(key)!r} when saved and is {now!r} now{hint}")
        self.batches_consumed = int(state["batches_consumed"])
        self.reader_states = {int(w): ReaderState.from_dict(s) for w, s in state["readers"].items()}


class _BatchStream:
    """One pass over a :class:`TokenBatchLoader`'s DataLoader; ``close()`` (also on any error)
    stops its workers.

    Stopped explicitly: left to the garbage collector after an error (the traceback keeps the
    stream alive), their queues may be finalised first and shutdown then waits out two 5 s
    timeouts.
    """

    def __init__(self, loader: TokenBatchLoader, batches: Iterator[Mapping[str, Any]]) -> None:
        self.loader, self.batches = loader, batches

    def __iter__(self) -> "_BatchStream":
        return self

    def __next__(self) -> torch.Tensor:
        try:
            return self.loader._accept(next(self.batches))
        except CorruptShardError as error:
            self.close()
            raise worker_error(error) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        shutdown = getattr(self.batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def build_train_loader(manifest_path: str | Path, *, max_seq_len: int, micro_batch_size: int,
                       seed: int = 0, rank: int = 0, world_size: int = 1, num_workers: int = 0,
                       shuffle_buffer: int = 1000, on_corrupt: str = "error", split: str = "train",
                       pin_memory: bool = False, bos_id: Optional[int] = None) -> TokenBatchLoader:
    """The training input of one rank: endless ``[micro_batch_size, max_seq_len + 1]`` batches.

    Raises :class:`megaseqpe.data.NotEnoughShardsError` at once when the split has fewer shards
    than ``world_size * max(1, num_workers)``, and :class:`megaseqpe.data.ManifestError` for a
    missing or malformed manifest. See :class:`TextShardDataset` for the arguments.
    """
    dataset = TextShardDataset(manifest_path, split, max_seq_len=max_seq_len,
                               micro_batch_size=micro_batch_size, seed=seed, rank=rank,
                               world_size=world_size, num_workers=num_workers,
                               shuffle_buffer=shuffle_buffer, on_corrupt=on_corrupt, bos_id=bos_id)
    return TokenBatchLoader(dataset, pin_memory=pin_memory)
