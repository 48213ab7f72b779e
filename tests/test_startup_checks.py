"""Every knowable config mistake fails at start-up (before any process group or step) with one line
naming the key and exit code 2; `--print-config` shows the resolved config without training."""
import pytest
import yaml

from _launch import tiny_config
from megaseqpe.config import ConfigError, load_config
from megaseqpe.training.cli import main as train_main


@pytest.mark.parametrize("overrides,message", [
    # Distillation moves the window by at least L//4 and keeps it below max_position.
    (["position.max_position=40"], "position.max_position: 40 leaves no student start beyond the training window"),
    (["position.distill_num=40"], "position.distill_num: 40 exceeds the 32 training positions"),
    (["position.contrastive_mode_shares=[0.5, 0.5, 0.5]"], "position.contrastive_mode_shares: needs three"),
    (["model.attention_backend=flash"], "model.attention_backend: 'flash' needs flash-attn installed"),
    (["model.attention_backend=flex"], "model.attention_backend: 'flex' trains on CUDA only"),
    (["model.vocab_size=10"], "model.vocab_size=10 is smaller than the tokenizer's vocabulary"),
])
def test_config_mistakes_stop_the_run_before_it_starts(tmp_path, data_manifest, capsys, overrides, message):
    config = tiny_config(tmp_path, data_manifest, position={"dist_sample_range": 16})
    assert train_main(["--config", str(config), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("megaseqpe-train: error: ") and message in err[0], err
    assert not (tmp_path / "run").exists(), "nothing was started"


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path, data_manifest, capsys):
    config = tiny_config(tmp_path, data_manifest)
    assert train_main(["--config", str(config), "--print-config", "train.lr=0.5", "position.transfer_num=4"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.5 and printed["position"]["distill_num"] == 4
    assert "transfer_num" not in printed["position"]
    assert load_config(config, ["train.lr=0.5", "position.distill_num=4"]).to_dict() == printed
    assert not (tmp_path / "run").exists()


def test_the_old_distillation_names_are_aliases_and_cannot_be_given_twice_in_a_file(tmp_path):
    assert load_config(None, ["position.transfer_weight=0.5"]).position.distill_weight == 0.5
    path = tmp_path / "old.yaml"
    path.write_text("position:\n  transfer_weight: 0.5\n")
    assert load_config(path, ["position.distill_weight=0.2"]).position.distill_weight == 0.2  # overrides win
    path.write_text("position:\n  transfer_weight: 0.5\n  distill_weight: 0.2\n")
    with pytest.raises(ConfigError, match="position.distill_weight: set twice, as position.transfer_weight and position.distill_weight"):
        load_config(path)


@pytest.mark.parametrize("override,registry", [
    ("position.type=seqp", "megaseqpe.positions.registry:POSITION_TYPES"),
    ("model.attention_backend=fast", "megaseqpe.model.attention:BACKENDS"),
    ("data.on_corrupt=ignore", "megaseqpe.data.shard_reader:ON_CORRUPT"),
    ("task=images", "megaseqpe.tasks:TASKS"),
])
def test_choices_come_from_the_registries(override, registry):
    import importlib
    module, name = registry.split(":")
    choices = tuple(getattr(importlib.import_module(module), name))
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"{key}: .* is not one of {', '.join(choices)}$"):
        load_config(None, [override])
