"""The launch scripts without a cluster: slurm/submit's options and the Python they choose."""
from __future__ import annotations

import os
import shlex
import subprocess

from _launch import REPO

SUBMIT = str(REPO / "slurm" / "submit")


def run(*command, env=None):
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})})


def test_submit_turns_its_options_into_sbatch_options(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("{}")
    result = run(SUBMIT, "--dry-run", "--nodes", "4", "--gpus-per-node", "8", "--time", "2:00:00",
                 "--partition=gpu", "--account", "proj", "--qos=high", "--exclusive", str(config), "train.lr=1e-4")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        "env", f"MEGASEQPE_REPO={REPO}", "MEGASEQPE_LAUNCH=torchrun", "NPROC_PER_NODE=8",
        "sbatch", "--nodes=4", "--time=2:00:00", "--partition=gpu", "--account=proj", "--qos=high", "--exclusive",
        "--gpus-per-node=8", str(REPO / "slurm" / "train.sbatch"), str(config), "train.lr=1e-4"]
    srun = shlex.split(run(SUBMIT, "--dry-run", "--launch", "srun", "--gpus-per-node=4", str(config)).stdout)
    assert "MEGASEQPE_LAUNCH=srun" in srun and srun[-4:-2] == ["--gpus-per-node=4", "--ntasks-per-node=4"]


def test_submit_explains_itself_and_refuses_bad_input(tmp_path):
    help_text = run(SUBMIT, "--help").stdout
    for option in ("--nodes", "--gpus-per-node", "--cpus-per-task", "--time", "--partition", "--account",
                   "--launch", "--dry-run", "MEGASEQPE_PYTHON"):
        assert option in help_text
    assert run("bash", "slurm/train.sbatch", "--help").stdout.startswith("usage: slurm/submit")
    for args, message in [(["missing.yaml"], "config not found: missing.yaml"),
                          (["-x", "c.yaml"], "unknown option -x"),
                          (["--time"], "--time needs a value"),
                          (["--launch", "mpirun", "slurm/train.sbatch"], "--launch: torchrun or srun"),
                          (["--gpus-per-node", "two", "slurm/train.sbatch"], "--gpus-per-node: a positive number")]:
        result = run(SUBMIT, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def choose_python(repo, env=None):
    result = run("bash", "-c", 'source launch/python.sh; megaseqpe_python "$1"', "_", str(repo),
                 env={"MEGASEQPE_PYTHON": "", **(env or {})})
    return result.stdout.strip(), result.stderr.strip()


def test_the_scripts_use_the_repositorys_environment_by_default(tmp_path):
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\n")
    venv_python.chmod(0o755)
    assert choose_python(tmp_path) == (str(venv_python),
                                       f"megaseqpe: python {venv_python} (the repository's environment)")
    assert choose_python(tmp_path, {"MEGASEQPE_PYTHON": "/opt/py"}) == (
        "/opt/py", "megaseqpe: python /opt/py (MEGASEQPE_PYTHON)")
    python, said = choose_python(tmp_path / "elsewhere")
    assert python == "python" and said.startswith(f"megaseqpe: no {tmp_path}/elsewhere/.venv/bin/python here: "
                                                  "python from PATH")
