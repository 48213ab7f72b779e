import os
import stat

import pytest

from megaseqpe.training.launcher_env import detect, expand_nodelist, hostnames, slurm_port


@pytest.mark.parametrize("nodelist,hosts", [
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("node1", ["node1"]),
    ("node[1-2]", ["node1", "node2"]),
    ("a[8-10],login1,b[003]", ["a8", "a9", "a10", "login1", "b003"]),
    ("gpu-a[1,3],gpu-b[09-11]", ["gpu-a1", "gpu-a3", "gpu-b09", "gpu-b10", "gpu-b11"]),
    ("node-[1-2]-ib", ["node-1-ib", "node-2-ib"]),
    ("n[1-2]-ib,m[3-4],login", ["n1-ib", "n2-ib", "m3", "m4", "login"]),
    ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
    ("a,b,c", ["a", "b", "c"]),
])
def test_expand_slurm_nodelists(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_a_malformed_nodelist_is_an_error():
    with pytest.raises(ValueError, match="unbalanced brackets"):
        expand_nodelist("gpu[01-02")


def _fake_scontrol(directory, script):
    path = directory / "scontrol"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_hostnames_asks_scontrol_and_falls_back_when_it_cannot_say(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_scontrol(tmp_path, 'echo "site-$3-a"; echo "site-$3-b"\n')
    assert hostnames("x[1-2]") == ["site-x[1-2]-a", "site-x[1-2]-b"]
    # Some SLURM versions reject a list with exit 0 and print no host: our parser answers.
    _fake_scontrol(tmp_path, 'echo "Invalid hostlist: $3" >&2\n')
    assert hostnames("node-[1-2]-ib") == ["node-1-ib", "node-2-ib"]
    _fake_scontrol(tmp_path, "exit 1\n")
    assert hostnames("gpu[01-02]") == ["gpu01", "gpu02"]
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    assert hostnames("gpu[01-02]") == ["gpu01", "gpu02"]


def test_torchrun_layout():
    env = detect({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "node1",
                  "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.master_port, env.launcher) == \
        (3, 1, 4, "node1", 29400, "torchrun")


def test_deepspeed_launcher_layout():
    env = detect({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (5, 1, 8, "deepspeed")


def test_plain_srun_layout_derives_master_from_the_nodelist_and_job_id():
    env = detect({"SLURM_PROCID": "6", "SLURM_LOCALID": "2", "SLURM_NTASKS": "8",
                  "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"})
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.launcher) == (6, 2, 8, "gpu07", "slurm")
    assert env.master_port == slurm_port("123456") == 20000 + 123456 % 20000
    exported = {}
    env.export(exported)
    assert exported == {"RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "MASTER_ADDR": "gpu07",
                        "MASTER_PORT": str(env.master_port)}


def test_single_process_and_a_one_task_srun():
    single = detect({})
    assert single.launcher == "single" and single.master_port == 0, "port 0: the OS picks a free one"
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "1"}).world_size == 1
