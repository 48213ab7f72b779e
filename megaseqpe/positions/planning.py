"""Which positions a training step uses (docs/method.md §2.1) and what the SeqPE objectives sample.

A planner gives each training micro-batch its `StepPlan`: the positions of the model's tokens
and, for SeqPE, the objectives' sample with the step's encoder pass laid out. The position module
reads the plan; the trainer only passes it along, so it never needs to know which scheme it trains.

Every random choice is a pure function of (seed, step, rank): a resumed run draws exactly what
an uninterrupted one would, with no generator state to checkpoint. Choices that must agree
across ranks (whether the step is shifted, the distillation teacher window) use the stream of
(seed, step); per-rank choices (shift offsets, pivots, candidates, student offsets) add the rank.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from ..config import Config
from .digit_graph import DigitGraphs
from .objectives import ObjectiveSample, SeqPEObjectives


def to_device(value: Any, device: torch.device, moved: Optional[dict[int, torch.Tensor]] = None) -> Any:
    """`value` (a tensor, or a dataclass, list or tuple holding tensors) with every tensor on `device`;
    a tensor held in several places is moved once and stays one object there (`moved`: by id). To
    CUDA the copies are pinned and non-blocking: the planner's thread queues them without waiting on
    the device's default stream, and the step's kernels, queued after them on that same stream (the
    trainer computes on it), read them once they have landed."""
    moved = {} if moved is None else moved
    if isinstance(value, torch.Tensor):
        if id(value) not in moved:
            pinned = device.type == "cuda" and value.device.type == "cpu"
            moved[id(value)] = value.pin_memory().to(device, non_blocking=True) if pinned else value.to(device)
        return moved[id(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: to_device(getattr(value, f.name), device, moved)
                                             for f in dataclasses.fields(value)})
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device, moved) for item in value)
    return value


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
    """SeqPE's plan (docs/method.md §2.1): with probability `position.random_shift_rate` a
    micro-batch uses shifted windows instead of `[0, L)`: each rank keeps its own fixed random
    subset of `random_shift_downsample` window starts and takes `main_batch_size` consecutive
    windows of it (from a random place, wrapping round), batch row r using window r mod that
    count. The objectives' positions are sampled on every micro-batch, distillation only on
    unshifted ones. The plan carries the step's encoder pass (digit_graph.py), laid out on the host
    over the model's positions and the objectives': the model's step then runs it with no host sync
    (the pass's two `torch.unique` calls are the planner's). The constructor checks every constraint
    of the settings, so a bad one fails at start-up naming its key rather than at the first step."""

    def __init__(self, config: Config, extents: tuple[int, ...]) -> None:
        super().__init__(config, extents)
        position = config.position
        self.seed, self.batch_size = config.train.seed, config.data.micro_batch_size
        self.shift_rate, self.windows = position.random_shift_rate, position.main_batch_size
        self.max_position, self.downsample = position.max_position, position.random_shift_downsample
        self._subsets: dict[int, np.ndarray] = {}
        objectives = SeqPEObjectives(position, config.model.n_head)
        objectives.check(self.extents)
        self.objectives = objectives if objectives.enabled else None
        self.graphs = DigitGraphs.for_position(position)
        # While a GPU runs a step the host is idle: plan the next micro-step meanwhile (sampling and
        # the encoder pass's layout), off the critical path (a pure function of (seed, step, rank):
        # only WHEN it is computed changes). On CPU the step itself uses every core.
        self.prefetch = torch.cuda.is_available()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._next: Optional[tuple[tuple, Future]] = None

    def window_starts(self, rank: int) -> np.ndarray:
        """This rank's fixed random subset of window starts `[count, n_dims]`, in its drawn order."""
        if rank not in self._subsets:
            starts = tuple(self.max_position - extent + 1 for extent in self.extents)
            total = int(np.prod(starts))
            rng = np.random.default_rng([self.seed, 5, rank])
            flat = rng.choice(total, size=min(self.downsample, total), replace=False)
            self._subsets[rank] = np.stack(np.unravel_index(flat, starts), axis=-1)
        return self._subsets[rank]

    def plan(self, step: int, rank: int, device: torch.device) -> StepPlan:
        """Micro-step `step`'s plan; with `prefetch`, step + 1's is then computed in a background
        thread, and used if it is the next one asked for (a resume or a jump computes its own)."""
        key, pending, self._next = (step, rank, device), self._next, None
        if pending is not None and pending[0] == key:
            plan = pending[1].result()
        else:
            if pending is not None:
                pending[1].exception()  # wait for it: the planner's caches are not shared across threads
            plan = self._plan(step, rank, device)
        if self.prefetch:
            self._pool = self._pool or ThreadPoolExecutor(1, thread_name_prefix="seqpe-plan")
            self._next = ((step + 1, rank, device), self._pool.submit(self._plan, step + 1, rank, device))
        return plan

    def _plan(self, step: int, rank: int, device: torch.device) -> StepPlan:
        """The plan drawn and its encoder pass laid out on the host, then moved to `device`."""
        shared = np.random.default_rng([self.seed, step])
        local = np.random.default_rng([self.seed, step, rank + 1])
        shifted = bool(shared.random() < self.shift_rate)
        if shifted:
            subset = self.window_starts(rank)
            chosen = (int(local.integers(0, len(subset))) + np.arange(self.windows)) % len(subset)
            rows = np.arange(self.batch_size) % self.windows  # tile the batch over the windows
            starts = torch.as_tensor(subset[chosen][rows])  # [batch, n_dims]
            positions = starts[:, None, :] + self.window
        else:
            positions = self.window.unsqueeze(0)
        sample = ObjectiveSample(None, None)  # with both objectives off, it still carries the encoder pass
        if self.objectives is not None:
            sample = self.objectives.sample(self.extents, shared, local, seed=self.seed, step=step, rank=rank,
                                            distill=not shifted)
        sample.encoder_pass = self.graphs.encoder_pass([positions, *sample.named_positions().values()])
        plan = to_device(StepPlan(positions, sample, shifted), device)
        plan.objectives.planned_for(plan.positions)
        return plan
