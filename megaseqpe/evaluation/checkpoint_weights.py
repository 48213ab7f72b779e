"""Full fp32 model weights from a run's DeepSpeed checkpoint, in one process, without an engine."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..training.checkpoint import COMPLETE, CheckpointError


def resolve_tag(checkpoints: Path, tag: Optional[str]) -> str:
    """`tag`, or the run's `latest`; it must be a complete checkpoint."""
    if tag is None:
        latest = checkpoints / "latest"
        if not latest.exists():
            raise CheckpointError(f"no checkpoint in {checkpoints} (no 'latest' file): train first")
        tag = latest.read_text().strip()
    if not (checkpoints / tag / COMPLETE).exists():
        raise CheckpointError(f"checkpoint {checkpoints / tag} is missing or incomplete")
    return tag


def load_weights(checkpoints: Path, tag: str) -> tuple[dict[str, torch.Tensor], int]:
    """(state dict, global step). ZeRO 1-3 are consolidated from the optimizer's fp32 partitions;
    ZeRO-0 keeps whole weights in the model-states file."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    step = json.loads((checkpoints / tag / "trainer.json").read_text())["step"]
    try:
        if any((checkpoints / tag).glob("*zero_pp_rank_*optim_states.pt")):
            state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=tag)
        else:
            state = torch.load(checkpoints / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                               weights_only=False)["module"]
    except Exception as error:
        raise CheckpointError(f"checkpoint {checkpoints / tag}: weights unreadable: "
                              f"{type(error).__name__}: {error}".splitlines()[0]) from error
    return {k: v.float() for k, v in state.items()}, step
