"""Retrieval-QA streams: `"kind": "qa"` manifests (the sample format: `megaseqpe.data.qa_samples`)
read as training batches and evaluation samples.

Training batches are ``(tokens, labels)``: labels are the tokens on the answer and -100
(cross-entropy's ignore_index) on the prompt and on right padding, so the loss counts answer
tokens only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .dataset import ReaderState, ShardStreamDataset
from .loader import TokenBatchLoader
from .manifest import KIND_QA, load_manifest
from .qa_samples import IGNORE, QASample, answer_labels, decode_qa_sample
from .shard_reader import check_on_corrupt, iter_shard_samples


def collate_qa(rows: Sequence[QASample], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, labels) `[B, longest]`, right-padded: a causal model never lets the padding reach
    the real tokens before it, and its labels are IGNORE."""
    width = max(len(row.tokens) for row in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.int64)
    for i, row in enumerate(rows):
        tokens[i, :len(row.tokens)] = torch.from_numpy(row.tokens.astype(np.int64))
        labels[i, :len(row.tokens)] = torch.from_numpy(answer_labels(row))
    return tokens, labels


class QAShardDataset(ShardStreamDataset):
    """Endless, shuffled `(tokens, labels)` batches of a QA split: one sample per row, with the
    token stream's sharding and exact resume (a reader's state is (epoch, samples consumed, 0))."""

    kind = KIND_QA
    more_shards_hint = "re-run `megaseqpe-prep qa` with a smaller --shard-samples"

    def decode(self, sample: dict[str, Any]) -> QASample:
        return decode_qa_sample(sample, self.manifest.tokenizer.vocab_size)

    def reader_rows(self, reader: int, start: ReaderState = ReaderState()) -> Iterator[tuple[QASample, ReaderState]]:
        skipped = [start.skipped]
        for epoch, index, row in self.epoch_documents(reader, start, skipped):
            yield row, ReaderState(epoch, index + 1, 0, skipped[0])

    def collate(self, rows: Sequence[QASample]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate_qa(rows)


def build_qa_train_loader(manifest_path: str | Path, **options: Any) -> TokenBatchLoader:
    """The QA training input of one rank (options as :class:`ShardStreamDataset`'s)."""
    return TokenBatchLoader(QAShardDataset(manifest_path, "train", **options))


def qa_samples(manifest_path: str | Path, split: str, on_corrupt: str = "error") -> Iterator[QASample]:
    """Every sample of a split once, in shard order (evaluation)."""
    check_on_corrupt(on_corrupt)
    manifest = load_manifest(manifest_path, expect=KIND_QA)
    vocab = manifest.tokenizer.vocab_size
    for shard in manifest.split(split).shards:
        for _, sample in iter_shard_samples(manifest.shard_path(shard), shard, on_corrupt, lambda n: None,
                                            lambda raw: decode_qa_sample(raw, vocab)):
            yield sample


def qa_batches(manifest_path: str | Path, split: str, *, batch_size: int, rank: int = 0, world_size: int = 1,
               on_corrupt: str = "error") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Finite batches covering this rank's samples once (rank r takes every w-th sample)."""
    mine = (s for i, s in enumerate(qa_samples(manifest_path, split, on_corrupt)) if i % world_size == rank)
    batch: list[QASample] = []
    for sample in mine:
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate_qa(batch)
            batch = []
    if batch:
        yield collate_qa(batch)
