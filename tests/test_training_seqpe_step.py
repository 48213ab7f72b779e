"""SeqPE's step across two real processes under ZeRO-3."""
import subprocess

import pytest
import torch

from _launch import REPO, TORCHRUN, environment, free_port, tiny_config

pytestmark = pytest.mark.multiprocess


def test_teacher_shared_students_per_rank_and_one_encoder_pass(tmp_path, data_manifest):
    # No encoder dropout: the two ranks' teacher embeddings can then be compared bit for bit.
    config = tiny_config(tmp_path, data_manifest, position={"random_shift_rate": 0.0, "encoder_dropout": 0.0},
                         deepspeed={"zero_stage": 3})
    command = [TORCHRUN, "--nproc_per_node=2", f"--master_port={free_port()}", "tests/probes/seqpe_step.py",
               str(config), str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank_{r}.pt") for r in (0, 1))
    assert rank0["passes"] == rank1["passes"] == [1, 1, 1], "one encoder pass per step"
    # The planner's pass reaches the model through DeepSpeed's engine and ZeRO-3's module hooks.
    assert rank0["own_layouts"] == rank1["own_layouts"] == [0, 0, 0], "the model ran the planner's pass"
    for step in range(3):
        assert torch.equal(rank0["teacher_positions"][step], rank1["teacher_positions"][step])
        assert torch.equal(rank0["teacher_embeddings"][step], rank1["teacher_embeddings"][step])
        assert not torch.equal(rank0["student_positions"][step], rank1["student_positions"][step])
    assert not torch.equal(rank0["teacher_positions"][0], rank0["teacher_positions"][1]), "a new window each step"
