"""Image streams: the same shard split, shuffle and exact resume as the token stream, one image
per row instead of packed tokens.

Training::

    loader = build_image_train_loader(manifest, micro_batch_size=32, seed=1, rank=rank,
                                      world_size=world, num_workers=1)
    for images, labels in loader:   # FloatTensor[32, C, H, W] in [0, 1], LongTensor[32]; endless
        ...
    ckpt["data"] = loader.state_dict()  ...  loader.load_state_dict(ckpt["data"])

Evaluation: ``for images, labels in eval_image_batches(manifest, "val", batch_size=64): ...``.
Images keep the resolution they were stored at; :func:`resize_images` brings a batch to the
resolution a model trains or is evaluated at.
"""
from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ReaderState, ShardStreamDataset
from .image_samples import decode_image_sample
from .loader import TokenBatchLoader
from .manifest import KIND_IMAGE, load_manifest
from .shard_reader import check_on_corrupt, iter_shard_samples

Row = tuple[np.ndarray, int]


def collate_images(rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``[H, W, C]`` images and labels → (FloatTensor ``[B, C, H, W]`` in [0, 1], LongTensor ``[B]``)."""
    images = torch.from_numpy(np.stack([image for image, _ in rows])).permute(0, 3, 1, 2).float() / 255.0
    return images, torch.tensor([label for _, label in rows], dtype=torch.int64)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Square ``size`` x ``size`` images (bicubic, antialiased when shrinking, clamped to [0, 1])."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True).clamp_(0.0, 1.0)


class ImageShardDataset(ShardStreamDataset):
    """Endless, shuffled ``(images, labels)`` batches of an image manifest split for one rank.

    Arguments and resume semantics as :class:`megaseqpe.data.dataset.ShardStreamDataset`; a
    reader's state after an image is (epoch, images of the epoch consumed, 0).
    """

    kind = KIND_IMAGE
    more_shards_hint = "re-run `megaseqpe-prep images` with a smaller --shard-samples"

    def decode(self, sample: dict[str, Any]) -> Row:
        return decode_image_sample(sample)

    def reader_rows(self, reader: int, start: ReaderState = ReaderState()) -> Iterator[tuple[Row, ReaderState]]:
        skipped = [start.skipped]
        for epoch, index, row in self.epoch_documents(reader, start, skipped):
            yield row, ReaderState(epoch, index + 1, 0, skipped[0])

    def collate(self, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        return collate_images(rows)


def build_image_train_loader(manifest_path: str | Path, *, micro_batch_size: int, seed: int = 0,
                             rank: int = 0, world_size: int = 1, num_workers: int = 0,
                             shuffle_buffer: int = 1000, on_corrupt: str = "error",
                             split: str = "train", pin_memory: bool = False) -> TokenBatchLoader:
    """The image training input of one rank, with the token loader's exact, checkpointable position."""
    dataset = ImageShardDataset(manifest_path, split, micro_batch_size=micro_batch_size, seed=seed, rank=rank,
                                world_size=world_size, num_workers=num_workers,
                                shuffle_buffer=shuffle_buffer, on_corrupt=on_corrupt)
    return TokenBatchLoader(dataset, pin_memory=pin_memory)


def eval_image_batches(manifest_path: str | Path, split: str = "val", *, batch_size: int, rank: int = 0,
                       world_size: int = 1, on_corrupt: str = "error"
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Finite, unshuffled batches covering this rank's images once (rank r takes every w-th image)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    check_on_corrupt(on_corrupt)
    manifest = load_manifest(manifest_path, expect=KIND_IMAGE)
    rows = (row for index, row in enumerate(
        row for shard in manifest.split(split).shards
        for _, row in iter_shard_samples(manifest.shard_path(shard), shard, on_corrupt,
                                         lambda n: None, decode_image_sample))
        if index % world_size == rank)
    while batch := list(islice(rows, batch_size)):
        yield collate_images(batch)
