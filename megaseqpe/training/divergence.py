"""Bad steps in a row end a run before it wastes the night, and never cost the last good checkpoint.

A step is bad when its loss is non-finite on some rank (the micro-batch is dropped before
backward), its global gradient norm is non-finite, or the optimizer skipped it (fp16 overflow).
`train.max_bad_steps` of them in a row abort the run. From the first bad step of a streak on, the
newest checkpoint written before it is kept whatever `keep_last` says; on abort `latest` points at
it, so that a rerun (say with a lower `train.lr`) resumes from before the divergence.
"""
from __future__ import annotations

from typing import Callable, Optional

from .checkpoint import Checkpointer


class TrainingAborted(RuntimeError):
    """Too many consecutive bad steps."""


class DivergenceGuard:
    def __init__(self, limit: int, checkpointer: Checkpointer, write: Callable[[str], None]) -> None:
        self.limit, self.checkpointer, self.write = limit, checkpointer, write
        self.in_a_row = 0
        self.first_bad_step: Optional[int] = None

    def good(self) -> None:
        if self.in_a_row:
            self.checkpointer.protect_before(None)
        self.in_a_row, self.first_bad_step = 0, None

    def bad(self, step: int, why: str) -> None:
        """Count a bad step at `step` (the step being taken, 1-based); raise TrainingAborted at the limit."""
        self.in_a_row += 1
        if self.first_bad_step is None:
            self.first_bad_step = step
            self.checkpointer.protect_before(step)
        self.write(f"step {step}: {why} ({self.in_a_row} bad in a row)")
        if self.in_a_row < self.limit:
            return
        kept = self.checkpointer.protected
        self.checkpointer.point_latest_at_protected()
        where = (f"kept {kept} from before the first bad step ({self.first_bad_step}) as the checkpoint a rerun "
                 "resumes from" if kept else f"no checkpoint was written before the first bad step ({self.first_bad_step})")
        raise TrainingAborted(f"aborting: {self.in_a_row} bad steps in a row at step {step}, the last: {why} "
                              f"(train.max_bad_steps={self.limit}); {where}; lower train.lr or check the data")
