"""Tasks shared by training and evaluation: `task: language_modeling | image_classification | qa`."""
from __future__ import annotations

from ..config import Config, ConfigError
from .base import ExtrapolationRequest, StepLoss, Task
from .images import ImageClassification
from .language import LanguageModeling
from .qa import QA

TASKS: dict[str, type[Task]] = {"language_modeling": LanguageModeling, "image_classification": ImageClassification,
                                "qa": QA}


def build_task(config: Config) -> Task:
    """The task that `config.task` names (the only place the name is read)."""
    if config.task not in TASKS:
        raise ConfigError(f"task: {config.task!r} is not one of {', '.join(TASKS)}")
    return TASKS[config.task](config)


__all__ = ["ExtrapolationRequest", "ImageClassification", "LanguageModeling", "QA", "StepLoss", "TASKS", "Task",
           "build_task"]
