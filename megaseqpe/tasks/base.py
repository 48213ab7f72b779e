"""What a run trains and scores: a task builds the model and the data streams, computes the
training loss of a micro-batch, and measures the model at sizes beyond training.

Chosen once from `config.task` (`megaseqpe.tasks.build_task`), so training and evaluation share
one object per task and neither re-decides text vs image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..config import Config
from ..data import TokenBatchLoader
from ..positions import StepPlan


@dataclass
class StepLoss:
    """One training micro-batch: the loss to back-propagate and what is logged of it."""

    loss: torch.Tensor  # task loss + the position scheme's weighted auxiliary losses
    parts: dict[str, torch.Tensor]  # tag → value: task loss, `train/<aux loss>`, the scheme's stats
    encoder_tokens: int  # tokens the position encoder computed (FLOP counting)


@dataclass
class ExtrapolationRequest:
    """What `megaseqpe-eval` asked for; each task reads the fields that concern it."""

    manifest: str
    split: str
    device: torch.device
    lengths: Optional[list[int]] = None  # text: evaluation lengths (default L, 2L, 4L, 8L, 16L)
    max_tokens: int = 32768  # text: tokens scored per length
    resolutions: Optional[list[int]] = None  # images: image sides in pixels (default 1x-3x)
    max_images: Optional[int] = None  # images: images scored per resolution


class Task:
    """The task-specific side of training and evaluation; the base class documents the contract."""

    #: The tag of the task's own loss (`train/<name>`); `train/loss` adds the scheme's auxiliary losses.
    loss_tag: str
    #: The task whose model this one builds and whose runs `train.init_from` accepts (None: itself);
    #: `qa` fine-tunes a `language_modeling` model.
    model_task: Optional[str] = None

    def __init__(self, config: Config) -> None:
        self.config = config

    def check_data(self, manifest: Optional[str] = None) -> None:
        """Fail at start-up (ConfigError / ManifestError) when `manifest` (default: the run's
        data.manifest) does not fit the model or the run."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_loader(self, seed: int, rank: int, world_size: int) -> TokenBatchLoader:
        raise NotImplementedError

    @property
    def position_extents(self) -> tuple[int, ...]:
        """The training window per position dimension (what the step planner shifts and distils)."""
        raise NotImplementedError

    @property
    def sequence_length(self) -> int:
        """Tokens the trunk processes per example (throughput, FLOPs)."""
        raise NotImplementedError

    def to_device(self, batch: Any, device: torch.device) -> Any:
        return batch.to(device)

    def forward(self, model: nn.Module, batch: Any, plan: StepPlan):
        """(model output, logged parts) for one training micro-batch; parts hold `loss_tag`."""
        raise NotImplementedError

    def training_loss(self, model: nn.Module, batch: Any, plan: StepPlan) -> StepLoss:
        """The loss of one training micro-batch: the task's loss plus, by name, every auxiliary
        loss the position scheme returned (already weighted); its statistics (keyed by their
        TensorBoard tags) are logged too."""
        out, parts = self.forward(model, batch, plan)
        signal = out.position_signal
        loss = out.loss + sum(signal.aux_losses.values())
        parts.update({f"train/{name}": value for name, value in signal.aux_losses.items()})
        parts.update({tag: torch.as_tensor(value) for tag, value in signal.stats.items()})
        return StepLoss(loss, parts, signal.encoder_tokens)

    def eval_batches(self, rank: int, world_size: int) -> Iterator[Any]:
        raise NotImplementedError

    def eval_sources(self, rank: int, world_size: int) -> dict[str, Iterator[Any]]:
        """Validation batches per data source (`data.sources`), by name; "" names the one stream of
        a run without sources, whose metrics carry no source suffix."""
        return {"": self.eval_batches(rank, world_size)}

    def eval_totals(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """float64 sums of one validation batch, all-reduced over batches and ranks."""
        raise NotImplementedError

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError

    def extrapolation(self, model: nn.Module, request: ExtrapolationRequest) -> dict:
        """Score `model` (in eval mode, beyond-training inputs enabled) at each requested size:
        the report's `train_length`, the metric keyed by size, the amount scored and the method."""
        raise NotImplementedError
