"""Image classification: a ViT on image shards, scored by top-1 accuracy against resolution.

Does a ViT trained on one patch grid keep working when the images (and so the grid) grow to
1.5x, 2x, 3x? The validation images are resized to each resolution; the position module sees the
larger grid of (row, col) coordinates. SeqPE, sinusoidal, RoPE and NoPE extend; a learned grid
table is resized bicubically (as timm does) and the report says so (`method`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data import (KIND_IMAGE, TokenBatchLoader, build_image_train_loader, eval_image_batches, load_manifest,
                    resize_images)
from ..model import build_vit
from ..positions import StepPlan
from .base import ExtrapolationRequest, Task


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


class ImageClassification(Task):
    """Top-1 classification with a ViT on image shards, images resized to `model.image_size`."""

    loss_tag = "train/cls_loss"

    def check_data(self) -> None:
        model, image = self.config.model, load_manifest(self.config.data.manifest, expect=KIND_IMAGE).image
        if image.channels != model.channels:
            raise ConfigError(f"model.channels={model.channels} but the images of {self.config.data.manifest} "
                              f"have {image.channels}")
        if len(image.classes) > model.num_classes:
            raise ConfigError(f"model.num_classes={model.num_classes} is smaller than the {len(image.classes)} "
                              f"classes of {self.config.data.manifest}")

    def build_model(self) -> nn.Module:
        return build_vit(self.config)

    def build_loader(self, seed: int, rank: int, world_size: int) -> TokenBatchLoader:
        c = self.config
        return build_image_train_loader(c.data.manifest, micro_batch_size=c.data.micro_batch_size, seed=seed,
                                        rank=rank, world_size=world_size, num_workers=c.data.num_workers,
                                        shuffle_buffer=c.data.shuffle_buffer, on_corrupt=c.data.on_corrupt)

    @property
    def position_extents(self) -> tuple[int, ...]:
        return (self.config.model.grid_size,) * 2

    @property
    def sequence_length(self) -> int:
        return self.config.model.grid_size ** 2 + 1  # patches + CLS

    def to_device(self, batch, device: torch.device):
        images, labels = batch
        return resize_images(images.to(device), self.config.model.image_size), labels.to(device)

    def forward(self, model: nn.Module, batch, plan: StepPlan):
        images, labels = batch
        out = model(images, labels=labels, positions=plan.positions, objectives=plan.objectives)
        accuracy_ = (out.logits.argmax(-1) == labels).float().mean()
        return out, {self.loss_tag: out.loss, "train/acc": accuracy_}

    def eval_batches(self, rank: int, world_size: int):
        c = self.config
        return eval_image_batches(c.data.manifest, c.data.val_split, batch_size=c.data.micro_batch_size,
                                  rank=rank, world_size=world_size, on_corrupt=c.data.on_corrupt)

    def eval_totals(self, model: nn.Module, batch) -> torch.Tensor:
        images, labels = batch
        out = model(images, labels=labels)
        correct = (out.logits.argmax(-1) == labels).sum().item()
        return torch.tensor([out.loss.item() * len(labels), len(labels), correct], dtype=torch.float64)

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        return {"val/loss": float(totals[0] / totals[1]), "val/acc": float(totals[2] / totals[1])}

    def extrapolation(self, model: nn.Module, request: ExtrapolationRequest) -> dict:
        resolutions = list(request.resolutions or default_resolutions(self.config))
        check_resolutions(self.config, resolutions)
        train, method = self.config.model.image_size, model.position.enable_extrapolation()
        result = {"train_length": train, "train_grid": self.config.model.grid_size, "acc": {}, "images": {},
                  "method": {}}
        for size in resolutions:
            acc, count = accuracy(model, request.manifest, request.split, size, request.max_images, request.device,
                                  self.config.data.on_corrupt)
            result["acc"][str(size)], result["images"][str(size)] = acc, count
            result["method"][str(size)] = "extend" if size <= train else method
        return result
