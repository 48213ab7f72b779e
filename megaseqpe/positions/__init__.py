"""Position encodings: SeqPE and the baselines, all behind `PositionEncoding`, and the step
planners that give each training step its positions (and SeqPE's objective sample)."""
from __future__ import annotations

from .base import AttentionExtras, PositionEncoding, PositionSignal, default_positions, grid_positions
from .baselines import ALiBi, LearnedAbsolute, LearnedGrid2D, NoPE, Rotary, Sinusoidal
from .digit_graph import DigitGraph, DigitGraphs, EncoderPass
from .digits import digits_needed, to_digits
from .objectives import ContrastiveObjective, DistillationObjective, ObjectiveSample, SeqPEObjectives
from .planning import SeqPEStepPlanner, StepPlan, StepPlanner
from .registry import POSITION_TYPES, build_position_encoding, build_step_planner
from .seqpe import SeqPE, SeqPEEncoder

__all__ = [
    "ALiBi", "AttentionExtras", "ContrastiveObjective", "DigitGraph", "DigitGraphs", "DistillationObjective",
    "EncoderPass", "LearnedAbsolute",
    "LearnedGrid2D", "NoPE", "ObjectiveSample", "POSITION_TYPES", "PositionEncoding", "PositionSignal",
    "Rotary", "SeqPE", "SeqPEEncoder", "SeqPEObjectives", "SeqPEStepPlanner", "Sinusoidal", "StepPlan",
    "StepPlanner", "build_position_encoding", "build_step_planner", "default_positions", "digits_needed",
    "grid_positions", "to_digits",
]
