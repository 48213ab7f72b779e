"""Model FLOPs per step and MFU, counting the SeqPE encoder's own work (PaLM / nanoGPT style)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class Peak:
    """One accelerator's dense peaks (FLOP/s, without 2:4 sparsity, which datasheets headline)."""

    label: str
    bf16: float  # bf16 and fp16 tensor cores
    tf32: float  # fp32 matmuls on tensor cores (torch.backends.cuda.matmul.allow_tf32)
    fp32: float  # fp32 without tensor cores: PyTorch's default for fp32 matmuls
    source: str


# Keyed by a substring of torch.cuda.get_device_name, tried in order: variants before the family name
# (a PCIe H100 matched as "H100" would claim the SXM part's peak). MFU is reported only for these.
PEAK_FLOPS = {
    "H100 PCIe": Peak("H100 PCIe", 756e12, 378e12, 51e12, "NVIDIA H100 datasheet"),
    "H100 NVL": Peak("H100 NVL", 835e12, 418e12, 60e12, "NVIDIA H100 datasheet"),
    "H100": Peak("H100 SXM", 989e12, 495e12, 67e12, "NVIDIA H100 datasheet"),
    "H200 NVL": Peak("H200 NVL", 835e12, 418e12, 60e12, "NVIDIA H200 datasheet"),
    "H200": Peak("H200 SXM", 989e12, 495e12, 67e12, "NVIDIA H200 datasheet"),
    "A100": Peak("A100", 312e12, 156e12, 19.5e12, "NVIDIA A100 datasheet"),
    "L40S": Peak("L40S", 362e12, 183e12, 91.6e12, "NVIDIA L40S datasheet"),
    # NVIDIA publishes no A10G sheet; AWS's A10 variant is taken at the A10's figures.
    "A10G": Peak("A10G", 125e12, 62.5e12, 31.2e12, "NVIDIA A10 datasheet"),
}


def select_peak(device_name: Optional[str], precision: str) -> tuple[Optional[float], str]:
    """The dense peak FLOP/s of the device called `device_name` (None: not a CUDA device) in
    `precision` (bf16 | fp16 | tf32 | fp32), and one line saying where it came from."""
    entry = next((peak for key, peak in PEAK_FLOPS.items() if device_name and key in device_name), None)
    if entry is None:
        return None, f"MFU: no peak known for {device_name or 'cpu'}; not reported"
    flops = {"bf16": entry.bf16, "fp16": entry.bf16, "tf32": entry.tf32, "fp32": entry.fp32}[precision]
    return flops, f"MFU peak: {flops / 1e12:g} TFLOP/s ({entry.label} {precision} dense, {entry.source})"


def _device_peak(device: torch.device, precision: str) -> tuple[Optional[float], str]:
    # An fp32 run's matmuls use tensor cores only where TF32 is switched on.
    if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"
    return select_peak(torch.cuda.get_device_name(device) if device.type == "cuda" else None, precision)


def peak_flops(device: torch.device, precision: str = "bf16") -> Optional[float]:
    """Dense peak FLOP/s of `device` for a run in `precision` (train.precision), None where unknown."""
    return _device_peak(device, precision)[0]


def peak_source(device: torch.device, precision: str = "bf16") -> str:
    """The line to log once at start: the peak MFU is measured against and its source."""
    return _device_peak(device, precision)[1]


def full_numel(parameter: nn.Parameter) -> int:
    """The parameter's elements, also once ZeRO-3 has partitioned it (`ds_numel`: the full size;
    its `numel()` is then 0 on every rank)."""
    return getattr(parameter, "ds_numel", parameter.numel())


class FlopCounter:
    """6 x parameters per token (forward + backward) + attention's 12 x layers x width x length,
    and 6 x encoder parameters per token the SeqPE encoder processed in the step.

    Every model shape is covered: SwiGLU's three matrices and grouped-query attention's smaller
    k/v projection are in the parameter count, and the attention term is unchanged by GQA, whose
    QK^T and AV products still run over n_head query heads of head_dim (n_head x head_dim = width;
    tests/test_model_shapes.py checks it against torch's FLOP counter)."""

    def __init__(self, model: nn.Module, n_layer: int, d_model: int, seq_len: int) -> None:
        encoder = {id(p): full_numel(p) for p in model.position.encoder_parameters()}
        # Tied weights count once; the token embedding is a lookup, but it is the tied LM head too.
        params = {id(p): full_numel(p) for p in model.parameters() if id(p) not in encoder}
        self.encoder_params = sum(encoder.values())
        self.per_token = 6 * sum(params.values()) + 12 * n_layer * d_model * seq_len

    def step_flops(self, tokens: int, encoder_tokens: int) -> float:
        return self.per_token * tokens + 6 * self.encoder_params * encoder_tokens
