"""The training loop: one optimizer step (`Trainer.train_step`) and the loop around it (`fit`).

The components each own one concern and its interval: the task (model, data, loss), the step
planner (positions and SeqPE's objective sample), the checkpointer (saving, resuming), the
validator and the metrics logger (what is logged, throughput). The loop never reads a position
type's name: the position module returns its own losses with its signal.
"""
from __future__ import annotations

import math
import signal
from typing import Any, Iterator

import torch
import torch.distributed as dist

from ..config import Config, save_config
from ..model.attention import check_backend
from ..positions import build_step_planner
from ..rundir import RunDir
from ..tasks import build_task
from .checkpoint import Checkpointer, rng_state
from .engine import build_engine, init_distributed, optimizer_step
from .flops import FlopCounter, peak_flops
from .metrics import MetricsLogger, StepResult, Throughput
from .validation import Validator

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: checkpointed on a signal; requeue and run the same command


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps."""


def _all_ranks_agree(value: bool, device: torch.device, op: dist.ReduceOp) -> bool:
    """`value` reduced over ranks: op MAX = true on any rank, MIN = true on every rank."""
    flag = torch.tensor([int(value)], device=device)
    dist.all_reduce(flag, op=op)
    return bool(flag.item())


class StopRequest:
    """SIGTERM / SIGUSR1 (preemption, time limit) ask for a checkpoint and a requeue exit."""

    def __init__(self) -> None:
        self.flag = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled, so that all save together."""
        return _all_ranks_agree(self.flag, device, dist.ReduceOp.MAX)


class Trainer:
    def __init__(self, config: Config) -> None:
        self.config, train = config, config.train
        # Start-up checks that need no process group: a bad setting fails before anything starts.
        self.task = build_task(config)
        self.task.check_data()
        self.planner = build_step_planner(config, self.task.position_extents)
        check_backend(config.model.attention_backend, cuda=torch.cuda.is_available(),
                      half_precision=train.precision in ("bf16", "fp16"))
        self.rank, self.world_size, local_rank = init_distributed()
        self.device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        run = RunDir(config.run.dir)
        if self.rank == 0:
            run.path.mkdir(parents=True, exist_ok=True)
            save_config(config, run.config)
        torch.manual_seed(train.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        self.checkpointer = Checkpointer(run, self.rank, self.world_size, keep_last=train.keep_last,
                                         save_every=train.save_every, max_steps=train.max_steps)
        self.engine, self.state = self.checkpointer.restore(
            lambda universal: build_engine(model, config, self.world_size, load_universal=universal))
        self.loader = self.task.build_loader(self.state.data_seed(train.seed), self.rank, self.world_size)
        self.validator = Validator(self.task, self.engine, self.device, self.rank, self.world_size,
                                   every=train.eval_every, max_batches=train.eval_batches, max_steps=train.max_steps)
        self.metrics = self._metrics_logger(run, model)
        self.tokens_per_micro = config.data.micro_batch_size * self.task.sequence_length * self.world_size
        self.consecutive_bad = 0
        if self.state.tag is not None:
            self.metrics.write(f"resumed from {self.state.tag} (step {self.state.step})")

    def _metrics_logger(self, run: RunDir, model: torch.nn.Module) -> MetricsLogger:
        flops = FlopCounter(model, self.config.model.n_layer, self.config.model.d_model, self.task.sequence_length)
        throughput = Throughput(flops, peak_flops(self.device), self.world_size)
        return MetricsLogger(run, enabled=self.rank == 0, start_step=self.state.step,
                             max_steps=self.config.train.max_steps, log_every=self.config.train.log_every,
                             throughput=throughput)

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, batches: Iterator[Any]) -> StepResult:
        """One optimizer step over `train.grad_accum_steps` finite micro-batches drawn from `batches`.

        Every position of a micro-batch (the model's, shifted or not, and the objectives') goes
        through one encoder pass. A micro-batch whose loss is non-finite on any rank is dropped on
        every rank before backward (DeepSpeed never sees it) and counted."""
        result = StepResult()
        while True:
            batch = self.task.to_device(next(batches), self.device)
            plan = self.planner.plan(self.state.micro_step, self.rank, self.device)
            step_loss = self.task.training_loss(self.engine, batch, plan)
            self.state.micro_step += 1
            if not _all_ranks_agree(bool(torch.isfinite(step_loss.loss)), self.device, dist.ReduceOp.MIN):
                self._drop_micro_batch(result)
                continue
            self.consecutive_bad = 0
            self.engine.backward(step_loss.loss)
            stepped, norm = optimizer_step(self.engine)
            record = {name: value.item() for name, value in step_loss.parts.items()}
            result.records.append(record | {"train/loss": step_loss.loss.item()})
            result.tokens += self.tokens_per_micro
            result.encoder_tokens += step_loss.encoder_tokens * self.world_size
            if stepped:
                return self._finish_step(result, norm)

    def _drop_micro_batch(self, result: StepResult) -> None:
        result.skipped += 1
        self.state.skipped_steps += 1
        self.consecutive_bad += 1
        limit, step = self.config.train.max_bad_steps, self.state.step
        self.metrics.write(f"step {step}: non-finite loss, micro-batch skipped ({self.consecutive_bad} in a row)")
        if self.consecutive_bad >= limit:
            raise TrainingAborted(f"aborting: {self.consecutive_bad} non-finite steps in a row at step {step} "
                                  f"(train.max_bad_steps={limit}); lower train.lr or check the data")

    def _finish_step(self, result: StepResult, norm) -> StepResult:
        self.state.step += 1
        result.grad_norm = norm
        if norm is not None and not math.isfinite(norm):
            self.state.skipped_steps += 1
            self.metrics.write(f"step {self.state.step}: non-finite gradient norm")
        return result

    # ------------------------------------------------------------------ the loop
    def fit(self) -> int:
        """Train to `train.max_steps`; returns 0, or REQUEUE_EXIT_CODE after a stop request."""
        stop, train = StopRequest(), self.config.train
        batches = self.state.start_stream(self.loader, train.seed, self.rank)
        try:
            while self.state.step < train.max_steps:
                if stop.agreed(self.device):
                    self._checkpoint()
                    self.metrics.write(f"stop requested: checkpointed at step {self.state.step}, "
                                       f"exiting {REQUEUE_EXIT_CODE}")
                    return REQUEUE_EXIT_CODE
                result = self.train_step(batches)
                step = self.state.step
                self.metrics.record_step(step, result, {"train/lr": self.engine.get_lr()[0],
                                                        "train/skipped_steps": float(self.state.skipped_steps)})
                if self.validator.should_validate(step):
                    self.metrics.log(step, self.validator.run())
                if self.checkpointer.should_save(step):
                    self._checkpoint()
            return 0
        finally:
            self.metrics.close()

    def _checkpoint(self) -> None:
        tag = self.checkpointer.save(self.engine, self.state, {"data": self.loader.state_dict(), "rng": rng_state()})
        self.metrics.write(f"saved checkpoint {tag}")


def train(config: Config) -> int:
    """Train (or resume) the run of `config`; returns the process exit code."""
    return Trainer(config).fit()
