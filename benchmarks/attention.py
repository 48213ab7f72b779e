"""SeqPE attn_scalar attention three ways, forward + backward, across sequence lengths:

  no_pe        sdpa without SeqPE's term (what every other position type pays: the floor)
  eager        explicit softmax over q.k + s*pe_q.pe_k (concatenated heads)
  sdpa         torch's fused scaled_dot_product_attention on the concatenated heads
  cpu_bias     CPU training's path where it fits: the bias [1, H, N, N] built once (here per call, as one
               layer of a model with attn_scalar_proj: multi) and handed to the fused kernel as its mask
  dense_bias   the reference's way: a materialised [B, H, N, N] bias passed as an attention mask
  flash        flash-attn on the concatenated heads (only where a GPU and flash-attn are present)

Time interleaved per length (median); peak memory per (variant, length) in a fresh process.
Writes benchmarks/results/attention.json.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ensure_allocator_env, peak_in_subprocess, report_peak_growth, time_interleaved, write_result  # noqa: E402

from megaseqpe.model.attention import CPU_BIAS_MAX_ELEMENTS, attention, flash_available, seqpe_score_bias  # noqa: E402


def make_run(variant: str, length: int, args):
    g = torch.Generator().manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    shape = (args.batch, args.heads, length, args.head_dim)
    q, k, v = (torch.randn(*shape, generator=g).to(device, dtype).requires_grad_() for _ in range(3))
    pe_q, pe_k = (torch.randn(length, args.heads, args.head_dim, generator=g).to(device, dtype).requires_grad_()
                  for _ in range(2))

    def dense_bias():
        bias = torch.einsum("ihp,jhp->hij", pe_q, pe_k) / math.sqrt(args.head_dim)
        bias = bias.masked_fill(torch.ones(length, length, dtype=torch.bool, device=device).triu(1), float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(args.batch, -1, -1, -1))

    forwards = {
        "dense_bias": dense_bias,
        "no_pe": lambda: attention(q, k, v, causal=True, backend="sdpa"),
        "cpu_bias": lambda: attention(q, k, v, causal=True, backend="sdpa", pe_q=pe_q, pe_k=pe_k,
                                      pe_bias=seqpe_score_bias(pe_q, pe_k, 1.0)),
    }
    forward = forwards.get(variant, lambda: attention(q, k, v, causal=True, backend=variant, pe_q=pe_q, pe_k=pe_k))

    def run():
        forward().float().sum().backward()
        for t in (q, k, v, pe_q, pe_k):
            t.grad = None
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,512,1024,2048,4096")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return report_peak_growth(make_run(args.memory_of, args.length, args))
    ensure_allocator_env()
    probe = torch.zeros(1, device="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
    variants = ["no_pe", "eager", "sdpa", "dense_bias"] + (["flash"] if flash_available(probe) else [])
    rows = []
    for length in (int(n) for n in args.lengths.split(",")):
        # cpu_bias where training would take it (CPU, the bias within CPU_BIAS_MAX_ELEMENTS)
        variants = [v for v in variants if v != "cpu_bias"]
        if probe.device.type == "cpu" and args.heads * length * length <= CPU_BIAS_MAX_ELEMENTS:
            variants.insert(variants.index("sdpa") + 1, "cpu_bias")
        seconds = time_interleaved({v: make_run(v, length, args) for v in variants}, args.warmup, args.steps)
        common = ["--length", str(length), "--batch", str(args.batch), "--heads", str(args.heads),
                  "--head-dim", str(args.head_dim)]
        peak = {v: peak_in_subprocess(__file__, ["--memory-of", v, *common]) for v in variants}
        rows.append({"length": length, "seconds_median": seconds, "peak_bytes": peak})
        print(f"N={length:>5} " + "  ".join(f"{v} {seconds[v] * 1e3:8.1f} ms {peak[v] / 2**20:7.1f} MiB"
                                          for v in variants), flush=True)
    write_result("attention", {"config": {k: v for k, v in vars(args).items() if v is not None and k != "memory_of"},
                               "variants": variants, "rows": rows})


if __name__ == "__main__":
    main()
