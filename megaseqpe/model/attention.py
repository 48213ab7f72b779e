"""Attention with interchangeable kernels behind one signature.

Backends: `flash` (flash-attn, CUDA, fp16/bf16), `sdpa` (torch.nn.functional.
scaled_dot_product_attention), `eager` (explicit softmax, the readable reference), `flex`
(torch.nn.attention.flex_attention, see below), and `auto` (flash when it can run, else sdpa).
Position schemes plug in as:

- SeqPE `attn_scalar` (docs/method.md §1.3): logit(i, j) = scale * (q_i.k_j + s * pe_q_i.pe_k_j). We
  concatenate `s * pe_q` to q and `pe_k` to k, so every kernel computes it as an ordinary
  dot product with an explicit scale: no [B, H, N, N] bias is built on flash or sdpa (flex
  instead reads one bias, built once per pass: see below).
- SeqPE `attn_mul`: q and k are multiplied elementwise by per-position factors `q_mul`, `k_mul`
  before the kernel, so every kernel sees ordinary q and k.
- rotary: `(cos, sin)` rotate q and k before the kernel.
- ALiBi: flash-attn takes the slopes; sdpa and eager add the (unavoidable) distance bias.

With a `LayerCache` (generation), q holds the new tokens only and k, v are appended to the cache
after the position terms above; queries are aligned to the last keys, as flash-attn aligns them.

Document masking (`documents`, per-token document ids of packed rows): a query sees only the keys
of its own document. sdpa and eager add a block-causal mask; flash runs flash-attn's varlen kernel
with one sequence per document (`cu_seqlens`), so no mask is built. ALiBi's |i - j| is then a
distance inside one document, where it equals the distance of the tokens' restarted positions.

Grouped-query attention: k and v may have fewer heads than q (a divisor of them); query head h reads
key/value head h // (q heads / kv heads), flash-attn's and LLaMA's grouping. flash-attn takes such k
and v as they are; sdpa and eager repeat each k/v head for its group of query heads. Rotary and ALiBi
apply per kv head (rotary is the same for every head), so a KV cache keeps the fewer heads. SeqPE's
key terms (`pe_k`, `k_mul`) are per query head: there k and v are expanded to the query heads before
them, which keeps the parameters GQA saves but not its attention compute or KV-cache memory.

FlexAttention (`flex`): SeqPE `attn_scalar`'s term is a score bias `[B|1, H, N, N]` (float32,
`seqpe_score_bias`) that a `score_mod` reads by index, so q, k and v keep their own widths (no
concatenation, no v padding) and k/v their fewer GQA heads. A model builds it once per pass outside
its blocks (`with_score_bias`): with one projection for the whole model (SeqPE `single`) every
layer and batch row then shares one bias, where concatenation recomputes it per layer and row.
ALiBi is in the `score_mod`; causality (queries aligned to the last keys) and documents are a block
mask. Behind a KV cache the cached keys carry their pe_k inside k, as with every other backend, so
flex concatenates there (still without v padding). On CUDA flex runs compiled (fused, with a
backward, gradients reaching pe_q/pe_k through the bias); on CPU torch's FlexAttention runs
unfused and forward only, for evaluation and equality checks. The bias is dense: 12 heads at
N = 16k take 12 GB, so long-context evaluation belongs to sdpa or flash.

SeqPE's bias on CPU (`sdpa` and `auto`, training): torch's fused CPU kernel takes a float mask but no v
narrower than q/k, so concatenation pays twice, for the wider q.k and for the zero-padded v. When a
training pass's extras are shared by the batch rows (every unshifted SeqPE step), fp32, and the
bias `[heads, N, N]` is at most `CPU_BIAS_MAX_ELEMENTS`, the model builds the bias once per pass
and the fused kernel adds it as its mask; our backward (`_FusedCPUBias`) takes q, k, v's gradients
from the fused backward and the bias's from the probabilities recomputed block by block, summed
over the batch rows. Documents, attention dropout, evaluation and a KV cache keep the concatenation
(evaluation at N = 8192 by blocks of query rows, each with its own bias, measured 1.2x slower than
concatenation: the fused kernel with a float mask and no causal skipping is the bottleneck).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from ..config import ConfigError
from .kv_cache import LayerCache

try:  # optional: the [gpu] extra
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = flash_attn_varlen_func = None

BACKENDS = ("auto", "flash", "sdpa", "eager", "flex")  # the registry `model.attention_backend` is checked against


def flash_available(q: torch.Tensor) -> bool:
    """Whether flash-attn can run on this tensor (installed, CUDA, half precision)."""
    return flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def check_backend(backend: str, *, cuda: bool, half_precision: bool, training: bool = False) -> None:
    """Start-up check that `backend` can run on this machine at this precision (and, `training`,
    with a backward), so that a run fails before its first step (ConfigError naming the key)
    rather than in its first forward."""
    if backend == "flex" and training and not cuda:
        raise ConfigError("model.attention_backend: 'flex' trains on CUDA only (torch's FlexAttention has no "
                          "backward on CPU); use sdpa, or flex for evaluation")
    if backend == "flash" and not (flash_attn_func is not None and cuda and half_precision):
        raise ConfigError("model.attention_backend: 'flash' needs flash-attn installed (pip install '.[gpu]'), "
                          f"a CUDA device and bf16/fp16 (flash-attn installed: {flash_attn_func is not None}, "
                          f"CUDA: {cuda}, half precision: {half_precision}); use auto or sdpa")


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "flash" if flash_available(q) else "sdpa"
    if backend == "flash" and not flash_available(q):
        raise RuntimeError("attention backend 'flash' needs flash-attn installed (pip install '.[gpu]'), "
                           f"a CUDA tensor and fp16/bf16; got {q.device} {q.dtype}")
    return backend


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of `x` [B, H, N, d] by angles given as cos/sin [B|1, N, d/2]."""
    cos, sin = cos.unsqueeze(1).to(x.dtype), sin.unsqueeze(1).to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)


def alibi_bias(slopes: torch.Tensor, n_query: int, n_key: int, device: torch.device) -> torch.Tensor:
    """The ALiBi bias [H, Nq, Nk] = -slope * |i - j| (queries aligned to the last keys, as flash-attn)."""
    i = torch.arange(n_query, device=device)[:, None] + (n_key - n_query)
    j = torch.arange(n_key, device=device)[None, :]
    return -slopes.to(device=device, dtype=torch.float32)[:, None, None] * (i - j).abs()


def repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """k or v `[B, H_kv, N, d]` → `[B, heads, N, d]`, each kv head repeated for its query heads."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def seqpe_score_bias(pe_q: torch.Tensor, pe_k: torch.Tensor, pe_scale: float) -> torch.Tensor:
    """SeqPE attn_scalar's logit term `pe_scale * pe_q[i].pe_k[j]` (before the attention scale) as a
    `[B|1, heads, Nq, Nk]` bias, from extras `[N, H, p]` or `[B|1, N, H, p]`. At least float32, even
    under autocast: a bf16 bias would round each logit, which the concatenated kernels never do."""
    dtype = torch.promote_types(pe_q.dtype, torch.float32)
    pe_q, pe_k = (pe if pe.dim() == 4 else pe.unsqueeze(0) for pe in (pe_q, pe_k))
    with torch.autocast(pe_q.device.type, enabled=False):
        return pe_scale * torch.einsum("bihp,bjhp->bhij", pe_q.to(dtype), pe_k.to(dtype))


# The largest SeqPE bias `[heads, N, N]` the CPU path builds (16 MiB in float32: 12 heads at N = 591, 4 at
# 1024); longer passes concatenate, whose memory grows with N, not N^2. The bias, its scaled mask and
# its gradient are live together in the backward: at 2^24 (4 heads, N = 2048, batch 1) a step's
# activation peak was 554 MiB against concatenation's 390 (and 315 against 149 under full checkpointing).
CPU_BIAS_MAX_ELEMENTS = 2 ** 22
BIAS_GRADIENT_BLOCK = 2 ** 22  # elements of one block of the bias gradient's recomputed probabilities
BIAS_GRADIENT_ROWS = 32  # query rows per block at most: causal blocks then compute little of the future


def cpu_bias_applies(pe_q: torch.Tensor, *, documents: Optional[torch.Tensor] = None, dropout_p: float = 0.0) -> bool:
    """Whether SeqPE's term for extras `pe_q` `[B|1, N, H, p]` (or `[N, H, p]`) can go to torch's fused
    CPU kernel as a bias (see the module docstring): CPU, float32, one bias for every batch row, no
    document mask or attention dropout."""
    shared = pe_q.dim() == 3 or pe_q.shape[0] == 1
    return (pe_q.device.type == "cpu" and pe_q.dtype == torch.float32 and shared and documents is None
            and not dropout_p)


def _whole_bias_fits(pe_q: torch.Tensor, n_key: int) -> bool:
    return pe_q.shape[-2] * pe_q.shape[-3] * n_key <= CPU_BIAS_MAX_ELEMENTS


def _reads_score_bias(extras: Any, backend: str, documents: Optional[torch.Tensor], dropout_p: float) -> bool:
    if extras.pe_q is None:
        return False
    if backend == "flex":
        return True
    # Training passes only: the backward is where concatenation costs most, and evaluation keeps its
    # memory growing with N.
    return (backend in ("auto", "sdpa") and torch.is_grad_enabled() and extras.pe_q.requires_grad
            and cpu_bias_applies(extras.pe_q, documents=documents, dropout_p=dropout_p)
            and _whole_bias_fits(extras.pe_q, extras.pe_k.shape[-3]))


def with_score_bias(signal: Any, backend: str, *, documents: Optional[torch.Tensor] = None,
                    dropout_p: float = 0.0) -> Any:
    """A copy of the PositionSignal `signal` whose extras carry `pe_bias`, SeqPE's term built once,
    when `backend` reads it as a score bias (flex; sdpa and auto in a CPU training pass where
    `cpu_bias_applies`, given the pass's `documents` and attention `dropout_p`, and the bias fits
    `CPU_BIAS_MAX_ELEMENTS`); `signal` itself otherwise. A model calls this once per pass, outside its
    (possibly checkpointed or compiled) blocks, which then take the bias as an input: layers sharing
    one extras object share one bias."""
    reads = [_reads_score_bias(extras, backend, documents, dropout_p) for extras in signal.layers]
    if not any(reads):
        return signal
    layers = [dataclasses.replace(extras, pe_bias=seqpe_score_bias(extras.pe_q, extras.pe_k, extras.pe_scale))
              if read else extras for extras, read in zip(signal.layers, reads)]
    return dataclasses.replace(signal, layers=layers)


def _heads_first(pe: torch.Tensor, batch: int) -> torch.Tensor:
    """SeqPE extras or factors `[N, H, p]` or `[B|1, N, H, p]` → `[B, H, N, p]`."""
    if pe.dim() == 3:
        pe = pe.unsqueeze(0)
    return pe.transpose(1, 2).expand(batch, -1, -1, -1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              scale: Optional[float] = None, backend: str = "auto",
              pe_q: Optional[torch.Tensor] = None, pe_k: Optional[torch.Tensor] = None,
              pe_scale: float = 1.0, q_mul: Optional[torch.Tensor] = None, k_mul: Optional[torch.Tensor] = None,
              rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
              alibi_slopes: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
              cache: Optional[LayerCache] = None, documents: Optional[torch.Tensor] = None,
              pe_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-head attention on q `[B, H, N, head_dim]`, k/v `[B, H_kv, N, head_dim]` (H_kv divides H)
    → `[B, H, N, head_dim]`.

    `scale` defaults to 1/sqrt(head_dim) of q *before* any SeqPE concatenation, as docs/method.md §1.3
    applies it to the whole logit. With `cache`, q, k and v are the new tokens' (the position
    extras theirs too), and they attend to every cached key as well. `documents` `[B, N]`: each
    token's document id (equal ids are contiguous); a query attends only inside its document.
    `pe_bias`: `seqpe_score_bias(pe_q, pe_k, pe_scale)` built once by the caller (`with_score_bias`);
    flex reads it instead of building its own, the other backends concatenate pe_q and pe_k.
    """
    if documents is not None and cache is not None:
        raise ValueError("document masking applies to packed training rows; a KV cache holds one document")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if q.shape[1] % k.shape[1] or k.shape[1] != v.shape[1]:
        raise ValueError(f"{k.shape[1]} key and {v.shape[1]} value heads do not group {q.shape[1]} query heads")
    if (q_mul is None) != (k_mul is None):
        raise ValueError("q_mul and k_mul come together")
    if (pe_q is None) != (pe_k is None):
        raise ValueError("pe_q and pe_k come together")
    name = resolve_backend(backend, q)
    route = _seqpe_route(name, q, pe_q, pe_bias, cache=cache, alibi_slopes=alibi_slopes, dropout_p=dropout_p,
                         documents=documents)
    if route == "concat" or k_mul is not None:  # per query head: see the module docstring
        k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    if q_mul is not None:  # right after the head split, as the reference's attn_mul
        q = q * _heads_first(q_mul, q.shape[0]).to(q.dtype)
        k = k * _heads_first(k_mul, k.shape[0]).to(k.dtype)
    if rotary is not None:
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
    if route == "concat":
        q = torch.cat([q, pe_scale * _heads_first(pe_q, q.shape[0]).to(q.dtype)], dim=-1)
        k = torch.cat([k, _heads_first(pe_k, k.shape[0]).to(k.dtype)], dim=-1)
    if cache is not None:  # after the position terms, so that each cached key keeps its own
        k, v = cache.append(k, v)
    options = dict(causal=causal, scale=scale, alibi_slopes=alibi_slopes, dropout_p=dropout_p, documents=documents)
    if name == "flex":
        if route == "bias" and pe_bias is None:
            pe_bias = seqpe_score_bias(pe_q, pe_k, pe_scale)
        return _flex(q, k, v, bias=pe_bias if route == "bias" else None, **options)
    if route == "bias":
        k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
        return _FusedCPUBias.apply(q, k, v, pe_bias, scale, causal)
    return _KERNELS[name](q, k, v, **options)


def _seqpe_route(name: str, q: torch.Tensor, pe_q: Optional[torch.Tensor], pe_bias: Optional[torch.Tensor], *,
                 cache: Optional[LayerCache], alibi_slopes: Optional[torch.Tensor], dropout_p: float,
                 documents: Optional[torch.Tensor]) -> Optional[str]:
    """How SeqPE attn_scalar's term reaches the kernel: "bias" (flex's score bias, or sdpa on CPU given
    the pass's bias) or "concat" (pe_q and pe_k joined to q and k); None without the term."""
    if pe_q is None:
        return None
    if cache is not None:  # cached keys carry their pe_k inside k
        return "concat"
    if name == "flex":
        return "bias"
    cpu = (name == "sdpa" and pe_bias is not None and q.dtype == torch.float32 and alibi_slopes is None
           and cpu_bias_applies(pe_q, documents=documents, dropout_p=dropout_p))
    return "bias" if cpu else "concat"


def _future(n_query: int, n_key: int, device: torch.device) -> torch.Tensor:
    """True where a query would see a later key (queries aligned to the last keys)."""
    return torch.ones(n_query, n_key, dtype=torch.bool, device=device).triu(n_key - n_query + 1)


def block_causal_mask(documents: torch.Tensor, causal: bool) -> torch.Tensor:
    """`[B, 1, N, N]`, True where query i may see key j: same document (and j <= i when causal)."""
    allowed = documents[:, None, :, None] == documents[:, None, None, :]
    if causal:
        n = documents.shape[-1]
        allowed = allowed & ~_future(n, n, documents.device)
    return allowed


def _eager(q, k, v, *, causal, scale, alibi_slopes, dropout_p, documents=None):
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    logits = (q @ k.transpose(-1, -2)).float() * scale
    n_query, n_key = logits.shape[-2:]
    if alibi_slopes is not None:
        logits = logits + alibi_bias(alibi_slopes, n_query, n_key, q.device)
    if documents is not None:
        logits = logits.masked_fill(~block_causal_mask(documents, causal), float("-inf"))
    elif causal:
        logits = logits.masked_fill(_future(n_query, n_key, q.device), float("-inf"))
    weights = F.dropout(logits.softmax(-1), p=dropout_p).to(v.dtype)
    return weights @ v


def _sdpa(q, k, v, *, causal, scale, alibi_slopes, dropout_p, documents=None):
    # Repeated here rather than sdpa's enable_gqa, which not every fused kernel (CPU) takes.
    k, v = repeat_kv(k, q.shape[1]), repeat_kv(v, q.shape[1])
    n_query, n_key = q.shape[-2], k.shape[-2]
    mask = None if alibi_slopes is None else alibi_bias(alibi_slopes, n_query, n_key, q.device).to(q.dtype)
    if documents is not None:  # the causal part is in the block mask: is_causal stays off below
        allowed = block_causal_mask(documents, causal)
        mask = allowed if mask is None else torch.where(allowed, mask, float("-inf"))  # [B, H, N, N]
    # torch's is_causal aligns the queries with the FIRST keys; behind a KV cache they are the last.
    elif causal and (mask is not None or n_query != n_key):
        future = _future(n_query, n_key, q.device)
        mask = ~future if mask is None else mask.masked_fill(future, float("-inf"))
    width = v.shape[-1]
    if _pads_v(q, v, mask):  # zero channels change nothing
        v = F.pad(v, (0, q.shape[-1] - width))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                         is_causal=causal and mask is None, scale=scale)
    return out[..., :width]


def _pads_v(q: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor]) -> bool:
    """Whether sdpa needs v zero-padded to the (SeqPE-widened) q/k width. CPU's fused kernel and
    CUDA's flash kernel take equal widths only, else torch falls back to the math kernel, which
    materialises [B, H, N, N] (CPU: 24x slower at N=8192; 6.7x at N=2048 with v 16 wide for q 24).
    CUDA's memory-efficient kernel takes a narrower v (widths multiples of 8), and flash takes no
    attn_mask: with a mask the padded call runs memory-efficient anyway, so v goes unpadded there.
    Without a mask, padded flash against unpadded memory-efficient is unmeasured: padded, as before."""
    if v.shape[-1] == q.shape[-1]:
        return False
    return not (q.is_cuda and mask is not None and q.shape[-1] % 8 == 0 and v.shape[-1] % 8 == 0)


class _FusedCPUBias(torch.autograd.Function):
    """softmax(scale * (q.k + bias)) v by torch's fused CPU kernel, `bias` `[1, H, N, N]` (SeqPE's
    term, shared by the batch rows) as its float mask; the backward's q/k/v gradients come from the
    fused backward, the bias's from the probabilities recomputed in blocks of query rows:
    d bias = scale * sum over rows of P * (dO.v - rowsum(dO * O)), the softmax's backward."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                scale: float, causal: bool) -> torch.Tensor:
        mask = _scaled_mask(bias, scale, causal, q.dtype)
        out, logsumexp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=mask, scale=scale)
        ctx.save_for_backward(q, k, v, bias, out, logsumexp)
        ctx.scale, ctx.causal = scale, causal
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        q, k, v, bias, out, logsumexp = ctx.saved_tensors
        grad_out, mask = grad_out.contiguous(), _scaled_mask(bias, ctx.scale, ctx.causal, q.dtype)
        grad_q, grad_k, grad_v = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, k, v, out, logsumexp, 0.0, ctx.causal, attn_mask=mask, scale=ctx.scale)
        grad_bias = None
        if ctx.needs_input_grad[3]:
            grad_bias = _bias_gradient(q, k, v, mask, grad_out, out, logsumexp, ctx.causal, ctx.scale)
            grad_bias = grad_bias.mul_(ctx.scale).to(bias.dtype).view(bias.shape)
        return grad_q, grad_k, grad_v, grad_bias, None, None


def _scaled_mask(bias: torch.Tensor, scale: float, causal: bool, dtype: torch.dtype) -> torch.Tensor:
    """The kernel's float mask `scale * bias`; causal, the future is -inf (which the kernel skips
    anyway), so that probabilities recomputed from it are 0 there without a masking pass."""
    mask = bias.to(dtype) * scale
    if causal:
        mask = mask.masked_fill_(_future(*mask.shape[-2:], mask.device), float("-inf"))
    return mask


def _bias_gradient(q, k, v, mask, grad_out, out, logsumexp, causal: bool, scale: float) -> torch.Tensor:
    """The softmax's input gradient summed over the batch rows, `[H, N, N]` (q and k of equal length,
    no cache), in blocks of query rows (causal: keys up to the block's last row). A block's
    `[B, H, rows, keys]` stays within `BIAS_GRADIENT_BLOCK` elements. The per-row terms ride in the
    matmuls as one more channel: [scale q, -lse].[k, 1] is the log-probability before the mask and
    [dO, -rowsum(dO * O)].[v, 1] the probability's gradient less its row term."""
    batch, heads, length = q.shape[:3]
    rows = max(1, min(BIAS_GRADIENT_ROWS, BIAS_GRADIENT_BLOCK // (batch * heads * length)))
    with_column = lambda x, column: torch.cat([x, column.unsqueeze(-1)], dim=-1)
    ones = q.new_ones(k.shape[:3])
    q_rows, k_cols = with_column(q * scale, -logsumexp), with_column(k, ones)
    g_rows, v_cols = with_column(grad_out, -(grad_out * out).sum(-1)), with_column(v, ones)
    grad = torch.zeros(heads, length, length, dtype=q.dtype, device=q.device)
    mask = mask.reshape(heads, length, length)
    for start in range(0, length, rows):
        stop = min(length, start + rows)
        keys = stop if causal else length
        probs = torch.matmul(q_rows[:, :, start:stop], k_cols[:, :, :keys].transpose(-1, -2))
        probs = probs.add_(mask[:, start:stop, :keys]).exp_()
        grad_probs = torch.matmul(g_rows[:, :, start:stop], v_cols[:, :, :keys].transpose(-1, -2))
        grad[:, start:stop, :keys] = probs.mul_(grad_probs).sum(0)
    return grad


def document_cu_seqlens(documents: torch.Tensor) -> tuple[torch.Tensor, int]:
    """flash-attn varlen's `cu_seqlens` (int32 `[S + 1]`, token offsets of the S documents of the
    flattened `[B * N]` batch; a row's first token always starts one) and the longest document."""
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[:, 1:] = documents[:, 1:] != documents[:, :-1]
    offsets = torch.cat([starts.flatten().nonzero().flatten(),
                         torch.tensor([documents.numel()], device=documents.device)])
    return offsets.to(torch.int32), int((offsets[1:] - offsets[:-1]).max())


def _flash(q, k, v, *, causal, scale, alibi_slopes, dropout_p, documents=None):
    # flash-attn wants [B, N, H, d], one head width for q, k and v, a multiple of 8; it groups
    # fewer k/v heads itself (GQA).
    width = -(-max(q.shape[-1], v.shape[-1]) // 8) * 8
    pad = lambda x: F.pad(x, (0, width - x.shape[-1])).transpose(1, 2)
    slopes = None if alibi_slopes is None else alibi_slopes.to(device=q.device, dtype=torch.float32)
    if documents is None:
        out = flash_attn_func(pad(q), pad(k), pad(v), dropout_p=dropout_p, softmax_scale=scale,
                              causal=causal, alibi_slopes=slopes)
    else:  # every document is one sequence of the varlen batch: [B * N, H, width]
        batch, length = documents.shape
        cu_seqlens, longest = document_cu_seqlens(documents)
        flat = lambda x: pad(x).reshape(batch * length, x.shape[1], width)
        out = flash_attn_varlen_func(flat(q), flat(k), flat(v), cu_seqlens, cu_seqlens, longest, longest,
                                     dropout_p=dropout_p, softmax_scale=scale, causal=causal,
                                     alibi_slopes=slopes).view(batch, length, -1, width)
    return out.transpose(1, 2)[..., : v.shape[-1]]


@functools.cache
def _compiled_flex_attention() -> Any:
    """FlexAttention compiled once, on first use (importing this module stays cheap): uncompiled
    it is torch's unfused reference, which CPU runs (its only path) and a compiled block inlines."""
    return torch.compile(flex_attention)


def _flex_score_mod(bias: Optional[torch.Tensor], slopes: Optional[torch.Tensor], scale: float,
                    offset: int, batch: int, device: torch.device) -> Optional[Any]:
    """FlexAttention's `score_mod` adding `scale * bias[b, h, i, j]` (SeqPE) and ALiBi's
    `-slope[h] * |i + offset - j|` (queries aligned to the last keys) to the scaled q.k score."""
    if bias is None and slopes is None:
        return None
    bias = None if bias is None else bias.expand(batch, -1, -1, -1)  # a view: one bias for every row
    slopes = None if slopes is None else slopes.to(device=device, dtype=torch.float32)

    def score_mod(score, b, h, q_idx, kv_idx):
        if bias is not None:
            score = score + scale * bias[b, h, q_idx, kv_idx]
        if slopes is not None:
            score = score - slopes[h] * (q_idx + offset - kv_idx).abs()
        return score
    return score_mod


def _flex_block_mask(documents: Optional[torch.Tensor], causal: bool, n_query: int, n_key: int,
                     device: torch.device) -> Optional[BlockMask]:
    """The keys each query may see: its document's (documents never come with a cache) and, when
    causal, none after it, queries aligned to the last keys."""
    offset = n_key - n_query
    if documents is not None:
        def in_document(b, h, q_idx, kv_idx):
            same = documents[b, q_idx] == documents[b, kv_idx]
            return same & (q_idx >= kv_idx) if causal else same
        return create_block_mask(in_document, documents.shape[0], None, n_query, n_key, device=device)
    if not causal:
        return None

    def not_future(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx
    return create_block_mask(not_future, None, None, n_query, n_key, device=device)


def _flex(q, k, v, *, causal, scale, alibi_slopes, dropout_p, documents=None, bias=None):
    if dropout_p:
        raise ValueError("attention backend 'flex' has no attention dropout; set model.attention_dropout: 0 or use sdpa")
    if q.device.type == "cpu" and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("attention backend 'flex' has no backward on CPU (torch's FlexAttention): "
                           "run it under torch.no_grad there, or train with sdpa")
    n_query, n_key = q.shape[-2], k.shape[-2]
    score_mod = _flex_score_mod(bias, alibi_slopes, scale, n_key - n_query, q.shape[0], q.device)
    block_mask = _flex_block_mask(documents, causal, n_query, n_key, q.device)
    fused = q.device.type != "cpu" and not torch.compiler.is_compiling()
    kernel = _compiled_flex_attention() if fused else flex_attention
    return kernel(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                  enable_gqa=q.shape[1] != k.shape[1])


_KERNELS = {"eager": _eager, "sdpa": _sdpa, "flash": _flash}  # flex also takes the bias: called apart
