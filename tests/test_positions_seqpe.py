import pytest
import torch

from megaseqpe.config import Config, ModelConfig, PositionConfig
from megaseqpe.positions import SeqPE, build_position_encoding
from megaseqpe.positions import seqpe as seqpe_module
from megaseqpe.positions.objectives import ContrastiveBatch, DistillationBatch, ObjectiveSample


def make_seqpe(n_dims=1, use="attn_scalar", proj="single", **position) -> SeqPE:
    torch.manual_seed(0)
    model = ModelConfig(n_layer=3, n_head=4, d_model=32, max_seq_len=16)
    position = PositionConfig(type="seqpe", n_dims=n_dims, max_position=1000, use=use, attn_scalar_proj=proj,
                              encoder_dropout=0.0, contrastive_num=8, **position)
    return build_position_encoding(Config(model=model, position=position))


def count_encoder_calls(module: SeqPE) -> list:
    calls = []
    module.encoder.register_forward_hook(lambda mod, args, out: calls.append(args[0].rows))
    return calls


@pytest.mark.parametrize("n_dims", [1, 2])
def test_unique_batching_equals_encoding_every_occurrence(n_dims):
    module = make_seqpe(n_dims=n_dims).double()  # float64: the two sums differ only in order
    generator = torch.Generator().manual_seed(1)
    main = torch.randint(0, 20, (4, 16, n_dims), generator=generator)  # many repeats
    pivots = torch.randint(0, 999, (6, n_dims), generator=generator)
    candidates = torch.cat([pivots[:, None] + 1, main[:3, :4].reshape(6, 2, n_dims)], 1).clamp(max=999)  # overlaps
    calls = count_encoder_calls(module)

    unique = module.encode(main, pivots, candidates)
    assert len(calls) == 1, "one encoder pass for every tensor"
    everything = torch.cat([t.reshape(-1, n_dims) for t in (main, pivots, candidates)])
    assert calls[0] == torch.unique(everything, dim=0).shape[0] < everything.shape[0]

    weights = [torch.randn(t.shape, generator=generator, dtype=torch.float64) for t in unique]
    sum((u * w).sum() for u, w in zip(unique, weights)).backward()
    grads_unique = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad()

    naive = [module.encoder.embed(t.reshape(-1, n_dims)).view(*t.shape[:-1], -1) for t in (main, pivots, candidates)]
    for u, n in zip(unique, naive):
        torch.testing.assert_close(u, n, rtol=1e-10, atol=1e-12)
    sum((n * w).sum() for n, w in zip(naive, weights)).backward()
    assert grads_unique.keys() == {n for n, p in module.named_parameters() if p.grad is not None}
    for name, param in module.named_parameters():
        if name in grads_unique:
            torch.testing.assert_close(grads_unique[name], param.grad, rtol=1e-9, atol=1e-11, msg=name)


def test_forward_puts_main_and_objective_positions_through_one_pass_and_returns_weighted_losses():
    module = make_seqpe(proj="multi", contrastive_batch_size=2, distill_batch_size=1, distill_num=4,
                        dist_sample_range=32)
    calls = count_encoder_calls(module)
    positions = torch.arange(16).view(1, 16, 1)
    pivots, candidates = torch.tensor([[3], [500]]), torch.tensor([[[4], [15], [600]]] * 2)
    teacher, student = torch.tensor([[[0], [5], [9], [12]]]), torch.tensor([[[700], [705], [709], [712]]])
    sample = ObjectiveSample(ContrastiveBatch(pivots, candidates, torch.tensor([0, 2])),
                             DistillationBatch(teacher, student))
    signal = module(positions, sample)
    assert calls == [22]  # 16 + {500, 600} + 4 students: 3, 4, 15 and the teacher are in the main window
    assert signal.stats["train/unique_positions"] == 22 and signal.encoder_tokens > 22
    assert len(signal.layers) == 3 and signal.layers[0].pe_q.shape == (1, 16, 4, 8)
    embed = lambda *tensors: module.encode(*tensors)
    unweighted = {"seqpe_contrastive_loss": module.objectives.contrastive.loss(*embed(pivots, candidates),
                                                                              sample.contrastive.labels),
                  "seqpe_distill_loss": module.objectives.distillation.loss(*embed(teacher, student))[0]}
    assert signal.aux_losses.keys() == unweighted.keys()
    for name, value in unweighted.items():
        torch.testing.assert_close(signal.aux_losses[name], 0.1 * value)


def test_input_add_gives_an_input_embedding_and_no_attention_extras():
    module = make_seqpe(use="input_add")
    signal = module(torch.arange(10).view(1, 10, 1))
    assert signal.input_embedding.shape == (1, 10, 32) and not signal.layers


def test_inference_table_is_computed_once_and_matches_training_path():
    module = make_seqpe()
    positions = torch.arange(16).view(1, 16, 1)
    with torch.no_grad():
        reference = module(positions)  # training mode: the unique path
    module.eval()
    calls = count_encoder_calls(module)
    with torch.no_grad():
        first = module(positions)
        second = module(torch.arange(8).view(1, 8, 1))
        shifted = module(torch.arange(100, 116).view(1, 16, 1))  # beyond the table: grows it once
        again = module(torch.arange(50, 60).view(1, 10, 1))
    assert len(calls) == 2
    torch.testing.assert_close(first.layers[0].pe_q, reference.layers[0].pe_q)
    torch.testing.assert_close(second.layers[0].pe_k, reference.layers[0].pe_k[:, :8])
    assert shifted.layers[0].pe_q.shape == (1, 16, 4, 8) and again.layers[0].pe_q.shape == (1, 10, 4, 8)


def test_inference_table_is_rebuilt_after_the_parameters_change():
    module = make_seqpe(use="input_add").eval()
    positions = torch.arange(8).view(1, 8, 1)
    with torch.no_grad():
        before = module(positions).input_embedding
        module.encoder.out_proj.bias.add_(1.0)  # as an optimizer step or a checkpoint load would
        after = module(positions).input_embedding
    torch.testing.assert_close(after, before + 1.0)


@pytest.mark.parametrize("block", [2048, 4])  # one encoder pass for the table, or four
def test_two_dimensional_inference_table_matches_direct_encoding(monkeypatch, block):
    monkeypatch.setattr(seqpe_module, "TABLE_BLOCK", block)
    module = make_seqpe(n_dims=2, use="input_add").eval()
    grid = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij"), -1).view(1, 15, 2)
    passes = count_encoder_calls(module)
    with torch.no_grad():
        cached = module(grid).input_embedding
        direct = module.encoder.embed(grid[0])
    assert passes == ([4, 4, 4, 3] if block == 4 else [15]) + [15]  # the table's, then the direct one
    torch.testing.assert_close(cached[0], direct)


def test_positions_beyond_the_encodable_range_are_a_clear_error():
    module = make_seqpe()  # max_position 1000 → 3 digits
    with pytest.raises(ValueError, match=r"position \(1000,\).*3 base-10 digits"):
        module(torch.arange(990, 1001).view(1, 11, 1))


@pytest.mark.parametrize("training", [True, False])
def test_a_negative_position_is_named_in_training_and_at_evaluation(training):
    module = make_seqpe().train(training)
    with torch.set_grad_enabled(training), pytest.raises(ValueError, match=r"position \(-3,\) \(at index \(0, 2\)\)"):
        module(torch.tensor([0, 1, -3, 4]).view(1, 4, 1))


def test_padding_mask_keeps_outputs_finite_and_changes_them():
    plain = make_seqpe(use="input_add")
    masked = make_seqpe(use="input_add", mask_padding=True)
    positions = torch.tensor([[[0], [7], [42], [999]]])
    a, b = plain(positions).input_embedding, masked(positions).input_embedding
    assert torch.isfinite(b).all()
    assert not torch.allclose(a[0, :3], b[0, :3])
    torch.testing.assert_close(a[0, 3], b[0, 3])  # 999 has no padding digit


def test_bidirectional_encoder_differs_from_causal():
    causal = make_seqpe(use="input_add")
    bi = make_seqpe(use="input_add", attn_direction="bi")
    positions = torch.tensor([[[12], [345]]])
    assert not torch.allclose(causal(positions).input_embedding, bi(positions).input_embedding)


@pytest.mark.parametrize("n_dims,mask_padding", [(1, False), (1, True), (2, False), (2, True)])
def test_shared_prefix_tokens_equal_encoding_every_digit(n_dims, mask_padding):
    """The causal encoder computes each distinct digit prefix once; the result must be exact."""
    module = make_seqpe(n_dims=n_dims, mask_padding=mask_padding).double()
    positions = torch.unique(torch.randint(0, 1000, (300, n_dims), generator=torch.Generator().manual_seed(3)), dim=0)
    shared = module.encoder.embed(positions)
    module.encoder.graphs.share_prefixes = False
    every_digit = module.encoder.embed(positions)
    torch.testing.assert_close(shared, every_digit, rtol=1e-10, atol=1e-12)
