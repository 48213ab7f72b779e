"""Objective 1, contrastive distance alignment (docs/method.md §2.2), as the authors' sampler does it.

Per step each rank takes the next `contrastive_batch_size` pivots of its own sequence of epochs,
each epoch a random permutation of every position, so a rank visits every position once per
epoch. Every pivot gets K+1 uniformly random candidates and, by a per-pivot mode drawn with
`contrastive_mode_shares` (random / hard / window), special candidates put in front:
- hard: digit-edit neighbours of the pivot (`digit_edits.py`) kept only if FARTHER from it than
  the nearest random candidate, so they are never the label;
- window: K positions of a window at a uniformly random start, usually not containing the pivot.
The pivot and duplicates are dropped and the first K kept; the label is the candidate nearest
the pivot. Beyond the reference, a candidate exactly as near as the nearest one so far is
dropped too, so the label is always unique (the reference's argmin takes the first of a tie).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import PositionConfig
from .digit_edits import digit_edit_neighbours
from .digits import digits_needed

RANDOM, HARD, WINDOW = 0, 1, 2  # the per-pivot modes, in the order of contrastive_mode_shares
_TOP_UP_DRAWS = 100  # bounded: the config check guarantees enough distinct positions exist


@dataclass
class ContrastiveBatch:
    pivots: torch.Tensor  # [P, n_dims]
    candidates: torch.Tensor  # [P, C, n_dims]
    labels: torch.Tensor  # [P], index of the candidate nearest to its pivot

    @property
    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pivots, self.candidates


def squared_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between coordinate tuples (in 1-D, (i - j)^2)."""
    return ((a - b) ** 2).sum(-1)


class ContrastiveObjective:
    """Distance alignment: from its embedding, tell which candidate is nearest to a pivot."""

    def __init__(self, config: PositionConfig, n_head: int) -> None:
        self.n_dims, self.limit, self.base = config.n_dims, config.max_position, config.base
        self.max_digits = digits_needed(config.max_position, config.base)
        self.pivots, self.num = config.contrastive_batch_size, config.contrastive_num
        self.shares = np.asarray(config.contrastive_mode_shares, dtype=np.float64)
        self.hard = int(self.num * config.contrastive_hard_ratio)
        # At least 5K cells, so that a window holds K candidates to spare.
        side = max(config.dist_sample_range, math.ceil((5 * self.num) ** (1 / self.n_dims)))
        self.window = min(side, self.limit)
        self.logit_scale = config.contrastive_logit_scale
        self.heads = n_head if config.contrastive_per_head else None
        self._epochs: dict[tuple[int, int, int], np.ndarray] = {}

    # ----------------------------------------------------------------- pivots
    def epoch_pivots(self, seed: int, rank: int, step: int) -> np.ndarray:
        """The pivots `[P, n_dims]` of micro-step `step` on `rank`: the next P positions of the
        rank's sequence of epochs (each a permutation of all positions, seeded by seed, rank, epoch)."""
        total = self.limit ** self.n_dims
        flat = []
        for index in range(step * self.pivots, (step + 1) * self.pivots):
            epoch, offset = divmod(index, total)
            flat.append(self._permutation(seed, rank, epoch)[offset])
        return np.stack(np.unravel_index(np.asarray(flat), (self.limit,) * self.n_dims), axis=-1)

    def _permutation(self, seed: int, rank: int, epoch: int) -> np.ndarray:
        key = (seed, rank, epoch)
        if key not in self._epochs:
            if len(self._epochs) > 2:  # a step spans at most two epochs
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = np.random.default_rng([seed, 7, rank, epoch]).permutation(self.limit ** self.n_dims)
        return self._epochs[key]

    # ----------------------------------------------------------------- candidates
    def sample(self, rng: np.random.Generator, pivots: np.ndarray) -> ContrastiveBatch:
        """Candidates and labels for `pivots` `[P, n_dims]`, drawn from `rng` (host tensors)."""
        candidates, labels = [], []
        for pivot, mode in zip(pivots, rng.choice(3, size=len(pivots), p=self.shares)):
            randoms = self._uniform(rng, self.num + 1)
            kept = self._assemble(pivot, [self._special(int(mode), pivot, randoms, rng), randoms], rng)
            candidates.append(kept)
            labels.append(int(np.argmin(squared_distance(kept, pivot))))
        as_tensor = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.int64)
        return ContrastiveBatch(as_tensor(pivots), as_tensor(candidates), as_tensor(labels))

    def _uniform(self, rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.integers(0, self.limit, size=(count, self.n_dims))

    def _special(self, mode: int, pivot: np.ndarray, randoms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if mode == HARD:
            return self._hard_negatives(pivot, randoms, rng)
        if mode == WINDOW:
            return self._window(rng)
        return randoms[:0]

    def _hard_negatives(self, pivot: np.ndarray, randoms: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Digit edits of the pivot farther from it than the nearest of the random candidates that
        will stay in the list (the first K+1-n_hard: the hard ones take the others' places)."""
        edits = digit_edit_neighbours(pivot, self.hard, rng, base=self.base, max_digits=self.max_digits,
                                      limit=self.limit)
        distances = squared_distance(randoms[: len(randoms) - self.hard], pivot)
        nearest = distances[distances > 0].min(initial=np.iinfo(np.int64).max)
        return edits[squared_distance(edits, pivot) > nearest]

    def _window(self, rng: np.random.Generator) -> np.ndarray:
        """K positions of a `window`-wide square at a uniformly random start (independent of the pivot)."""
        start = rng.integers(0, self.limit - self.window + 1, size=self.n_dims)
        cells = self.window ** self.n_dims
        chosen = rng.choice(cells, size=min(self.num, cells), replace=False)
        return start + np.stack(np.unravel_index(chosen, (self.window,) * self.n_dims), axis=-1)

    def _assemble(self, pivot: np.ndarray, proposals: Iterable[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """The first K proposals (in order) that are not the pivot, not repeated, and not exactly as
        near as the nearest kept so far (a unique label); topped up with random ones if short."""
        kept, seen, nearest = [], set(), None
        top_up = (self._uniform(rng, self.num) for _ in range(_TOP_UP_DRAWS))  # drawn only when needed
        for stream in itertools.chain(proposals, top_up):
            for proposal in stream:
                key, distance = tuple(proposal.tolist()), int(squared_distance(proposal, pivot))
                if distance == 0 or key in seen or distance == nearest:
                    continue
                seen.add(key)
                kept.append(proposal)
                nearest = distance if nearest is None else min(nearest, distance)
                if len(kept) == self.num:
                    return np.asarray(kept)
        raise RuntimeError(f"could not draw {self.num} distinct candidates around pivot {tuple(pivot)}")

    # ----------------------------------------------------------------- loss
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
