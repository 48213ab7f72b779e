"""Weighted mixtures of several manifests (``data.sources``): a deterministic, exactly resumable
interleave of one training stream per source.

Each source is read by its own :class:`~megaseqpe.data.loader.TokenBatchLoader` (its own shards,
readers, workers and :class:`~megaseqpe.data.dataset.ReaderState`), built with one row per
batch. Row ``n`` of a rank's stream comes from the source :func:`source_of_row` picks, with
probability ``weight / sum(weights)``, from a generator seeded by ``(seed, rank, n)`` alone.

Rows, not whole micro-batches, are drawn: every micro-batch then mixes the sources in proportion
(whole-batch draws would make each gradient step come from one source), and resuming stays as
simple as for one source, because the choice of row ``n`` needs no state but ``n``, and each
source loader counts the rows it handed over. The saved state is every source's own state plus
the row counter ``n``; the mixture's identity (names, weights) is checked on restore.
"""
from __future__ import annotations

import bisect
import itertools
import random
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..config import ConfigError, DataSource
from .loader import DataStreamMismatch, TokenBatchLoader, build_train_loader
from .manifest import load_manifest

MIXTURE_STATE_VERSION = 1


def check_same_tokenizer(manifests: Sequence[str | Path]) -> None:
    """ConfigError naming two manifests whose shards were made with different tokenizers (sha256 of
    the SentencePiece model): their token ids would mean different text in one model."""
    first = load_manifest(manifests[0]).tokenizer
    for other in manifests[1:]:
        tokenizer = load_manifest(other).tokenizer
        if tokenizer.sha256 != first.sha256:
            raise ConfigError(f"data.sources: {other} was tokenized with a different tokenizer (sha256 "
                              f"{tokenizer.sha256[:12]}) than {manifests[0]} ({first.sha256[:12]}); all sources "
                              "of a mixture need the same tokenizer")


def source_of_row(seed: int, rank: int, row: int, weights: Sequence[float]) -> int:
    """The source (index into ``weights``) of row ``row`` of rank ``rank``: a pure function."""
    bounds = list(itertools.accumulate(weights))
    draw = random.Random(f"megaseqpe-mixture/{seed}/{rank}/{row}").random() * bounds[-1]
    return min(bisect.bisect_right(bounds, draw), len(bounds) - 1)


class MixtureLoader:
    """Endless ``LongTensor[micro_batch_size, max_seq_len + 1]`` batches whose rows come from the
    sources in proportion to their weights; the same interface as :class:`TokenBatchLoader`
    (iterate, ``state_dict`` / ``load_state_dict``, ``skipped_samples``), plus
    :meth:`rows_by_source`."""

    def __init__(self, sources: Sequence[DataSource], loaders: Sequence[TokenBatchLoader], *,
                 micro_batch_size: int, seed: int, rank: int) -> None:
        self.sources, self.loaders = tuple(sources), tuple(loaders)
        self.micro_batch_size, self.seed, self.rank = micro_batch_size, seed, rank
        self.weights = [source.weight for source in self.sources]

    @property
    def rows_consumed(self) -> int:
        """Rows handed to the consumer so far: the interleave's counter."""
        return sum(loader.batches_consumed for loader in self.loaders)

    def rows_by_source(self) -> dict[str, int]:
        """Source name → rows of it handed over by this rank so far (exact across a restore)."""
        return {source.name: loader.batches_consumed for source, loader in zip(self.sources, self.loaders)}

    @property
    def skipped_samples(self) -> int:
        """Corrupt samples skipped so far by this rank, all sources together."""
        return sum(loader.skipped_samples for loader in self.loaders)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # Every source's DataLoader starts now (see TokenBatchLoader.__iter__), before the first row.
        streams = [iter(loader) for loader in self.loaders]
        return self._batches(streams)

    def _batches(self, streams: list) -> Iterator[torch.Tensor]:
        try:
            while True:
                rows = []
                for _ in range(self.micro_batch_size):
                    # Each pull advances one source loader's count, hence rows_consumed: a state
                    # saved between batches always holds whole batches.
                    rows.append(next(streams[source_of_row(self.seed, self.rank, self.rows_consumed, self.weights)]))
                yield torch.cat(rows)
        finally:
            for stream in streams:
                stream.close()

    def _identity(self) -> dict[str, Any]:
        # A list, not a mapping: the order of the sources is part of what source_of_row computes.
        return {"sources": [[source.name, source.weight] for source in self.sources], "seed": self.seed,
                "rank": self.rank, "micro_batch_size": self.micro_batch_size}

    def state_dict(self) -> dict[str, Any]:
        """Every source's position, and the interleave counter (JSON-serialisable, per rank)."""
        return {"version": MIXTURE_STATE_VERSION, **self._identity(), "rows_consumed": self.rows_consumed,
                "streams": {source.name: loader.state_dict() for source, loader in zip(self.sources, self.loaders)}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`. Raises :class:`DataStreamMismatch` naming
        what changed: the sources or weights, the seed or layout, or (from a source's own check) its
        shards."""
        if state.get("version") != MIXTURE_STATE_VERSION or "streams" not in state:
            raise DataStreamMismatch(f"data.sources: the saved data-loader state is not a mixture's (version "
                                     f"{MIXTURE_STATE_VERSION}); resume with the data it was saved with")
        for key, now in self._identity().items():
            if state.get(key) != now:
                raise DataStreamMismatch(f"data.sources: cannot resume the data stream: {key} was "
                                         f"{state.get(key)!r} when saved and is {now!r} now")
        for source, loader in zip(self.sources, self.loaders):
            loader.load_state_dict(state["streams"][source.name])
        if self.rows_consumed != state["rows_consumed"]:
            raise DataStreamMismatch(f"data.sources: the saved state counts {state['rows_consumed']} rows but its "
                                     f"sources hold {self.rows_consumed}; the checkpoint's data state is damaged")


def build_mixture_loader(sources: Sequence[DataSource], *, micro_batch_size: int, seed: int = 0, rank: int = 0,
                         **options: Any) -> MixtureLoader:
    """The training input of one rank drawn from weighted ``sources`` (``DataConfig.sources``):
    endless ``[micro_batch_size, max_seq_len + 1]`` batches. ``options`` are those of
    :func:`build_train_loader` (``max_seq_len``, ``world_size``, ``num_workers``, ...) and apply to
    every source; each source gets ``num_workers`` DataLoader workers of its own.

    Raises ConfigError when the sources' tokenizers differ, and what :func:`build_train_loader`
    raises for a source's manifest."""
    check_same_tokenizer([source.manifest for source in sources])
    loaders = [build_train_loader(source.manifest, micro_batch_size=1, seed=seed, rank=rank, **options)
               for source in sources]
    return MixtureLoader(sources, loaders, micro_batch_size=micro_batch_size, seed=seed, rank=rank)
