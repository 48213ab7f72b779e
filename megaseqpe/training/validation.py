"""Validation during training: the task's loss (and ppl or accuracy) on the validation split.

With `data.sources` each source is scored on its own validation split: `val/loss/<name>` (and
the task's other metrics, suffixed) per source, and the plain `val/loss` over the tokens of all
sources pooled, the same measure as a run with one manifest."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist

from ..tasks import Task


class Validator:
    def __init__(self, task: Task, engine, device: torch.device, rank: int, world_size: int, *,
                 every: int, max_batches: int, max_steps: int) -> None:
        self.task, self.engine, self.device, self.rank, self.world_size = task, engine, device, rank, world_size
        self.every, self.max_batches, self.max_steps = every, max_batches, max_steps

    def should_validate(self, step: int) -> bool:
        return step % self.every == 0 or step == self.max_steps

    def run(self) -> dict[str, float]:
        """`val/...` scalars over up to `max_batches` batches per rank and source, reduced over ranks
        ({} if none)."""
        metrics, pooled = {}, None
        self.engine.eval()
        with torch.no_grad():
            for name, batches in self.task.eval_sources(self.rank, self.world_size).items():
                totals = self._totals(batches)
                if totals is None:
                    continue
                pooled = totals if pooled is None else pooled + totals
                if name:
                    metrics.update({f"{tag}/{name}": value for tag, value in self._metrics(totals).items()})
        self.engine.train()
        return (self._metrics(pooled) if pooled is not None else {}) | metrics

    def _totals(self, batches: Iterable[Any]) -> Optional[torch.Tensor]:
        """The task's totals of one source's batches, summed over ranks (None if a rank has none)."""
        batches = self._first(batches)
        # Every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively).
        count = torch.tensor([len(batches)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        totals = None
        for batch in batches[: int(count.item())]:
            batch_totals = self.task.eval_totals(self.engine, self.task.to_device(batch, self.device))
            totals = batch_totals if totals is None else totals + batch_totals
        if totals is None:  # every rank agrees (count is the minimum): nothing to reduce
            return None
        totals = totals.to(self.device)
        dist.all_reduce(totals)
        return totals

    def _metrics(self, totals: torch.Tensor) -> dict[str, float]:
        return self.task.val_metrics(totals) if totals[1] > 0 else {}

    def _first(self, batches: Iterable[Any]) -> list:
        first = []
        for batch in batches:
            first.append(batch)
            if len(first) == self.max_batches:
                break
        return first
