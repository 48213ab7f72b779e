"""Typed configuration: dataclasses that validate themselves.

Every knob of the model and of the position scheme lives here, under the names of
ARCHITECTURE.md (SeqPE knobs keep the reference names without the `seqpe_`/`pe_` prefix).
Validation happens at construction, so a bad value fails at start-up with a message that
names the key, not deep inside a training step.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

POSITION_TYPES = ("seqpe", "learned", "sinusoidal", "rope", "alibi", "nope")
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

    def __post_init__(self) -> None:
        for key in ("n_layer", "n_head", "d_model", "vocab_size", "max_seq_len"):
            _check(getattr(self, key) > 0, f"model.{key}", "must be positive")
        _check(self.d_model % self.n_head == 0, "model.d_model",
               f"{self.d_model} is not divisible by model.n_head={self.n_head}")
        _choice(self.attention_backend, "model.attention_backend", ATTENTION_BACKENDS)
        for key in ("dropout", "attention_dropout"):
            _check(0.0 <= getattr(self, key) < 1.0, f"model.{key}", "must be in [0, 1)")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


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
class Config:
    """The whole run. Training, data and launch sections join this as they are built."""

    model: ModelConfig = field(default_factory=ModelConfig)
    position: PositionConfig = field(default_factory=PositionConfig)

    def __post_init__(self) -> None:
        if self.position.type == "seqpe" and self.position.n_dims == 1:
            _check(self.position.max_position >= self.model.max_seq_len, "position.max_position",
                   f"{self.position.max_position} is below model.max_seq_len={self.model.max_seq_len}")
        if self.position.type == "rope":
            _check(self.model.head_dim % (2 * self.position.n_dims) == 0, "model.d_model",
                   f"RoPE over {self.position.n_dims} dims needs head_dim divisible by "
                   f"{2 * self.position.n_dims}, got {self.model.head_dim}")
