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


def test_zero3_counts_the_model_flops_of_its_partitioned_parameters(runs):
    """Under ZeRO-3 every rank holds a slice (numel() is 0 for the rest): FLOPs per token and the
    parameter count must still be the whole model's, as with ZeRO-0."""
    def per_token(run_dir):
        # tflops is per device and tokens/s global: their ratio is the model FLOPs of one token.
        logged = [m for m in metrics(run_dir) if "tflops" in m]
        return [2 * m["tflops"] * 1e12 / m["train/tokens_per_second"] for m in logged]

    def params(run_dir):
        return [m["model/params"] for m in metrics(run_dir) if "model/params" in m]

    assert params(runs[3][1]) == params(runs[0][1]) and params(runs[0][1])[0] > 0
    for zero0, zero3 in zip(per_token(runs[0][1]), per_token(runs[3][1]), strict=True):
        assert zero3 == pytest.approx(zero0, rel=1e-6)
