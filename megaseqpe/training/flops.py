"""Model FLOPs per step and MFU, counting the SeqPE encoder's own work (PaLM / nanoGPT style)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

# Dense bf16/fp16 tensor-core peaks (FLOP/s) of accelerators we know; MFU is shown only for these.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


class FlopCounter:
    """6 x parameters per token (forward + backward) + attention's 12 x layers x width x length,
    and 6 x encoder parameters per token the SeqPE encoder processed in the step."""

    def __init__(self, model: nn.Module, n_layer: int, d_model: int, seq_len: int) -> None:
        encoder = {id(p): p.numel() for p in model.position.encoder_parameters()}
        # Tied weights count once; the token embedding is a lookup, but it is the tied LM head too.
        params = {id(p): p.numel() for p in model.parameters() if id(p) not in encoder}
        self.encoder_params = sum(encoder.values())
        self.per_token = 6 * sum(params.values()) + 12 * n_layer * d_model * seq_len

    def step_flops(self, tokens: int, encoder_tokens: int) -> float:
        return self.per_token * tokens + 6 * self.encoder_params * encoder_tokens
