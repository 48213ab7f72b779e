"""What the trainer trains: a task builds the model and the data stream and scores a batch.

Chosen once from `config.task`, so the training loop (DeepSpeed engine, SeqPE step, checkpoints,
faults, monitoring) is one code path for language modelling and image classification.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn

from ..config import Config, ConfigError
from ..data import (KIND_IMAGE, TokenBatchLoader, build_image_train_loader, build_train_loader, eval_batches,
                    eval_image_batches, load_manifest, resize_images)
from ..model import build_gpt, build_vit
from .step_positions import StepPlan


class Task:
    """The task-specific side of training; the base class documents the contract."""

    #: The tag of the task's own loss (`train/<name>`); `train/loss` adds the SeqPE objectives.
    loss_tag: str

    def __init__(self, config: Config) -> None:
        self.config = config

    def check_data(self) -> None:
        """Fail at start-up (ConfigError / ManifestError) when the manifest does not fit the model."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_loader(self, seed: int, rank: int, world_size: int) -> TokenBatchLoader:
        raise NotImplementedError

    @property
    def position_extents(self) -> tuple[int, ...]:
        """The training window per position dimension (SeqPE shifts and distillation teacher)."""
        raise NotImplementedError

    @property
    def sequence_length(self) -> int:
        """Tokens the trunk processes per example (throughput, FLOPs)."""
        raise NotImplementedError

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return batch.to(device)

    def forward(self, engine, batch: Any, plan: StepPlan):
        """(model output, logged parts) for one training micro-batch; parts hold `loss_tag`."""
        raise NotImplementedError

    def eval_batches(self, rank: int, world_size: int) -> Iterator[Any]:
        raise NotImplementedError

    def eval_totals(self, engine, batch: Any) -> torch.Tensor:
        """float64 sums of one validation batch, all-reduced over batches and ranks."""
        raise NotImplementedError

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


class LanguageModeling(Task):
    """Next-token prediction with a GPT on packed token shards."""

    loss_tag = "train/lm_loss"

    def check_data(self) -> None:
        vocab = load_manifest(self.config.data.manifest).tokenizer.vocab_size
        if vocab > self.config.model.vocab_size:
            raise ConfigError(f"model.vocab_size={self.config.model.vocab_size} is smaller than the tokenizer's "
                              f"vocabulary of {vocab} ({self.config.data.manifest})")

    def build_model(self) -> nn.Module:
        return build_gpt(self.config)

    def build_loader(self, seed: int, rank: int, world_size: int) -> TokenBatchLoader:
        c = self.config
        return build_train_loader(c.data.manifest, max_seq_len=c.model.max_seq_len,
                                  micro_batch_size=c.data.micro_batch_size, seed=seed, rank=rank,
                                  world_size=world_size, num_workers=c.data.num_workers,
                                  shuffle_buffer=c.data.shuffle_buffer, on_corrupt=c.data.on_corrupt)

    @property
    def position_extents(self) -> tuple[int, ...]:
        return (self.config.model.max_seq_len,)

    @property
    def sequence_length(self) -> int:
        return self.config.model.max_seq_len

    def forward(self, engine, batch: torch.Tensor, plan: StepPlan):
        out = engine(batch[:, :-1], positions=plan.positions, targets=batch[:, 1:],
                     extra_positions=plan.extra_positions)
        return out, {self.loss_tag: out.loss}

    def eval_batches(self, rank: int, world_size: int) -> Iterator[torch.Tensor]:
        c = self.config
        return eval_batches(c.data.manifest, c.data.val_split, max_seq_len=c.model.max_seq_len,
                            batch_size=c.data.micro_batch_size, rank=rank, world_size=world_size,
                            on_corrupt=c.data.on_corrupt)

    def eval_totals(self, engine, batch: torch.Tensor) -> torch.Tensor:
        out = engine(batch[:, :-1], targets=batch[:, 1:])
        return torch.tensor([out.loss.item() * batch[:, 1:].numel(), batch[:, 1:].numel()], dtype=torch.float64)

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        loss = float(totals[0] / totals[1])
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}


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

    def forward(self, engine, batch, plan: StepPlan):
        images, labels = batch
        out = engine(images, labels=labels, positions=plan.positions, extra_positions=plan.extra_positions)
        accuracy = (out.logits.argmax(-1) == labels).float().mean()
        return out, {self.loss_tag: out.loss, "train/acc": accuracy}

    def eval_batches(self, rank: int, world_size: int):
        c = self.config
        return eval_image_batches(c.data.manifest, c.data.val_split, batch_size=c.data.micro_batch_size,
                                  rank=rank, world_size=world_size, on_corrupt=c.data.on_corrupt)

    def eval_totals(self, engine, batch) -> torch.Tensor:
        images, labels = batch
        out = engine(images, labels=labels)
        correct = (out.logits.argmax(-1) == labels).sum().item()
        return torch.tensor([out.loss.item() * len(labels), len(labels), correct], dtype=torch.float64)

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        return {"val/loss": float(totals[0] / totals[1]), "val/acc": float(totals[2] / totals[1])}


TASKS = {"language_modeling": LanguageModeling, "image_classification": ImageClassification}


def build_task(config: Config) -> Task:
    """The task that `config.task` names (the only place the name is read)."""
    return TASKS[config.task](config)
