"""Perplexity against evaluation length: does a model trained at L keep working at 2L ... 16L?

Batch 1, non-overlapping windows of N tokens (+1 target) from the validation shards, at most
`max_tokens` tokens per length. SeqPE, sinusoidal, RoPE, ALiBi and NoPE extend to the new
length; a learned table cannot, so it is stretched by linear interpolation and the report says
so (`method`). Writes RUN/eval/extrapolation.{json,md,png} and `eval/ppl_len_<N>` scalars.
Image runs (`task: image_classification`) are scored by accuracy against resolution instead
(:mod:`megaseqpe.evaluation.resolution`), in the same report layout.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm import tqdm

from ..config import Config, load_config
from ..data import eval_batches
from ..model import GPT, build_gpt, build_vit
from .checkpoint_weights import load_weights, resolve_tag
from .report import markdown_table, write_report
from .resolution import evaluate_images


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
                 device: Optional[torch.device] = None, resolutions: Optional[Sequence[int]] = None,
                 max_images: Optional[int] = None) -> dict:
    """Score the run's checkpoint `tag` (default: latest) and write the report. Text runs use
    `lengths` / `max_tokens`; image runs `resolutions` (image sides in pixels) / `max_images`."""
    config: Config = load_config(run_dir / "config.yaml")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoints = run_dir / "checkpoints"
    tag = resolve_tag(checkpoints, tag)
    state, step = load_weights(checkpoints, tag)
    images = config.task == "image_classification"
    model = build_vit(config) if images else build_gpt(config)
    model.load_state_dict(state)
    model.to(device).eval()
    method = model.position.extrapolation
    if method == "interpolate":
        model.position.interpolate = True
    manifest = manifest or config.data.manifest
    split = split or config.data.val_split
    header = {"position_type": config.position.type, "checkpoint": tag, "step": step}
    if images:
        result = header | evaluate_images(model, config, resolutions=resolutions and list(resolutions),
                                          manifest=manifest, split=split, max_images=max_images, device=device)
        write_report(run_dir, result)
        return result
    train_length = config.model.max_seq_len
    lengths = list(lengths or default_lengths(train_length))
    result = {"position_type": config.position.type, "train_length": train_length, "checkpoint": tag,
              "step": step, "ppl": {}, "tokens": {}, "method": {}}
    for length in lengths:
        ppl, tokens = perplexity(model, manifest, split, length, max_tokens, device, config.data.on_corrupt)
        result["ppl"][str(length)] = ppl
        result["tokens"][str(length)] = tokens
        result["method"][str(length)] = "extend" if length <= train_length else method
    write_report(run_dir, result)
    return result
