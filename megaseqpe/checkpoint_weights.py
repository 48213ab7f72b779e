"""Full fp32 model weights from a run's DeepSpeed checkpoint, in one process, without an engine:
whatever ZeRO stage and number of processes wrote it (evaluation, generation, `train.init_from`)."""
from __future__ import annotations

import json

import torch

from . import safe_loading
from .rundir import CheckpointError, RunDir


def load_weights(run: RunDir, tag: str) -> tuple[dict[str, torch.Tensor], int]:
    """(state dict, global step) of the complete tag `tag`. ZeRO 1-3 are consolidated from the
    optimizer's fp32 partitions; ZeRO-0 keeps whole weights in the model-states file. Every file
    is checked by the restricted unpickler first, and DeepSpeed's consolidation runs under
    `safe_loading.enforce_weights_only`."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag_dir = run.tag_dir(tag)
    step = json.loads((tag_dir / "trainer.json").read_text())["step"]
    safe_loading.enforce_weights_only()
    safe_loading.verify_files(tag_dir)
    if not any(tag_dir.glob("*zero_pp_rank_*optim_states.pt")):
        state = safe_loading.load(tag_dir / "mp_rank_00_model_states.pt")["module"]
        return {k: v.float() for k, v in state.items()}, step
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(run.checkpoints), tag=tag)
    except Exception as error:
        raise CheckpointError(f"checkpoint {tag_dir}: weights unreadable: "
                              f"{type(error).__name__}: {error}".splitlines()[0]) from error
    return {k: v.float() for k, v in state.items()}, step
