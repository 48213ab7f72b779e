"""Every backend against an explicit dense-bias reference written independently here."""
import math

import pytest
import torch

from megaseqpe.model.attention import apply_rotary, attention, flash_available
from megaseqpe.positions.baselines import Rotary, alibi_slopes

B, H, N, D, P = 2, 4, 12, 8, 8
CPU_BACKENDS = ["eager", "sdpa", "auto"]


def dense_reference(q, k, v, *, causal, bias=None):
    """softmax(q.k / sqrt(d) + bias) v, the future masked, with the bias materialised [.., N, N]."""
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if causal:
        logits = logits.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), float("-inf"))
    return logits.softmax(-1) @ v


def inputs(seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_()
    return make(B, H, N, D), make(B, H, N, D), make(B, H, N, D), make(B, N, H, P), make(B, N, H, P)


def grads(out, tensors, seed=1):
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return torch.autograd.grad((out * weight).sum(), tensors)


def assert_matches(out, ref, tensors, atol=1e-5):
    torch.testing.assert_close(out, ref, rtol=atol, atol=atol)
    for got, want in zip(grads(out, tensors), grads(ref, tensors)):
        torch.testing.assert_close(got, want, rtol=atol, atol=atol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("batched_pe", [True, False])
def test_seqpe_attn_scalar_equals_dense_bias(backend, causal, batched_pe):
    q, k, v, pe_q, pe_k = inputs()
    if not batched_pe:  # one position table shared by the batch: [N, H, P]
        pe_q, pe_k = pe_q[0].detach().requires_grad_(), pe_k[0].detach().requires_grad_()
    s = 0.7
    out = attention(q, k, v, causal=causal, backend=backend, pe_q=pe_q, pe_k=pe_k, pe_scale=s)
    # SEQPE.md §4: s * pe_q[i].pe_k[j] joins the logit before the 1/sqrt(head_dim) scale.
    pq, pk = (pe_q if batched_pe else pe_q[None]), (pe_k if batched_pe else pe_k[None])
    bias = s * torch.einsum("bihp,bjhp->bhij", pq, pk) / math.sqrt(D)
    ref = dense_reference(q, k, v, causal=causal, bias=bias)
    assert_matches(out, ref, (q, k, v, pe_q, pe_k))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("batched", [True, False])
def test_seqpe_attn_mul_scales_q_and_k_elementwise(backend, batched):
    q, k, v, _, _ = inputs(5)
    g = torch.Generator().manual_seed(6)
    shape = (B, N, H, D) if batched else (1, N, H, D)
    q_mul, k_mul = (torch.randn(*shape, generator=g).requires_grad_() for _ in range(2))
    out = attention(q, k, v, causal=False, backend=backend, q_mul=q_mul, k_mul=k_mul)
    # The reference's attn_mul: q * pe_q, k * pe_k per head, then plain attention.
    ref = dense_reference(q * q_mul.transpose(1, 2), k * k_mul.transpose(1, 2), v, causal=False)
    assert_matches(out, ref, (q, k, v, q_mul, k_mul))
    other = attention(q, k, v, causal=False, backend="eager" if backend != "eager" else "sdpa",
                      q_mul=q_mul, k_mul=k_mul)
    torch.testing.assert_close(out, other, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_alibi_equals_dense_bias(backend):
    q, k, v, _, _ = inputs(2)
    slopes = alibi_slopes(H)
    bias = torch.zeros(H, N, N)
    for h in range(H):
        for i in range(N):
            for j in range(N):
                bias[h, i, j] = -slopes[h] * abs(i - j)
    out = attention(q, k, v, causal=True, backend=backend, alibi_slopes=slopes)
    assert_matches(out, dense_reference(q, k, v, causal=True, bias=bias), (q, k, v))


def rotate_reference(x, positions):
    """RoPE written as complex multiplication of channel pairs (i, i + d/2)."""
    half = x.shape[-1] // 2
    freqs = 10000.0 ** (-torch.arange(0, x.shape[-1], 2).float() / x.shape[-1])
    rotation = torch.polar(torch.ones(len(positions), half), positions[:, None].float() * freqs)
    pairs = torch.complex(x[..., :half], x[..., half:]) * rotation
    return torch.cat([pairs.real, pairs.imag], dim=-1)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rope_equals_rotated_reference(backend):
    q, k, v, _, _ = inputs(3)
    positions = torch.arange(N) + 5
    rotary = Rotary(D).signal(positions.view(1, N, 1)).layers[0].rotary
    out = attention(q, k, v, causal=True, backend=backend, rotary=rotary)
    ref = dense_reference(rotate_reference(q, positions), rotate_reference(k, positions), v, causal=True)
    assert_matches(out, ref, (q, k, v))


def test_rope_logits_depend_only_on_relative_distance():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    rope = Rotary(16)

    def logit(i, j):
        (cos_i, sin_i), (cos_j, sin_j) = (rope.signal(torch.tensor([[[p]]])).layers[0].rotary for p in (i, j))
        return (apply_rotary(q, cos_i, sin_i) * apply_rotary(k, cos_j, sin_j)).sum()

    for i, j in [(7, 3), (20, 20), (3, 9)]:
        for shift in (1, 100, 5000):
            torch.testing.assert_close(logit(i, j), logit(i + shift, j + shift), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logit(7, 3), logit(7, 4))


def test_unknown_or_unavailable_backend_is_a_clear_error():
    q, k, v, _, _ = inputs()
    with pytest.raises(ValueError, match="not one of"):
        attention(q, k, v, causal=True, backend="xformers")
    if not flash_available(q):
        with pytest.raises(RuntimeError, match="flash-attn"):
            attention(q, k, v, causal=True, backend="flash")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["sdpa", "flash"])
def test_cuda_bf16_backends_match_dense_reference(backend):
    q, k, v, pe_q, pe_k = inputs(dtype=torch.bfloat16, device="cuda")
    if backend == "flash" and not flash_available(q):
        pytest.skip("flash-attn is not installed")
    slopes = alibi_slopes(H).cuda()
    out = attention(q, k, v, causal=True, backend=backend, pe_q=pe_q, pe_k=pe_k, alibi_slopes=slopes)
    f32 = [t.detach().float().requires_grad_() for t in (q, k, v, pe_q, pe_k)]
    i, j = torch.arange(N, device="cuda")[:, None], torch.arange(N, device="cuda")[None]
    bias = torch.einsum("bihp,bjhp->bhij", f32[3], f32[4]) / math.sqrt(D) - slopes[:, None, None] * (i - j).abs()
    logits = (f32[0] @ f32[1].transpose(-1, -2) / math.sqrt(D) + bias).masked_fill(j > i, float("-inf"))
    ref = logits.softmax(-1) @ f32[2]
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    for got, want in zip(grads(out, (q, k, v, pe_q, pe_k)), grads(ref, f32)):
        torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)
