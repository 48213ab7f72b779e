"""Models that take any position module: the GPT decoder and the ViT."""
from __future__ import annotations

from ..config import Config
from ..positions import build_position_encoding
from .attention import attention
from .gpt import GPT, GPTOutput
from .kv_cache import KVCache
from .vit import ViT, ViTOutput


def build_gpt(config: Config) -> GPT:
    """A GPT with the position module that `config.position.type` names."""
    return GPT(config.model, build_position_encoding(config))


def build_vit(config: Config) -> ViT:
    """A ViT with the 2-D position module that `config.position.type` names."""
    return ViT(config.model, build_position_encoding(config))


__all__ = ["GPT", "GPTOutput", "KVCache", "ViT", "ViTOutput", "attention", "build_gpt", "build_vit"]
