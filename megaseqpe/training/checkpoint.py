"""Atomic, resumable checkpoints: DeepSpeed states + per-rank data/RNG state + step counters.

Layout under RUN/checkpoints/:
    step_00000100/            DeepSpeed's files for the tag, plus
        rank_00000.pt         each rank's data-loader position and RNG states
        trainer.json          step counters and the world size that wrote it
        COMPLETE              written last, after every rank finished writing
    latest                    the newest COMPLETE tag, replaced atomically

A tag without COMPLETE (a crash mid-write) is never loaded. A different number of processes
resumes through DeepSpeed's universal checkpoint, converted here on first use with:
    python -m deepspeed.checkpoint.ds_to_universal --input_folder RUN/checkpoints/TAG \\
        --output_folder RUN/checkpoints/TAG_universal
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

COMPLETE = "COMPLETE"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class ResumePoint:
    tag: str
    trainer: dict[str, Any]  # step counters, world size
    same_world: bool  # False: load the universal conversion, the data stream starts afresh

    @property
    def load_tag(self) -> str:
        return self.tag if self.same_world else self.tag + "_universal"


class Checkpointer:
    def __init__(self, directory: Path, rank: int, world_size: int, keep_last: int) -> None:
        self.directory, self.rank, self.world_size, self.keep_last = directory, rank, world_size, keep_last

    @staticmethod
    def tag_for(step: int) -> str:
        return f"step_{step:08d}"

    # ------------------------------------------------------------------ save
    def save(self, engine, step: int, trainer: dict[str, Any], rank_state: dict[str, Any]) -> str:
        tag = self.tag_for(step)
        engine.save_checkpoint(str(self.directory), tag=tag, save_latest=False,
                               client_state={"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}})
        tag_dir = self.directory / tag
        tmp = tag_dir / f"rank_{self.rank:05d}.pt.tmp"
        torch.save(rank_state, tmp)
        os.replace(tmp, tag_dir / f"rank_{self.rank:05d}.pt")
        dist.barrier()  # every rank has written everything for this tag
        if self.rank == 0:
            _write_atomically(tag_dir / "trainer.json", json.dumps({**trainer, "world_size": self.world_size}).encode())
            _write_atomically(tag_dir / COMPLETE, b"")
            _write_atomically(self.directory / "latest", tag.encode())
            self._prune(keep=tag)
        dist.barrier()
        return tag

    def _prune(self, keep: str) -> None:
        complete = sorted(p for p in self._tags() if (p / COMPLETE).exists())
        for old in complete[:-self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
                shutil.rmtree(self.directory / (old.name + "_universal"), ignore_errors=True)

    def _tags(self) -> list[Path]:
        """Checkpoint tags written by `save` (not their universal conversions)."""
        return [p for p in self.directory.glob("step_*") if not p.name.endswith("_universal")]

    # ------------------------------------------------------------------ resume
    def find_resume_point(self) -> Optional[ResumePoint]:
        """The newest complete tag (`latest`, else a scan), or None for a fresh run."""
        if not self.directory.exists():
            return None
        candidates = []
        latest = self.directory / "latest"
        if latest.exists():
            candidates.append(latest.read_text().strip())
        candidates += sorted((p.name for p in self._tags()), reverse=True)
        for tag in candidates:
            tag_dir = self.directory / tag
            if (tag_dir / COMPLETE).exists():
                try:
                    trainer = json.loads((tag_dir / "trainer.json").read_text())
                except (OSError, json.JSONDecodeError) as error:
                    raise CheckpointError(f"checkpoint {tag_dir}: trainer.json unreadable: {error}") from None
                return ResumePoint(tag, trainer, same_world=trainer.get("world_size") == self.world_size)
        return None

    def prepare_universal(self, point: ResumePoint) -> None:
        """Convert `point` for a different world size (rank 0), once; everyone waits."""
        target = self.directory / point.load_tag
        if self.rank == 0 and not (target / COMPLETE).exists():
            shutil.rmtree(target, ignore_errors=True)
            command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                       "--input_folder", str(self.directory / point.tag), "--output_folder", str(target)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
                raise CheckpointError(f"universal conversion of {point.tag} failed: {tail[0]}")
            (target / COMPLETE).write_bytes(b"")
        dist.barrier()

    def load(self, engine, point: ResumePoint) -> Optional[dict[str, Any]]:
        """Load DeepSpeed states; return this rank's saved state (None after a world-size change)."""
        try:
            path, _ = engine.load_checkpoint(str(self.directory), tag=point.load_tag)
        except Exception as error:  # DeepSpeed raises many kinds; the user needs the tag and cause
            raise CheckpointError(f"checkpoint {self.directory / point.load_tag} could not be loaded: "
                                  f"{type(error).__name__}: {error}".splitlines()[0]) from error
        if path is None:
            raise CheckpointError(f"checkpoint {self.directory / point.load_tag} could not be loaded")
        if not point.same_world:
            return None
        rank_file = self.directory / point.tag / f"rank_{self.rank:05d}.pt"
        try:
            return torch.load(rank_file, weights_only=False)
        except Exception as error:
            raise CheckpointError(f"checkpoint {rank_file}: unreadable: {type(error).__name__}: {error}") from error
