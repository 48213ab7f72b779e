"""The training loop: DeepSpeed engine, SeqPE's one-pass step, checkpoints, faults, monitoring."""
from __future__ import annotations

import itertools
import math
import signal
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from ..config import Config, save_config
from .checkpoint import Checkpointer, rng_state, set_rng_state
from .engine import build_engine, init_distributed
from .flops import FlopCounter, peak_flops
from .metrics import MetricsLogger
from .step_positions import StepPositions
from .tasks import build_task

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: checkpointed on a signal; requeue and run the same command


class TrainingAborted(RuntimeError):
    """Too many consecutive non-finite steps."""


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
        flag = torch.tensor([int(self.flag)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _all_ranks_true(value: bool, device: torch.device) -> bool:
    flag = torch.tensor([int(value)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _grad_norm(engine) -> Optional[float]:
    norm = engine.get_global_grad_norm()
    if norm is None:  # ZeRO-0 keeps no norm; the averaged gradients are on the parameters
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else None
    return None if norm is None else float(norm)


class Trainer:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.rank, self.world_size, local_rank = init_distributed()
        self.device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        self.run_dir = Path(config.run.dir)
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / "config.yaml")
        self.task = build_task(config)
        self.task.check_data()
        torch.manual_seed(config.train.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        self.flops = FlopCounter(model, config.model.n_layer, config.model.d_model, self.task.sequence_length)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.rank, self.world_size,
                                         config.train.keep_last)
        resume = self.checkpointer.find_resume_point()
        if resume is not None and not resume.same_world:
            self.checkpointer.prepare_universal(resume)
        self.engine = build_engine(model, config, self.world_size,
                                   load_universal=resume is not None and not resume.same_world)
        self.step, self.micro_step, self.skipped = 0, 0, 0
        rank_state = None
        if resume is not None:
            rank_state = self.checkpointer.load(self.engine, resume)
            self.step, self.micro_step = resume.trainer["step"], resume.trainer["micro_step"]
            self.skipped = resume.trainer["skipped_steps"]
        # After a world-size change the old per-rank stream positions mean nothing: start a new
        # stream, seeded by the step so that it does not replay the data from its beginning.
        data_seed = config.train.seed if rank_state is not None or resume is None else config.train.seed + self.step
        self.loader = self.task.build_loader(data_seed, self.rank, self.world_size)
        self.saved_rng = None
        if rank_state is not None:
            self.loader.load_state_dict(rank_state["data"])
            self.saved_rng = rank_state["rng"]
        self.planner = StepPositions(config, self.task.position_extents)
        self.logger = MetricsLogger(self.run_dir, enabled=self.rank == 0, start_step=self.step,
                                    max_steps=config.train.max_steps)
        if resume is not None:
            self.logger.write(f"resumed from {resume.tag} (step {self.step})")

    # ------------------------------------------------------------------ one micro-batch
    def forward(self, batch):
        """One micro-batch: every position of the step (main, shifted or not, and the objectives')
        through one encoder pass. Returns (loss, logged parts, plan, model output)."""
        plan = self.planner.plan(self.micro_step, self.rank, self.device)
        out, parts = self.task.forward(self.engine, batch, plan)
        loss = out.loss
        if plan.objectives is not None:
            aux = self.planner.objectives.losses(plan.objectives, out.position_signal.extra_embeddings)
            loss = loss + self.planner.objectives.weighted(aux)
            parts.update({f"train/{name}": value for name, value in aux.items()})
            parts["train/unique_positions"] = torch.tensor(float(out.position_signal.unique_positions))
        return loss, parts, plan, out

    def _checkpoint(self) -> None:
        trainer = {"step": self.step, "micro_step": self.micro_step, "skipped_steps": self.skipped}
        tag = self.checkpointer.save(self.engine, self.step, trainer,
                                     {"data": self.loader.state_dict(), "rng": rng_state()})
        self.logger.write(f"saved checkpoint {tag}")

    def validate(self) -> dict[str, float]:
        config = self.config
        batches = []
        for batch in self.task.eval_batches(self.rank, self.world_size):
            batches.append(batch)
            if len(batches) == config.train.eval_batches:
                break
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

    # ------------------------------------------------------------------ the loop
    def fit(self) -> int:
        config, stop = self.config, StopRequest()
        tokens_per_micro = config.data.micro_batch_size * self.task.sequence_length * self.world_size
        peak = peak_flops(self.device)
        window, window_start, consecutive_bad = [], time.perf_counter(), 0
        # Starting the DataLoader draws its base seed from the global RNG: only then set the
        # dropout RNG (saved, or per rank), so a resumed run continues exactly.
        data = iter(self.loader)
        data = itertools.chain([next(data)], data)
        if self.saved_rng is not None:
            set_rng_state(self.saved_rng)
        else:
            torch.manual_seed(config.train.seed + 1000 * (self.rank + 1) + self.step)
        try:
            while self.step < config.train.max_steps:
                if stop.agreed(self.device):
                    self._checkpoint()
                    self.logger.write(f"stop requested: checkpointed at step {self.step}, exiting {REQUEUE_EXIT_CODE}")
                    return REQUEUE_EXIT_CODE
                batch = self.task.to_device(next(data), self.device)
                loss, parts, _, _ = self.forward(batch)
                self.micro_step += 1
                if not _all_ranks_true(bool(torch.isfinite(loss)), self.device):
                    # Dropped before backward on every rank: DeepSpeed never sees this micro-batch.
                    self.skipped += 1
                    consecutive_bad += 1
                    self.logger.write(f"step {self.step}: non-finite loss, micro-batch skipped ({consecutive_bad} in a row)")
                    if consecutive_bad >= config.train.max_bad_steps:
                        raise TrainingAborted(f"aborting: {consecutive_bad} non-finite steps in a row at step "
                                              f"{self.step} (train.max_bad_steps={config.train.max_bad_steps}); "
                                              "lower train.lr or check the data")
                    continue
                consecutive_bad = 0
                boundary = self.engine.is_gradient_accumulation_boundary()
                self.engine.backward(loss)
                norm = _grad_norm(self.engine) if boundary and config.deepspeed.zero_stage == 0 else None
                self.engine.step()
                window.append({k: v.item() for k, v in parts.items()} | {"train/loss": loss.item()})
                if not boundary:
                    continue
                self.step += 1
                tokens_per_second = tokens_per_micro * len(window) / max(time.perf_counter() - window_start, 1e-9)
                norm = _grad_norm(self.engine) if norm is None else norm
                if norm is not None and not math.isfinite(norm):
                    self.skipped += 1
                    self.logger.write(f"step {self.step}: non-finite gradient norm")
                if self.step % config.train.log_every == 0 or self.step == config.train.max_steps:
                    self._log(window, time.perf_counter() - window_start, tokens_per_micro, norm, peak)
                    window, window_start = [], time.perf_counter()
                if self.step % config.train.eval_every == 0 or self.step == config.train.max_steps:
                    self.logger.log(self.step, self.validate())
                if self.step % config.train.save_every == 0 or self.step == config.train.max_steps:
                    self._checkpoint()
                self.logger.advance(1, {"loss": loss.item(), "tok/s": tokens_per_second})
            return 0
        finally:
            self.logger.close()

    def _log(self, window: list[dict], seconds: float, tokens_per_micro: int,
             grad_norm: Optional[float], peak: Optional[float]) -> None:
        scalars = {}
        for key in {k for record in window for k in record}:
            values = [record[key] for record in window if key in record]
            scalars[key] = sum(values) / len(values)
        tokens = tokens_per_micro * len(window)
        scalars["train/tokens_per_second"] = tokens / max(seconds, 1e-9)
        scalars["train/lr"] = self.engine.get_lr()[0]
        scalars["train/skipped_steps"] = float(self.skipped)
        if grad_norm is not None:
            scalars["train/grad_norm"] = grad_norm
        if peak is not None:
            encoder = self.flops.encoder
            flops = self.flops.step_flops(tokens, encoder.last_token_count * len(window) * self.world_size
                                          if encoder is not None else 0)
            scalars["train/mfu"] = flops / seconds / (peak * self.world_size)
        self.logger.log(self.step, scalars)


def train(config: Config) -> int:
    """Train (or resume) the run of `config`; returns the process exit code."""
    return Trainer(config).fit()
