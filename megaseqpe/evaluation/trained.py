"""A run's checkpoint as a ready model, for everything that uses a trained run (evaluation, generation)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..checkpoint_weights import load_weights
from ..config import Config, load_config
from ..model.attention import check_backend
from ..rundir import RunDir
from ..safe_loading import enforce_weights_only
from ..tasks import Task, build_task


@dataclass
class TrainedModel:
    model: nn.Module  # in eval mode, on `device`
    device: torch.device
    task: Task
    config: Config  # the config that wrote the tag
    tag: str
    step: int


def load_trained(run_dir: Path, tag: Optional[str] = None, device: Optional[torch.device] = None,
                 manifest: Optional[str] = None) -> TrainedModel:
    """The model of the run's complete checkpoint `tag` (default: latest) with the fp32 weights of
    any ZeRO stage, built from the config that wrote the tag, on `device` (default: CUDA when there
    is one). `manifest`: data to use instead of the run's, checked against the model (its tokenizer
    must be the run's)."""
    enforce_weights_only()  # before anything (ours or DeepSpeed's) loads a checkpoint file
    run = RunDir(run_dir)
    tag = run.resolve_tag(tag)
    config = load_config(run.config_for(tag))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_backend(config.model.attention_backend, cuda=device.type == "cuda", half_precision=False)
    state, step = load_weights(run, tag)
    task = build_task(config)
    task.check_data(manifest)
    model = task.build_model()
    model.load_state_dict(state)
    return TrainedModel(model.to(device).eval(), device, task, config, tag, step)
