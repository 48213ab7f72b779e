"""Perplexity against evaluation length: does a model trained at L keep working at 2L ... 16L?

Batch 1, non-overlapping windows of N tokens (+1 target) from the validation shards, at most
`max_tokens` tokens per length. SeqPE, sinusoidal, RoPE, ALiBi and NoPE extend to the new
length; a learned table cannot, so it is stretched by linear interpolation and the report says
so (`method`). Writes RUN/eval/extrapolation.{json,md,png} and `eval/ppl_len_<N>` scalars.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ..config import Config, load_config
from ..data import eval_batches
from ..model import GPT, build_gpt
from .checkpoint_weights import load_weights, resolve_tag


def default_lengths(train_length: int) -> list[int]:
    return [train_length * k for k in (1, 2, 4, 8, 16)]


def perplexity(model: GPT, manifest: str, split: str, length: int, max_tokens: int,
               device: torch.device, on_corrupt: str = "error") -> tuple[Optional[float], int]:
    """(perplexity, tokens scored) over windows of `length`; (None, 0) if no full window exists."""
    nll, tokens = 0.0, 0
    windows = max(1, max_tokens // length)
    with torch.no_grad(), tqdm(total=windows, desc=f"len {length}", unit="window", leave=False) as bar:
        for batch in eval_batches(manifest, split, max_seq_len=length, batch_size=1, on_corrupt=on_corrupt):
            batch = batch.to(device)
            out = model(batch[:, :-1], targets=batch[:, 1:])
            nll += out.loss.item() * length
            tokens += length
            bar.update(1)
            if tokens >= max_tokens:
                break
    return (math.exp(nll / tokens), tokens) if tokens else (None, 0)


def evaluate_run(run_dir: Path, *, tag: Optional[str] = None, lengths: Optional[Sequence[int]] = None,
                 manifest: Optional[str] = None, split: Optional[str] = None, max_tokens: int = 32768,
                 device: Optional[torch.device] = None) -> dict:
    config: Config = load_config(run_dir / "config.yaml")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoints = run_dir / "checkpoints"
    tag = resolve_tag(checkpoints, tag)
    state, step = load_weights(checkpoints, tag)
    model = build_gpt(config)
    model.load_state_dict(state)
    model.to(device).eval()
    method = model.position.extrapolation
    if method == "interpolate":
        model.position.interpolate = True
    train_length = config.model.max_seq_len
    lengths = list(lengths or default_lengths(train_length))
    manifest = manifest or config.data.manifest
    split = split or config.data.val_split
    result = {"position_type": config.position.type, "train_length": train_length, "checkpoint": tag,
              "step": step, "ppl": {}, "tokens": {}, "method": {}}
    for length in lengths:
        ppl, tokens = perplexity(model, manifest, split, length, max_tokens, device, config.data.on_corrupt)
        result["ppl"][str(length)] = ppl
        result["tokens"][str(length)] = tokens
        result["method"][str(length)] = "extend" if length <= train_length else method
    write_report(run_dir, result)
    return result


def write_report(run_dir: Path, result: dict) -> None:
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "extrapolation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "extrapolation.md").write_text(markdown_table(result))
    plot(result, out / "extrapolation.png")
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for length, ppl in result["ppl"].items():
            if ppl is not None:
                writer.add_scalar(f"eval/ppl_len_{length}", ppl, result["step"])


def markdown_table(result: dict) -> str:
    train = result["train_length"]
    lines = [f"# Extrapolation: {result['position_type']} trained at L = {train} ({result['checkpoint']})", "",
             "| length | x L | perplexity | tokens | method |", "|---:|---:|---:|---:|---|"]
    for length, ppl in result["ppl"].items():
        shown = f"{ppl:.2f}" if ppl is not None else "n/a (too little validation text)"
        lines.append(f"| {length} | {int(length) / train:g} | {shown} | {result['tokens'][length]} | "
                     f"{result['method'][length]} |")
    if "interpolate" in result["method"].values():
        lines += ["", "The learned table cannot extend: beyond L it is linearly interpolated to the length."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(int(n), p) for n, p in result["ppl"].items() if p is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot(*zip(*points), marker="o", label=result["position_type"])
    ax.axvline(result["train_length"], color="grey", linestyle=":", label="training length")
    ax.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="perplexity",
           title="Perplexity vs evaluation length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
