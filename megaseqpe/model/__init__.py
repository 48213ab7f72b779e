"""Models that take any position module: the GPT decoder (and, later, the ViT)."""
from __future__ import annotations

from ..config import Config
from ..positions import build_position_encoding
from .attention import attention
from .gpt import GPT, GPTOutput


def build_gpt(config: Config) -> GPT:
    """A GPT with the position module that `config.position.type` names."""
    return GPT(config.model, build_position_encoding(config))


__all__ = ["GPT", "GPTOutput", "attention", "build_gpt"]
