"""Faults and restarts with real processes: kill -9, SIGTERM, a different number of processes."""
import json
import os
import signal
import subprocess
import time

import pytest

from _launch import REPO, check, environment, metrics, tiny_config, train, train_command, train_losses, wait_for_step

pytestmark = pytest.mark.multiprocess


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_kill_minus_nine_then_rerun_resumes_with_identical_losses(tmp_path, data_manifest):
    steps = {"max_steps": 12, "save_every": 4, "eval_every": 100}
    reference = tiny_config(tmp_path, data_manifest, name="reference", train=steps)
    config = tiny_config(tmp_path, data_manifest, name="killed", train=steps)
    run_dir = tmp_path / "killed"
    # The uninterrupted reference runs beside the run to be killed (own directory and port), its
    # output to a file: nothing reads a pipe of it until the end.
    log = tmp_path / "reference.log"
    with log.open("w") as sink:
        uninterrupted = subprocess.Popen(train_command(reference), cwd=REPO, env=environment(), stdout=sink,
                                         stderr=subprocess.STDOUT)
    try:
        process = subprocess.Popen(train_command(config), cwd=REPO, env=environment(), text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for_step(run_dir, 6, process)  # past the checkpoint at step 4
        workers = children(process.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        process.communicate(timeout=120)
        assert process.returncode != 0
        assert (run_dir / "checkpoints" / "latest").read_text() in ("step_00000004", "step_00000008")
        assert uninterrupted.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        uninterrupted.kill()  # a no-op once it has finished; else it must not outlive a failed test
    expected = train_losses(tmp_path / "reference")

    result = train(config)  # the same command resumes
    check(result)
    assert "resumed from" in result.stdout + result.stderr
    resumed = train_losses(run_dir)
    assert sorted(resumed) == list(range(1, 13)), "every step exactly once"
    assert resumed == expected, "the resumed steps equal the uninterrupted run's exactly"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_leaves_the_requeue_marker_and_exits_75(tmp_path, data_manifest, signum):
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 10_000, "save_every": 10_000,
                                                           "eval_every": 10_000})
    run_dir, marker = tmp_path / "run", tmp_path / "job" / "requeue"
    process = subprocess.Popen(train_command(config, nproc=1), cwd=REPO, text=True,
                               env=environment() | {"MEGASEQPE_REQUEUE_FILE": str(marker)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(run_dir, 3, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr[-3000:]
    tag = (run_dir / "checkpoints" / "latest").read_text()
    saved_step = int(tag.split("_")[1])
    assert saved_step >= 3 and (run_dir / "checkpoints" / tag / "COMPLETE").exists()
    assert json.loads(marker.read_text())["tag"] == tag, "the batch script requeues on this file"
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


def test_a_refused_resume_names_every_key_and_leaves_the_run_as_it_was(tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 2, "save_every": 2, "eval_every": 100})
    check(train(config, nproc=1))
    saved = (tmp_path / "run" / "config.yaml").read_text()
    result = train(config, "train.max_steps=4", "model.d_model=128", "position.type=rope",
                   "data.shuffle_buffer=7", nproc=1)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("megaseqpe-train: error: cannot resume from step_00000002: ")
    for key in ("model.d_model 64 → 128", "position.type 'seqpe' → 'rope'", "data.shuffle_buffer 1000 → 7"):
        assert key in last
    assert "data.shuffle_buffer may change only with the number of processes" in last
    assert "train.max_steps" not in last, "an adjustable key is not refused"
    assert (tmp_path / "run" / "config.yaml").read_text() == saved, "a refused resume rewrote config.yaml"
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "config.yaml").read_text() == saved


def test_changed_optimisation_keys_are_applied_from_the_saved_step_and_logged(tmp_path, data_manifest):
    from megaseqpe.config import load_config
    from megaseqpe.training.engine import lr_multiplier

    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 2, "save_every": 2, "eval_every": 100})
    check(train(config, nproc=1))
    result = train(config, "train.max_steps=4", "train.lr=0.0123", "train.eval_every=3", nproc=1)
    check(result)
    output = result.stdout + result.stderr
    assert "changed on resume: train.lr 0.003 → 0.0123 (schedule continues from the saved step)" in output
    assert "changed on resume: train.max_steps 2 → 4" in output
    assert "changed on resume: train.eval_every 100 → 3" in output
    new = load_config(tmp_path / "run" / "config.yaml")
    assert new.train.lr == 0.0123, "config.yaml is the accepted config"
    logged = {m["step"]: m["train/lr"] for m in metrics(tmp_path / "run") if "train/lr" in m}
    for step in (3, 4):  # the lr logged at a step is the one that step used: lr * multiplier(step)
        assert logged[step] == pytest.approx(0.0123 * lr_multiplier(step, new), rel=1e-6)
    assert any("val/loss" in m and m["step"] == 3 for m in metrics(tmp_path / "run"))


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(state) and not state.startswith("Z")


def test_a_second_writer_is_refused_while_a_run_holds_its_directory(tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 10_000, "save_every": 10_000,
                                                           "eval_every": 10_000})
    run_dir = tmp_path / "run"
    first = subprocess.Popen(train_command(config), cwd=REPO, env=environment(), text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_step(run_dir, 2, first)
        second = train(config)
        assert second.returncode != 0
        line = next(l for l in second.stderr.splitlines() if l.startswith("megaseqpe-train: error: run directory"))
        holder = json.loads((run_dir / "LOCK").read_text())
        assert f"is in use by pid {holder['pid']} on host {holder['host']}" in line
        assert first.poll() is None, "the first run goes on"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    steps = [m["step"] for m in metrics(run_dir) if "train/loss" in m]
    assert len(steps) == len(set(steps)), "every step logged once: one writer"
    assert not (run_dir / "LOCK").exists(), "released at exit"


def test_sigusr1_to_the_launchers_group_checkpoints_and_leaves_no_orphans(tmp_path, data_manifest):
    """SIGUSR1 kills torchrun (its default action); its ranks, in their own sessions, are told by
    the kernel (parent-death signal), checkpoint together, write the requeue marker and exit."""
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 10_000, "save_every": 10_000,
                                                           "eval_every": 10_000})
    run_dir, marker = tmp_path / "run", tmp_path / "requeue"
    launcher = subprocess.Popen(train_command(config), cwd=REPO, text=True, start_new_session=True,
                                env=environment() | {"MEGASEQPE_REQUEUE_FILE": str(marker)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_step(run_dir, 3, launcher)
    ranks = children(launcher.pid)
    assert len(ranks) == 2
    os.killpg(launcher.pid, signal.SIGUSR1)
    launcher.communicate(timeout=60)
    deadline = time.monotonic() + 120
    while any(alive(pid) for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in ranks), "ranks trained on after their launcher died"
    tag = json.loads(marker.read_text())["tag"]
    assert (run_dir / "checkpoints" / tag / "COMPLETE").exists()
    assert (run_dir / "checkpoints" / "latest").read_text() == tag
    assert not (run_dir / "LOCK").exists()
