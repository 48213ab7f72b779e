"""Atomic, resumable checkpoints: DeepSpeed states + per-rank data/RNG state + step counters.

Layout of a tag under RUN/checkpoints/ (see `megaseqpe.rundir`):
    step_00000100/            DeepSpeed's files for the tag, plus
        rank_00000.pt         each rank's data-loader position and RNG states
        trainer.json          step counters and the world size that wrote it
        COMPLETE              written last, after every rank finished writing

A different number of processes resumes through DeepSpeed's universal checkpoint, converted here
on first use with:
    python -m deepspeed.checkpoint.ds_to_universal --input_folder RUN/checkpoints/TAG \\
        --output_folder RUN/checkpoints/TAG_universal
"""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from ..rundir import COMPLETE, UNIVERSAL_SUFFIX, CheckpointError, RunDir

__all__ = ["CheckpointError", "Checkpointer", "TrainingState"]


def _write_atomically(path, data: bytes) -> None:
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
class TrainingState:
    """Where training stands: step counters, and the tag and this rank's saved state it came from."""

    step: int = 0
    micro_step: int = 0
    skipped_steps: int = 0
    tag: Optional[str] = None  # None: a fresh run
    rank_state: Optional[dict[str, Any]] = None  # None: fresh, or resumed on another world size

    def counters(self) -> dict[str, int]:
        return {"step": self.step, "micro_step": self.micro_step, "skipped_steps": self.skipped_steps}

    def data_seed(self, seed: int) -> int:
        """After a world-size change the old per-rank stream positions mean nothing: start a new
        stream, seeded by the step so that it does not replay the data from its beginning."""
        return seed + self.step if self.tag is not None and self.rank_state is None else seed

    def start_stream(self, loader, seed: int, rank: int) -> Iterator[Any]:
        """The batches of `loader`, continuing the saved stream, with the RNG set as it was saved.

        Starting the DataLoader draws its base seed from the global RNG: only then set the dropout
        RNG (saved, or per rank), so a resumed run continues exactly."""
        if self.rank_state is not None:
            loader.load_state_dict(self.rank_state["data"])
        data = iter(loader)
        first = next(data)
        if self.rank_state is not None:
            set_rng_state(self.rank_state["rng"])
        else:
            torch.manual_seed(seed + 1000 * (rank + 1) + self.step)
        return itertools.chain([first], data)


class Checkpointer:
    def __init__(self, run: RunDir, rank: int, world_size: int, *, keep_last: int, save_every: int,
                 max_steps: int) -> None:
        self.run, self.rank, self.world_size, self.keep_last = run, rank, world_size, keep_last
        self.save_every, self.max_steps = save_every, max_steps

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0 or step == self.max_steps

    # ------------------------------------------------------------------ save
    def save(self, engine, state: TrainingState, rank_state: dict[str, Any]) -> str:
        """Write a tag for `state.step`: DeepSpeed's files, each rank's `rank_state`, then (rank 0,
        once every rank is done) the counters, COMPLETE and `latest`; prune old tags."""
        tag = self.run.tag_for(state.step)
        engine.save_checkpoint(str(self.run.checkpoints), tag=tag, save_latest=False,
                               client_state={"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}})
        tag_dir = self.run.tag_dir(tag)
        tmp = tag_dir / f"rank_{self.rank:05d}.pt.tmp"
        torch.save(rank_state, tmp)
        os.replace(tmp, tag_dir / f"rank_{self.rank:05d}.pt")
        dist.barrier()  # every rank has written everything for this tag
        if self.rank == 0:
            trainer = {**state.counters(), "world_size": self.world_size}
            _write_atomically(tag_dir / "trainer.json", json.dumps(trainer).encode())
            _write_atomically(tag_dir / COMPLETE, b"")
            _write_atomically(self.run.latest, tag.encode())
            self._prune(keep=tag)
        dist.barrier()
        return tag

    def _prune(self, keep: str) -> None:
        complete = [p for p in self.run.tags() if (p / COMPLETE).exists()]
        for old in complete[:-self.keep_last]:
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
                shutil.rmtree(self.run.tag_dir(old.name + UNIVERSAL_SUFFIX), ignore_errors=True)

    # ------------------------------------------------------------------ resume
    def restore(self, build_engine: Callable[[bool], Any]) -> tuple[Any, TrainingState]:
        """Build the engine (`build_engine(load_universal)`) and, when the run has a complete tag,
        resume from it: converted to a universal checkpoint first if the world size changed.
        Returns the engine and where training stands (a fresh `TrainingState` for a new run)."""
        tag = self.run.newest_complete_tag()
        if tag is None:
            return build_engine(False), TrainingState()
        trainer = self._read_counters(tag)
        same_world = trainer.get("world_size") == self.world_size
        load_tag = tag if same_world else tag + UNIVERSAL_SUFFIX
        if not same_world:
            self._convert_to_universal(tag, load_tag)
        engine = build_engine(not same_world)
        self._load_engine(engine, load_tag)
        state = TrainingState(trainer["step"], trainer["micro_step"], trainer["skipped_steps"], tag,
                              self._load_rank_state(tag) if same_world else None)
        return engine, state

    def _read_counters(self, tag: str) -> dict[str, Any]:
        try:
            return json.loads((self.run.tag_dir(tag) / "trainer.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise CheckpointError(f"checkpoint {self.run.tag_dir(tag)}: trainer.json unreadable: {error}") from None

    def _convert_to_universal(self, tag: str, target_tag: str) -> None:
        """Rank 0 converts `tag` for a different world size, once; everyone waits."""
        target = self.run.tag_dir(target_tag)
        if self.rank == 0 and not (target / COMPLETE).exists():
            shutil.rmtree(target, ignore_errors=True)
            command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
                       "--input_folder", str(self.run.tag_dir(tag)), "--output_folder", str(target)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
                raise CheckpointError(f"universal conversion of {tag} failed: {tail[0]}")
            (target / COMPLETE).write_bytes(b"")
        dist.barrier()

    def _load_engine(self, engine, tag: str) -> None:
        where = self.run.tag_dir(tag)
        try:
            path, _ = engine.load_checkpoint(str(self.run.checkpoints), tag=tag)
        except Exception as error:  # DeepSpeed raises many kinds; the user needs the tag and cause
            raise CheckpointError(f"checkpoint {where} could not be loaded: "
                                  f"{type(error).__name__}: {error}".splitlines()[0]) from error
        if path is None:
            raise CheckpointError(f"checkpoint {where} could not be loaded")

    def _load_rank_state(self, tag: str) -> dict[str, Any]:
        rank_file = self.run.tag_dir(tag) / f"rank_{self.rank:05d}.pt"
        try:
            return torch.load(rank_file, weights_only=False)
        except Exception as error:
            raise CheckpointError(f"checkpoint {rank_file}: unreadable: {type(error).__name__}: {error}") from error
