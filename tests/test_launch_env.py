import pytest

from megaseqpe.training.launcher_env import detect, expand_nodelist, slurm_port


@pytest.mark.parametrize("nodelist,hosts", [
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("node1", ["node1"]),
    ("node[1-2]", ["node1", "node2"]),
    ("a[8-10],login1,b[003]", ["a8", "a9", "a10", "login1", "b003"]),
    ("gpu-a[1,3],gpu-b[09-11]", ["gpu-a1", "gpu-a3", "gpu-b09", "gpu-b10", "gpu-b11"]),
])
def test_expand_slurm_nodelists(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


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
    assert detect({}).launcher == "single"
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "n1", "SLURM_JOB_ID": "1"}).world_size == 1
