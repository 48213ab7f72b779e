"""SeqPE's two regularisers (docs/method.md §2.2-2.3), split into sampling and loss.

Each objective first *samples* the positions it needs and then computes its *loss* from their
embeddings. The split lets the SeqPE module put the model's positions and every objective's
positions through one unique-position encoder pass (`SeqPE.forward(positions, objectives)`).

Sampling uses numpy Generators the caller owns (the step planner, `planning.py`), so the caller
decides which streams are shared across ranks (the distillation teacher) and which are per rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, PositionConfig

# Share of pivots whose candidates are all random / include hard near ones / come from a window.
RANDOM_SHARE, HARD_SHARE = 0.5, 0.3
_MAX_DRAWS = 1000  # bounded rejection sampling; the config check makes running out impossible


@dataclass
class ContrastiveBatch:
    pivots: torch.Tensor  # [P, n_dims]
    candidates: torch.Tensor  # [P, C, n_dims]
    labels: torch.Tensor  # [P], index of the candidate nearest to its pivot

    @property
    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pivots, self.candidates


@dataclass
class DistillationBatch:
    teacher: torch.Tensor  # [E, m, n_dims], slots inside the training window
    student: torch.Tensor  # [E, m, n_dims], the same slots shifted out of distribution

    @property
    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.teacher, self.student


def squared_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between coordinate tuples (in 1-D, (i - j)^2)."""
    return ((a - b) ** 2).sum(-1)


class ContrastiveObjective:
    """Distance alignment: from its embedding, tell which candidate is nearest to a pivot."""

    def __init__(self, config: PositionConfig, n_head: int) -> None:
        self.n_dims, self.limit = config.n_dims, config.max_position
        self.pivots, self.num = config.contrastive_batch_size, config.contrastive_num
        self.window = min(config.dist_sample_range, config.max_position)
        self.logit_scale = config.contrastive_logit_scale
        self.heads = n_head if config.contrastive_per_head else None

    def sample(self, rng: np.random.Generator, device: torch.device | str = "cpu") -> ContrastiveBatch:
        pivots = rng.integers(0, self.limit, size=(self.pivots, self.n_dims))
        candidates, labels = [], []
        for pivot in pivots:
            mode = rng.random()
            if mode < RANDOM_SHARE:
                kept = self._fill(pivot, [(self._uniform(rng), self.num, _MAX_DRAWS)])
            elif mode < RANDOM_SHARE + HARD_SHARE:
                kept = self._with_hard(pivot, rng)
            else:
                kept = self._fill(pivot, [(self._local(pivot, rng), self.num, _MAX_DRAWS)])
            kept = np.asarray(kept)
            candidates.append(kept)
            labels.append(int(np.argmin(squared_distance(kept, pivot))))
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.int64, device=device)
        return ContrastiveBatch(as_tensor(pivots), as_tensor(candidates), as_tensor(labels))

    def loss(self, pivot_embeddings: torch.Tensor, candidate_embeddings: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over `pe(pivot) . pe(candidate)` (per head when configured)."""
        if self.heads is None:
            logits = torch.einsum("pd,pcd->pc", pivot_embeddings, candidate_embeddings)
            return F.cross_entropy(logits * self.logit_scale, labels)
        pivots = pivot_embeddings.unflatten(-1, (self.heads, -1))
        candidates = candidate_embeddings.unflatten(-1, (self.heads, -1))
        logits = torch.einsum("phd,pchd->phc", pivots, candidates)  # one classification per head
        return F.cross_entropy(logits.flatten(0, 1) * self.logit_scale, labels.repeat_interleave(self.heads))

    # -- candidate streams: each call of a stream returns a batch of proposals [k, n_dims]
    def _uniform(self, rng: np.random.Generator) -> Callable[[], np.ndarray]:
        return lambda: rng.integers(0, self.limit, size=(2 * self.num, self.n_dims))

    def _local(self, pivot: np.ndarray, rng: np.random.Generator) -> Callable[[], np.ndarray]:
        low = np.clip(pivot - self.window // 2, 0, self.limit - self.window)
        return lambda: low + rng.integers(0, self.window, size=(2 * self.num, self.n_dims))

    def _with_hard(self, pivot: np.ndarray, rng: np.random.Generator) -> list:
        """Random candidates plus a quarter drawn closer to the pivot than the nearest random one."""
        hard = max(1, self.num // 4)
        kept = self._fill(pivot, [(self._uniform(rng), self.num - hard, _MAX_DRAWS)])
        nearest = squared_distance(np.asarray(kept), pivot).min()
        # Any offset with every |coordinate| <= radius is strictly closer than `nearest`.
        radius = int(np.floor(np.sqrt((nearest - 1) / self.n_dims)))
        streams = [(self._uniform(rng), self.num, _MAX_DRAWS)]
        if radius >= 1:
            near = lambda: np.clip(pivot + rng.integers(-radius, radius + 1, size=(2 * hard, self.n_dims)),
                                   0, self.limit - 1)
            streams.insert(0, (near, self.num, 8))  # few tries: the ball may be tiny
        return self._fill(pivot, streams, kept=kept)

    def _fill(self, pivot: np.ndarray, streams: list, kept: Optional[list] = None) -> list:
        """Accept proposals from each `(draw, quota, tries)` stream in turn until its quota is met.

        A proposal is refused if it is the pivot, already kept, or exactly as far from the pivot
        as the current nearest candidate: that keeps the label (the nearest) unique.
        """
        kept = [] if kept is None else kept
        seen = {tuple(c) for c in kept}
        nearest = min((int(squared_distance(np.asarray(c), pivot)) for c in kept), default=None)
        for draw, quota, tries in streams:
            for _ in range(tries):
                if len(kept) >= quota:
                    break
                for proposal in draw():
                    key, distance = tuple(proposal), int(squared_distance(proposal, pivot))
                    if distance == 0 or key in seen or distance == nearest:
                        continue
                    seen.add(key)
                    kept.append(proposal)
                    nearest = distance if nearest is None else min(nearest, distance)
                    if len(kept) >= quota:
                        break
        if len(kept) < streams[-1][1]:
            raise RuntimeError(f"could not draw {streams[-1][1]} distinct candidates around pivot {tuple(pivot)}")
        return kept


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
        if bool((2 * extents > self.limit).any()):
            raise ConfigError(f"position.max_position: distillation needs at least 2 x the training window "
                              f"{tuple(train_extents)}, got {self.limit}")
        cells = int(np.prod(extents))
        if self.slots > cells:
            raise ConfigError(f"position.distill_num: {self.slots} exceeds the {cells} training positions")

    def sample(self, train_extents: tuple[int, ...], shared_rng: np.random.Generator,
               local_rng: np.random.Generator, device: torch.device | str = "cpu") -> DistillationBatch:
        """Teacher slots come from `shared_rng` (identical on every rank: one anchor for all),
        student offsets from `local_rng` (per rank, so ranks together cover more offsets)."""
        self.check(train_extents)
        extents = np.asarray(train_extents, dtype=np.int64)
        cells = int(np.prod(extents))
        flat = np.stack([shared_rng.choice(cells, size=self.slots, replace=False) for _ in range(self.examples)])
        teacher = np.stack(np.unravel_index(flat, tuple(extents)), axis=-1)
        # Offsets s with L <= s and s + L <= max_position in every dimension.
        offsets = local_rng.integers(extents, self.limit - extents + 1, size=(self.examples, self.n_dims))
        student = teacher + offsets[:, None, :]
        as_tensor = lambda x: torch.as_tensor(x, dtype=torch.int64, device=device)
        return DistillationBatch(as_tensor(teacher), as_tensor(student))

    def loss(self, teacher_embeddings: torch.Tensor, student_embeddings: torch.Tensor) -> torch.Tensor:
        """Symmetric KL between row-wise softmaxes of the m x m similarity matrices (or MSE).

        The teacher side is detached: only the student positions are moved."""
        teacher = self._similarity(teacher_embeddings.detach())
        student = self._similarity(student_embeddings)
        if self.kind == "mse":
            return F.mse_loss(student, teacher)
        log_t, log_s = teacher.log_softmax(-1), student.log_softmax(-1)
        kl_student_teacher = (log_s.exp() * (log_s - log_t)).sum(-1).mean()
        kl_teacher_student = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
        return kl_student_teacher + self.beta * kl_teacher_student

    def _similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.heads is not None:  # [E, m, D] → [E, heads, m, D/heads]
            embeddings = embeddings.unflatten(-1, (self.heads, -1)).transpose(-3, -2)
        return embeddings @ embeddings.transpose(-1, -2)


@dataclass
class ObjectiveSample:
    """What `SeqPEObjectives.sample` drew for one step."""

    contrastive: Optional[ContrastiveBatch]
    distillation: Optional[DistillationBatch]

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
               local_rng: np.random.Generator, device: torch.device | str = "cpu",
               distill: bool = True) -> ObjectiveSample:
        """`distill=False` skips distillation (the reference distils only on unshifted steps)."""
        contrastive = self.contrastive.sample(local_rng, device) if self.contrastive else None
        distillation = None
        if self.distillation and distill:
            distillation = self.distillation.sample(train_extents, shared_rng, local_rng, device)
        return ObjectiveSample(contrastive, distillation)

    def losses(self, sample: ObjectiveSample, embeddings: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`{"seqpe_contrastive_loss", "seqpe_distill_loss"}`, each already multiplied by its weight,
        for what was sampled; `embeddings` are keyed like `sample.named_positions()`."""
        losses = {}
        if sample.contrastive is not None:
            loss = self.contrastive.loss(embeddings["contrastive_pivots"], embeddings["contrastive_candidates"],
                                         sample.contrastive.labels)
            losses["seqpe_contrastive_loss"] = self.contrastive_weight * loss
        if sample.distillation is not None:
            loss = self.distillation.loss(embeddings["distill_teacher"], embeddings["distill_student"])
            losses["seqpe_distill_loss"] = self.distill_weight * loss
        return losses
