"""The transformers config of an exported megaseqpe GPT (written by megaseqpe-export)."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

from transformers import PretrainedConfig


class MegaSeqPEConfig(PretrainedConfig):
    """`megaseqpe`: the run's validated `model` and `position` config sections as plain dicts."""

    model_type = "megaseqpe"

    def __init__(self, megaseqpe: Optional[dict[str, Any]] = None, **kwargs: Any) -> None:
        self.megaseqpe = megaseqpe or {}
        super().__init__(**kwargs)

    def sections(self) -> SimpleNamespace:
        """`config.model` and `config.position` as the copied megaseqpe modules read them."""
        return SimpleNamespace(**{name: SimpleNamespace(**values) for name, values in self.megaseqpe.items()})
