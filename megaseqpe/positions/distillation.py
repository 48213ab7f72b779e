"""Objective 2, distillation from in-distribution positions (docs/method.md §2.3).

The teacher is a set of m slots of the training window (the same on every rank: one anchor for
all), the student the same slots moved by a start beyond it (per rank, so ranks together cover
more starts): 1-D starts in [L//4, max_position - L); n-D starts inside the grid with at least ONE
coordinate at or beyond the training extent (positions with one coordinate inside and one
beyond are distilled too). Per head by default, each side's m x m similarities get a row-wise
softmax and the loss is KL both ways, each averaged over every element (`F.kl_div`'s "mean").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, PositionConfig

Similarity = Callable[[torch.Tensor], torch.Tensor]  # embeddings [E, m, D] → scores [E, heads, m, m]


@dataclass
class DistillationBatch:
    teacher: torch.Tensor  # [E, m, n_dims], slots inside the training window
    student: torch.Tensor  # [E, m, n_dims], the same slots moved beyond it

    @property
    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher, self.student


class DistillationObjective:
    """Pull shifted (unseen) windows toward the similarity geometry of the training window."""

    def __init__(self, config: PositionConfig, n_head: int) -> None:
        self.n_dims, self.limit = config.n_dims, config.max_position
        self.examples, self.slots = config.distill_batch_size, config.distill_num
        self.kind, self.beta = config.distill_loss, config.distill_beta
        self.heads = n_head if config.distill_per_head else None

    def check(self, train_extents: tuple[int, ...]) -> None:
        """ConfigError unless a training window of `train_extents` can be distilled (start-up check)."""
        extents = np.asarray(train_extents, dtype=np.int64)
        if len(extents) != self.n_dims:
            raise ConfigError(f"position.n_dims: {self.n_dims}, but the training window {tuple(train_extents)} "
                              f"is {len(extents)}-D")
        low, high = self._start_range(extents)
        first_beyond = low if self.n_dims == 1 else extents  # the smallest start that counts as unseen
        if not bool((high > first_beyond).any()):
            need = f"> {extents[0] + extents[0] // 4}" if self.n_dims == 1 else f"> 2 x {tuple(train_extents)}"
            raise ConfigError(f"position.max_position: {self.limit} leaves no student start beyond the training "
                              f"window {tuple(train_extents)} for distillation (needs max_position {need})")
        cells = int(np.prod(extents))
        if self.slots > cells:
            raise ConfigError(f"position.distill_num: {self.slots} exceeds the {cells} training positions")

    def _start_range(self, extents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Student starts s with low <= s < high per dimension (n-D: plus one coordinate beyond)."""
        low = extents // 4 if self.n_dims == 1 else np.zeros_like(extents)
        return low, self.limit - extents

    def sample(self, train_extents: tuple[int, ...], shared_rng: np.random.Generator,
               local_rng: np.random.Generator) -> DistillationBatch:
        """Teacher slots come from `shared_rng` (identical on every rank), student starts from
        `local_rng` (per rank); host tensors."""
        self.check(train_extents)
        extents = np.asarray(train_extents, dtype=np.int64)
        flat = np.stack([shared_rng.choice(int(np.prod(extents)), size=self.slots, replace=False)
                         for _ in range(self.examples)])
        teacher = np.stack(np.unravel_index(flat, tuple(extents)), axis=-1)
        student = teacher + self._student_starts(extents, local_rng)[:, None, :]
        as_tensor = lambda x: torch.as_tensor(x, dtype=torch.int64)
        return DistillationBatch(as_tensor(teacher), as_tensor(student))

    def _student_starts(self, extents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low, high = self._start_range(extents)
        if self.n_dims == 1:
            return rng.integers(low, high, size=(self.examples, 1))
        starts: list[np.ndarray] = []
        while len(starts) < self.examples:  # rejection: at least one coordinate beyond the window
            draws = rng.integers(low, high, size=(2 * self.examples, self.n_dims))
            starts += list(draws[(draws >= extents).any(-1)])
        return np.stack(starts[: self.examples])

    def loss(self, teacher_embeddings: torch.Tensor, student_embeddings: torch.Tensor,
             similarity: Optional[Similarity] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, teacher entropy): symmetric KL between row-wise softmaxes of the two sides' m x m
        similarities (or their MSE), and the mean entropy in nats of the teacher's rows (log m =
        a flat teacher, for which matching costs nothing).

        `similarity` defaults to the embeddings' dot products (per head when configured). The
        teacher side is detached: only the student positions are moved."""
        similarity = similarity or self.embedding_similarity
        teacher = similarity(teacher_embeddings.detach()).detach()
        student = similarity(student_embeddings)
        log_t = teacher.float().log_softmax(-1)
        entropy = -(log_t.exp() * log_t).sum(-1).mean()
        if self.kind == "mse":
            return F.mse_loss(student, teacher), entropy
        log_s = student.float().log_softmax(-1)
        # Each KL averaged over ALL elements, as the reference's F.kl_div(reduction="mean"); written
        # out because torch plans to change what "mean" means.
        kl_teacher_student = (log_t.exp() * (log_t - log_s)).sum() / log_t.numel()
        kl_student_teacher = (log_s.exp() * (log_s - log_t)).sum() / log_s.numel()
        return kl_student_teacher + self.beta * kl_teacher_student, entropy

    def embedding_similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Dot products `[E, heads, m, m]` of the encoder outputs (one "head" for the whole vector)."""
        heads = self.heads or 1
        embeddings = embeddings.unflatten(-1, (heads, -1)).transpose(-3, -2)  # [E, heads, m, D/heads]
        return embeddings @ embeddings.transpose(-1, -2)
