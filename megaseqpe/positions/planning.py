"""Which positions a training step uses (docs/method.md §2.1) and what the SeqPE objectives sample.

A planner gives each training micro-batch its `StepPlan`: the positions of the model's tokens
and, for SeqPE, the objectives' sample. The position module reads the plan; the trainer only
passes it along, so it never needs to know which scheme it trains.

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
from .objectives import ObjectiveSample, SeqPEObjectives


@dataclass
class StepPlan:
    positions: torch.Tensor  # [B|1, N, n_dims]: a window of L tokens, or a grid of patches
    objectives: Optional[ObjectiveSample]  # read by the position module only
    shifted: bool


class StepPlanner:
    """The training window `[0, extent)` per dimension, every step, and nothing else: the plan
    of every scheme without training-time work of its own. `extents` is `(L,)` for text and
    `(rows, cols)` of the patch grid for images."""

    def __init__(self, config: Config, extents: tuple[int, ...]) -> None:
        self.extents = tuple(extents)
        grid = torch.meshgrid(*[torch.arange(extent) for extent in self.extents], indexing="ij")
        self.window = torch.stack(grid, dim=-1).reshape(-1, len(self.extents))  # [N, n_dims]

    def plan(self, step: int, rank: int, device: torch.device) -> StepPlan:
        return StepPlan(self.window.to(device).unsqueeze(0), None, shifted=False)


class SeqPEStepPlanner(StepPlanner):
    """SeqPE's plan: with probability `position.random_shift_rate` the window is shifted (to
    starts drawn from a fixed random subset, the same in every process), and the objectives'
    positions are sampled. The constructor checks every constraint of the settings, so a bad one fails at
    start-up naming its key rather than at the first step."""

    def __init__(self, config: Config, extents: tuple[int, ...]) -> None:
        super().__init__(config, extents)
        position = config.position
        self.seed, self.batch_size = config.train.seed, config.data.micro_batch_size
        self.shift_rate, self.windows = position.random_shift_rate, position.main_batch_size
        self.offsets = self._window_starts(position.max_position, position.random_shift_downsample)
        self._check_shifts()
        objectives = SeqPEObjectives(position, config.model.n_head)
        objectives.check(self.extents)
        self.objectives = objectives if objectives.enabled else None

    def _window_starts(self, max_position: int, downsample: int) -> np.ndarray:
        """A fixed random subset of the possible window starts, the same in every process: flat
        indices into the grid of starts, unravelled to one offset per dimension."""
        starts = tuple(max_position - extent + 1 for extent in self.extents)
        total = int(np.prod(starts))
        flat = np.random.default_rng([self.seed, 5]).choice(total, size=min(downsample, total), replace=False)
        return np.stack(np.unravel_index(np.sort(flat), starts), axis=-1)  # [count, n_dims]

    def _check_shifts(self) -> None:
        if not self.shift_rate:
            return
        if self.batch_size % self.windows:
            raise ConfigError(f"position.main_batch_size={self.windows} must divide "
                              f"data.micro_batch_size={self.batch_size}")
        if len(self.offsets) < self.windows:
            raise ConfigError(f"position.main_batch_size={self.windows} exceeds the {len(self.offsets)} "
                              "shift offsets")

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
