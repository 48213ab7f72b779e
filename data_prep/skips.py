"""Counting what a corpus held that did not become documents, and why."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from megaseqpe.data import MAX_SKIP_EXAMPLES, SKIP_REASONS


@dataclass
class SkipLog:
    """Counts per skip reason (one of :data:`megaseqpe.data.SKIP_REASONS`) plus the first
    :data:`MAX_SKIP_EXAMPLES` ``"where: why"`` lines."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, reason: str, where: str, detail: str) -> None:
        assert reason in SKIP_REASONS, reason
        self.counts[reason] += 1
        if len(self.examples) < MAX_SKIP_EXAMPLES:
            self.examples.append(f"{where}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return {reason: self.counts[reason] for reason in SKIP_REASONS}

    def summary(self) -> str:
        """One line for the terminal, e.g. ``skipped 3 inputs: binary 1, bad_utf8 2 (...)``."""
        if not self.total:
            return "skipped 0 inputs"
        parts = ", ".join(f"{r} {self.counts[r]}" for r in SKIP_REASONS if self.counts[r])
        return f"skipped {self.total} inputs: {parts} (first: {self.examples[0]})"
