import pytest

from megaseqpe.config import Config, ConfigError, load_config, save_config


def test_overrides_are_typed_and_the_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["model.n_layer=2", "train.lr=1e-3", "train.betas=[0.9, 0.99]",
                                "position.type=rope", "deepspeed.zero_stage=3"])
    assert (config.model.n_layer, config.train.lr, config.train.betas) == (2, 1e-3, (0.9, 0.99))
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_layer: 3\n  d_model: 64\n  n_head: 2\ntrain:\n  max_steps: 7\n")
    config = load_config(path, ["train.max_steps=9"])
    assert (config.model.n_layer, config.model.d_model, config.train.max_steps) == (3, 64, 9)


@pytest.mark.parametrize("override,message", [
    ("modle.n_layer=2", r"unknown section 'modle' \(did you mean 'model'\?\)"),
    ("model.n_layyer=2", r"unknown key model.n_layyer \(did you mean 'n_layer'\?\)"),
    ("model.n_layer=abc", r"model.n_layer: expected int, got str 'abc'"),
    ("train.lr=true", r"train.lr: expected float, got bool"),
    ("model.n_layer=0", r"model.n_layer: must be positive"),
    ("position.type=seqp", r"position.type: 'seqp' is not one of"),
    ("deepspeed.zero_stage=4", r"deepspeed.zero_stage: 4 is not 0, 1, 2 or 3"),
    ("model.d_model=102", r"model.d_model: 102 is not divisible by model.n_head=4"),
    ("nolayer", r"expected section.key=value"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_seqpe_range_must_cover_the_training_length():
    with pytest.raises(ConfigError, match="position.max_position"):
        load_config(None, ["position.max_position=100", "model.max_seq_len=512"])
    assert isinstance(load_config(None, ["position.type=learned", "position.max_position=100"]), Config)


def test_every_shipped_config_loads_and_every_deepspeed_json_parses():
    import json
    from pathlib import Path

    from megaseqpe.training.engine import deepspeed_config

    configs = sorted(Path(__file__).parent.parent.glob("configs/*.yaml"))
    assert {p.stem for p in configs} >= {"demo", "gpt2-small-seqpe", "gpt2-small-learned", "gpt2-small-sinusoidal",
                                         "gpt2-small-rope", "gpt2-small-alibi", "gpt2-small-nope"}
    for path in configs:
        config = load_config(path)
        built = deepspeed_config(config, world_size=2)
        assert built["zero_optimization"]["stage"] == config.deepspeed.zero_stage
    small = load_config(Path(__file__).parent.parent / "configs/gpt2-small-seqpe.yaml")
    assert (small.model.n_layer, small.model.d_model, small.model.max_seq_len, small.train.precision) == (12, 768, 512, "bf16")
    assert (small.position.contrastive_weight, small.position.distill_weight, small.position.random_shift_rate) == (0.1, 0.1, 0.1)
    for stage in range(4):
        data = json.loads((Path(__file__).parent.parent / f"configs/deepspeed/zero{stage}.json").read_text())
        assert data["zero_optimization"]["stage"] == stage
