"""Run monitoring on rank 0: TensorBoard scalars, the same numbers in metrics.jsonl, a progress bar
in a terminal or one plain line per log step where stdout is a file (SLURM logs), and throughput
(tokens/s, MFU, step time and its data-loading share, peak memory) computed in one place. The
operators' tags are named as torchtitan names them (`throughput(tps)`, `mfu(%)`, `time_metrics/...`).

Tags are the contract of docs/architecture.md (`train/loss`, `val/ppl`, ...). After a resume the
records of steps past the checkpoint are dropped first (metrics.jsonl rewritten, TensorBoard's
purge_step), so every step is recorded exactly once.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import torch
from tqdm import tqdm

from ..rundir import RunDir
from .flops import FlopCounter, full_numel


@dataclass
class StepResult:
    """What one optimizer step did, as `Trainer.train_step` reports it."""

    records: list[dict[str, float]] = field(default_factory=list)  # per micro-batch: `train/...` → value
    skipped: int = 0  # non-finite micro-batches dropped on every rank before backward
    tokens: int = 0  # trunk tokens of the step, all ranks
    encoder_tokens: int = 0  # position-encoder tokens of the step, all ranks
    grad_norm: Optional[float] = None
    seconds: float = 0.0  # wall time of the step, rank 0
    data_seconds: float = 0.0  # of which blocked waiting for the next micro-batch

    @property
    def loss(self) -> float:
        return sum(r["train/loss"] for r in self.records) / len(self.records)


class StepTimer:
    """Wall time of one optimizer step and the part of it spent blocked on the data stream
    (`clock` is injectable so that the split can be checked without sleeping)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.start()

    def start(self) -> None:
        self.started, self.waited = self.clock(), 0.0

    def next(self, batches: Iterator[Any]) -> Any:
        before = self.clock()
        item = next(batches)
        self.waited += self.clock() - before
        return item

    def stop(self) -> tuple[float, float]:
        """(step seconds, data-wait seconds) since `start`."""
        return self.clock() - self.started, self.waited


class Throughput:
    """Tokens per second, model FLOPs utilisation and the step-time split over the steps since the
    last `reset`. Time is the steps' own (`StepResult.seconds`): validation and checkpoints between
    steps do not lower the rates."""

    def __init__(self, flops: FlopCounter, peak: Optional[float], world_size: int) -> None:
        self.flops, self.peak, self.world_size = flops, peak, world_size
        self.reset()

    def reset(self) -> None:
        self.steps, self.tokens, self.encoder_tokens = 0, 0, 0
        self.seconds, self.data_seconds = 0.0, 0.0

    def add(self, result: StepResult) -> None:
        self.steps += 1
        self.tokens += result.tokens
        self.encoder_tokens += result.encoder_tokens
        self.seconds += result.seconds
        self.data_seconds += result.data_seconds

    def rates(self) -> dict[str, float]:
        """Global `train/tokens_per_second` and per device `throughput(tps)` and `tflops`; the mean step
        time and its data-loading part (s, %); `train/mfu` (a fraction) and `mfu(%)` where the
        accelerator's peak is known."""
        seconds, steps = max(self.seconds, 1e-9), max(self.steps, 1)
        flops_per_second = self.flops.step_flops(self.tokens, self.encoder_tokens) / seconds
        rates = {"train/tokens_per_second": self.tokens / seconds,
                 "throughput(tps)": self.tokens / seconds / self.world_size,
                 "tflops": flops_per_second / self.world_size / 1e12,
                 "time_metrics/end_to_end(s)": self.seconds / steps,
                 "time_metrics/data_loading(s)": self.data_seconds / steps,
                 "time_metrics/data_loading(%)": 100 * self.data_seconds / seconds}
        if self.peak is not None:
            rates["train/mfu"] = flops_per_second / (self.peak * self.world_size)
            rates["mfu(%)"] = 100 * rates["train/mfu"]
        return rates


GIB = 2 ** 30


def count_parameters(parameters: Iterable[torch.nn.Parameter]) -> int:
    """Elements of `parameters`, also once ZeRO-3 has partitioned them (`ds_numel`: the full size)."""
    return sum(full_numel(p) for p in parameters)


def memory_peaks(device: torch.device) -> dict[str, float]:
    """Peak memory in GiB: this process's resident set so far (`memory/max_rss(GiB)`, CPU RAM, its
    DataLoader workers not included) and on CUDA the caching allocator's `memory/max_active(GiB)` and
    `memory/max_reserved(GiB)` since the previous call (reset per log window, as torchtitan does)."""
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    peaks = {"memory/max_rss(GiB)": rss / GIB}
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        peaks["memory/max_active(GiB)"] = stats["active_bytes.all.peak"] / GIB
        peaks["memory/max_reserved(GiB)"] = stats["reserved_bytes.all.peak"] / GIB
        torch.cuda.reset_peak_memory_stats(device)
    return peaks


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def log_line(step: int, max_steps: int, scalars: Mapping[str, float], val: Optional[tuple[int, float]]) -> str:
    """The plain line of a log step: `scalars` as the logger records them; `val` the latest
    (step, val/loss), marked `(new)` when computed at this step, else with the step it is from."""
    parts = [f"step {step}/{max_steps}", f"loss {scalars['train/loss']:.3f}"]
    if val is not None:
        parts.append(f"val {val[1]:.3f} " + ("(new)" if val[0] == step else f"(step {val[0]})"))
    parts.append(f"lr {scalars['train/lr']:.1e}")
    parts.append(f"{_si(scalars['train/tokens_per_second'])} tok/s ({_si(scalars['throughput(tps)'])}/dev)")
    if "mfu(%)" in scalars:
        parts.append(f"mfu {scalars['mfu(%)']:.1f}%")
    parts.append(f"step {scalars['time_metrics/end_to_end(s)']:.3g}s "
                 f"(data {scalars['time_metrics/data_loading(%)']:.0f}%)")
    if "memory/max_reserved(GiB)" in scalars:
        parts.append(f"mem {scalars['memory/max_active(GiB)']:.1f}/{scalars['memory/max_reserved(GiB)']:.1f} GiB")
    parts.append(f"rss {scalars['memory/max_rss(GiB)']:.1f} GiB")
    return " | ".join(parts)


class MetricsLogger:
    def __init__(self, run: RunDir, *, enabled: bool, start_step: int, max_steps: int, log_every: int,
                 throughput: Throughput, device: torch.device) -> None:
        self.enabled, self.start_step, self.max_steps, self.log_every = enabled, start_step, max_steps, log_every
        self.throughput, self.device, self.window = throughput, device, []
        self.writer = None
        self.progress: Optional[tqdm] = None
        self.latest_val: Optional[tuple[int, float]] = None  # (step, val/loss) for the plain lines
        # A file (a SLURM log) gets one line per log step: a bar's carriage returns make it unreadable.
        self.plain = not sys.stdout.isatty()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.jsonl = run.metrics
        self._drop_records_after(start_step)
        self.writer = SummaryWriter(str(run.tensorboard), purge_step=start_step + 1)
        if not self.plain:
            self.progress = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def announce(self, parameters: int, encoder_parameters: int, peak_note: str) -> None:
        """Once at start: the model's size (also `model/params` at step 0 of a fresh run; a resume
        keeps that record) and the peak MFU is measured against, with its source."""
        encoder = f", of which the position encoder {encoder_parameters:,}" if encoder_parameters else ""
        self.write(f"model: {parameters:,} parameters ({_si(parameters)}){encoder}")
        self.write(peak_note)
        if self.start_step == 0:
            self.log(0, {"model/params": float(parameters)})

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
        one, throughput, peak memory, `scalars` (lr, counters) and the step's gradient norm, and in
        plain mode the step's line (with the latest val loss: validate before recording a step)."""
        self.window += result.records
        self.throughput.add(result)
        rates = self.throughput.rates()
        if self.should_log(step):
            keys = {k for record in self.window for k in record}
            means = {k: sum(r[k] for r in self.window if k in r) / sum(k in r for r in self.window) for k in keys}
            norm = {} if result.grad_norm is None else {"train/grad_norm": result.grad_norm}
            record = {**means, **rates, **memory_peaks(self.device), **scalars, **norm}
            self.log(step, record)
            if self.plain:
                self.write(log_line(step, self.max_steps, record, self.latest_val))
            self.window = []
            self.throughput.reset()
        self.advance(1, {"loss": result.loss, "tok/s": rates["train/tokens_per_second"]})

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record `scalars` (tag → value) for `step` in TensorBoard and metrics.jsonl."""
        if "val/loss" in scalars:
            self.latest_val = (step, scalars["val/loss"])
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
            if self.progress is not None:
                self.progress.write(message)
            else:
                print(message, flush=True)  # a SLURM log shows it now, not at exit

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.writer is not None:
            self.writer.close()
