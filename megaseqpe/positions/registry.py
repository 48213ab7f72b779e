"""The one place position type names are read: `position.type` → the module and its step planner."""
from __future__ import annotations

from typing import Callable

from ..config import Config, ConfigError
from .base import PositionEncoding
from .baselines import ALiBi, LearnedAbsolute, LearnedGrid2D, NoPE, Rotary, Sinusoidal
from .planning import SeqPEStepPlanner, StepPlanner
from .seqpe import SeqPE


def _learned(config: Config) -> PositionEncoding:
    """A 1-D table of max_seq_len rows for text; a 2-D grid table (patch rows x cols) for images."""
    if config.position.n_dims == 2:
        return LearnedGrid2D(config.model.grid_size, config.model.d_model)
    return LearnedAbsolute(config.model.max_seq_len, config.model.d_model, config.position.n_dims)


_BUILDERS: dict[str, Callable[[Config], PositionEncoding]] = {
    "seqpe": lambda c: SeqPE(c.position, c.model),
    "learned": _learned,
    "sinusoidal": lambda c: Sinusoidal(c.model.d_model, c.position.n_dims),
    "rope": lambda c: Rotary(c.model.head_dim, c.position.n_dims, c.position.rope_base),
    "alibi": lambda c: ALiBi(c.model.n_head, c.position.n_dims),
    "nope": lambda c: NoPE(c.position.n_dims),
}
# Schemes with training-time work of their own (shifts, objectives); the rest train on [0, L).
_PLANNERS: dict[str, type[StepPlanner]] = {"seqpe": SeqPEStepPlanner}

POSITION_TYPES = tuple(_BUILDERS)


def _builder(name: str) -> Callable[[Config], PositionEncoding]:
    if name not in _BUILDERS:
        raise ConfigError(f"position.type: {name!r} is not one of {', '.join(POSITION_TYPES)}")
    return _BUILDERS[name]


def build_position_encoding(config: Config) -> PositionEncoding:
    """The position module that `config.position.type` names."""
    return _builder(config.position.type)(config)


def build_step_planner(config: Config, extents: tuple[int, ...]) -> StepPlanner:
    """The planner of the training steps of `config.position.type` over a window of `extents`
    (`(L,)` for text, `(rows, cols)` for images); raises ConfigError for settings it cannot run."""
    _builder(config.position.type)
    return _PLANNERS.get(config.position.type, StepPlanner)(config, extents)
