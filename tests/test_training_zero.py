"""Real DeepSpeed ZeRO 0-3 on two CPU processes (torchrun + gloo): losses fall, checkpoints reload."""
import pytest

from _launch import check, metrics, tiny_config, train, train_losses

pytestmark = pytest.mark.multiprocess
STAGES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_manifest):
    tmp = tmp_path_factory.mktemp("zero")
    out = {}
    for stage in STAGES:
        config = tiny_config(tmp, data_manifest, name=f"zero{stage}", deepspeed={"zero_stage": stage},
                             model={"dropout": 0.0})
        check(train(config))
        out[stage] = (config, tmp / f"zero{stage}")
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_loss_falls_and_the_checkpoint_reloads(runs, stage):
    config, run_dir = runs[stage]
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1] - 0.3, losses
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_00000008"
    result = train(config, "train.max_steps=10")  # the same command, longer: resumes
    check(result)
    assert "resumed from step_00000008 (step 8)" in result.stdout + result.stderr
    steps = [m["step"] for m in metrics(run_dir) if "train/loss" in m]
    assert steps == list(range(1, 11)), "every step logged exactly once"


def test_zero0_and_zero3_give_the_same_losses(runs):
    zero0, zero3 = train_losses(runs[0][1]), train_losses(runs[3][1])
    for step in range(1, 6):
        assert zero3[step] == pytest.approx(zero0[step], rel=1e-5, abs=1e-6), (step, zero0, zero3)
