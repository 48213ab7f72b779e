"""Position encodings: SeqPE and the baselines, all behind `PositionEncoding`."""
from __future__ import annotations

from ..config import Config
from .base import AttentionExtras, PositionEncoding, PositionSignal, default_positions, grid_positions
from .baselines import ALiBi, LearnedAbsolute, LearnedGrid2D, NoPE, Rotary, Sinusoidal
from .digits import digits_needed, to_digits
from .objectives import ContrastiveObjective, DistillationObjective, ObjectiveSample, SeqPEObjectives
from .seqpe import SeqPE, SeqPEEncoder

def _learned(config: Config) -> PositionEncoding:
    """A 1-D table of max_seq_len rows for text; a 2-D grid table (patch rows x cols) for images."""
    if config.position.n_dims == 2:
        return LearnedGrid2D(config.model.grid_size, config.model.d_model)
    return LearnedAbsolute(config.model.max_seq_len, config.model.d_model, config.position.n_dims)


_BUILDERS = {
    "seqpe": lambda c: SeqPE(c.position, c.model),
    "learned": _learned,
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
    "LearnedGrid2D", "grid_positions",
    "NoPE", "ObjectiveSample", "PositionEncoding", "PositionSignal", "Rotary", "SeqPE", "SeqPEEncoder",
    "SeqPEObjectives", "Sinusoidal",
    "build_position_encoding", "default_positions", "digits_needed", "to_digits",
]
