"""What SeqPE costs next to a learned table, measured side by side in one run.

Training step (forward + backward) of the same small GPT with:
  learned       GPT-2's learned absolute table
  seqpe         SeqPE attn_scalar, main + contrastive + distillation positions in ONE unique pass
  seqpe_naive   the same, but every occurrence of every position encoded (the reference's way)
and one evaluation forward at a long length (batch 1, no grad): learned (interpolated table)
against SeqPE (cached table of [0, N)).

Time: variants interleaved step by step in one process, median of `--steps` after `--warmup`.
Memory: each variant in a fresh subprocess, peak RSS during the measured work minus RSS before
it. Both sides run with the same allocator settings (glibc's dynamic mmap threshold would make
page faults, not the model, dominate; see TARGETS.md). Writes JSON and prints a table.

    python benchmarks/pe_overhead.py                     # 4 layers, width 256, L=512, batch 8
    python benchmarks/pe_overhead.py --eval-len 0 --steps 5 --out /tmp/x.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from megaseqpe.config import Config, ModelConfig, PositionConfig
from megaseqpe.model import build_gpt
from megaseqpe.positions import SeqPE, SeqPEObjectives

TRAIN_VARIANTS = ("learned", "seqpe", "seqpe_naive")
EVAL_VARIANTS = ("eval_learned", "eval_seqpe")
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


class EveryOccurrenceSeqPE(SeqPE):
    """SeqPE without de-duplication: one encoder row per occurrence and every digit token of
    every row computed (no shared prefixes), as the reference does."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.encoder.share_prefixes = False

    def _encode_unique(self, position_tensors):
        flat = [p.reshape(-1, self.n_dims) for p in position_tensors]
        embeddings = self.encoder(torch.cat(flat))
        inverses = list(torch.arange(embeddings.shape[0]).split([f.shape[0] for f in flat]))
        return embeddings, [i.view(p.shape[:-1]) for i, p in zip(inverses, position_tensors)]


def make_config(args, variant: str) -> Config:
    model = ModelConfig(n_layer=args.layers, n_head=args.heads, d_model=args.width, vocab_size=args.vocab,
                        max_seq_len=args.seq_len, attention_backend=args.backend)
    kind = "learned" if "learned" in variant else "seqpe"
    return Config(model=model, position=PositionConfig(type=kind, use="attn_scalar"))


class Variant:
    def __init__(self, args, name: str) -> None:
        torch.manual_seed(0)
        self.name, self.args = name, args
        self.config = make_config(args, name)
        self.model = build_gpt(self.config)
        if name == "seqpe_naive":
            self.model.position = EveryOccurrenceSeqPE(self.config.position, self.config.model)
        self.objectives = SeqPEObjectives(self.config.position, args.heads) if "seqpe" in name else None
        g = torch.Generator().manual_seed(1)
        length = args.eval_len if name.startswith("eval") else args.seq_len
        batch = 1 if name.startswith("eval") else args.batch
        self.tokens = torch.randint(0, args.vocab, (batch, length + 1), generator=g)
        # The naive variant encodes every row's positions, as the reference does per batch row.
        self.positions = torch.arange(args.seq_len).view(1, -1, 1)
        if name == "seqpe_naive":
            self.positions = self.positions.expand(batch, -1, -1)
        self.step_index, self.encoded = 0, []
        if name.startswith("eval"):
            self.model.eval()
            if name == "eval_learned":
                self.model.position.interpolate = True  # the table must stretch to N

    def run(self) -> None:
        if self.name.startswith("eval"):
            with torch.no_grad():
                self.model(self.tokens[:, :-1])
            return
        self.step_index += 1
        extra = ()
        if self.objectives is not None:
            sample = self.objectives.sample((self.args.seq_len,), np.random.default_rng(self.step_index),
                                            np.random.default_rng([7, self.step_index]))
            extra = sample.positions
        out = self.model(self.tokens[:, :-1], positions=self.positions, targets=self.tokens[:, 1:],
                         extra_positions=extra)
        loss = out.loss
        if self.objectives is not None:
            loss = loss + self.objectives.weighted(self.objectives.losses(sample, out.position_signal.extra_embeddings))
            self.encoded.append(out.position_signal.unique_positions if self.name == "seqpe"
                                else sum(p[..., 0].numel() for p in (self.positions, *extra)))
        loss.backward()
        self.model.zero_grad(set_to_none=True)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure_memory(args, name: str) -> None:
    """Child process: growth of peak RSS over the variant's warm-up and one measured call."""
    variant = Variant(args, name)
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current RSS: imports and set-up don't count
    for _ in range(2):
        variant.run()
    print(json.dumps({"peak_bytes": max(0, _status_bytes("VmHWM") - before)}))


def memory_in_subprocess(args, name: str) -> int:
    command = [sys.executable, __file__, "--memory-of", name, *sys.argv[1:]]
    result = subprocess.run(command, env={**os.environ, **ALLOCATOR_ENV}, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def time_interleaved(variants: list[Variant], warmup: int, steps: int) -> dict[str, float]:
    times = {v.name: [] for v in variants}
    for index in range(warmup + steps):
        for variant in variants:
            start = time.perf_counter()
            variant.run()
            if index >= warmup:
                times[variant.name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backend", default="auto", choices=("auto", "sdpa", "eager", "flash"))
    parser.add_argument("--eval-len", type=int, default=8192, help="evaluation length; 0 skips the eval part")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pe_overhead.json")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        return measure_memory(args, args.memory_of)
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]:
        # Re-run under the fixed allocator settings so that the timing process matches the memory ones.
        os.execve(sys.executable, [sys.executable, __file__, *sys.argv[1:]], {**os.environ, **ALLOCATOR_ENV})

    names = list(TRAIN_VARIANTS) + (list(EVAL_VARIANTS) if args.eval_len else [])
    print(f"timing {', '.join(names)}: {args.warmup} warm-up + {args.steps} interleaved steps each", flush=True)
    train = [Variant(args, n) for n in TRAIN_VARIANTS]
    seconds = time_interleaved(train, args.warmup, args.steps)
    encoded = {v.name: statistics.mean(v.encoded) for v in train if v.encoded}
    del train
    if args.eval_len:
        seconds.update(time_interleaved([Variant(args, n) for n in EVAL_VARIANTS], 1, max(3, args.steps // 3)))
    print("measuring peak memory, one subprocess per variant", flush=True)
    peak = {name: memory_in_subprocess(args, name) for name in names}

    ratio = lambda table, a, b: table[a] / table[b] if table[b] else None
    result = {
        "benchmark": "pe_overhead",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "memory_of")},
        "step_seconds_median": seconds,
        "peak_memory_bytes": peak,
        "positions_encoded_per_step": encoded,
        "ratios": {
            "seqpe_over_learned_time": ratio(seconds, "seqpe", "learned"),
            "seqpe_naive_over_learned_time": ratio(seconds, "seqpe_naive", "learned"),
            "seqpe_naive_over_seqpe_time": ratio(seconds, "seqpe_naive", "seqpe"),
            "seqpe_over_learned_memory": ratio(peak, "seqpe", "learned"),
            "seqpe_naive_over_seqpe_memory": ratio(peak, "seqpe_naive", "seqpe"),
            "naive_over_unique_positions": ratio(encoded, "seqpe_naive", "seqpe"),
        },
    }
    if args.eval_len:
        result["ratios"].update({
            "eval_seqpe_over_learned_time": ratio(seconds, "eval_seqpe", "eval_learned"),
            "eval_seqpe_over_learned_memory": ratio(peak, "eval_seqpe", "eval_learned")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'variant':<14}{'median s':>10}{'peak MiB':>10}{'positions':>11}")
    for name in names:
        positions = f"{encoded[name]:.0f}" if name in encoded else "-"
        print(f"{name:<14}{seconds[name]:>10.3f}{peak[name] / 2**20:>10.1f}{positions:>11}")
    for key, value in result["ratios"].items():
        print(f"{key:<34}{value:.3f}" if value is not None else f"{key:<34}n/a")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
