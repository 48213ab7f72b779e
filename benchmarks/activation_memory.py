"""Memory saved by activation checkpointing at long context: one training forward + backward of a small
GPT at L = 2048 and 4096, with model.activation_checkpointing none, full and selective, for learned APE
and SeqPE (attn_scalar).

Memory: the peak of the step's live tensors above the parameters and gradients (activations and
temporaries), in the second step (the first allocates the gradients): on CPU from torch's own
MemTracker (torch.distributed._tools.mem_tracker, which follows every tensor's storage; the CPU
allocator keeps no statistics, and peak RSS would mostly show glibc's heap), on CUDA from
torch.cuda.max_memory_allocated. Time: the three modes of one (position, L) interleaved step by step, median of
--steps after the memory runs (indicative on a shared CPU; memory is what this benchmark is for).
The vocabulary is kept small (1000) so that the logits, which no mode checkpoints, do not hide the
trunk's activations; the step is the language-model loss alone (no SeqPE objectives), the same for
every mode. Writes benchmarks/results/activation_memory.json.

    python benchmarks/activation_memory.py                     # 4 x 256, batch 1, L 2048 and 4096
    python benchmarks/activation_memory.py --lengths 1024 --steps 1
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ensure_allocator_env, tensor_peak_bytes, time_interleaved, write_result  # noqa: E402

from megaseqpe.config import ACTIVATION_CHECKPOINTING, Config, ModelConfig, PositionConfig  # noqa: E402
from megaseqpe.model import build_gpt  # noqa: E402
from megaseqpe.model.checkpointing import prepare_trunk  # noqa: E402

POSITIONS = ("learned", "seqpe")


def training_step(position: str, length: int, mode: str, args: argparse.Namespace, device: torch.device):
    """A callable running one forward + backward of the GPT for (position, length, mode)."""
    torch.manual_seed(0)
    model_config = ModelConfig(n_layer=args.layers, n_head=args.heads, d_model=args.width, vocab_size=args.vocab,
                               max_seq_len=length)
    model = build_gpt(Config(model=model_config, position=PositionConfig(type=position, use="attn_scalar")))
    model = prepare_trunk(model, mode, compile=False).to(device)
    tokens = torch.randint(0, args.vocab, (args.batch, length + 1), generator=torch.Generator().manual_seed(1))
    tokens = tokens.to(device)

    def run() -> None:
        model.zero_grad(set_to_none=False)  # the gradients' memory is allocated once, before the peak
        model(tokens[:, :-1], targets=tokens[:, 1:]).loss.backward()
    return run


def peak_bytes(run, device: torch.device) -> int:
    """Peak bytes of live tensors during `run()` above those alive before it (parameters, gradients)."""
    run()  # gradients allocated
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run()
        return torch.cuda.max_memory_allocated() - before
    return tensor_peak_bytes(run)


def measure(position: str, length: int, args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs = {mode: training_step(position, length, mode, args, device) for mode in ACTIVATION_CHECKPOINTING}
    # The memory runs come first: they warm every mode up, so the timing needs no warmup of its own.
    peaks = {mode: peak_bytes(run, device) for mode, run in runs.items()}
    seconds = time_interleaved(runs, warmup=0, steps=args.steps)
    row = {"position": position, "seq_len": length, "peak_bytes": peaks, "seconds_median": seconds,
           "memory_ratio_to_none": {m: peaks[m] / peaks["none"] for m in peaks},
           "time_ratio_to_none": {m: seconds[m] / seconds["none"] for m in seconds}}
    print(f"{position} L={length}: " + ", ".join(f"{m} {peaks[m] / 2 ** 20:.0f} MiB {seconds[m]:.2f} s" for m in peaks),
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2048,4096")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    ensure_allocator_env()
    rows = [measure(position, int(length), args) for position in POSITIONS for length in args.lengths.split(",")]
    config = {"layers": args.layers, "width": args.width, "heads": args.heads, "batch": args.batch,
              "vocab": args.vocab, "steps": args.steps,
              "memory": "peak live tensors above parameters and gradients: "
                        + ("cuda max_memory_allocated" if torch.cuda.is_available() else "torch MemTracker"),
              "selective": "saves matmul and attention-kernel outputs, recomputes the rest (torch SAC)"}
    write_result("activation_memory", {"config": config, "rows": rows})


if __name__ == "__main__":
    main()
