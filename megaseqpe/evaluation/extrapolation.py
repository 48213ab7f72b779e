"""Extrapolation: does a model trained at L (or on one image grid) keep working beyond it?

The run's task scores the checkpoint at each size (text: perplexity at L, 2L ... 16L on batch-1,
non-overlapping validation windows; images: top-1 accuracy at 1x-3x the training resolution
under the resize / pad / pad_moved protocols). Schemes defined beyond training extend; a learned
table is interpolated and the report says so (`method`). Writes RUN/eval/extrapolation.{json,md,png}
and `eval/ppl_len_<N>` / `eval/acc_<protocol>_res_<N>` scalars.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..rundir import RunDir
from ..tasks import ExtrapolationRequest
from ..tasks.language import default_lengths
from .report import markdown_table, write_report
from .trained import load_trained

__all__ = ["default_lengths", "evaluate_run", "markdown_table"]


def evaluate_run(run_dir: Path, *, tag: Optional[str] = None, lengths: Optional[Sequence[int]] = None,
                 manifest: Optional[str] = None, split: Optional[str] = None, max_tokens: int = 32768,
                 device: Optional[torch.device] = None, resolutions: Optional[Sequence[int]] = None,
                 max_images: Optional[int] = None, out: Optional[Path] = None) -> dict:
    """Score the run's checkpoint `tag` (default: latest) and write the report (to RUN/eval, or to
    `out`). Text runs use `lengths` / `max_tokens`; image runs `resolutions` (image sides in pixels) /
    `max_images`. Data other than the run's (`manifest`) must have been made with the run's tokenizer."""
    trained = load_trained(run_dir, tag, device, manifest)
    config = trained.config
    request = ExtrapolationRequest(manifest=manifest or config.data.primary_manifest, split=split or config.data.val_split,
                                   device=trained.device, lengths=lengths and list(lengths), max_tokens=max_tokens,
                                   resolutions=resolutions and list(resolutions), max_images=max_images)
    result = {"position_type": config.position.type, "checkpoint": trained.tag, "step": trained.step}
    result |= trained.task.extrapolation(trained.model, request)
    write_report(RunDir(run_dir), result, out)
    return result
