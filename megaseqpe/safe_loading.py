"""Nothing loaded from a run directory can execute code.

`torch.load` unpickles, and a pickle can call any function: a planted checkpoint file would run
code on resume or evaluation. DeepSpeed calls `torch.load(..., weights_only=False)` in its
checkpoint engine, ZeRO state loading, universal conversion and fp32 consolidation, so patching
our own calls is not enough. torch's `TORCH_FORCE_WEIGHTS_ONLY_LOAD` turns every `torch.load` in
the process (and in the subprocesses it starts) into the restricted unpickler, which builds
tensors and plain containers only, plus the few DeepSpeed classes its states hold (allow-listed
below: plain records with no behaviour on load). Our own per-rank state is JSON.
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .rundir import CheckpointError

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def deepspeed_safe_globals() -> list[type]:
    """The classes DeepSpeed pickles into its checkpoints (found by loading every file of ZeRO 0-3
    checkpoints in fp32 and bf16, fp16's loss scaler included): records and enums only."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def enforce_weights_only() -> None:
    """From now on every `torch.load` of this process and of its children is weights-only."""
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    torch.serialization.add_safe_globals(deepspeed_safe_globals())


def refusal(path: Path, error: Exception) -> str:
    """One line for a file the restricted unpickler refused or could not read."""
    text = str(error)
    if text.startswith("Weights only load failed"):
        called = re.search(r"GLOBAL (\S+)", text)
        why = f"loading it would call {called.group(1)}" if called else "it is not a plain tensor file"
        return (f"checkpoint file {path}: refused: {why} (a checkpoint holds tensors and plain data "
                "only; this file was altered or was not written by megaseqpe)")
    first = (text.strip().splitlines() or [""])[0]
    return f"checkpoint file {path}: unreadable: {type(error).__name__}: {first}"


def load(path: Path, map_location: Any = "cpu") -> Any:
    """`torch.load` with the restricted unpickler, whatever the environment says."""
    torch.serialization.add_safe_globals(deepspeed_safe_globals())
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(refusal(path, error)) from None


def verify_files(directory: Path) -> None:
    """Unpickle the object tree of every torch file under `directory` with the restricted
    unpickler before anything else opens them, so that a refusal names its file. Zip-format
    files are memory-mapped: the tensors' bytes are not read here."""
    torch.serialization.add_safe_globals(deepspeed_safe_globals())
    for path in sorted(directory.rglob("*")):
        if not path.is_file() or path.suffix not in (".pt", ".pth", ".bin"):
            continue
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as error:
            raise CheckpointError(refusal(path, error)) from None
