"""Top-1 accuracy against input resolution: does a ViT trained on one patch grid keep working
when the images (and so the grid) grow to 1.5x, 2x, 3x?

The validation images are resized to each resolution; the position module sees the larger grid
of (row, col) coordinates. SeqPE, sinusoidal, RoPE and NoPE extend; a learned grid table is
resized bicubically (as timm does) and the report says so (`method`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import Config
from ..data import eval_image_batches, resize_images


def default_resolutions(config: Config) -> list[int]:
    """1x, 1.5x, 2x and 3x the training image side, rounded to whole patches."""
    patch, grid = config.model.patch_size, config.model.grid_size
    return sorted({max(1, round(grid * factor)) * patch for factor in (1, 1.5, 2, 3)})


def check_resolutions(config: Config, resolutions: list[int]) -> None:
    for size in resolutions:
        if size % config.model.patch_size:
            raise ValueError(f"resolution {size} is not a multiple of model.patch_size={config.model.patch_size}")


def accuracy(model: nn.Module, manifest: str, split: str, size: int, max_images: Optional[int],
             device: torch.device, on_corrupt: str = "error") -> tuple[Optional[float], int]:
    """(top-1 accuracy, images scored) with every image resized to `size` x `size`."""
    correct = seen = 0
    with torch.no_grad():
        for images, labels in eval_image_batches(manifest, split, batch_size=64, on_corrupt=on_corrupt):
            if max_images is not None:
                images, labels = images[: max_images - seen], labels[: max_images - seen]
            logits = model(resize_images(images.to(device), size)).logits
            correct += int((logits.argmax(-1).cpu() == labels).sum())
            seen += len(labels)
            if max_images is not None and seen >= max_images:
                break
    return (correct / seen, seen) if seen else (None, 0)


def evaluate_images(model: nn.Module, config: Config, *, resolutions: Optional[list[int]], manifest: str,
                    split: str, max_images: Optional[int], device: torch.device) -> dict:
    """The result's measurements: `acc`, `images` and `method` keyed by image side."""
    resolutions = list(resolutions or default_resolutions(config))
    check_resolutions(config, resolutions)
    train = config.model.image_size
    result = {"train_length": train, "train_grid": config.model.grid_size, "acc": {}, "images": {}, "method": {}}
    for size in resolutions:
        acc, count = accuracy(model, manifest, split, size, max_images, device, config.data.on_corrupt)
        result["acc"][str(size)], result["images"][str(size)] = acc, count
        result["method"][str(size)] = "extend" if size <= train else model.position.extrapolation
    return result
