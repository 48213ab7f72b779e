"""Finite, unshuffled token batches for validation and extrapolation evaluation.

One pass over a split in manifest order; rank ``r`` of ``w`` takes every ``w``-th document, so
any number of ranks works with any number of shards (validation splits are often one shard).
Rows are packed like training rows; the last partial row of a rank is dropped (at most
``max_seq_len`` tokens) and the last batch may hold fewer rows. Ranks may therefore get different
batch counts: sum losses locally and all-reduce once at the end, not per batch.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .manifest import load_manifest
from .packing import pack_rows
from .shard_reader import check_on_corrupt, iter_shard_tokens


def eval_batches(manifest_path: str | Path, split: str = "val", *, max_seq_len: int,
                 batch_size: int, rank: int = 0, world_size: int = 1,
                 on_corrupt: str = "error", bos_id: Optional[int] = None) -> Iterator[torch.Tensor]:
    """``LongTensor[<= batch_size, max_seq_len + 1]`` batches covering this rank's documents once
    (``bos_id``, when given, in front of every document, as in training)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    check_on_corrupt(on_corrupt)
    manifest = load_manifest(manifest_path)
    shards = manifest.split(split).shards

    def documents() -> Iterator[tuple[int, int, np.ndarray]]:
        index = 0
        for shard in shards:
            for _, tokens in iter_shard_tokens(manifest.shard_path(shard), shard, on_corrupt,
                                               lambda n: None, manifest.tokenizer.vocab_size):
                if index % world_size == rank:
                    yield 0, index, tokens
                index += 1

    rows = (row for row, _ in pack_rows(documents(), max_seq_len + 1, manifest.tokenizer.eos_id, bos_id=bos_id))
    while batch := list(islice(rows, batch_size)):
        yield torch.from_numpy(np.stack(batch))
