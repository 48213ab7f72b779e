"""`train.init_from: RUN[/TAG]`: a new run that starts from another run's model weights.

Only the weights come over (the fp32 consolidation of any ZeRO stage and number of processes,
`megaseqpe.checkpoint_weights`); the optimizer, the schedule, the step counter and the data stream
start afresh. It applies to a fresh run only: a run with a checkpoint of its own resumes from that.
The source tag's config (every tag carries the config that wrote it) must describe the same model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from ..checkpoint_weights import load_weights
from ..config import Config, ConfigError, load_config
from ..data import ManifestError
from ..rundir import CheckpointError, RunDir
from ..tasks import TASKS, Task
from .resume_policy import flatten

# Keys that give the weights their shapes or their meaning: they must equal the source's.
MODEL_DEFINING = frozenset({
    "task", "model.n_layer", "model.n_head", "model.d_model", "model.vocab_size", "model.bias",
    "model.tie_embeddings", "model.patch_size", "model.channels", "model.num_classes",
    "model.norm", "model.mlp", "model.mlp_hidden", "model.n_kv_head",
    "position.type", "position.n_dims", "position.base", "position.d_pe", "position.encoder_layers",
    "position.encoder_heads", "position.attn_direction", "position.mask_padding", "position.final_layernorm",
    "position.temperature", "position.use", "position.attn_scalar_proj", "position.scalar_scale",
    "position.rope_base",
})
# Keys that shape a parameter of some position schemes only (a learned table's rows, a learned grid,
# SeqPE's digits per coordinate): they may change while every weight keeps its shape.
SHAPE_BOUND = ("model.max_seq_len", "model.image_size", "position.max_position")


def _differences(source: Config, config: Config, keys) -> list[str]:
    before, after = flatten(source), flatten(config)
    return [f"{key} {before[key]!r} → {after[key]!r}" for key in sorted(keys) if before[key] != after[key]]


def _as_model_task(config: Config) -> Config:
    """`config` with `task` named by the model it builds: a `qa` run starts from a language model."""
    model_task = TASKS[config.task].model_task
    return dataclasses.replace(config, task=model_task) if model_task else config


@dataclass
class WeightSource:
    """The checkpoint tag a fresh run starts from, and the config that wrote it."""

    run: RunDir
    tag: str
    config: Config

    @property
    def name(self) -> str:
        return str(self.run.tag_dir(self.tag))

    @classmethod
    def resolve(cls, value: str) -> "WeightSource":
        """The source `train.init_from` names: RUN (its latest tag), RUN/TAG or RUN/checkpoints/TAG
        (the tag's directory, as the logs name it); a complete tag."""
        path = Path(value)
        if RunDir(path.parent).tag_dir(path.name).is_dir():
            run, tag = RunDir(path.parent), path.name
        elif path.parent.name == RunDir(path).checkpoints.name:
            run, tag = RunDir(path.parent.parent), path.name
        else:
            run, tag = RunDir(path), None
        if not run.config.is_file():
            raise ConfigError(f"train.init_from: {value} is neither a run directory (no config.yaml) nor RUN/TAG")
        try:
            tag = run.resolve_tag(tag)
            return cls(run, tag, load_config(run.config_for(tag)))
        except (CheckpointError, ConfigError) as error:
            raise CheckpointError(f"train.init_from: {error}") from None

    def check(self, config: Config, task: Task) -> None:
        """ConfigError naming every key in which `config` describes another model than the source,
        or (other data) a different tokenizer; checked before any weight is read."""
        changed = _differences(_as_model_task(self.config), _as_model_task(config), MODEL_DEFINING)
        if changed:
            raise ConfigError(f"train.init_from: cannot start from {self.name}: {'; '.join(changed)} would change "
                              "the model its weights belong to; keep the source's values "
                              f"({self.run.config_for(self.tag)})")
        if self.config.data.primary_manifest != config.data.primary_manifest:
            try:
                task.check_data(self.config.data.primary_manifest)  # the same tokenizer (image runs: shapes and classes)
            except (ConfigError, ManifestError) as error:
                raise ConfigError(f"train.init_from: the data of {self.name} and this run's: {error}") from None

    def load_into(self, model: nn.Module, config: Config) -> int:
        """Copy the source's weights into `model` (built from `config`); returns the source's step."""
        state, step = load_weights(self.run, self.tag)
        own = model.state_dict()
        wrong = sorted(set(own) ^ set(state) | {k for k in set(own) & set(state) if own[k].shape != state[k].shape})
        if wrong:
            changed = _differences(self.config, config, SHAPE_BOUND) or ["the model"]
            raise ConfigError(f"train.init_from: cannot start from {self.name}: {'; '.join(changed)} changes the "
                              f"shape of {', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}")
        model.load_state_dict(state)
        return step


def weight_source(config: Config, run: RunDir, task: Task) -> Optional[WeightSource]:
    """The checked source of a fresh run's weights; None without `train.init_from`, or when the run
    has a checkpoint of its own to resume from."""
    if not config.train.init_from or run.newest_complete_tag() is not None:
        return None
    source = WeightSource.resolve(config.train.init_from)
    source.check(config, task)
    return source
