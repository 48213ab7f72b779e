"""The run directory's layout, shared by training and evaluation (docs/architecture.md).

    RUN/config.yaml              the resolved config of the run's latest accepted start
    RUN/metrics.jsonl            one JSON object per logged step
    RUN/tensorboard/             event files (rank 0)
    RUN/eval/                    extrapolation.{json,md,png}
    RUN/checkpoints/step_N/      one checkpoint tag, with the config.yaml that wrote it; COMPLETE is
                                 written last, once every rank is done
    RUN/checkpoints/latest       the newest complete tag's name

A tag without COMPLETE (a crash mid-write) is never read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

COMPLETE = "COMPLETE"
UNIVERSAL_SUFFIX = "_universal"  # DeepSpeed's world-size-free conversion of a tag, beside it


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tensorboard"
        self.eval = self.path / "eval"
        self.checkpoints = self.path / "checkpoints"
        self.latest = self.checkpoints / "latest"

    @staticmethod
    def tag_for(step: int) -> str:
        return f"step_{step:08d}"

    def tag_dir(self, tag: str) -> Path:
        return self.checkpoints / tag

    def config_for(self, tag: str) -> Path:
        """The config that wrote `tag` (tags from before configs were saved in them: the run's)."""
        own = self.tag_dir(tag) / "config.yaml"
        return own if own.is_file() else self.config

    def is_complete(self, tag: str) -> bool:
        return (self.tag_dir(tag) / COMPLETE).exists()

    def tags(self) -> list[Path]:
        """Checkpoint tags as written by training (not their universal conversions), oldest first."""
        return sorted(p for p in self.checkpoints.glob("step_*") if not p.name.endswith(UNIVERSAL_SUFFIX))

    def newest_complete_tag(self) -> Optional[str]:
        """`latest` if it is complete, else the newest complete tag found by a scan, else None."""
        return next((tag for tag in self._candidates() if self.is_complete(tag)), None)

    def _candidates(self) -> Iterator[str]:
        if self.latest.exists():
            yield self.latest.read_text().strip()
        yield from (p.name for p in reversed(self.tags()))

    def resolve_tag(self, tag: Optional[str]) -> str:
        """`tag`, or the run's `latest`; it must be a complete checkpoint (else CheckpointError)."""
        if tag is None:
            if not self.latest.exists():
                raise CheckpointError(f"no checkpoint in {self.checkpoints} (no 'latest' file): train first")
            tag = self.latest.read_text().strip()
        if not self.is_complete(tag):
            raise CheckpointError(f"checkpoint {self.tag_dir(tag)} is missing or incomplete")
        return tag
