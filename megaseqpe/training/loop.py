"""The training loop: one optimizer step (`Trainer.train_step`) and the loop around it (`fit`).

The components each own one concern and its interval: the task (model, data, loss), the step
planner (positions and SeqPE's objective sample), the checkpointer (saving, resuming), the
validator and the metrics logger (what is logged, throughput). The loop never reads a position
type's name: the position module returns its own losses with its signal.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..config import Config, save_config
from ..data import MixtureLoader
from ..model.attention import check_backend
from ..positions import StepPlanner, build_step_planner
from ..rundir import RunDir
from ..safe_loading import enforce_weights_only
from ..tasks import Task, build_task
from .checkpoint import Checkpointer, rng_state
from .divergence import DivergenceGuard
from .engine import apply_optimisation, build_engine, init_distributed, optimizer_step
from .flops import FlopCounter, peak_flops, peak_source
from .init_from import weight_source
from .launcher_env import detect as detect_environment
from .lifecycle import check_stale_build_lock, exit_with_parent
from .metrics import MetricsLogger, StepResult, StepTimer, Throughput, count_parameters
from .run_lock import RunLock
from .validation import Validator

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: checkpointed on a signal; requeue and run the same command
REQUEUE_FILE_ENV = "MEGASEQPE_REQUEUE_FILE"  # set by slurm/train.sbatch: written after that checkpoint


def _all_ranks_agree(value: bool, device: torch.device, op: dist.ReduceOp) -> bool:
    """`value` reduced over ranks: op MAX = true on any rank, MIN = true on every rank."""
    flag = torch.tensor([int(value)], device=device)
    dist.all_reduce(flag, op=op)
    return bool(flag.item())


class StopRequest:
    """SIGTERM / SIGUSR1 (preemption, time limit) and SIGINT (Ctrl-C) ask for a checkpoint and a
    requeue exit at the next step boundary; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.flag = False
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled, so that all save together."""
        return _all_ranks_agree(self.flag, device, dist.ReduceOp.MAX)


def startup_checks(config: Config) -> tuple[Task, StepPlanner]:
    """The run's task and step planner, built as checks that need no process group: a bad setting
    fails before anything starts or is written."""
    task = build_task(config)
    task.check_data()
    planner = build_step_planner(config, task.position_extents)
    check_backend(config.model.attention_backend, cuda=torch.cuda.is_available(),
                  half_precision=config.train.precision in ("bf16", "fp16"), training=True)
    return task, planner


class Trainer:
    def __init__(self, config: Config, task: Task, planner: StepPlanner) -> None:
        self.config, train = config, config.train
        self.task, self.planner = task, planner
        run = RunDir(config.run.dir)
        self.source = weight_source(config, run, self.task)  # a fresh run's train.init_from, checked
        torch.manual_seed(train.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        # The source's weights go in before DeepSpeed partitions the model (ZeRO-3) or builds its copies.
        source_step = self.source.load_into(model, config) if self.source else None
        self.rank, self.world_size, local_rank = init_distributed()
        self.device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        self.checkpointer = Checkpointer(run, self.rank, self.world_size, config)
        self.engine, self.state, changes = self.checkpointer.restore(
            lambda universal: build_engine(model, config, self.world_size, load_universal=universal))
        if self.state.tag is not None:
            apply_optimisation(self.engine, config)
        if self.rank == 0:  # only now: a refused resume leaves the run's config as it was
            run.path.mkdir(parents=True, exist_ok=True)
            save_config(config, run.config)
        self.loader = self.task.build_loader(self.state.data_seed(train.seed), self.rank, self.world_size)
        self.validator = Validator(self.task, self.engine, self.device, self.rank, self.world_size,
                                   every=train.eval_every, max_batches=train.eval_batches, max_steps=train.max_steps)
        self.metrics = self._metrics_logger(run, model)
        self.tokens_per_micro = config.data.micro_batch_size * self.task.sequence_length * self.world_size
        self.timer = StepTimer()
        self.guard = DivergenceGuard(train.max_bad_steps, self.checkpointer, self.metrics.write)
        if self.state.tag is not None:
            self.metrics.write(f"resumed from {self.state.tag} (step {self.state.step})"
                               + (": train.init_from applies to a fresh run only" if train.init_from else ""))
        if self.source:
            self.metrics.write(f"initialised from {self.source.name} (step {source_step}): fresh optimizer, "
                               "schedule, step counter and data stream")
        for line in changes:
            self.metrics.write(line)

    def _metrics_logger(self, run: RunDir, model: torch.nn.Module) -> MetricsLogger:
        flops = FlopCounter(model, self.config.model.n_layer, self.config.model.d_model, self.task.sequence_length)
        precision = self.config.train.precision
        throughput = Throughput(flops, peak_flops(self.device, precision), self.world_size)
        logger = MetricsLogger(run, enabled=self.rank == 0, start_step=self.state.step,
                               max_steps=self.config.train.max_steps, log_every=self.config.train.log_every,
                               throughput=throughput, device=self.device)
        logger.announce(count_parameters(model.parameters()), count_parameters(model.position.encoder_parameters()),
                        peak_source(self.device, precision))
        return logger

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, batches: Iterator[Any]) -> StepResult:
        """One optimizer step over `train.grad_accum_steps` finite micro-batches drawn from `batches`.

        Every position of a micro-batch (the model's, shifted or not, and the objectives') goes
        through one encoder pass. A micro-batch whose loss is non-finite on any rank is dropped on
        every rank before backward (DeepSpeed never sees it) and counted."""
        result = StepResult()
        self.timer.start()
        while True:
            batch = self.task.to_device(self.timer.next(batches), self.device)
            plan = self.planner.plan(self.state.micro_step, self.rank, self.device)
            step_loss = self.task.training_loss(self.engine, batch, plan)
            self.state.micro_step += 1
            if not _all_ranks_agree(bool(torch.isfinite(step_loss.loss)), self.device, dist.ReduceOp.MIN):
                self._drop_micro_batch(result)
                continue
            self.engine.backward(step_loss.loss)
            stepped, norm = optimizer_step(self.engine)
            record = {name: value.item() for name, value in step_loss.parts.items()}
            result.records.append(record | {"train/loss": step_loss.loss.item()})
            result.tokens += self.tokens_per_micro
            result.encoder_tokens += step_loss.encoder_tokens * self.world_size
            if stepped:
                result.seconds, result.data_seconds = self.timer.stop()
                return self._finish_step(result, norm)

    def _drop_micro_batch(self, result: StepResult) -> None:
        result.skipped += 1
        self.state.skipped_steps += 1
        self.guard.bad(self.state.step + 1, "non-finite loss, micro-batch skipped")

    def _finish_step(self, result: StepResult, norm) -> StepResult:
        self.state.step += 1
        result.grad_norm = norm
        if norm is not None and not math.isfinite(norm):
            self.state.skipped_steps += 1
            self.guard.bad(self.state.step, "non-finite gradient norm")
        elif not self.engine.was_step_applied():
            self.state.skipped_steps += 1
            self.guard.bad(self.state.step, "step skipped by the optimizer (overflow)")
        else:
            self.guard.good()
        return result

    # ------------------------------------------------------------------ the loop
    def fit(self) -> int:
        """Train to `train.max_steps`; returns 0, or REQUEUE_EXIT_CODE after a stop request."""
        stop, train = StopRequest(), self.config.train
        try:
            if self.source:  # the starting point on this run's validation data: what fine-tuning improves on
                self.metrics.log(0, self.validator.run())
            batches = self.state.start_stream(self.loader, train.seed, self.rank)
            while self.state.step < train.max_steps:
                if stop.agreed(self.device):
                    return self._stop()
                result = self.train_step(batches)
                step = self.state.step
                if self.validator.should_validate(step):  # before the step's record: its log line shows this val
                    self.metrics.log(step, self.validator.run())
                self.metrics.record_step(step, result, {"train/lr": self.engine.get_lr()[0],
                                                        "train/skipped_steps": float(self.state.skipped_steps),
                                                        "data/skipped_samples": float(self.loader.skipped_samples),
                                                        **self._source_tokens(step)})
                if self.checkpointer.should_save(step):
                    self._checkpoint()
            return 0
        finally:
            self.metrics.close()

    def _source_tokens(self, step: int) -> dict[str, float]:
        """`data/tokens/<name>` at a log step of a mixture (`data.sources`): trunk tokens of each source
        consumed so far, all ranks. Each rank draws its own rows; the counts come back with the saved
        stream, so they continue exactly after a resume."""
        if not isinstance(self.loader, MixtureLoader) or not self.metrics.should_log(step):
            return {}
        rows = self.loader.rows_by_source()
        counts = torch.tensor(list(rows.values()), dtype=torch.int64, device=self.device)
        dist.all_reduce(counts)
        return {f"data/tokens/{name}": float(n * self.task.sequence_length) for name, n in zip(rows, counts.tolist())}

    def _stop(self) -> int:
        """Checkpoint on a stop request and leave the requeue marker for the batch script: under
        torchrun our exit code does not reach it (torchrun exits 1 whatever its ranks return)."""
        self._checkpoint()
        marker = os.environ.get(REQUEUE_FILE_ENV)
        if marker and self.rank == 0:
            record = {"step": self.state.step, "tag": self.checkpointer.run.tag_for(self.state.step),
                      "time": time.time()}
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            Path(marker).write_text(json.dumps(record) + "\n")
        self.metrics.write(f"stop requested: checkpointed at step {self.state.step}, exiting {REQUEUE_EXIT_CODE}")
        return REQUEUE_EXIT_CODE

    def _checkpoint(self) -> None:
        tag = self.checkpointer.save(self.engine, self.state, {"data": self.loader.state_dict(), "rng": rng_state()})
        self.metrics.write(f"saved checkpoint {tag}")


def train(config: Config) -> int:
    """Train (or resume) the run of `config`; returns the process exit code.

    Before any process group exists: every `torch.load` becomes weights-only, the rank is tied
    to its launcher (no orphans training on), the start-up checks run, then rank 0 takes the run
    directory's lock (one writer per run; RunLockedError otherwise) and a stale DeepSpeed build
    lock fails instead of hanging."""
    enforce_weights_only()
    exit_with_parent()
    task, planner = startup_checks(config)
    lock = RunLock(config.run.dir) if detect_environment().rank == 0 else None
    warning = lock.acquire() if lock else None
    try:
        if warning:
            print(f"megaseqpe-train: warning: {warning}", file=sys.stderr, flush=True)
        check_stale_build_lock()
        return Trainer(config, task, planner).fit()
    finally:
        if lock:
            lock.release()
