"""Run monitoring on rank 0: TensorBoard scalars, the same numbers in metrics.jsonl, a progress bar.

Tags are the contract of ARCHITECTURE.md (`train/loss`, `val/ppl`, ...). After a resume the
records of steps past the checkpoint are dropped first (metrics.jsonl rewritten, TensorBoard's
purge_step), so every step is recorded exactly once.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Optional

from tqdm import tqdm


class MetricsLogger:
    def __init__(self, run_dir: Path, *, enabled: bool, start_step: int, max_steps: int) -> None:
        self.enabled = enabled
        self.writer = None
        self.progress: Optional[tqdm] = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = run_dir / "metrics.jsonl"
        self._drop_records_after(start_step)
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)
        self.progress = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _drop_records_after(self, step: int) -> None:
        if not self.jsonl.exists():
            return
        kept = [line for line in self.jsonl.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.jsonl.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record `scalars` (tag → value) for `step` in TensorBoard and metrics.jsonl."""
        if not self.enabled:
            return
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self.writer.flush()

    def advance(self, steps: int, postfix: Mapping[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(steps)
            self.progress.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def write(self, message: str) -> None:
        if self.enabled:
            (self.progress.write if self.progress is not None else print)(message)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()
