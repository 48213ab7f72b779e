"""What each position scheme costs in a training step, measured side by side in one run.

Training step (forward + backward) of the same GPT with learned APE, sinusoidal, RoPE, ALiBi,
NoPE, SeqPE (attn_scalar; model + contrastive + distillation positions in ONE unique pass) and
`seqpe_naive` (every occurrence of every position, every digit token encoded, as the reference
code does), at two model sizes and two sequence lengths; plus one evaluation forward at a long
length (batch 1, no grad): learned (interpolated table) against SeqPE (cached table); and learned, NoPE
and SeqPE at a larger batch (--large-batch, default 32) at the last size and length.

Time: the variants of one (size, length) interleaved step by step, median of --steps after
--warmup. SeqPE's step samples its objectives and de-duplicates and lays out its positions itself:
the work a training run's step planner does before the step (on a GPU, in a background thread).
Memory: each variant in a fresh process, peak RSS growth over two calls; for the evaluation forward
also the live tensors' peak (torch's MemTracker), which RSS on CPU blurs. Ratios are to learned
APE. Writes benchmarks/results/pe_overhead.json.

    python benchmarks/pe_overhead.py                       # sizes 2x128,4x256; lengths 256,512
    python benchmarks/pe_overhead.py --sizes 4x256 --lengths 512 --eval-len 0
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import (ensure_allocator_env, peak_in_subprocess, report_peak_growth, tensor_peak_bytes,  # noqa: E402
                      time_interleaved, write_result)

from megaseqpe.config import Config, ModelConfig, PositionConfig  # noqa: E402
from megaseqpe.model import build_gpt  # noqa: E402
from megaseqpe.positions import SeqPE, SeqPEObjectives  # noqa: E402

TRAIN_VARIANTS = ("learned", "sinusoidal", "rope", "alibi", "nope", "seqpe", "seqpe_naive")
EVAL_VARIANTS = ("eval_learned", "eval_seqpe")
LARGE_BATCH_VARIANTS = ("learned", "nope", "seqpe")


class EveryOccurrenceSeqPE(SeqPE):
    """SeqPE without de-duplication: one encoder row per occurrence and every digit token of
    every row computed in every layer (no shared prefixes), as the reference does."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.encoder.graphs.share_prefixes = False
        self.encoder.summary_only_last_layer = False

    def _encode_unique(self, position_tensors):
        flat = [p.reshape(-1, self.n_dims) for p in position_tensors]
        embeddings = self.encoder.embed(torch.cat(flat))
        inverses = list(torch.arange(embeddings.shape[0]).split([f.shape[0] for f in flat]))
        return embeddings, [i.view(p.shape[:-1]) for i, p in zip(inverses, position_tensors)]


class Variant:
    """One position scheme on one model: `run()` is a training step (or an eval forward)."""

    def __init__(self, name: str, layers: int, width: int, seq_len: int, args) -> None:
        torch.manual_seed(0)
        self.name, self.seq_len, self.evaluating = name, seq_len, name.startswith("eval")
        kind = name.removeprefix("eval_").removesuffix("_naive")
        model = ModelConfig(n_layer=layers, n_head=args.heads, d_model=width, vocab_size=args.vocab,
                            max_seq_len=seq_len)
        config = Config(model=model, position=PositionConfig(type=kind, use="attn_scalar"))
        self.model = build_gpt(config)
        if name == "seqpe_naive":
            self.model.position = EveryOccurrenceSeqPE(config.position, config.model)
        self.objectives = SeqPEObjectives(config.position, args.heads) if kind == "seqpe" else None
        length, batch = (args.eval_len, 1) if self.evaluating else (seq_len, args.batch)
        self.tokens = torch.randint(0, args.vocab, (batch, length + 1), generator=torch.Generator().manual_seed(1))
        self.positions = torch.arange(length).view(1, -1, 1)
        if name == "seqpe_naive":  # the reference encodes every batch row's positions
            self.positions = self.positions.expand(batch, -1, -1)
        self.step, self.encoded = 0, []
        if self.evaluating:
            self.model.eval()
            if kind == "learned":
                self.model.position.enable_extrapolation()  # the table must stretch to N

    def run(self) -> None:
        if self.evaluating:
            with torch.no_grad():
                self.model(self.tokens[:, :-1])
            return
        self.step += 1
        sample = None
        if self.objectives is not None:
            sample = self.objectives.sample((self.seq_len,), np.random.default_rng(self.step),
                                            np.random.default_rng([7, self.step]), seed=0, step=self.step, rank=0)
        out = self.model(self.tokens[:, :-1], positions=self.positions, targets=self.tokens[:, 1:],
                         objectives=sample)
        signal = out.position_signal
        loss = out.loss + sum(signal.aux_losses.values())
        if "train/unique_positions" in signal.stats:  # the naive variant's "unique" rows are every occurrence
            self.encoded.append(signal.stats["train/unique_positions"])
        loss.backward()
        self.model.zero_grad(set_to_none=True)


def parse_size(text: str) -> tuple[int, int]:
    layers, width = text.lower().split("x")
    return int(layers), int(width)


def measure(args, layers: int, width: int, seq_len: int, names) -> dict:
    variants = {name: Variant(name, layers, width, seq_len, args) for name in names}
    seconds = time_interleaved({n: v.run for n, v in variants.items()}, args.warmup, args.steps)
    encoded = {n: statistics.mean(v.encoded) for n, v in variants.items() if v.encoded}
    del variants
    common = ["--layers", str(layers), "--width", str(width), "--seq-len", str(seq_len), "--heads", str(args.heads),
              "--vocab", str(args.vocab), "--batch", str(args.batch), "--eval-len", str(args.eval_len)]
    peak = {n: peak_in_subprocess(__file__, ["--memory-of", n, *common]) for n in names}
    base = "eval_learned" if names[0].startswith("eval") else "learned"
    return {"layers": layers, "width": width, "seq_len": seq_len, "seconds_median": seconds, "peak_bytes": peak,
            "positions_encoded_per_step": encoded,
            "time_ratio_to_learned": {n: seconds[n] / seconds[base] for n in names},
            "memory_ratio_to_learned": {n: peak[n] / peak[base] if peak[base] else None for n in names}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2x128,4x256", help="model sizes as LAYERSxWIDTH, comma-separated")
    parser.add_argument("--lengths", default="256,512", help="training sequence lengths, comma-separated")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval-len", type=int, default=8192, help="evaluation length; 0 skips the eval part")
    parser.add_argument("--large-batch", type=int, default=32,
                        help="also time learned, nope and seqpe at this batch (last size and length); 0 skips it")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seq-len", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return report_peak_growth(Variant(args.memory_of, args.layers, args.width, args.seq_len, args).run)
    ensure_allocator_env()
    grid = []
    for size in args.sizes.split(","):
        layers, width = parse_size(size)
        for seq_len in (int(n) for n in args.lengths.split(",")):
            print(f"{layers} layers x {width}, L = {seq_len}: {', '.join(TRAIN_VARIANTS)}", flush=True)
            grid.append(measure(args, layers, width, seq_len, TRAIN_VARIANTS))
            print_row(grid[-1])
    result = {"config": {k: v for k, v in vars(args).items() if v is not None and k != "memory_of"},
              "train_step": grid}
    if args.large_batch:
        layers, width = parse_size(args.sizes.split(",")[-1])
        seq_len, large = int(args.lengths.split(",")[-1]), argparse.Namespace(**{**vars(args), "batch": args.large_batch})
        print(f"{layers} layers x {width}, L = {seq_len}, batch {args.large_batch}: {', '.join(LARGE_BATCH_VARIANTS)}",
              flush=True)
        result["train_step_large_batch"] = {"batch": args.large_batch,
                                            **measure(large, layers, width, seq_len, LARGE_BATCH_VARIANTS)}
        print_row(result["train_step_large_batch"])
    if args.eval_len:
        layers, width = parse_size(args.sizes.split(",")[-1])
        print(f"evaluation forward at N = {args.eval_len}, {layers} layers x {width}", flush=True)
        result["eval_forward"] = measure(args, layers, width, int(args.lengths.split(",")[-1]), EVAL_VARIANTS)
        print_row(result["eval_forward"])
        result["eval_forward"].update(eval_tensor_peaks(args, layers, width, int(args.lengths.split(",")[-1])))
    write_result("pe_overhead", result)


def eval_tensor_peaks(args, layers: int, width: int, seq_len: int) -> dict:
    """The evaluation variants' live-tensor peak over two calls of a fresh model (SeqPE's first call
    builds its table), from torch's MemTracker: peak RSS growth moved by +-200 MiB between runs here."""
    peaks = {n: tensor_peak_bytes(Variant(n, layers, width, seq_len, args).run, calls=2) for n in EVAL_VARIANTS}
    ratios = {n: peaks[n] / peaks["eval_learned"] for n in EVAL_VARIANTS}
    print("  live tensors: " + ", ".join(f"{n} {peaks[n] / 2**20:.0f} MiB x{ratios[n]:.2f}" for n in EVAL_VARIANTS),
          flush=True)
    return {"tensor_peak_bytes": peaks, "tensor_memory_ratio_to_learned": ratios}


def print_row(row: dict) -> None:
    for name, seconds in row["seconds_median"].items():
        encoded = row["positions_encoded_per_step"].get(name)
        print(f"  {name:<13}{seconds:8.3f} s  x{row['time_ratio_to_learned'][name]:5.2f} time"
              f"  {row['peak_bytes'][name] / 2**20:8.1f} MiB  x{(row['memory_ratio_to_learned'][name] or 0):5.2f} mem"
              + (f"  {encoded:.0f} positions/step" if encoded else ""), flush=True)


if __name__ == "__main__":
    main()
