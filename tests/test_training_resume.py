"""Faults and restarts with real processes: kill -9, SIGTERM, a different number of processes."""
import os
import signal
import subprocess
import time

import pytest

from _launch import REPO, check, environment, metrics, tiny_config, train, train_command, train_losses

pytestmark = pytest.mark.multiprocess


def wait_for_step(run_dir, step, process, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"training ended early with {process.returncode}: {process.stderr.read()[-3000:]}")
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(m.get("step", 0) >= step for m in metrics(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_kill_minus_nine_then_rerun_resumes_with_identical_losses(tmp_path, data_manifest):
    steps = {"max_steps": 12, "save_every": 4, "eval_every": 100}
    reference = tiny_config(tmp_path, data_manifest, name="reference", train=steps)
    check(train(reference))
    expected = train_losses(tmp_path / "reference")

    config = tiny_config(tmp_path, data_manifest, name="killed", train=steps)
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(train_command(config), cwd=REPO, env=environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(run_dir, 6, process)  # past the checkpoint at step 4
    workers = children(process.pid)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert (run_dir / "checkpoints" / "latest").read_text() in ("step_00000004", "step_00000008")

    result = train(config)  # the same command resumes
    check(result)
    assert "resumed from" in result.stdout + result.stderr
    resumed = train_losses(run_dir)
    assert sorted(resumed) == list(range(1, 13)), "every step exactly once"
    assert resumed == expected, "the resumed steps equal the uninterrupted run's exactly"


def test_sigterm_checkpoints_and_exits_with_the_requeue_code(tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 10_000, "save_every": 10_000,
                                                           "eval_every": 10_000})
    run_dir = tmp_path / "run"
    process = subprocess.Popen(train_command(config, nproc=1), cwd=REPO, env=environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(run_dir, 3, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-3000:]
    tag = (run_dir / "checkpoints" / "latest").read_text()
    saved_step = int(tag.split("_")[1])
    assert saved_step >= 3 and (run_dir / "checkpoints" / tag / "COMPLETE").exists()
    result = train(config, f"train.max_steps={saved_step + 2}", nproc=1)
    check(result)
    assert f"resumed from {tag}" in result.stdout + result.stderr


def test_two_processes_resume_on_one_through_a_universal_checkpoint(tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 4, "eval_every": 100},
                         deepspeed={"zero_stage": 2})
    check(train(config))
    result = train(config, "train.max_steps=6", nproc=1)
    check(result)
    assert "resumed from step_00000004" in result.stdout + result.stderr
    assert (tmp_path / "run" / "checkpoints" / "step_00000004_universal").is_dir()
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 7))
    assert losses[6] < losses[1]


def test_a_corrupt_checkpoint_is_one_clear_error(tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 2, "save_every": 2, "eval_every": 100},
                         deepspeed={"zero_stage": 0})
    check(train(config, nproc=1))
    states = tmp_path / "run" / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:1000])  # truncated, though marked COMPLETE
    result = train(config, "train.max_steps=4", nproc=1)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("megaseqpe-train: error: checkpoint") and "step_00000002" in last
