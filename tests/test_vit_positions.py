"""2-D positions for the ViT: (row, col) digits, one de-duplicated encoder pass, the 2-D step plan,
the learned grid table's bicubic growth, the CLS token's position vector (added to the input, or
through SeqPE's q/k projections) and SeqPE's attn_mul."""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from megaseqpe.config import ConfigError, load_config
from megaseqpe.model import build_vit
from megaseqpe.positions import AttentionExtras, grid_positions, to_digits
from megaseqpe.positions import build_step_planner

IMAGE = ["task=image_classification", "position.n_dims=2", "position.max_position=32",
         "position.dist_sample_range=8", "position.contrastive_num=8", "position.contrastive_batch_size=4",
         "position.distill_num=8", "position.distill_batch_size=2", "model.d_model=32", "model.n_layer=2"]


def vit_config(*overrides: str):
    return load_config(None, [*IMAGE, *overrides])


def test_patch_coordinates_become_concatenated_row_and_column_digits():
    grid = grid_positions(3, 12, torch.device("cpu"))
    assert grid.shape == (1, 36, 2) and grid[0, 13].tolist() == [1, 1]
    digits, mask = to_digits(torch.tensor([[2, 13]]), max_digits=2)
    assert digits.tolist() == [[0, 2, 1, 3]] and mask.tolist() == [[0, 1, 1, 1]]


def test_one_encoder_pass_encodes_each_distinct_coordinate_pair_once():
    config = vit_config("position.type=seqpe", "position.use=input_add", "position.random_shift_rate=0.0",
                        "position.encoder_dropout=0.0")
    model = build_vit(config)
    calls = []
    model.position.encoder.register_forward_hook(lambda module, args, output: calls.append(args[0].rows))
    plan = build_step_planner(config, (4, 4)).plan(0, 0, torch.device("cpu"))
    out = model(torch.rand(2, 1, 16, 16), positions=plan.positions, objectives=plan.objectives)
    everything = torch.cat([plan.positions.reshape(-1, 2)] +
                           [p.reshape(-1, 2) for p in plan.objectives.named_positions().values()])
    distinct = torch.unique(everything, dim=0).shape[0]
    assert calls == [distinct] and out.position_signal.stats["train/unique_positions"] == distinct < everything.shape[0]
    assert set(out.position_signal.aux_losses) == {"seqpe_contrastive_loss", "seqpe_distill_loss"}
    # A grid coordinate embeds the same wherever it occurs in the pass.
    grid, pivots = model.position.encode(plan.positions[0], torch.tensor([[0, 0], [20, 31]]))
    torch.testing.assert_close(grid, out.position_signal.input_embedding[0, 1:])  # row 0: the CLS vector
    assert torch.equal(pivots[0], grid[0])


def test_the_2d_step_plan_shifts_the_whole_grid_and_distils_grid_to_shifted_grid():
    config = vit_config("position.type=seqpe", "position.random_shift_rate=1.0", "data.micro_batch_size=4",
                        "position.main_batch_size=2")
    planner = build_step_planner(config, (4, 4))
    plan = planner.plan(step=0, rank=0, device=torch.device("cpu"))
    assert plan.shifted and plan.positions.shape == (4, 16, 2)
    for row in plan.positions:  # each row is the 4x4 grid moved by one (row, col) offset
        assert torch.equal(row - row[0], grid_positions(4, 4, torch.device("cpu"))[0])
    plan = build_step_planner(vit_config("position.type=seqpe", "position.random_shift_rate=0.0"), (4, 4)).plan(
        0, 0, torch.device("cpu"))
    teacher, student = plan.objectives.distillation.positions
    assert int(teacher.max()) < 4 and bool((student - teacher >= 4).all())  # unseen coordinates
    pivots, candidates = plan.objectives.contrastive.positions
    assert pivots.shape[-1] == 2 and candidates.shape[-1] == 2


def test_text_step_plans_are_unchanged_by_the_nd_generalisation():
    config = load_config(None, ["position.random_shift_rate=0.5", "data.micro_batch_size=4",
                                "position.main_batch_size=2", "model.max_seq_len=32", "position.max_position=1024"])
    plans = [build_step_planner(config, (32,)).plan(step, 0, torch.device("cpu")) for step in range(6)]
    assert any(p.shifted for p in plans) and not all(p.shifted for p in plans)
    for plan in plans:
        width = plan.positions.shape[0]
        assert plan.positions.shape[1:] == (32, 1) and width in (1, 4)
        assert torch.equal(plan.positions[..., 0] - plan.positions[:, :1, 0], torch.arange(32).expand(width, -1))


def test_learned_grid_table_grows_bicubically_only_when_asked():
    model = build_vit(vit_config("position.type=learned")).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 16, 16)).logits.shape == (1, 10)
        with pytest.raises(ValueError, match=r"patch position \(5, 5\) is beyond the learned 4x4 table"):
            model(torch.rand(1, 1, 24, 24))
        assert model.position.enable_extrapolation() == "interpolate"
        assert model(torch.rand(1, 1, 48, 48)).logits.shape == (1, 10)
        table = model.position.table.weight.view(4, 4, -1)
        grown = model.position(grid_positions(8, 8, torch.device("cpu"))).input_embedding.view(8, 8, -1)
        assert not torch.allclose(grown[0, 0], grown[0, 1]) and grown.abs().max() < 3 * table.abs().max()


def test_the_cls_token_gets_no_attention_position_term():
    pe = torch.randn(1, 5, 2, 3)
    cos, sin = torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    padded = AttentionExtras(pe_q=pe, pe_k=pe, rotary=(cos, sin)).with_unpositioned_prefix(1)
    assert padded.pe_q.shape == (1, 6, 2, 3) and not padded.pe_q[:, 0].any() and torch.equal(padded.pe_k[:, 1:], pe)
    assert bool((padded.rotary[0][:, 0] == 1).all()) and not padded.rotary[1][:, 0].any()


@pytest.mark.parametrize("overrides,message", [
    (["position.n_dims=1", "position.dist_sample_range=32"], "position.n_dims: image_classification positions are (row, col)"),
    (["position.type=alibi"], "position.type: alibi is 1-D only"),
    (["model.image_size=18"], "model.image_size: 18 is not a multiple of model.patch_size=4"),
    (["task=images"], "task: 'images' is not one of language_modeling, image_classification"),
])
def test_image_config_mistakes_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        vit_config(*overrides)


def test_the_vit_never_branches_on_the_position_type_name():
    import megaseqpe.model.vit as vit
    source = inspect.getsource(vit).lower()
    for name in ("seqpe", "learned", "sinusoidal", "rope", "alibi", "nope"):
        assert f'"{name}"' not in source


def seqpe_vit(use: str, *overrides: str):
    """A tiny SeqPE ViT in eval mode (no encoder dropout) with q/k projections large enough that
    a wrong factor, layer or CLS row shows in the output."""
    torch.manual_seed(0)
    model = build_vit(vit_config("position.type=seqpe", f"position.use={use}", "position.attn_scalar_proj=multi",
                                 *overrides)).eval()
    with torch.no_grad():
        for projection in model.position.qk_projections:
            projection.weight.normal_(std=0.3)
            projection.bias.normal_(std=0.3)
    return model


def test_attn_mul_multiplies_q_and_k_by_each_layers_projection_of_cls_and_patch_positions():
    model = seqpe_vit("attn_mul")
    grid = grid_positions(4, 4, torch.device("cpu"))
    signal = model.position(grid, prefix=model.cls_position.view(1, 1, -1))
    assert signal.input_embedding is None  # the CLS vector is not added to the input under attn_mul
    h = torch.randn(2, 17, 32)
    layer = 1
    out = model.blocks[layer].attention(h, signal.for_layer(layer))
    # The reference by hand: pe = [cls_position; SeqPE(grid)], one projection per layer, q * pe_q, k * pe_k.
    attention = model.blocks[layer].attention
    heads = attention.n_head
    pe = torch.cat([model.cls_position.view(1, 1, -1), model.position.encode(grid[0])[0][None]], dim=1)
    pe_q, pe_k = model.position.qk_projections[layer](pe).view(1, 17, 2, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = attention.qkv(h).view(2, 17, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = q * pe_q, k * pe_k
    weights = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    ref = attention.out((weights @ v).transpose(1, 2).reshape(2, 17, 32))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_under_attn_mul_the_cls_position_acts_only_through_the_projections():
    model = seqpe_vit("attn_mul")
    images = torch.rand(2, 1, 16, 16)
    model(images).logits.square().sum().backward()
    assert model.cls_position.grad.abs().sum() > 0
    # Nothing of it reaches the input: with the projections' weights at zero it has no gradient.
    model.zero_grad()
    with torch.no_grad():
        for projection in model.position.qk_projections:
            projection.weight.zero_()
    model(images).logits.square().sum().backward()
    assert model.cls_position.grad is None or not model.cls_position.grad.any()
    assert model.cls_token.grad.abs().sum() > 0


def legacy_forward(model, images):
    """The ViT before the prefix seam: the CLS position vector added to the CLS input, and the
    CLS slot unpositioned in attention."""
    signal = model.position(grid_positions(*model.grid(images), images.device))
    x = model.patch_embedding(images * 2.0 - 1.0).flatten(2).transpose(1, 2)
    if signal.input_embedding is not None:
        x = x + signal.input_embedding
    x = torch.cat([(model.cls_token + model.cls_position).expand(x.shape[0], 1, -1), x], dim=1)
    for index, block in enumerate(model.blocks):
        x = block(x, signal.for_layer(index).with_unpositioned_prefix(1))
    return model.head(model.final_norm(x[:, 0]))


@pytest.mark.parametrize("overrides", [["position.type=learned"], ["position.type=sinusoidal"],
                                       ["position.type=rope"], ["position.type=nope"],
                                       ["position.type=seqpe", "position.use=input_add"]])
def test_baselines_and_seqpe_input_add_still_add_the_cls_position_to_the_input(overrides):
    torch.manual_seed(0)
    model = build_vit(vit_config(*overrides)).eval()
    grid = grid_positions(4, 4, torch.device("cpu"))
    signal = model.position(grid, prefix=model.cls_position.view(1, 1, -1))
    assert signal.input_embedding.shape == (1, 17, 32) and torch.equal(signal.input_embedding[0, 0], model.cls_position)
    images = torch.rand(2, 1, 16, 16)
    assert torch.equal(model(images).logits, legacy_forward(model, images))


@pytest.mark.parametrize("use", ["attn_mul", "attn_scalar"])
def test_the_inference_table_equals_the_training_path_with_the_cls_prefix(use):
    model = seqpe_vit(use)
    images = torch.rand(2, 1, 24, 24)  # a 6x6 grid: beyond training, the table grows
    trained = model(images).logits  # eval mode with gradients: the encoder pass
    with torch.no_grad():
        tabled = model(images).logits
        assert model.position._table is not None
    torch.testing.assert_close(tabled, trained.detach(), rtol=1e-5, atol=1e-6)
