"""SeqPE's two regularisers (docs/method.md §2.2-2.3), split into sampling and loss.

Each objective first *samples* the positions it needs and then computes its *loss* from their
embeddings. The split lets the SeqPE module put the model's positions and every objective's
positions through one unique-position encoder pass (`SeqPE.forward(positions, objectives)`).

Sampling uses numpy Generators the caller owns (the step planner, `planning.py`), so the caller
decides which streams are shared across ranks (the distillation teacher) and which are per rank.
The objectives themselves live in `contrastive.py` and `distillation.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

from ..config import PositionConfig
from .contrastive import ContrastiveBatch, ContrastiveObjective
from .digit_graph import EncoderPass
from .distillation import DistillationBatch, DistillationObjective, Similarity

__all__ = ["ContrastiveBatch", "ContrastiveObjective", "DistillationBatch", "DistillationObjective",
           "ObjectiveSample", "SeqPEObjectives"]


@dataclass
class ObjectiveSample:
    """What `SeqPEObjectives.sample` drew for one step, and, from the step planner, one encoder pass
    laid out over `model_positions` (the plan's) and every position drawn here, in that order."""

    contrastive: Optional[ContrastiveBatch]
    distillation: Optional[DistillationBatch]
    encoder_pass: Optional[EncoderPass] = None
    model_positions: Optional[torch.Tensor] = None

    def prepared_pass(self, positions: torch.Tensor) -> Optional[EncoderPass]:
        """The planner's encoder pass if it was laid out for `positions`, the plan's own tensor (a task
        that derives other positions from them, as document masking restarts them, gets None)."""
        return self.encoder_pass if positions is self.model_positions else None

    def named_positions(self) -> dict[str, torch.Tensor]:
        """Every position tensor the objectives need, by the name `SeqPEObjectives.losses` reads."""
        named = {}
        if self.contrastive is not None:
            named["contrastive_pivots"], named["contrastive_candidates"] = self.contrastive.positions
        if self.distillation is not None:
            named["distill_teacher"], named["distill_student"] = self.distillation.positions
        return named


class SeqPEObjectives:
    """Both regularisers with their weights: sample the step's positions, then weigh the losses.

    An objective whose weight is 0 is neither sampled nor computed.
    """

    def __init__(self, config: PositionConfig, n_head: int) -> None:
        self.contrastive_weight, self.distill_weight = config.contrastive_weight, config.distill_weight
        self.distill_in_attention = config.distill_space == "attention"
        self.contrastive = ContrastiveObjective(config, n_head) if config.contrastive_weight > 0 else None
        self.distillation = DistillationObjective(config, n_head) if config.distill_weight > 0 else None

    @property
    def enabled(self) -> bool:
        return self.contrastive is not None or self.distillation is not None

    def check(self, train_extents: tuple[int, ...]) -> None:
        """ConfigError (naming the key) if the objectives cannot run on this training window."""
        if self.distillation is not None:
            self.distillation.check(train_extents)

    def sample(self, train_extents: tuple[int, ...], shared_rng: np.random.Generator,
               local_rng: np.random.Generator, *, seed: int, step: int, rank: int,
               device: torch.device | str = "cpu", distill: bool = True) -> ObjectiveSample:
        """The step's sample: contrastive pivots from the rank's epoch order at `step`, candidates
        and student starts from `local_rng`, teacher slots from `shared_rng`. `distill=False`
        skips distillation (the reference distils only on unshifted steps)."""
        contrastive = None
        if self.contrastive is not None:
            pivots = self.contrastive.epoch_pivots(seed, rank, step)
            contrastive = self.contrastive.sample(local_rng, pivots, device)
        distillation = None
        if self.distillation is not None and distill:
            distillation = self.distillation.sample(train_extents, shared_rng, local_rng, device)
        return ObjectiveSample(contrastive, distillation)

    def losses(self, sample: ObjectiveSample, embeddings: Mapping[str, torch.Tensor],
               attention_similarity: Optional[Similarity] = None) -> tuple[dict[str, torch.Tensor], dict]:
        """(losses, stats) for what was sampled: `{"seqpe_contrastive_loss", "seqpe_distill_loss"}`,
        each already multiplied by its weight, and `{"seqpe/teacher_entropy"}` when distilling.
        `embeddings` are keyed like `sample.named_positions()`; `attention_similarity` is the
        attention-space similarity that `position.distill_space: attention` distils in."""
        losses, stats = {}, {}
        if sample.contrastive is not None:
            loss = self.contrastive.loss(embeddings["contrastive_pivots"], embeddings["contrastive_candidates"],
                                         sample.contrastive.labels)
            losses["seqpe_contrastive_loss"] = self.contrastive_weight * loss
        if sample.distillation is not None:
            similarity = attention_similarity if self.distill_in_attention else None
            loss, entropy = self.distillation.loss(embeddings["distill_teacher"], embeddings["distill_student"],
                                                   similarity)
            losses["seqpe_distill_loss"] = self.distill_weight * loss
            stats["seqpe/teacher_entropy"] = entropy
        return losses, stats
