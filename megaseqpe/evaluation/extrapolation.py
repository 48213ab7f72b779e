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

from ..config import Config, load_config
from ..model.attention import check_backend
from ..rundir import RunDir
from ..safe_loading import enforce_weights_only
from ..tasks import ExtrapolationRequest, build_task
from ..tasks.language import default_lengths
from .checkpoint_weights import load_weights
from .report import markdown_table, write_report

__all__ = ["default_lengths", "evaluate_run", "markdown_table"]


def evaluate_run(run_dir: Path, *, tag: Optional[str] = None, lengths: Optional[Sequence[int]] = None,
                 manifest: Optional[str] = None, split: Optional[str] = None, max_tokens: int = 32768,
                 device: Optional[torch.device] = None, resolutions: Optional[Sequence[int]] = None,
                 max_images: Optional[int] = None, out: Optional[Path] = None) -> dict:
    """Score the run's checkpoint `tag` (default: latest) and write the report (to RUN/eval, or to
    `out`). Text runs use `lengths` / `max_tokens`; image runs `resolutions` (image sides in pixels) /
    `max_images`. Data other than the run's (`manifest`) must have been made with the run's tokenizer."""
    enforce_weights_only()  # before anything (ours or DeepSpeed's) loads a checkpoint file
    run = RunDir(run_dir)
    tag = run.resolve_tag(tag)
    config: Config = load_config(run.config_for(tag))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_backend(config.model.attention_backend, cuda=device.type == "cuda", half_precision=False)
    state, step = load_weights(run, tag)
    task = build_task(config)
    task.check_data(manifest)
    model = task.build_model()
    model.load_state_dict(state)
    model.to(device).eval()
    request = ExtrapolationRequest(manifest=manifest or config.data.manifest, split=split or config.data.val_split,
                                   device=device, lengths=lengths and list(lengths), max_tokens=max_tokens,
                                   resolutions=resolutions and list(resolutions), max_images=max_images)
    result = {"position_type": config.position.type, "checkpoint": tag, "step": step}
    result |= task.extrapolation(model, request)
    write_report(run, result, out)
    return result
