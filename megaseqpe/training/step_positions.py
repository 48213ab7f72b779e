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
    positions: torch.Tensor  # [B|1, N, n_dims]: a window of L tokens, or a grid of patches
    objectives: Optional[ObjectiveSample]
    shifted: bool

    @property
    def extra_positions(self) -> list[torch.Tensor]:
        return self.objectives.positions if self.objectives is not None else []


class StepPositions:
    """The positions of each step. `extents` is the training window per dimension: `(L,)` for
    text (the default), `(rows, cols)` of the patch grid for images; a shift moves the whole
    window by one offset per dimension."""

    def __init__(self, config: Config, extents: Optional[tuple[int, ...]] = None) -> None:
        position = config.position
        self.extents = tuple(extents or (config.model.max_seq_len,))
        self.seed, self.batch_size = config.train.seed, config.data.micro_batch_size
        self.seqpe = position.type == "seqpe"
        self.shift_rate = position.random_shift_rate if self.seqpe else 0.0
        self.windows = position.main_batch_size
        if self.shift_rate and self.batch_size % self.windows:
            raise ConfigError(f"position.main_batch_size={self.windows} must divide "
                              f"data.micro_batch_size={self.batch_size}")
        # A fixed random subset of the possible window starts, the same in every process: flat
        # indices into the grid of starts, unravelled to one offset per dimension.
        starts = tuple(position.max_position - extent + 1 for extent in self.extents)
        total = int(np.prod(starts))
        count = min(position.random_shift_downsample, total)
        if self.shift_rate and count < self.windows:
            raise ConfigError(f"position.main_batch_size={self.windows} exceeds the {count} shift offsets")
        flat = np.sort(np.random.default_rng([self.seed, 5]).choice(total, size=count, replace=False))
        self.offsets = np.stack(np.unravel_index(flat, starts), axis=-1)  # [count, n_dims]
        grid = torch.meshgrid(*[torch.arange(extent) for extent in self.extents], indexing="ij")
        self.window = torch.stack(grid, dim=-1).reshape(-1, len(self.extents))  # [N, n_dims]
        self.objectives = SeqPEObjectives(position, config.model.n_head) if self.seqpe else None
        if self.objectives and not (self.objectives.contrastive or self.objectives.distillation):
            self.objectives = None

    def plan(self, step: int, rank: int, device: torch.device) -> StepPlan:
        shared = np.random.default_rng([self.seed, step])
        local = np.random.default_rng([self.seed, step, rank + 1])
        shifted = bool(shared.random() < self.shift_rate)
        window = self.window.to(device)
        if shifted:  # `windows` distinct windows, each shared by batch / windows rows
            chosen = local.choice(len(self.offsets), size=self.windows, replace=False)
            starts = torch.as_tensor(self.offsets[chosen], device=device)  # [windows, n_dims]
            positions = (starts[:, None, :] + window).repeat_interleave(self.batch_size // self.windows, dim=0)
        else:
            positions = window.unsqueeze(0)
        sample = None
        if self.objectives is not None:
            # The reference distils only on unshifted steps.
            sample = self.objectives.sample(self.extents, shared, local, device, distill=not shifted)
        return StepPlan(positions, sample, shifted)
