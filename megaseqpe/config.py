"""Typed configuration: dataclasses that validate themselves.

Every knob of the model and of the position scheme lives here, under the names of
ARCHITECTURE.md (SeqPE knobs keep the reference names without the `seqpe_`/`pe_` prefix).
Validation happens at construction, so a bad value fails at start-up with a message that
names the key, not deep inside a training step.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

POSITION_TYPES = ("seqpe", "learned", "sinusoidal", "rope", "alibi", "nope")
TASKS = ("language_modeling", "image_classification")
ATTENTION_BACKENDS = ("auto", "flash", "sdpa", "eager")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


def _check(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


def _choice(value: str, key: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


@dataclass
class ModelConfig:
    """A GPT-2 style decoder (ViT shares the trunk knobs)."""

    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    vocab_size: int = 8000
    max_seq_len: int = 512  # the training length L
    dropout: float = 0.0
    attention_dropout: float = 0.0
    attention_backend: str = "auto"
    bias: bool = True
    tie_embeddings: bool = True
    # --- the ViT (task: image_classification); the text model ignores them ---
    image_size: int = 16  # training resolution (square images, pixels)
    patch_size: int = 4
    channels: int = 1
    num_classes: int = 10

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "d_model", "vocab_size", "max_seq_len", "image_size", "patch_size",
                    "channels", "num_classes"):
            _check(getattr(self, key) > 0, f"model.{key}", "must be positive")
        _check(self.d_model % self.n_head == 0, "model.d_model",
               f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        _choice(self.attention_backend, "model.attention_backend", ATTENTION_BACKENDS)
        for key in ("dropout", "attention_dropout"):
            _check(0.0 <= getattr(self, key) < 1.0, f"model.{key}", "must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def grid_size(self) -> int:
        """Patches per side of a training image (the ViT's position grid is grid_size x grid_size)."""
        return self.image_size // self.patch_size


@dataclass
class PositionConfig:
    """The position scheme (`type`) and every SeqPE knob of SEQPE.md."""

    type: str = "seqpe"
    n_dims: int = 1
    # --- SeqPE representation (SEQPE.md §1-2) ---
    max_position: int = 20000  # pe_max_position: positions 0 .. max_position-1 are encodable
    base: int = 10
    d_pe: Optional[int] = None  # encoder width; None = the model's width
    encoder_layers: int = 2
    encoder_heads: Optional[int] = None  # None = the model's heads
    attn_direction: str = "causal"  # causal | bi
    mask_padding: bool = False
    # None: on for attn_scalar (the reference text runs); off for input_add, whose output is added
    # to token embeddings of std 0.02 that a unit-scale LayerNorm output would drown.
    final_layernorm: Optional[bool] = None
    temperature: float = 1.0
    encoder_dropout: float = 0.1  # residual/MLP dropout inside the encoder
    encoder_attention_dropout: float = 0.0
    # --- how the model uses it (§4) ---
    use: str = "attn_scalar"  # input_add | attn_scalar
    attn_scalar_proj: str = "single"  # single | multi (one projection per layer)
    scalar_scale: float = 1.0
    # --- training-time shifts (§5) ---
    random_shift_rate: float = 0.1
    random_shift_downsample: int = 320
    main_batch_size: int = 1
    # --- contrastive objective (§6) ---
    contrastive_weight: float = 0.1
    contrastive_batch_size: int = 32
    contrastive_num: int = 32
    dist_sample_range: int = 256
    contrastive_logit_scale: float = 1.0
    contrastive_per_head: bool = False
    # --- distillation objective (§7) ---
    transfer_weight: float = 0.1
    transfer_batch_size: int = 8
    transfer_num: int = 32
    transfer_per_head: bool = False
    transfer_loss: str = "kl"  # kl | mse
    transfer_beta: float = 1.0
    # --- baselines (§9) ---
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        _choice(self.type, "position.type", POSITION_TYPES)
        _choice(self.attn_direction, "position.attn_direction", ("causal", "bi"))
        _choice(self.use, "position.use", ("input_add", "attn_scalar"))
        _choice(self.attn_scalar_proj, "position.attn_scalar_proj", ("single", "multi"))
        _choice(self.transfer_loss, "position.transfer_loss", ("kl", "mse"))
        if self.final_layernorm is None:
            self.final_layernorm = self.use == "attn_scalar"
        for key in ("n_dims", "max_position", "encoder_layers", "contrastive_batch_size",
                    "contrastive_num", "dist_sample_range", "transfer_batch_size",
                    "random_shift_downsample", "main_batch_size"):
            _check(getattr(self, key) > 0, f"position.{key}", "must be positive")
        _check(self.base >= 2, "position.base", "must be at least 2")
        _check(self.transfer_num >= 2, "position.transfer_num", "needs at least 2 slots")
        _check(self.temperature > 0, "position.temperature", "must be positive")
        _check(0.0 <= self.random_shift_rate <= 1.0, "position.random_shift_rate", "must be in [0, 1]")
        # The sampler needs enough positions besides the pivot and the nearest one's mirror image.
        _check(self.max_position ** self.n_dims - 2 >= self.contrastive_num, "position.contrastive_num",
               f"{self.contrastive_num} candidates need more than {self.max_position}^{self.n_dims} positions")
        _check(min(self.dist_sample_range, self.max_position) ** self.n_dims - 2 >= self.contrastive_num,
               "position.dist_sample_range",
               f"a window of {self.dist_sample_range} holds fewer than contrastive_num="
               f"{self.contrastive_num} candidates")


@dataclass
class DataConfig:
    manifest: str = ""  # manifest.json (or its directory) from `megaseqpe-prep shards`
    micro_batch_size: int = 8
    num_workers: int = 1
    shuffle_buffer: int = 1000
    on_corrupt: str = "error"  # error | skip
    val_split: str = "val"

    def __post_init__(self) -> None:
        _check(self.micro_batch_size > 0, "data.micro_batch_size", "must be positive")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _choice(self.on_corrupt, "data.on_corrupt", ("error", "skip"))


@dataclass
class TrainConfig:
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    decay: str = "cosine"  # cosine | linear
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    seed: int = 1234
    precision: str = "fp32"  # fp32 | bf16 | fp16
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 500
    keep_last: int = 2
    max_bad_steps: int = 5  # consecutive non-finite steps before the run aborts

    def __post_init__(self) -> None:
        for key in ("max_steps", "grad_accum_steps", "log_every", "eval_every", "save_every",
                    "keep_last", "max_bad_steps", "eval_batches"):
            _check(getattr(self, key) > 0, f"train.{key}", "must be positive")
        _check(self.lr > 0, "train.lr", "must be positive")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio", "must be in [0, 1]")
        _choice(self.decay, "train.decay", ("cosine", "linear"))
        _choice(self.precision, "train.precision", ("fp32", "bf16", "fp16"))
        self.betas = tuple(self.betas)
        _check(len(self.betas) == 2, "train.betas", "needs two numbers")


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    config: str = ""  # a DeepSpeed JSON whose entries override the ones built from this config

    def __post_init__(self) -> None:
        _check(self.zero_stage in (0, 1, 2, 3), "deepspeed.zero_stage", f"{self.zero_stage} is not 0, 1, 2 or 3")


@dataclass
class RunConfig:
    dir: str = "runs/default"


@dataclass
class Config:
    """The whole run: one section per concern, as in the YAML files under configs/.

    `task` is the one top-level scalar: it picks the model, data pipeline and loss (a GPT on
    token shards, or a ViT on image shards); every other key lives in a section.
    """

    task: str = "language_modeling"
    model: ModelConfig = field(default_factory=ModelConfig)
    position: PositionConfig = field(default_factory=PositionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        _choice(self.task, "task", TASKS)
        if self.task == "image_classification":
            self._check_image_task()
        elif self.position.type == "seqpe" and self.position.n_dims == 1:
            _check(self.position.max_position >= self.model.max_seq_len, "position.max_position",
                   f"{self.position.max_position} is below model.max_seq_len={self.model.max_seq_len}")
        if self.position.type == "rope":
            _check(self.model.head_dim % (2 * self.position.n_dims) == 0, "model.d_model",
                   f"RoPE over {self.position.n_dims} dims needs head_dim divisible by "
                   f"{2 * self.position.n_dims}, got {self.model.head_dim}")

    def _check_image_task(self) -> None:
        model, position = self.model, self.position
        _check(model.image_size % model.patch_size == 0, "model.image_size",
               f"{model.image_size} is not a multiple of model.patch_size={model.patch_size}")
        _check(position.n_dims == 2, "position.n_dims",
               f"image_classification positions are (row, col) patch coordinates: set 2, got {position.n_dims}")
        _check(position.type != "alibi", "position.type", "alibi is 1-D only; use seqpe, learned, "
               "sinusoidal, rope or nope for images")
        if position.type == "seqpe":
            _check(position.max_position >= model.grid_size, "position.max_position",
                   f"{position.max_position} is below the training grid of {model.grid_size} patches per side")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["train"]["betas"] = list(data["train"]["betas"])
        return data


# ----------------------------------------------------------------------------- YAML and overrides
def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a field's type hint; ints are accepted where floats are expected."""
    if typing.get_origin(hint) is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    expected = hint if isinstance(hint, type) else object
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> Config:
    """Build a validated Config; unknown sections/keys and wrong types fail naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    hints = typing.get_type_hints(Config)
    built = {}
    for section, values in data.items():
        if section not in hints:
            raise ConfigError(f"{source}: unknown section {section!r}{_suggest(section, hints)}")
        cls = hints[section]
        if not dataclasses.is_dataclass(cls):  # a top-level scalar such as `task`
            built[section] = _coerce(values, cls, section)
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__}")
        field_hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in field_hints:
                raise ConfigError(f"{source}: unknown key {section}.{key}{_suggest(key, field_hints)}")
            kwargs[key] = _coerce(value, field_hints[key], f"{section}.{key}")
        built[section] = cls(**kwargs)
    return Config(**built)


def _scalar_fields() -> set[str]:
    """Top-level Config fields that are plain values, not sections (overridden as `task=...`)."""
    return {name for name, hint in typing.get_type_hints(Config).items() if not dataclasses.is_dataclass(hint)}


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` → (["section", "key"], value parsed as YAML: 3, 1e-4, true, [0.9, 0.95]);
    a top-level scalar is `name=value` (`task=image_classification`)."""
    path, sep, raw = text.partition("=")
    if not sep or ("." not in path and path.strip() not in _scalar_fields()):
        raise ConfigError(f"override {text!r}: expected section.key=value")
    return path.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults) and apply `section.key=value` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}".splitlines()[0]) from None
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1:
            data[keys[0]] = value
            continue
        if len(keys) != 2:
            raise ConfigError(f"override {text!r}: expected exactly section.key")
        data.setdefault(keys[0], {})
        if not isinstance(data[keys[0]], dict):
            raise ConfigError(f"override {text!r}: section {keys[0]!r} is not a mapping")
        data[keys[0]][keys[1]] = value
    return config_from_dict(data, source=str(path) if path else "config")


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
