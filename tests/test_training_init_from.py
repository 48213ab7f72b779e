"""`train.init_from`: a new run starts from another run's weights, across ZeRO stages and world sizes."""
import json
import math

import pytest
import torch

from _launch import check, metrics, tiny_config, train
from megaseqpe.config import Config, ConfigError, ModelConfig, PositionConfig, TrainConfig, save_config
from megaseqpe.evaluation.trained import load_trained
from megaseqpe.model import build_gpt
from megaseqpe.rundir import CheckpointError, RunDir
from megaseqpe.safe_loading import FORCE_WEIGHTS_ONLY
from megaseqpe.training.init_from import WeightSource


def val_losses(run_dir):
    return {m["step"]: m["val/loss"] for m in metrics(run_dir) if "val/loss" in m}


def validation_loss(run_dir, world_size):
    """The val/loss that a run of `world_size` processes logs with `run_dir`'s latest weights (the
    Validator's way: rank r scores its share of the documents, every rank as many batches as the
    rank with the fewest), computed here in one process from the consolidated weights."""
    trained = load_trained(run_dir, device=torch.device("cpu"))
    shares = [list(trained.task.eval_batches(rank, world_size)) for rank in range(world_size)]
    count = min(map(len, shares))
    totals = sum(trained.task.eval_totals(trained.model, batch) for share in shares for batch in share[:count])
    return trained.task.val_metrics(totals)["val/loss"]


@pytest.mark.multiprocess
def test_a_two_process_zero2_run_seeds_a_one_process_zero0_run(tmp_path, data_manifest, monkeypatch):
    monkeypatch.delenv(FORCE_WEIGHTS_ONLY, raising=False)  # load_trained below sets it; undone after the test
    whole_split = {"eval_batches": 10_000, "eval_every": 100}  # every validation batch of each rank
    source = tiny_config(tmp_path, data_manifest, name="source", train={"max_steps": 12, **whole_split},
                         deepspeed={"zero_stage": 2})
    check(train(source))
    source_val = val_losses(tmp_path / "source")[12]

    target = tiny_config(tmp_path, data_manifest, name="target", model={"dropout": 0.0},
                         train={"max_steps": 1, "init_from": str(tmp_path / "source"), **whole_split},
                         deepspeed={"zero_stage": 0})
    result = train(target, nproc=1)
    check(result)
    assert f"initialised from {tmp_path / 'source' / 'checkpoints' / 'step_00000012'} (step 12)" in \
        result.stdout + result.stderr
    start = val_losses(tmp_path / "target")
    # The source's final validation (2 processes) is of the weights that the consolidation reads ...
    assert source_val == pytest.approx(validation_loss(tmp_path / "source", 2), abs=1e-4)
    # ... and the new run starts from exactly those: its step-0 validation on 1 process. (The two
    # logged numbers differ by which rows each world size scores, not by the weights.)
    assert start[0] == pytest.approx(validation_loss(tmp_path / "source", 1), abs=1e-4)
    # Its first training loss, of one 4 x 32-token micro-batch (standard error ~0.2), is at that level,
    # not at a fresh model's ln(vocabulary).
    first = next(m["train/lm_loss"] for m in metrics(tmp_path / "target") if m["step"] == 1 and "train/lm_loss" in m)
    assert abs(first - start[0]) < 0.5 < math.log(1000) - start[0], (first, start[0], source_val)

    resumed = train(target, "train.max_steps=2", nproc=1)
    check(resumed)
    assert "resumed from step_00000001 (step 1): train.init_from applies to a fresh run only" in \
        resumed.stdout + resumed.stderr

    refused = train(tiny_config(tmp_path, data_manifest, name="deeper", model={"n_layer": 3},
                                train={"init_from": str(tmp_path / "source" / "step_00000012")}),
                    nproc=1)
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("megaseqpe-train: error: train.init_from: cannot start from ") and \
        "model.n_layer 2 → 3" in last, last


def test_the_model_keys_must_match_and_the_rest_may_change(tmp_path):
    def config(**changes):
        model = {"n_layer": 2, "d_model": 64, "max_seq_len": 32, **changes.pop("model", {})}
        return Config(model=ModelConfig(**model), position=PositionConfig(**changes.pop("position", {})),
                      train=TrainConfig(**changes.pop("train", {})))

    source = WeightSource(RunDir(tmp_path / "source"), "step_00000012", config())
    source.check(config(model={"dropout": 0.1, "attention_backend": "eager", "max_seq_len": 64},
                        position={"contrastive_weight": 0.0, "random_shift_rate": 0.5}, train={"lr": 1e-4}), None)
    with pytest.raises(ConfigError) as refused:
        source.check(config(model={"d_model": 128}, position={"use": "input_add"}), None)
    assert "model.d_model 64 → 128; position.final_layernorm True → False; position.use 'attn_scalar' → " \
           "'input_add'" in str(refused.value)


def test_init_from_names_a_run_its_tag_or_the_tags_directory(tmp_path):
    run = RunDir(tmp_path / "source")
    for tag in ("step_00000004", "step_00000008"):
        run.tag_dir(tag).mkdir(parents=True)
        save_config(Config(), run.tag_dir(tag) / "config.yaml")
        (run.tag_dir(tag) / "COMPLETE").touch()
    save_config(Config(), run.config)
    run.latest.write_text("step_00000008")
    for value, tag in ((run.path, "step_00000008"), (run.path / "step_00000004", "step_00000004"),
                       (run.tag_dir("step_00000004"), "step_00000004")):
        source = WeightSource.resolve(str(value))
        assert (source.run.path, source.tag) == (run.path, tag)
    with pytest.raises(ConfigError, match="is neither a run directory"):
        WeightSource.resolve(str(tmp_path / "elsewhere"))
    with pytest.raises(CheckpointError, match="train.init_from: checkpoint .*step_00000012 is missing or incomplete"):
        WeightSource.resolve(str(run.checkpoints / "step_00000012"))


def zero0_tag(run, config, step=4):
    """A complete tag as ZeRO-0 on one process writes it (whole weights in the model-states file)."""
    torch.manual_seed(0)
    model = build_gpt(config)
    tag = run.tag_for(step)
    run.tag_dir(tag).mkdir(parents=True)
    torch.save({"module": model.state_dict()}, run.tag_dir(tag) / "mp_rank_00_model_states.pt")
    (run.tag_dir(tag) / "trainer.json").write_text(json.dumps({"step": step}))
    save_config(config, run.tag_dir(tag) / "config.yaml")
    save_config(config, run.config)
    (run.tag_dir(tag) / "COMPLETE").touch()
    return WeightSource.resolve(str(run.path / tag)), model


@pytest.mark.parametrize("position_type,accepted", [("seqpe", True), ("learned", False)])
def test_a_longer_max_seq_len_is_taken_unless_a_learned_table_has_that_many_rows(tmp_path, monkeypatch,
                                                                                 position_type, accepted):
    monkeypatch.delenv(FORCE_WEIGHTS_ONLY, raising=False)  # load_weights sets it; undone after the test
    config = lambda length: Config(model=ModelConfig(n_layer=2, d_model=64, max_seq_len=length),
                                   position=PositionConfig(type=position_type))
    source, trained = zero0_tag(RunDir(tmp_path / "source"), config(32))
    longer = config(64)
    source.check(longer, None)  # no key that must match has changed
    model = build_gpt(longer)
    if accepted:
        assert source.load_into(model, longer) == 4
        for name, value in trained.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0)
    else:
        with pytest.raises(ConfigError, match=r"model.max_seq_len 32 → 64 changes the shape of position.table.weight"):
            source.load_into(model, longer)
