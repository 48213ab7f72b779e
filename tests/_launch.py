"""Helpers for tests that run the real training command in real processes (torchrun, gloo, CPU)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import yaml

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def tiny_config(tmp_path: Path, manifest: Path, name: str = "run", **sections) -> Path:
    """A YAML config for a GPT small enough to train a few steps in seconds on CPU."""
    config = {
        "model": {"n_layer": 2, "n_head": 4, "d_model": 64, "vocab_size": 1000, "max_seq_len": 32, "dropout": 0.1},
        "position": {"type": "seqpe", "max_position": 1024, "contrastive_batch_size": 8, "contrastive_num": 8,
                     "dist_sample_range": 32, "distill_batch_size": 2, "distill_num": 8,
                     "random_shift_rate": 0.3, "random_shift_downsample": 32},
        "data": {"manifest": str(manifest), "micro_batch_size": 4, "num_workers": 1},
        "train": {"max_steps": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1, "eval_every": 4,
                  "eval_batches": 2, "save_every": 4},
        "deepspeed": {"zero_stage": 2},
        "run": {"dir": str(tmp_path / name)},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def train_command(config: Path, *overrides: str, nproc: int = 2) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "megaseqpe.training", "--config", str(config), *overrides]
    return [TORCHRUN, f"--nproc_per_node={nproc}", f"--master_port={free_port()}", "-m", "megaseqpe.training",
            "--config", str(config), *overrides]


def train(config: Path, *overrides: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(config, *overrides, nproc=nproc), cwd=REPO, env=environment(),
                          capture_output=True, text=True, timeout=timeout)


def train_concurrently(jobs: Sequence[tuple[Path, Sequence[str]]]) -> list[subprocess.CompletedProcess]:
    """`train(config, *overrides, nproc=1)` for each job, as many at once as there are cores: each run
    is one single-threaded process with its own directory, seed and port (the OS picks it), so the
    results are those of running them one after another, in about half the time on 2 cores."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: train(job[0], *job[1], nproc=1), jobs))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in metrics(run_dir) if "train/loss" in m}


def check(result: subprocess.CompletedProcess, code: int = 0) -> None:
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def tensorboard_scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar tag of the run's TensorBoard event files, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return {tag: [event.value for event in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def wait_for_step(run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 240) -> None:
    """Return once `run_dir`'s metrics.jsonl has reached `step`; fail if the training process ends first
    (its stderr, a pipe, in the message) or the step is not reached in `timeout` s (a hang guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early with {process.returncode}: {process.stderr.read()[-3000:]}")
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(m.get("step", 0) >= step for m in metrics(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")
