"""Image classification: a ViT on image shards, scored by top-1 accuracy against image size.

Does a ViT trained on one patch grid keep working when the grid grows to 1.5x, 2x, 3x? Three
protocols tell apart what a larger grid changes (`PROTOCOLS`): `resize` shows the source image at
each size (more real detail per patch grid, and new positions); `pad` keeps the training picture
at its trained positions and only adds blank new ones around it; `pad_moved` shows the training
picture only at positions never seen in training. The position module sees the larger grid of
(row, col) coordinates. SeqPE, sinusoidal, RoPE and NoPE extend; a learned grid table is resized
bicubically (as timm does) and the report says so (`method`).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Hashable, NamedTuple, Optional

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data import (KIND_IMAGE, TokenBatchLoader, build_image_train_loader, eval_image_batches, load_manifest,
                    resize_images)
from ..model import build_vit
from ..positions import StepPlan
from .base import ExtrapolationRequest, Task

#: (validation images `[B, C, H, W]` in [0, 1], canvas side, training side) → model input `[B, C, side, side]`.
Builder = Callable[[torch.Tensor, int, int], torch.Tensor]
#: A validation batch → model input (one protocol at one side).
Input = Callable[[torch.Tensor], torch.Tensor]


def default_resolutions(config: Config) -> list[int]:
    """1x, 1.5x, 2x and 3x the training image side, rounded to whole patches."""
    patch, grid = config.model.patch_size, config.model.grid_size
    return sorted({max(1, round(grid * factor)) * patch for factor in (1, 1.5, 2, 3)})


def check_resolutions(config: Config, resolutions: list[int]) -> None:
    for size in resolutions:
        if size % config.model.patch_size:
            raise ValueError(f"resolution {size} is not a multiple of model.patch_size={config.model.patch_size}")


def resized(images: torch.Tensor, size: int, train: int) -> torch.Tensor:
    """`resize`: the source image (as stored, e.g. 28 px MNIST) resized to `size`, so real detail
    grows with the size; at `size` == `train` this is exactly the training input."""
    return resize_images(images, size)


def placed(images: torch.Tensor, size: int, train: int, offset: int) -> torch.Tensor:
    """The image as trained on (resized to `train`) at (`offset`, `offset`) of a blank (zero)
    `size` x `size` canvas; the pixels it covers are those of the training input."""
    if offset + train > size:
        raise ValueError(f"a {train} px image at offset {offset} does not fit a {size} px canvas")
    canvas = images.new_zeros(*images.shape[:2], size, size)
    canvas[..., offset:offset + train, offset:offset + train] = resize_images(images, train)
    return canvas


def padded(images: torch.Tensor, size: int, train: int) -> torch.Tensor:
    """`pad`: the training input at its trained place (top-left, so the patch grid from (0, 0)
    holds what it held in training); the larger canvas only adds blank new positions."""
    return placed(images, size, train, offset=0)


def padded_moved(images: torch.Tensor, size: int, train: int) -> torch.Tensor:
    """`pad_moved`: the training input at (`train`, `train`), so it covers only patch positions
    never seen in training (rows and columns >= the training grid). That needs a canvas of at
    least 2x the training side; smaller sizes are not scored (null in the report), rather than
    moved into a corner where they would partly overlap trained positions."""
    return placed(images, size, train, offset=train)


class ImageProtocol(NamedTuple):
    """How a validation image becomes an input of a given side, and from which side it applies."""

    build: Builder
    min_factor: int  # smallest canvas side, as a multiple of the training side (0: any)
    note: str  # one line for the report

    def applies(self, size: int, train: int) -> bool:
        return size >= self.min_factor * train


PROTOCOLS: dict[str, ImageProtocol] = {
    "resize": ImageProtocol(resized, 0, "the source image resized to each side (more real detail)"),
    "pad": ImageProtocol(padded, 1, "the training-size image at the top-left (its trained positions) of a "
                                    "blank canvas: only new, empty positions are added"),
    "pad_moved": ImageProtocol(padded_moved, 2, "the training-size image at offset (train, train), on positions "
                                                "never seen in training; sides below 2x train are not scored"),
}


def accuracy(model: nn.Module, manifest: str, split: str, inputs: dict[Hashable, Input], max_images: Optional[int],
             device: torch.device, on_corrupt: str = "error") -> dict[Hashable, tuple[Optional[float], int]]:
    """(top-1 accuracy, images scored) for each way `inputs[key]` of turning a validation batch
    into model input, in one pass over the split (each batch is read and decoded once)."""
    correct = dict.fromkeys(inputs, 0)
    seen = 0
    with torch.no_grad():
        for images, labels in eval_image_batches(manifest, split, batch_size=64, on_corrupt=on_corrupt):
            if max_images is not None:
                images, labels = images[: max_images - seen], labels[: max_images - seen]
            images = images.to(device)
            for key, build in inputs.items():
                logits = model(build(images)).logits
                correct[key] += int((logits.argmax(-1).cpu() == labels).sum())
            seen += len(labels)
            if max_images is not None and seen >= max_images:
                break
    return {key: (hits / seen if seen else None, seen) for key, hits in correct.items()}


class ImageClassification(Task):
    """Top-1 classification with a ViT on image shards, images resized to `model.image_size`."""

    loss_tag = "train/cls_loss"

    def check_data(self, manifest: Optional[str] = None) -> None:
        manifest = manifest or self.config.data.manifest
        model, image = self.config.model, load_manifest(manifest, expect=KIND_IMAGE).image
        if image.channels != model.channels:
            raise ConfigError(f"model.channels={model.channels} but the images of {manifest} have {image.channels}")
        if len(image.classes) > model.num_classes:
            raise ConfigError(f"model.num_classes={model.num_classes} is smaller than the {len(image.classes)} "
                              f"classes of {manifest}")

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
        """Accuracy `{protocol: {side: acc}}` (and images scored) for every protocol and side;
        a protocol that does not apply at a side (e.g. `pad_moved` below 2x train) gets null."""
        sizes = list(request.resolutions or default_resolutions(self.config))
        check_resolutions(self.config, sizes)
        train, method = self.config.model.image_size, model.position.enable_extrapolation()
        inputs = {(name, size): partial(protocol.build, size=size, train=train)
                  for name, protocol in PROTOCOLS.items() for size in sizes if protocol.applies(size, train)}
        scores = accuracy(model, request.manifest, request.split, inputs, request.max_images, request.device,
                          self.config.data.on_corrupt)
        result = {"train_length": train, "train_grid": self.config.model.grid_size, "acc": {}, "images": {},
                  "method": {str(size): "extend" if size <= train else method for size in sizes},
                  "notes": [f"{name}: {protocol.note}" for name, protocol in PROTOCOLS.items()]}
        for name in PROTOCOLS:
            scored = {str(size): scores.get((name, size), (None, None)) for size in sizes}
            result["acc"][name] = {size: acc for size, (acc, _) in scored.items()}
            result["images"][name] = {size: count for size, (_, count) in scored.items()}
        return result
