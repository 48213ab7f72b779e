"""Atomic, resumable checkpoints: DeepSpeed states + per-rank data/RNG state + step counters.

Layout of a tag under RUN/checkpoints/ (see `megaseqpe.rundir`):
    step_00000100/            DeepSpeed's files for the tag, plus
        rank_00000.json       each rank's data-loader position and RNG states (JSON: no pickle)
        trainer.json          step counters and the world size that wrote it
        config.yaml           the resolved config that wrote it (compared on resume)
        COMPLETE              written last, after every rank finished writing

A different number of processes resumes through DeepSpeed's universal checkpoint, converted here
on first use with `python -m megaseqpe.training.universal` (DeepSpeed's ds_to_universal with
weights-only loading). Every torch file of a tag is checked by the restricted unpickler before
DeepSpeed opens it (`megaseqpe.safe_loading`).
"""
from __future__ import annotations

import itertools
import errno
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from .. import safe_loading
from ..config import Config, ConfigError, dump_config, load_config
from ..rundir import COMPLETE, UNIVERSAL_SUFFIX, CheckpointError, RunDir
from .resume_policy import resume_changes

__all__ = ["CheckpointError", "Checkpointer", "TrainingState"]

_NEARLY_FULL = 1 << 20  # bytes free below which a failed write is put down to a full disk


def _write_atomically(path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as JSON-able lists (a pickle could carry code; these cannot)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"torch": torch.get_rng_state().tolist(),
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "python": [version, list(internal), gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


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


def _is_disk_full(error: BaseException, where: Path) -> bool:
    """ENOSPC/EDQUOT in the chain, or (torch's zip writer reports a full disk only as a position
    mismatch) next to no space left under `where` after the failure."""
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        error = error.__cause__ or error.__context__
    return shutil.disk_usage(where).free < _NEARLY_FULL


class Checkpointer:
    """Saves and restores the run's checkpoint tags; owns the save interval and the pruning."""

    def __init__(self, run: RunDir, rank: int, world_size: int, config: Config) -> None:
        self.run, self.rank, self.world_size, self.config = run, rank, world_size, config
        self.protected: Optional[str] = None  # kept whatever keep_last says (see protect_before)

    def should_save(self, step: int) -> bool:
        return step % self.config.train.save_every == 0 or step == self.config.train.max_steps

    # ------------------------------------------------------------------ save
    def save(self, engine, state: TrainingState, rank_state: dict[str, Any]) -> str:
        """Write a tag for `state.step`: DeepSpeed's files, each rank's `rank_state`, then (rank 0,
        once every rank is done) the config, the counters, COMPLETE and `latest`; prune old tags.
        A full disk removes the partial tag and raises CheckpointError saying so."""
        tag = self.run.tag_for(state.step)
        tag_dir = self.run.tag_dir(tag)
        try:
            self._write_tag(engine, state, rank_state, tag)
        except (OSError, RuntimeError) as error:
            if not _is_disk_full(error, self.run.checkpoints):
                raise
            shutil.rmtree(tag_dir, ignore_errors=True)
            raise CheckpointError(f"disk full while writing checkpoint {tag_dir}: the partial tag was removed; "
                                  f"free space under {self.run.checkpoints} and rerun to resume from "
                                  f"{self.run.newest_complete_tag() or 'the start'}") from None
        return tag

    def _write_tag(self, engine, state: TrainingState, rank_state: dict[str, Any], tag: str) -> None:
        tag_dir = self.run.tag_dir(tag)
        if self.rank == 0:  # a tag written again (a rerun after a divergence) is incomplete until done
            (tag_dir / COMPLETE).unlink(missing_ok=True)
        engine.save_checkpoint(str(self.run.checkpoints), tag=tag, save_latest=False,
                               client_state={"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}})
        _write_atomically(tag_dir / f"rank_{self.rank:05d}.json", json.dumps(rank_state).encode())
        dist.barrier()  # every rank has written everything for this tag
        if self.rank == 0:
            trainer = {**state.counters(), "world_size": self.world_size}
            _write_atomically(tag_dir / "config.yaml", dump_config(self.config).encode())
            _write_atomically(tag_dir / "trainer.json", json.dumps(trainer).encode())
            _write_atomically(tag_dir / COMPLETE, b"")
            _write_atomically(self.run.latest, tag.encode())
            self._prune(keep=tag)
        dist.barrier()

    def _prune(self, keep: str) -> None:
        complete = [p for p in self.run.tags() if (p / COMPLETE).exists()]
        for old in complete[:-self.config.train.keep_last]:
            if old.name not in (keep, self.protected):
                shutil.rmtree(old, ignore_errors=True)
                shutil.rmtree(self.run.tag_dir(old.name + UNIVERSAL_SUFFIX), ignore_errors=True)

    def protect_before(self, step: Optional[int]) -> Optional[str]:
        """Keep the newest complete tag from before `step` (the first bad step of a divergence)
        until `protect_before(None)`; returns its name (None if there is none)."""
        earlier = [p.name for p in self.run.tags() if (p / COMPLETE).exists() and int(p.name.split("_")[1]) < step] \
            if step is not None else []
        self.protected = earlier[-1] if earlier else None
        return self.protected

    def point_latest_at_protected(self) -> None:
        """After an abort: a rerun resumes from before the divergence, not from inside it."""
        if self.rank == 0 and self.protected is not None:
            _write_atomically(self.run.latest, self.protected.encode())

    # ------------------------------------------------------------------ resume
    def restore(self, build_engine: Callable[[bool], Any]) -> tuple[Any, TrainingState, list[str]]:
        """Build the engine (`build_engine(load_universal)`) and, when the run has a complete tag,
        resume from it: converted to a universal checkpoint first if the world size changed.
        Returns the engine, where training stands (a fresh `TrainingState` for a new run) and
        the log lines of the config keys this resume changes (CheckpointError if one may not)."""
        tag = self.run.newest_complete_tag()
        if tag is None:
            return build_engine(False), TrainingState(), []
        trainer = self._read_counters(tag)
        same_world = trainer.get("world_size") == self.world_size
        changes = self._compare_config(tag, same_world)
        safe_loading.verify_files(self.run.tag_dir(tag))
        load_tag = tag if same_world else tag + UNIVERSAL_SUFFIX
        if not same_world:
            self._convert_to_universal(tag, load_tag)
            safe_loading.verify_files(self.run.tag_dir(load_tag))  # converted earlier, maybe altered since
        engine = build_engine(not same_world)
        self._load_engine(engine, load_tag)
        state = TrainingState(trainer["step"], trainer["micro_step"], trainer["skipped_steps"], tag,
                              self._load_rank_state(tag) if same_world else None)
        return engine, state, changes

    def _compare_config(self, tag: str, same_world: bool) -> list[str]:
        path = self.run.tag_dir(tag) / "config.yaml"
        if not path.exists():
            return [f"checkpoint {tag} carries no config (written by an older megaseqpe): not compared"]
        try:
            saved = load_config(path)
        except ConfigError as error:
            raise CheckpointError(f"checkpoint {path}: {error}") from None
        return resume_changes(saved, self.config, same_world=same_world, tag=tag)

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
            command = [sys.executable, "-m", "megaseqpe.training.universal",
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
        rank_file = self.run.tag_dir(tag) / f"rank_{self.rank:05d}.json"
        try:
            return json.loads(rank_file.read_text())
        except (OSError, ValueError) as error:
            raise CheckpointError(f"checkpoint {rank_file}: unreadable: {type(error).__name__}: {error}") from None
