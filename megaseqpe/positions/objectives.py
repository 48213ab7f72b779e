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


def _where_and_when(tensor: torch.Tensor) -> tuple:
    """What makes two tensors the same values without reading them: one memory, one layout, and no
    in-place write since (the version counter, which views and `detach()` share)."""
    return tensor.device, tensor.dtype, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor._version


@dataclass
class ObjectiveSample:
    """What `SeqPEObjectives.sample` drew for one step, and, from the step planner, one encoder pass
    laid out over the plan's positions and every position drawn here, in that order."""

    contrastive: Optional[ContrastiveBatch]
    distillation: Optional[DistillationBatch]
    encoder_pass: Optional[EncoderPass] = None
    model_positions: Optional[torch.Tensor] = None  # the plan's, which `encoder_pass` covers first
    _model_positions_as_planned: tuple = ()

    def planned_for(self, positions: torch.Tensor) -> None:
        """Record `positions` (on the step's device) as the model positions `encoder_pass` covers."""
        self.model_positions, self._model_positions_as_planned = positions, _where_and_when(positions)

    def prepared_pass(self, positions: torch.Tensor, layout: tuple) -> Optional[EncoderPass]:
        """The planner's encoder pass if it was laid out by `layout` (`DigitGraphs.layout`) for
        `positions`: the plan's tensor, or a view or detached alias of it (ZeRO-3's module hooks
        re-wrap tensor arguments), unwritten since. Positions a task derives from the plan's (document
        masking restarts them at each document) get None: the model then de-duplicates them itself."""
        if self.encoder_pass is None or self.encoder_pass.layout != layout:
            return None
        return self.encoder_pass if _where_and_when(positions) == self._model_positions_as_planned else None

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
               distill: bool = True) -> ObjectiveSample:
        """The step's sample: contrastive pivots from the rank's epoch order at `step`, candidates
        and student starts from `local_rng`, teacher slots from `shared_rng`. `distill=False`
        skips distillation (the reference distils only on unshifted steps)."""
        contrastive = None
        if self.contrastive is not None:
            pivots = self.contrastive.epoch_pivots(seed, rank, step)
            contrastive = self.contrastive.sample(local_rng, pivots)
        distillation = None
        if self.distillation is not None and distill:
            distillation = self.distillation.sample(train_extents, shared_rng, local_rng)
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
