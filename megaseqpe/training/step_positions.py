"""Which positions a training step uses (SEQPE.md §5) and what the SeqPE objectives sample.

Every random choice is a pure function of (seed, step, rank): a resumed run draws exactly what
an uninterrupted one would, with no generator state to checkpoint. Choices that must agree
across ranks (whether the step is shifted, the distillation teacher window) use the stream of
(seed, step); per-rank choices (shift offsets, pivots, candidates, student offsets) add the rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..config import Config, ConfigError
from ..positions import ObjectiveSample, SeqPEObjectives


@dataclass
class StepPlan:
    positions: torch.Tensor  # [B|1, L, 1]
    objectives: Optional[ObjectiveSample]
    shifted: bool

    @property
    def extra_positions(self) -> list[torch.Tensor]:
        return self.objectives.positions if self.objectives is not None else []


class StepPositions:
    def __init__(self, config: Config) -> None:
        position, self.length = config.position, config.model.max_seq_len
        self.seed, self.batch_size = config.train.seed, config.data.micro_batch_size
        self.seqpe = position.type == "seqpe"
        self.shift_rate = position.random_shift_rate if self.seqpe else 0.0
        self.windows = position.main_batch_size
        if self.shift_rate and self.batch_size % self.windows:
            raise ConfigError(f"position.main_batch_size={self.windows} must divide "
                              f"data.micro_batch_size={self.batch_size}")
        # A fixed random subset of the possible window starts, the same in every process.
        starts = position.max_position - self.length + 1
        count = min(position.random_shift_downsample, starts)
        if self.shift_rate and count < self.windows:
            raise ConfigError(f"position.main_batch_size={self.windows} exceeds the {count} shift offsets")
        self.offsets = np.sort(np.random.default_rng([self.seed, 5]).choice(starts, size=count, replace=False))
        self.objectives = SeqPEObjectives(position, config.model.n_head) if self.seqpe else None
        if self.objectives and not (self.objectives.contrastive or self.objectives.distillation):
            self.objectives = None

    def plan(self, step: int, rank: int, device: torch.device) -> StepPlan:
        shared = np.random.default_rng([self.seed, step])
        local = np.random.default_rng([self.seed, step, rank + 1])
        shifted = bool(shared.random() < self.shift_rate)
        window = torch.arange(self.length, device=device)
        if shifted:  # `windows` distinct windows, each shared by batch / windows rows
            starts = torch.as_tensor(local.choice(self.offsets, size=self.windows, replace=False), device=device)
            rows = (starts[:, None] + window).repeat_interleave(self.batch_size // self.windows, dim=0)
            positions = rows.unsqueeze(-1)
        else:
            positions = window.view(1, -1, 1)
        sample = None
        if self.objectives is not None:
            # The reference distils only on unshifted steps.
            sample = self.objectives.sample((self.length,), shared, local, device, distill=not shifted)
        return StepPlan(positions, sample, shifted)
