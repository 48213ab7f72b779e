"""DeepSpeed engine from a Config: ZeRO stage, precision, AdamW groups, warmup + decay schedule.

The model is built by the caller and knows nothing of DeepSpeed; everything about how it is
parallelised and optimised is decided here.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..config import Config, ConfigError
from ..model.checkpointing import prepare_trunk
from .launcher_env import detect as detect_environment


def init_distributed() -> tuple[int, int, int]:
    """Join the process group of whichever launcher started us (torchrun, deepspeed, plain srun)
    or start a group of one. gloo on CPU, NCCL on GPU, chosen by what this machine has."""
    import deepspeed
    import torch.distributed as dist

    place = detect_environment()
    place.export(os.environ)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(place.local_rank)
    # A bounded timeout: a lost node fails the job instead of hanging it.
    timeout = datetime.timedelta(seconds=float(os.environ.get("MEGASEQPE_DIST_TIMEOUT", 600)))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    print(f"megaseqpe: rank {dist.get_rank()}/{dist.get_world_size()} local_rank {place.local_rank} "
          f"on node {node} (launcher: {place.launcher})", file=sys.stderr, flush=True)
    return dist.get_rank(), dist.get_world_size(), place.local_rank


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on the matrices of the trunk's linear layers; none on norms, biases,
    embeddings, nor on any parameter of the position module (the SeqPE encoder and its q/k
    projections get no weight decay in the authors' runs; tables and embeddings never do)."""
    no_decay_ids = {id(p) for p in model.position.parameters()}
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.Embedding)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue  # tied weights appear once
        seen.add(id(param))
        (no_decay if id(param) in no_decay_ids or param.dim() < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_multiplier(step: int, config: Config) -> float:
    """Linear warmup to train.lr, then cosine or linear decay to train.lr * min_lr_ratio."""
    train = config.train
    if step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    span = max(1, train.max_steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if train.decay == "cosine" else 1 - progress
    return train.min_lr_ratio + (1 - train.min_lr_ratio) * shape


def deepspeed_config(config: Config, world_size: int, load_universal: bool = False) -> dict[str, Any]:
    """The DeepSpeed JSON for this run; `deepspeed.config` (a JSON file) overrides its entries."""
    precision = config.train.precision
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.data.micro_batch_size,
        "gradient_accumulation_steps": config.train.grad_accum_steps,
        "train_batch_size": config.data.micro_batch_size * config.train.grad_accum_steps * world_size,
        "gradient_clipping": config.train.grad_clip,
        "zero_optimization": {"stage": config.deepspeed.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,  # torch's AdamW with our parameter groups
        "steps_per_print": 10 ** 9,  # progress is ours (tqdm, TensorBoard)
        "wall_clock_breakdown": False,
    }
    if config.deepspeed.config:
        path = Path(config.deepspeed.config)
        if not path.is_file():
            raise ConfigError(f"deepspeed.config: file not found: {path}")
        try:
            overrides = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"deepspeed.config: {path} is not valid JSON: {error}") from None
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            overrides.pop(key, None)  # batch geometry comes from data.* and train.*, never twice
        stage = overrides.get("zero_optimization", {}).get("stage", config.deepspeed.zero_stage)
        if stage != config.deepspeed.zero_stage:
            raise ConfigError(f"deepspeed.config: {path} sets ZeRO stage {stage} but deepspeed.zero_stage is "
                              f"{config.deepspeed.zero_stage}")
        ds = _merge(ds, overrides)
    if load_universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def build_engine(model: nn.Module, config: Config, world_size: int, load_universal: bool = False):
    """`deepspeed.initialize` with torch AdamW (decay groups) and our warmup/decay schedule; the
    model's blocks are first checkpointed and compiled in place as model.activation_checkpointing and
    train.compile say (before DeepSpeed wraps it, keeping every parameter name)."""
    import deepspeed

    prepare_trunk(model, config.model.activation_checkpointing, config.train.compile)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.train.weight_decay), lr=config.train.lr,
                                  betas=config.train.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, config))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule,
                                           config=deepspeed_config(config, world_size, load_universal))
    return engine


def optimizer_step(engine) -> tuple[bool, Optional[float]]:
    """`engine.step()` after a micro-batch's backward: (whether it was a gradient-accumulation
    boundary, i.e. the optimizer stepped; the global gradient norm then, else None)."""
    boundary = engine.is_gradient_accumulation_boundary()
    # ZeRO-0 records no global norm: read it from the averaged gradients before step() clears them.
    norm = _parameter_grad_norm(engine) if boundary and engine.zero_optimization_stage() == 0 else None
    engine.step()
    if boundary and norm is None:
        norm = engine.get_global_grad_norm()
    return boundary, None if norm is None else float(norm)


def _parameter_grad_norm(engine) -> Optional[torch.Tensor]:
    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


def apply_optimisation(engine, config: Config) -> None:
    """After a resume, the optimiser settings of `config` rather than the checkpoint's: DeepSpeed
    restores the saved parameter groups and the scheduler's base learning rates, which would
    silently keep the old lr, betas and weight decay. The schedule goes on from the saved step.
    (The clip value is DeepSpeed's `gradient_clipping`, read from the new config at start-up.)"""
    train, scheduler = config.train, engine.lr_scheduler
    scheduler.base_lrs = [train.lr for _ in scheduler.base_lrs]
    lr = train.lr * lr_multiplier(scheduler.last_epoch, config)
    # The groups are in parameter_groups' order: matrices that decay, then everything else.
    for group, weight_decay in zip(engine.optimizer.param_groups, (train.weight_decay, 0.0)):
        group.update(lr=lr, initial_lr=train.lr, betas=tuple(train.betas), weight_decay=weight_decay)
