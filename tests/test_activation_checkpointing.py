"""model.activation_checkpointing and train.compile: the same losses and gradients as without, the same
parameter names (checkpoints move freely between settings), in-process and in a real DeepSpeed run."""
import copy
import os
import shutil

import pytest
import torch

from _launch import check, tiny_config, train, train_losses
from megaseqpe.checkpoint_weights import load_weights
from megaseqpe.config import Config, ConfigError, ModelConfig, PositionConfig
from megaseqpe.model import build_gpt, build_vit
from megaseqpe.model.checkpointing import prepare_trunk
from megaseqpe.rundir import RunDir

VOCAB, LENGTH, BATCH = 100, 32, 2
MODES = ("full", "selective")
CASES = (("gpt", "learned"), ("gpt", "seqpe"), ("vit", "seqpe"))


def build(kind: str, position_type: str, dropout: float = 0.1) -> torch.nn.Module:
    """A tiny model with dropout everywhere the trunk has it: the recomputation must redraw the same masks."""
    torch.manual_seed(0)
    model = ModelConfig(n_layer=3, n_head=4, d_model=64, vocab_size=VOCAB, max_seq_len=LENGTH, dropout=dropout,
                        attention_dropout=dropout, image_size=8, patch_size=2)
    position = PositionConfig(type=position_type, n_dims=2 if kind == "vit" else 1,
                              max_position=32 if kind == "vit" else 1000)
    config = Config(task="image_classification" if kind == "vit" else "language_modeling", model=model,
                    position=position)
    return build_vit(config) if kind == "vit" else build_gpt(config)


def loss_and_gradients(model: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One seeded training forward + backward: (loss, gradient of every parameter by name)."""
    data = torch.Generator().manual_seed(1)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # dropout masks
    if hasattr(model, "lm_head"):
        tokens = torch.randint(0, VOCAB, (BATCH, LENGTH + 1), generator=data)
        loss = model(tokens[:, :-1], targets=tokens[:, 1:]).loss
    else:
        images = torch.rand(BATCH, 1, 8, 8, generator=data)
        loss = model(images, labels=torch.randint(0, 10, (BATCH,), generator=data)).loss
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_close(reference, other, rel: float) -> None:
    (loss, grads), (other_loss, other_grads) = reference, other
    assert torch.allclose(other_loss, loss, rtol=rel, atol=0), (loss, other_loss)
    assert grads.keys() == other_grads.keys()
    for name, grad in grads.items():
        # Relative to the gradient's own scale: a tiny entry of a large gradient may round differently.
        error = (other_grads[name] - grad).abs().max() / grad.abs().max().clamp_min(1e-30)
        assert error <= rel, (name, error.item())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind,position_type", CASES, ids=lambda c: c)
def test_checkpointing_gives_the_same_losses_and_gradients(kind, position_type, mode):
    reference = build(kind, position_type)
    model = prepare_trunk(copy.deepcopy(reference), mode, compile=False)
    calls, encoder_layers = [], list(model.position.checkpointable_blocks())
    assert len(encoder_layers) == (2 if position_type == "seqpe" else 0)  # the SeqPE encoder's layers
    for block in [*model.blocks, *encoder_layers]:  # the MLP runs again in the backward when recomputed
        mlp = block.mlp if block in model.blocks else block.up
        mlp.register_forward_pre_hook(lambda module, args: calls.append(module))
    expected, got = loss_and_gradients(reference), loss_and_gradients(model)
    assert len(calls) == 2 * (len(model.blocks) + len(encoder_layers)), "every block is recomputed once"
    # full replays the very same ops; selective too (its saved matmul outputs are those the replay makes).
    assert_close(expected, got, rel=0.0 if mode == "full" else 1e-6)
    # The position signal is made outside the blocks: its gradient comes back through the recomputation.
    assert any(name.startswith("position.") for name in got[1]), "the position module gets gradients"


@pytest.mark.parametrize("mode", MODES)
def test_parameter_names_are_unchanged_and_a_copy_stays_independent(mode):
    reference = build("gpt", "seqpe")
    model = prepare_trunk(copy.deepcopy(reference), mode, compile=False)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    model.load_state_dict(reference.state_dict())  # strict: a checkpoint of either loads into the other
    twin = copy.deepcopy(model)
    blocks = [*twin.blocks, *twin.position.checkpointable_blocks()]
    assert all(block.forward.args[0] is block for block in blocks), "a copy's blocks run their own weights"
    assert_close(loss_and_gradients(reference), loss_and_gradients(twin), rel=1e-6)


def test_no_grad_evaluation_skips_the_recomputation():
    model = prepare_trunk(build("gpt", "learned").eval(), "full", compile=False)
    with torch.no_grad():
        tokens = torch.randint(0, VOCAB, (1, LENGTH))
        assert model(tokens).logits.grad_fn is None


def test_an_unknown_mode_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^model.activation_checkpointing: 'some' is not one of none, full, selective"):
        ModelConfig(activation_checkpointing="some")


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile on CPU (inductor) needs a C++ compiler: no g++ (or $CXX) on PATH")
def test_compiled_blocks_give_the_same_losses_and_gradients():
    """Compiled kernels fuse and reorder float ops: equal to 1e-4 relative (float32). Without dropout:
    inductor draws its dropout masks from its own generator, not eager's stream."""
    reference = build("gpt", "seqpe", dropout=0.0)
    model = prepare_trunk(copy.deepcopy(reference), "full", compile=True)
    assert list(model.state_dict()) == list(reference.state_dict()), "compiled in place: no _orig_mod."
    expected = loss_and_gradients(reference)
    for _ in range(2):  # the first call compiles, the second runs the cached graph
        assert_close(expected, loss_and_gradients(model), rel=1e-4)


@pytest.mark.multiprocess
def test_deepspeed_zero3_run_with_full_checkpointing_matches_and_resumes_across_settings(tmp_path, data_manifest):
    """A real ZeRO-3 training run (1 process, SeqPE, dropout 0.1): per-step losses and final weights as
    without checkpointing, the same checkpoint keys, and a resume that switches checkpointing off."""
    runs = {}
    for mode in ("none", "full"):
        config = tiny_config(tmp_path, data_manifest, name=mode, model={"activation_checkpointing": mode},
                             train={"max_steps": 4, "eval_every": 4, "save_every": 4},
                             deepspeed={"zero_stage": 3})
        check(train(config, nproc=1))
        runs[mode] = (config, tmp_path / mode)
    plain, checkpointed = (train_losses(runs[m][1]) for m in ("none", "full"))
    assert sorted(plain) == [1, 2, 3, 4]
    assert checkpointed == pytest.approx(plain, rel=1e-6, abs=0), (plain, checkpointed)
    weights = {m: load_weights(RunDir(runs[m][1]), "step_00000004")[0] for m in runs}
    assert list(weights["full"]) == list(weights["none"])
    assert "blocks.0.attention.qkv.weight" in weights["full"]
    for name, value in weights["none"].items():
        assert torch.allclose(weights["full"][name], value, rtol=1e-5, atol=1e-7), name
    result = train(runs["full"][0], "train.max_steps=5", "model.activation_checkpointing=none", nproc=1)
    check(result)
    assert "changed on resume: model.activation_checkpointing 'full' → 'none'" in result.stdout + result.stderr
