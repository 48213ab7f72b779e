"""Retrieval-QA samples (`"kind": "qa"` manifests from `megaseqpe-prep qa`): the sample format and
the streams that read it.

A sample is ``<key>.tokens.npy`` (prompt then answer, ``length + 1`` token ids, so the model reads
exactly ``length`` of them when the answer is teacher-forced: like a packed text row of that
length), ``<key>.meta.json`` (as text samples) and ``<key>.qa.json``: the answer's token count,
the length, the depth bin and the index of the inserted fact's first token. Training batches are
``(tokens, labels)``: labels are the tokens on the answer and -100 (cross-entropy's ignore_index)
on the prompt and on right padding, so the loss counts answer tokens only.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from .dataset import ReaderState, ShardStreamDataset
from .loader import TokenBatchLoader
from .manifest import KIND_QA, load_manifest
from .samples import SampleFormatError, decode_tokens, encode_sample
from .shard_reader import check_on_corrupt, iter_shard_samples

IGNORE = -100  # cross-entropy's ignore_index


@dataclass(frozen=True)
class QAInfo:
    """What `qa.json` says about one sample."""

    answer_tokens: int  # the last `answer_tokens` ids of the sample are the answer
    length: int  # tokens the model reads: prompt + answer - 1
    depth: float  # the depth bin the fact was placed at (0 = first token of the filler, 1 = its end)
    needle_at: int  # index of the fact's first token in the sample
    needle_tokens: int


@dataclass(frozen=True)
class QASample:
    tokens: np.ndarray  # prompt + answer
    info: QAInfo

    @property
    def prompt(self) -> np.ndarray:
        return self.tokens[:-self.info.answer_tokens]

    @property
    def answer(self) -> np.ndarray:
        return self.tokens[-self.info.answer_tokens:]


def encode_qa_sample(key: str, sample: QASample, source: str, index: int) -> dict[str, Any]:
    """The tar members of one sample (sorted-key JSON: equal samples give equal bytes)."""
    members = encode_sample(key, sample.tokens, source, index)
    members["qa.json"] = json.dumps(asdict(sample.info), sort_keys=True).encode("utf-8")
    return members


def decode_qa_sample(sample: Mapping[str, Any], vocab_size: int | None = None) -> QASample:
    """A sample read back from a shard; SampleFormatError when it does not hold together."""
    tokens = decode_tokens(sample, vocab_size)
    try:
        info = QAInfo(**json.loads(sample["qa.json"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise SampleFormatError(f"sample {sample.get('__key__')!r}: bad or missing qa.json: {exc}") from None
    if not 0 < info.answer_tokens < len(tokens) or len(tokens) != info.length + 1:
        raise SampleFormatError(f"sample {sample.get('__key__')!r}: {len(tokens)} tokens do not fit "
                                f"length {info.length} with {info.answer_tokens} answer token(s)")
    return QASample(tokens, info)


def answer_labels(sample: QASample) -> np.ndarray:
    """The sample's tokens with every non-answer id replaced by IGNORE."""
    labels = np.full(len(sample.tokens), IGNORE, dtype=np.int64)
    labels[-sample.info.answer_tokens:] = sample.answer
    return labels


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
