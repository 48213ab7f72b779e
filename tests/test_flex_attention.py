"""The `flex` attention backend (torch's FlexAttention) against the eager reference and sdpa.

On CPU torch's FlexAttention runs forward only (no backward, torch 2.13), so the CPU tests run it
under torch.no_grad; the CUDA tests (skipped without a GPU) check forward and backward in bf16.
"""
from __future__ import annotations

import pytest
import torch

from megaseqpe.config import ConfigError, ModelConfig
from megaseqpe.generation import Sampling, generate
from megaseqpe.model.attention import attention, check_backend, seqpe_score_bias, with_score_bias
from megaseqpe.model.kv_cache import LayerCache
from megaseqpe.positions.baselines import Rotary, alibi_slopes
from test_model_shapes import LLAMA, random_gpt, text_config, tokens

B, H, N, D, P, KV_HEADS = 2, 4, 12, 8, 8, 2
DOCUMENTS = torch.tensor([[0] * 5 + [1] * 4 + [2] * 3, [0] * 12])  # packed rows: 3 documents, then 1
CASES = {
    "causal": {},
    "bidirectional": {"causal": False},
    "seqpe": {"pe": "batched"},
    "seqpe-shared-by-rows": {"pe": "shared"},
    "seqpe-bias-built-by-the-caller": {"pe": "shared", "prebuilt": True},
    "alibi": {"alibi": True},
    "rotary": {"rotary": True},
    "attn-mul": {"mul": True},
    "documents": {"documents": True},
    "documents-bidirectional": {"documents": True, "causal": False},
    "gqa": {"kv_heads": KV_HEADS},
    "gqa-seqpe-alibi-documents": {"kv_heads": KV_HEADS, "pe": "batched", "alibi": True, "documents": True},
}


def case_inputs(case: dict, seed: int = 0, n: int = N, dtype=torch.float32, device="cpu"):
    """q, k, v and the attention keywords of one case (random, float32 unless told)."""
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    kv_heads = case.get("kv_heads", H)
    q, k, v = make(B, H, n, D), make(B, kv_heads, n, D), make(B, kv_heads, n, D)
    kwargs = {"causal": case.get("causal", True)}
    if "pe" in case:
        rows = B if case["pe"] == "batched" else 1
        kwargs.update(pe_q=make(rows, n, H, P), pe_k=make(rows, n, H, P), pe_scale=0.7)
        if case.get("prebuilt"):
            kwargs["pe_bias"] = seqpe_score_bias(kwargs["pe_q"], kwargs["pe_k"], 0.7)
    if case.get("alibi"):
        kwargs["alibi_slopes"] = alibi_slopes(H).to(device)
    if case.get("rotary"):
        kwargs["rotary"] = Rotary(D).signal(torch.arange(n, device=device).view(1, n, 1) + 3).layers[0].rotary
    if case.get("mul"):
        kwargs.update(q_mul=make(1, n, H, D), k_mul=make(1, n, H, D))
    if case.get("documents"):
        kwargs["documents"] = DOCUMENTS.to(device)
    return q, k, v, kwargs


@pytest.mark.parametrize("name", list(CASES))
def test_flex_forward_equals_the_eager_reference_on_cpu(name):
    q, k, v, kwargs = case_inputs(CASES[name])
    with torch.no_grad():
        out = attention(q, k, v, backend="flex", **kwargs)
        ref = attention(q, k, v, backend="eager", **{**kwargs, "pe_bias": None})
    assert out.shape == (B, H, N, D)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_cached_decode_step_with_flex_equals_eager():
    """Prefill 7 tokens, then decode 1 and 4: queries aligned to the last keys, SeqPE's pe_k kept
    inside the cached keys (flex concatenates behind a cache), ALiBi distances across the cache."""
    case = {"kv_heads": KV_HEADS, "pe": "batched", "alibi": True}
    q, k, v, kwargs = case_inputs(case)
    caches = {"flex": LayerCache(), "eager": LayerCache()}
    with torch.no_grad():
        for start, stop in [(0, 7), (7, 8), (8, 12)]:
            span = lambda x: x[:, :, start:stop]
            step = {**kwargs, "pe_q": kwargs["pe_q"][:, start:stop], "pe_k": kwargs["pe_k"][:, start:stop]}
            out, ref = (attention(span(q), span(k), span(v), backend=backend, cache=caches[backend], **step)
                        for backend in ("flex", "eager"))
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert caches["flex"].keys.shape == caches["eager"].keys.shape == (B, H, N, D + P)


def test_flex_refuses_attention_dropout_and_a_cpu_backward_in_one_clear_error():
    q, k, v, kwargs = case_inputs(CASES["seqpe"])
    with torch.no_grad(), pytest.raises(ValueError, match="'flex' has no attention dropout.*model.attention_dropout"):
        attention(q, k, v, backend="flex", dropout_p=0.1, **kwargs)
    with pytest.raises(RuntimeError, match="'flex' has no backward on CPU"):
        attention(q.requires_grad_(), k, v, backend="flex", **kwargs)


def test_flex_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.attention_dropout: must be 0 with model.attention_backend: flex"):
        ModelConfig(attention_backend="flex", attention_dropout=0.1)
    with pytest.raises(ConfigError, match="model.attention_backend: 'flex' trains on CUDA only"):
        check_backend("flex", cuda=False, half_precision=False, training=True)
    check_backend("flex", cuda=False, half_precision=False)  # evaluation on CPU runs


SEQPE_SINGLE = ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "single"})


def test_the_single_projection_bias_is_built_once_for_every_layer_and_row():
    model = random_gpt(text_config(*SEQPE_SINGLE, attention_backend="flex")).eval()
    with torch.no_grad():
        signal = model.position(torch.arange(N).view(1, N, 1))
        attending = with_score_bias(signal, "flex")
    assert len(attending.layers) == 1 and signal.layers[0].pe_bias is None  # the model's output keeps none
    extras = attending.layers[0]
    assert extras.pe_bias.shape == (1, H, N, N) and extras.pe_bias.dtype == torch.float64
    torch.testing.assert_close(extras.pe_bias, seqpe_score_bias(extras.pe_q, extras.pe_k, extras.pe_scale))
    assert with_score_bias(signal, "sdpa") is signal


@pytest.mark.parametrize("shape", ["gpt2", "llama"])
def test_a_seqpe_single_gpt_with_flex_equals_sdpa_in_eval(shape):
    knobs = LLAMA if shape == "llama" else {}
    models = {backend: random_gpt(text_config(*SEQPE_SINGLE, attention_backend=backend, **knobs)).eval()
              for backend in ("flex", "sdpa")}
    with torch.no_grad():
        flex, sdpa = (models[backend](tokens()).logits for backend in ("flex", "sdpa"))
    torch.testing.assert_close(flex, sdpa, rtol=1e-9, atol=1e-9)  # float64 models
    sampling = Sampling(max_new_tokens=6, temperature=1.0, seed=0)  # KV-cached decoding
    assert list(generate(models["flex"], [3, 1, 4], sampling)) == list(generate(models["sdpa"], [3, 1, 4], sampling))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA_CASES = ["seqpe", "seqpe-shared-by-rows", "gqa-seqpe-alibi-documents"]


def _forward_backward(backend: str, q, k, v, kwargs: dict, seed: int = 1):
    """Output and gradients of q, k, v, pe_q, pe_k for a fixed random output weighting."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v, kwargs["pe_q"], kwargs["pe_k"])]
    out = attention(*leaves[:3], backend=backend, **{**kwargs, "pe_q": leaves[3], "pe_k": leaves[4]})
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return [out, *torch.autograd.grad((out.float() * weight.float()).sum(), leaves)]


@cuda
@pytest.mark.parametrize("name", CUDA_CASES)
def test_cuda_bf16_flex_forward_and_backward_equal_sdpa(name):
    """bf16 on both sides, so each carries bf16 rounding: outputs within 3e-2, gradients (incl.
    pe_q's and pe_k's through the shared bias) within 5e-2, as test_attention's CUDA tolerances."""
    q, k, v, kwargs = case_inputs(CASES[name], n=256, dtype=torch.bfloat16, device="cuda")
    flex, sdpa = (_forward_backward(backend, q, k, v, kwargs) for backend in ("flex", "sdpa"))
    torch.testing.assert_close(flex[0].float(), sdpa[0].float(), rtol=3e-2, atol=3e-2)
    for got, want in zip(flex[1:], sdpa[1:]):
        torch.testing.assert_close(got.float(), want.float(), rtol=5e-2, atol=5e-2)


@cuda
def test_cuda_sdpa_with_a_mask_runs_v_unpadded_and_equals_float32_eager():
    """With a mask (ALiBi, documents) sdpa hands CUDA's memory-efficient kernel v at its own width."""
    case = {"pe": "batched", "alibi": True, "documents": True}
    q, k, v, kwargs = case_inputs(case, n=256, dtype=torch.bfloat16, device="cuda")
    got = _forward_backward("sdpa", q, k, v, kwargs)
    f32 = {**kwargs, "pe_q": kwargs["pe_q"].float(), "pe_k": kwargs["pe_k"].float()}
    want = _forward_backward("eager", q.float(), k.float(), v.float(), f32)
    torch.testing.assert_close(got[0].float(), want[0], rtol=3e-2, atol=3e-2)
    for g, w in zip(got[1:], want[1:]):
        torch.testing.assert_close(g.float(), w, rtol=5e-2, atol=5e-2)
