"""The native export: the run's consolidated weights as `model.safetensors`, the config that wrote
them (`config.yaml`) and its SentencePiece model (`tokenizer.model`); `load_native` reads it back."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..config import load_config
from ..model import GPT, build_gpt
from .sources import ExportError

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
TOKENIZER = "tokenizer.model"
TIED = "tied"  # safetensors metadata: {dropped name: the name whose tensor it shares}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def unique_state(model: nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's tensors, each once (safetensors refuses shared storage: a tied LM head is dropped,
    it *is* the token embedding), floats cast to `dtype`: (state, {dropped name: name kept})."""
    state, tied, first = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        state[name] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    return state, tied


def write_native(folder: Path, model: nn.Module, config_file: Path, tokenizer_file: Path,
                 dtype: torch.dtype, metadata: dict[str, str]) -> int:
    """Write the native export into `folder`; the number of tensors written."""
    from safetensors.torch import save_file

    state, tied = unique_state(model, dtype)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt", TIED: json.dumps(tied), **metadata})
    shutil.copyfile(config_file, folder / CONFIG)
    shutil.copyfile(tokenizer_file, folder / TOKENIZER)
    return len(state)


def load_native(folder: Path, device: str | torch.device = "cpu") -> GPT:
    """The GPT of a native export (weights in the dtype they were written in), in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    with safe_open(str(folder / WEIGHTS), framework="pt") as handle:
        tied = json.loads((handle.metadata() or {}).get(TIED, "{}"))
    state = load_file(str(folder / WEIGHTS))
    model = build_gpt(load_config(folder / CONFIG))
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    model.to(dtypes.pop() if len(dtypes) == 1 else torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != set(tied):
        raise ExportError(f"{folder / WEIGHTS}: does not fit {folder / CONFIG} (missing {sorted(set(missing) - set(tied))}, "
                          f"unexpected {sorted(unexpected)})")
    return model.to(device).eval()
