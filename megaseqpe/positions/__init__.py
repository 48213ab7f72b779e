"""Position encodings: SeqPE and the baselines, all behind `PositionEncoding`."""
from __future__ import annotations

from ..config import Config
from .base import AttentionExtras, PositionEncoding, PositionSignal, default_positions
from .baselines import ALiBi, LearnedAbsolute, NoPE, Rotary, Sinusoidal
from .digits import digits_needed, to_digits
from .objectives import ContrastiveObjective, DistillationObjective, ObjectiveSample, SeqPEObjectives
from .seqpe import SeqPE, SeqPEEncoder

_BUILDERS = {
    "seqpe": lambda c: SeqPE(c.position, c.model),
    "learned": lambda c: LearnedAbsolute(c.model.max_seq_len, c.model.d_model, c.position.n_dims),
    "sinusoidal": lambda c: Sinusoidal(c.model.d_model, c.position.n_dims),
    "rope": lambda c: Rotary(c.model.head_dim, c.position.n_dims, c.position.rope_base),
    "alibi": lambda c: ALiBi(c.model.n_head, c.position.n_dims),
    "nope": lambda c: NoPE(c.position.n_dims),
}


def build_position_encoding(config: Config) -> PositionEncoding:
    """The position module that `config.position.type` names (the only place names are read)."""
    return _BUILDERS[config.position.type](config)


__all__ = [
    "ALiBi", "AttentionExtras", "ContrastiveObjective", "DistillationObjective", "LearnedAbsolute",
    "NoPE", "ObjectiveSample", "PositionEncoding", "PositionSignal", "Rotary", "SeqPE", "SeqPEEncoder",
    "SeqPEObjectives", "Sinusoidal",
    "build_position_encoding", "default_positions", "digits_needed", "to_digits",
]
