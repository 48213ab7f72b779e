"""SeqPE's attn_scalar term as a bias of torch's fused CPU kernel (training passes on sdpa/auto):
equal to the eager reference in outputs and gradients (pe_q's and pe_k's through the bias included),
chosen only where it applies, and the same losses for a whole model as the eager backend."""
from __future__ import annotations

import importlib

import pytest
import torch

from megaseqpe.model.attention import attention, seqpe_score_bias, with_score_bias
from test_model_shapes import HEADS, LENGTH, random_gpt, text_config, tokens

attention_module = importlib.import_module("megaseqpe.model.attention")
B, H, N, D, P = 3, 4, 21, 8, 8


def leaves(kv_heads: int = H, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, H, N, D), (B, kv_heads, N, D), (B, kv_heads, N, D), (1, N, H, P), (1, N, H, P)]
    return [torch.randn(*shape, generator=g).requires_grad_() for shape in shapes]


def float32_gpt(proj: str = "single", **model):
    """A random float32 SeqPE attn_scalar GPT (no dropout, so two backends draw nothing differently)."""
    knobs = {"use": "attn_scalar", "attn_scalar_proj": proj, "encoder_dropout": 0.0}
    return random_gpt(text_config("seqpe", knobs, dropout=0.0, **model)).float().train()


def output_and_gradients(backend: str, tensors: list[torch.Tensor], causal: bool, with_bias: bool):
    q, k, v, pe_q, pe_k = tensors
    bias = seqpe_score_bias(pe_q, pe_k, 0.7) if with_bias else None
    out = attention(q, k, v, causal=causal, backend=backend, pe_q=pe_q, pe_k=pe_k, pe_scale=0.7, pe_bias=bias)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    return out, torch.autograd.grad((out * weight).sum(), tensors)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [H, 2])
@pytest.mark.parametrize("rows", [5, 32])  # 5: the bias gradient in several blocks of query rows, the last short
def test_the_fused_cpu_bias_equals_the_eager_reference(monkeypatch, causal, kv_heads, rows):
    monkeypatch.setattr(attention_module, "BIAS_GRADIENT_ROWS", rows)
    tensors = leaves(kv_heads)
    out, grads = output_and_gradients("sdpa", tensors, causal, with_bias=True)
    assert type(out.grad_fn).__name__ == "_FusedCPUBiasBackward"  # the bias path ran, not concatenation
    ref, ref_grads = output_and_gradients("eager", tensors, causal, with_bias=False)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for name, got, want in zip(("q", "k", "v", "pe_q", "pe_k"), grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_the_bias_is_built_for_training_passes_that_share_it_only(monkeypatch):
    model = float32_gpt()
    shared = torch.arange(LENGTH).view(1, LENGTH, 1)
    signal = model.position(shared)
    built = with_score_bias(signal, "sdpa").layers[0].pe_bias
    assert built is not None and built.shape == (1, HEADS, LENGTH, LENGTH)
    assert with_score_bias(signal, "auto").layers[0].pe_bias is not None
    unchanged = {
        "eager backend": with_score_bias(signal, "eager"),
        "documents": with_score_bias(signal, "sdpa", documents=torch.zeros(2, LENGTH, dtype=torch.long)),
        "attention dropout": with_score_bias(signal, "sdpa", dropout_p=0.1),
        "rows with their own positions (a shifted step)": with_score_bias(
            model.position(shared + torch.tensor([0, 7]).view(2, 1, 1)), "sdpa"),
    }
    with torch.no_grad():
        unchanged["evaluation"] = with_score_bias(model.position(shared), "sdpa")
    for case, result in unchanged.items():
        assert all(extras.pe_bias is None for extras in result.layers), case
    monkeypatch.setattr(attention_module, "CPU_BIAS_MAX_ELEMENTS", HEADS * LENGTH * LENGTH - 1)  # one short
    assert with_score_bias(signal, "sdpa").layers[0].pe_bias is None


@pytest.mark.parametrize("proj", ["single", "multi"])
def test_a_seqpe_gpt_trains_the_same_on_sdpa_with_the_bias_as_on_eager(proj):
    """Loss and every parameter's gradient (the SeqPE encoder's included), float32, 1e-5."""
    results = {}
    for backend in ("sdpa", "eager"):
        model = float32_gpt(proj, attention_backend=backend)
        sequence = tokens()
        out = model(sequence[:, :-1], targets=sequence[:, 1:])
        out.loss.backward()
        results[backend] = (out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (loss, grads), (ref_loss, ref_grads) = results["sdpa"], results["eager"]
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and any(name.startswith("position.encoder") for name in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
