"""The activation-checkpointing section of benchmarks/REPORT.md, from results/activation_memory.json."""
from __future__ import annotations

from _markdown import table

MiB = 2 ** 20


def activation_section(data: dict) -> list[str]:
    config = data["config"]
    out = ["## Activation checkpointing (model.activation_checkpointing)", "",
           f"One training forward + backward, GPT {config['layers']} layers x {config['width']}, batch "
           f"{config['batch']}, vocabulary {config['vocab']}. Memory: {config['memory']}. `selective`: "
           f"{config['selective']}. Times: median of {config['steps']} interleaved step(s), indicative on a "
           "shared CPU. Only the trunk's blocks are checkpointed: SeqPE's encoder activations (computed once, "
           "outside the blocks) stay whatever the mode.", ""]
    out += table(["position", "L", "mode", "peak MiB", "memory / none", "step (s)", "time / none"],
                 [[row["position"], row["seq_len"], mode, f"{row['peak_bytes'][mode] / MiB:.0f}",
                   f"{row['memory_ratio_to_none'][mode]:.2f}", f"{row['seconds_median'][mode]:.2f}",
                   f"{row['time_ratio_to_none'][mode]:.2f}"]
                  for row in data["rows"] for mode in row["peak_bytes"]]) + [""]
    longest = max(data["rows"], key=lambda row: (row["seq_len"], row["position"] == "seqpe"))
    saved = 1 - longest["memory_ratio_to_none"]["full"]
    out += [f"At L = {longest['seq_len']} ({longest['position']}), `full` keeps {saved:.0%} less activation memory "
            f"than `none` and `selective` {1 - longest['memory_ratio_to_none']['selective']:.0%} less.", ""]
    return out
