"""A real SLURM cluster of two emulated nodes (slurm/local-cluster), started by the tests.

Needs root and Debian's packages (installed by start.sh when missing); skipped with the reason
otherwise. Jobs run slurm/train.sbatch and slurm/prep.sbatch exactly as a user would submit them.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _launch import REPO, metrics, tiny_config, train_losses
from data_prep.cli import main as prep_main
from megaseqpe.data import load_manifest
from test_prep_parts import documents, make_corpus, shards_args

pytestmark = pytest.mark.slurm
STATE = Path("/tmp/megaseqpe-slurm-tests")
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (slurmd, munge)")
    if not shutil.which("apt-get") and not shutil.which("slurmd"):
        pytest.skip("no Debian packages: slurmd/slurmctld/munge cannot be installed here")
    result = subprocess.run(["bash", "slurm/local-cluster/start.sh", str(STATE)], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        pytest.skip(f"local SLURM cluster did not start: {result.stderr.strip()[-500:]}")
    env = {**os.environ, "SLURM_CONF": str(STATE / "slurm.conf"), "MEGASEQPE_PYTHON": sys.executable,
           "MEGASEQPE_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    yield env
    subprocess.run(["bash", "slurm/local-cluster/stop.sh", str(STATE)], cwd=REPO, capture_output=True)


def submit(env, config, log_dir, *overrides, nodes=2):
    result = subprocess.run(["sbatch", "--parsable", f"--nodes={nodes}", f"--output={log_dir}/%x-%j.out",
                             "slurm/train.sbatch", str(config), *overrides],
                            cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return result.stdout.strip().split(";")[0]


def job_field(env, job, field):
    out = subprocess.run(["scontrol", "show", "job", "-o", job], env=env, capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    return match.group(1) if match else None


def wait_done(env, job, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_field(env, job, "JobState")
        if state in DONE:
            return state
        time.sleep(1)
    subprocess.run(["scancel", job], env=env)
    raise AssertionError(f"job {job} not done after {timeout}s (state {job_field(env, job, 'JobState')})")


def wait_for_step(run_dir, step, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and any(m.get("step", 0) >= step for m in metrics(run_dir)):
            return
        time.sleep(0.5)
    raise AssertionError(f"step {step} not reached")


def start_requeued_job_now(env, job):
    """SLURM holds a requeued job for a fixed delay (about two minutes); let it start now."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
            job_field(env, job, "JobState") == "PENDING" and int(job_field(env, job, "Restarts") or 0) >= 1):
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=env, check=True)


def job_log(log_dir, job):
    return (log_dir / f"megaseqpe-{job}.out").read_text(errors="replace")  # ranks interleave bytes


# Long enough (about 15 s on 2 cores) that a signal sent at step 10, or a node lost at step 30, lands mid-run.
TRAIN = {"max_steps": 100, "save_every": 20, "eval_every": 50, "log_every": 1}
STEPS = list(range(1, 101))
SIZE = {"model": {"d_model": 128, "max_seq_len": 64}, "data": {"micro_batch_size": 8}}


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory, data_manifest):
    tmp = tmp_path_factory.mktemp("slurm_ref")
    config = tiny_config(tmp, data_manifest, name="reference", train=TRAIN, **SIZE)
    job = submit(cluster, config, tmp)
    assert wait_done(cluster, job) == "COMPLETED", job_log(tmp, job)
    return tmp, job


def test_two_node_job_runs_one_rank_per_node_and_leaves_its_run(cluster, uninterrupted):
    tmp, job = uninterrupted
    log = job_log(tmp, job)
    assert "rank 0/2 local_rank 0 on node node1 (launcher: torchrun)" in log and \
        "rank 1/2 local_rank 0 on node node2 (launcher: torchrun)" in log, log
    run_dir = tmp / "reference"
    assert sorted(train_losses(run_dir)) == STEPS
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000100"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_preempted_job_checkpoints_requeues_and_resumes_to_the_same_losses(cluster, uninterrupted, tmp_path,
                                                                           data_manifest):
    config = tiny_config(tmp_path, data_manifest, name="preempted", train=TRAIN, **SIZE)
    run_dir = tmp_path / "preempted"
    job = submit(cluster, config, tmp_path)
    wait_for_step(run_dir, 10)
    subprocess.run(["scontrol", "requeue", job], env=cluster, check=True)
    start_requeued_job_now(cluster, job)
    assert wait_done(cluster, job, timeout=400) == "COMPLETED", job_log(tmp_path, job)
    assert int(job_field(cluster, job, "Restarts")) >= 1
    log = job_log(tmp_path, job)
    saved = int(re.search(r"stop requested: checkpointed at step (\d+)", log).group(1))
    assert 10 <= saved < 100, "the preemption checkpointed mid-run"
    assert f"resumed from step_{saved:08d}" in log
    steps = [m["step"] for m in metrics(run_dir) if "train/loss" in m]
    assert steps == STEPS, "contiguous, none repeated after the resume point"
    assert train_losses(run_dir) == train_losses(uninterrupted[0] / "reference")


def test_a_lost_node_fails_the_job_cleanly_and_a_resubmission_resumes(cluster, tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, name="lost", train=TRAIN, **SIZE)
    run_dir = tmp_path / "lost"
    job = submit(cluster, config, tmp_path)
    wait_for_step(run_dir, 30)  # past the checkpoint at step 20
    # The training process of rank 1 (node2), killed as a crashing node would be.
    pids = subprocess.run(["pgrep", "-f", f"megaseqpe.training --config {config}"], capture_output=True,
                          text=True).stdout.split()
    victims = [p for p in pids if b"\0RANK=1\0" in b"\0" + Path(f"/proc/{p}/environ").read_bytes()]
    assert victims, pids
    os.kill(int(victims[0]), signal.SIGKILL)
    assert wait_done(cluster, job, timeout=200) == "FAILED"  # the job ends, it does not hang
    # proctrack/linuxproc (this emulated cluster) loses a worker whose torchrun agent was killed
    # first; proctrack/cgroup on a real cluster does not. Clean up what SLURM could not see.
    subprocess.run(["pkill", "-9", "-f", f"megaseqpe.training --config {config}"])
    assert "Resubmit the same command to resume" in job_log(tmp_path, job)
    last = (run_dir / "checkpoints" / "latest").read_text()
    job2 = submit(cluster, config, tmp_path)
    assert wait_done(cluster, job2) == "COMPLETED", job_log(tmp_path, job2)
    assert f"resumed from {last}" in job_log(tmp_path, job2)
    assert sorted(train_losses(run_dir)) == STEPS


def test_plain_srun_mode_one_task_per_process_without_torchrun(cluster, tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, name="srun", train={"max_steps": 4, "eval_every": 100})
    env = {**cluster, "MEGASEQPE_LAUNCH": "srun"}
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists():  # the script's default when MEGASEQPE_PYTHON is not set
        del env["MEGASEQPE_PYTHON"]
    job = submit(env, config, tmp_path)
    assert wait_done(cluster, job) == "COMPLETED", job_log(tmp_path, job)
    log = job_log(tmp_path, job)
    assert not venv_python.exists() or f"megaseqpe: python {venv_python} (the repository's environment)" in log
    assert "rank 0/2 local_rank 0 on node node1 (launcher: slurm)" in log
    assert "rank 1/2 local_rank 0 on node node2 (launcher: slurm)" in log
    assert sorted(train_losses(tmp_path / "srun")) == [1, 2, 3, 4]


# Stands in for torchrun and its ranks (run as PYTHON -m torch.distributed.run ...): the first run
# "checkpoints on a signal", writes the requeue file as rank 0 does, and exits 1 as torchrun does
# when its ranks exit 75; the requeued run finishes.
TORCHRUN_STUB = """#!/bin/bash
echo "stub on $SLURMD_NODENAME: restart ${SLURM_RESTART_COUNT:-0}, launcher pid $MEGASEQPE_LAUNCHER_PID, mine $$"
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then
  echo '{"step": 7, "signal": "SIGTERM"}' > "$MEGASEQPE_REQUEUE_FILE"
  exit 1
fi
"""


def test_the_requeue_file_requeues_whatever_torchrun_exits_with(cluster, tmp_path):
    stub = tmp_path / "python"
    stub.write_text(TORCHRUN_STUB)
    stub.chmod(0o755)
    (tmp_path / "run.yaml").write_text("{}")
    result = subprocess.run(["slurm/submit", "--nodes", "2", "--time", "10", "--partition", "debug", "--parsable",
                             f"--output={tmp_path}/%x-%j.out", str(tmp_path / "run.yaml")],
                            cwd=REPO, env={**cluster, "MEGASEQPE_PYTHON": str(stub)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    start_requeued_job_now(cluster, job)
    assert wait_done(cluster, job) == "COMPLETED", job_log(tmp_path, job)
    log = job_log(tmp_path, job)
    assert int(job_field(cluster, job, "Restarts")) == 1, log
    assert 'step ended (exit 1), the training checkpointed on a signal: {"step": 7' in log
    assert f"requeueing job {job}" in log
    launcher_pid, own_pid = re.search(r"restart 0, launcher pid (\d+), mine (\d+)", log).groups()
    assert launcher_pid == own_pid, "MEGASEQPE_LAUNCHER_PID is torchrun's pid (the ranks' parent)"
    assert not (REPO / ".megaseqpe" / f"requeue-{job}").exists(), "read and removed"


def sbatch(env, *args):
    result = subprocess.run(["sbatch", "--parsable", *args], cwd=REPO, env=env, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip().split(";")[0]


def test_prep_array_job_then_dependent_merge_equals_a_single_run(cluster, tmp_path, data_tokenizer):
    corpus, out = make_corpus(tmp_path / "corpus"), tmp_path / "shards"
    array = sbatch(cluster, "--array=0-2", f"--output={tmp_path}/prep-%A_%a.out", "slurm/prep.sbatch",
                   *shards_args(corpus, data_tokenizer, out))
    merge = sbatch(cluster, f"--dependency=afterok:{array}", f"--output={tmp_path}/merge-%j.out",
                   "slurm/prep.sbatch", "merge", "--out", str(out))
    state = wait_done(cluster, merge)
    logs = {path.name: path.read_text(errors="replace") for path in sorted(tmp_path.glob("*.out"))}
    assert state == "COMPLETED", logs
    for task in range(3):
        assert f"megaseqpe-prep shards --part {task}/3 " in logs[f"prep-{array}_{task}.out"], logs
    assert "merged 3 part(s)" in logs[f"merge-{merge}.out"], logs
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"] + [f"part-{i:05d}-of-00003" for i in range(3)]

    assert prep_main(shards_args(corpus, data_tokenizer, tmp_path / "single")) == 0
    single, merged = load_manifest(tmp_path / "single"), load_manifest(out)
    counts = [(m.inputs.files_seen, m.inputs.documents, m.inputs.skipped) for m in (merged, single)]
    assert counts[0] == counts[1], counts
    for split in ("train", "val"):
        assert merged.splits[split].tokens == single.splits[split].tokens > 0
        assert documents(out, split) == documents(tmp_path / "single", split)
