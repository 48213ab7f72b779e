"""Validation during training: the task's loss (and ppl or accuracy) on the validation split."""
from __future__ import annotations

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
        """`val/...` scalars over up to `max_batches` batches per rank, reduced over ranks ({} if none)."""
        batches = self._batches()
        # Every rank runs the same number of forwards (ZeRO-3 gathers parameters collectively).
        count = torch.tensor([len(batches)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MIN)
        totals = None
        self.engine.eval()
        with torch.no_grad():
            for batch in batches[: int(count.item())]:
                batch_totals = self.task.eval_totals(self.engine, self.task.to_device(batch, self.device))
                totals = batch_totals if totals is None else totals + batch_totals
        self.engine.train()
        if totals is None:  # every rank agrees (count is the minimum): nothing to reduce
            return {}
        totals = totals.to(self.device)
        dist.all_reduce(totals)
        return self.task.val_metrics(totals) if totals[1] > 0 else {}

    def _batches(self) -> list:
        batches = []
        for batch in self.task.eval_batches(self.rank, self.world_size):
            batches.append(batch)
            if len(batches) == self.max_batches:
                break
        return batches
