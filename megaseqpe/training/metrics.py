"""Run monitoring on rank 0: TensorBoard scalars, the same numbers in metrics.jsonl, a progress bar,
and throughput (tokens/s, MFU) computed in one place.

Tags are the contract of docs/architecture.md (`train/loss`, `val/ppl`, ...). After a resume the
records of steps past the checkpoint are dropped first (metrics.jsonl rewritten, TensorBoard's
purge_step), so every step is recorded exactly once.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Mapping, Optional

from tqdm import tqdm

from ..rundir import RunDir
from .flops import FlopCounter


@dataclass
class StepResult:
    """What one optimizer step did, as `Trainer.train_step` reports it."""

    records: list[dict[str, float]] = field(default_factory=list)  # per micro-batch: `train/...` → value
    skipped: int = 0  # non-finite micro-batches dropped on every rank before backward
    tokens: int = 0  # trunk tokens of the step, all ranks
    encoder_tokens: int = 0  # position-encoder tokens of the step, all ranks
    grad_norm: Optional[float] = None

    @property
    def loss(self) -> float:
        return sum(r["train/loss"] for r in self.records) / len(self.records)


class Throughput:
    """Tokens per second and model FLOPs utilisation over the steps since the last `reset`."""

    def __init__(self, flops: FlopCounter, peak: Optional[float], world_size: int) -> None:
        self.flops, self.peak, self.world_size = flops, peak, world_size
        self.reset()

    def reset(self) -> None:
        self.start, self.tokens, self.encoder_tokens = time.perf_counter(), 0, 0

    def add(self, result: StepResult) -> None:
        self.tokens += result.tokens
        self.encoder_tokens += result.encoder_tokens

    def rates(self) -> dict[str, float]:
        """`train/tokens_per_second`, and `train/mfu` where the accelerator's peak is known."""
        seconds = max(time.perf_counter() - self.start, 1e-9)
        rates = {"train/tokens_per_second": self.tokens / seconds}
        if self.peak is not None:
            flops = self.flops.step_flops(self.tokens, self.encoder_tokens)
            rates["train/mfu"] = flops / seconds / (self.peak * self.world_size)
        return rates


class MetricsLogger:
    def __init__(self, run: RunDir, *, enabled: bool, start_step: int, max_steps: int, log_every: int,
                 throughput: Throughput) -> None:
        self.enabled, self.max_steps, self.log_every = enabled, max_steps, log_every
        self.throughput, self.window = throughput, []
        self.writer = None
        self.progress: Optional[tqdm] = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = run.metrics
        self._drop_records_after(start_step)
        self.writer = SummaryWriter(str(run.tensorboard), purge_step=start_step + 1)
        self.progress = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _drop_records_after(self, step: int) -> None:
        if not self.jsonl.exists():
            return
        kept = [line for line in self.jsonl.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.jsonl.write_text("".join(line + "\n" for line in kept))

    def should_log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.max_steps

    def record_step(self, step: int, result: StepResult, scalars: Mapping[str, float]) -> None:
        """Add one optimizer step; at a log step write the means of the micro-batches since the last
        one, throughput, `scalars` (lr, counters) and the step's gradient norm."""
        self.window += result.records
        self.throughput.add(result)
        rates = self.throughput.rates()
        if self.should_log(step):
            keys = {k for record in self.window for k in record}
            means = {k: sum(r[k] for r in self.window if k in r) / sum(k in r for r in self.window) for k in keys}
            norm = {} if result.grad_norm is None else {"train/grad_norm": result.grad_norm}
            self.log(step, {**means, **rates, **scalars, **norm})
            self.window = []
            self.throughput.reset()
        self.advance(1, {"loss": result.loss, "tok/s": rates["train/tokens_per_second"]})

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
