"""The baselines (docs/method.md), behind the same interface as SeqPE.

Learned absolute (a GPT-2 table; for images a 2-D grid table), sinusoidal, RoPE, ALiBi and NoPE. Sinusoidal and RoPE take
n-D positions by giving each dimension its own share of the channels (axial).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from .base import AttentionExtras, PositionEncoding, PositionSignal


class NoPE(PositionEncoding):
    """No position signal: the causal mask alone tells the model about order."""


class LearnedAbsolute(PositionEncoding):
    """A learned table of `max_seq_len` vectors added to the token embeddings.

    A table cannot extend past its rows. After `enable_extrapolation()` (evaluation) a longer
    sequence stretches it linearly instead, to the sequence's length or to the `length` announced
    there (generation), whichever is larger; before, a longer sequence is an error.
    """

    def __init__(self, max_seq_len: int, d_model: int, n_dims: int = 1) -> None:
        super().__init__(n_dims)
        if n_dims != 1:
            raise ConfigError("position.n_dims: the learned table here is 1-D")
        self.table = nn.Embedding(max_seq_len, d_model)
        nn.init.normal_(self.table.weight, std=0.02)
        self.interpolate, self.stretch_to = False, 0

    def enable_extrapolation(self, length: Optional[int] = None) -> str:
        self.interpolate, self.stretch_to = True, length or 0
        return "interpolate"

    def signal(self, positions: torch.Tensor) -> PositionSignal:
        rows = self.table.num_embeddings
        needed = max(int(positions.max()) + 1, self.stretch_to)
        weight = self.table.weight
        if needed > rows:
            if not self.interpolate:
                raise ValueError(f"position {needed - 1} is beyond the learned table of {rows} positions "
                                 f"(model.max_seq_len={rows}); longer sequences need interpolation")
            # As the reference: linear with align_corners=False, i.e. the table's rows are cell centres
            # and position p of a length-`needed` sequence reads row (p + 0.5) * rows / needed - 0.5.
            weight = F.interpolate(weight.t()[None], size=needed, mode="linear", align_corners=False)[0].t()
        return PositionSignal(input_embedding=F.embedding(positions[..., 0], weight))


class LearnedGrid2D(PositionEncoding):
    """A learned `grid x grid` table of patch position vectors (ViT), added to the patch embeddings.

    A larger grid (higher resolution) is reached as timm does: the table, seen as a
    `d_model`-channel image, is resized bicubically to the grid the positions need. Like the
    1-D table this happens only after `enable_extrapolation()` (evaluation); before, a position
    outside the table is an error.
    """

    def __init__(self, grid: int, d_model: int) -> None:
        super().__init__(n_dims=2)
        self.grid = grid
        # An Embedding (row-major cells), so the optimizer treats it like every position table: no decay.
        self.table = nn.Embedding(grid * grid, d_model)
        nn.init.normal_(self.table.weight, std=0.02)
        self.interpolate = False

    def enable_extrapolation(self, length: Optional[int] = None) -> str:
        self.interpolate = True  # `length` counts 1-D tokens: a grid's size comes from its positions
        return "interpolate"

    def signal(self, positions: torch.Tensor) -> PositionSignal:
        rows, cols = (int(n) + 1 for n in positions.reshape(-1, 2).amax(0))
        grid = self.grid
        table = self.table.weight.view(grid, grid, -1)
        if rows > grid or cols > grid:
            if not self.interpolate:
                raise ValueError(f"patch position ({rows - 1}, {cols - 1}) is beyond the learned "
                                 f"{grid}x{grid} table; larger grids need interpolation")
            # timm's resample_abs_pos_embed: bicubic over the table as a [1, d, grid, grid] image.
            table = F.interpolate(table.permute(2, 0, 1)[None], size=(max(rows, grid), max(cols, grid)),
                                  mode="bicubic", align_corners=False, antialias=True)[0].permute(1, 2, 0)
        return PositionSignal(input_embedding=table[positions[..., 0], positions[..., 1]])


def _inverse_frequencies(channels: int, base: float, device: torch.device) -> torch.Tensor:
    """The `channels // 2` frequencies 1 / base^(2i / channels) of sinusoidal and rotary codes."""
    return base ** (-torch.arange(0, channels, 2, device=device, dtype=torch.float32) / channels)


def _axial_angles(positions: torch.Tensor, channels_per_dim: int, base: float) -> torch.Tensor:
    """Angles `[..., n_dims * channels_per_dim // 2]`: each dimension uses its own channels."""
    frequencies = _inverse_frequencies(channels_per_dim, base, positions.device)
    return (positions.float().unsqueeze(-1) * frequencies).flatten(-2)


class Sinusoidal(PositionEncoding):
    """Fixed sin/cos codes added to the input (Vaswani et al.); defined for any position.

    The codes are scaled to an RMS of `rms` (default: the 0.02 std of the token embeddings and
    of a learned table at init). Unscaled, their RMS of 0.71 drowns GPT-2 style token
    embeddings and the model learns far slower.
    """

    def __init__(self, d_model: int, n_dims: int = 1, base: float = 10000.0, rms: float = 0.02) -> None:
        super().__init__(n_dims)
        if d_model % (2 * n_dims):
            raise ConfigError(f"model.d_model={d_model} must be divisible by {2 * n_dims} for sinusoidal codes")
        self.channels_per_dim, self.base = d_model // n_dims, base
        self.amplitude = rms * math.sqrt(2.0)  # sin and cos have an RMS of 1/sqrt(2)

    def signal(self, positions: torch.Tensor) -> PositionSignal:
        angles = _axial_angles(positions, self.channels_per_dim, self.base)
        return PositionSignal(input_embedding=self.amplitude * torch.cat([angles.sin(), angles.cos()], dim=-1))


class Rotary(PositionEncoding):
    """RoPE (Su et al.): q and k rotated by position-dependent angles, so q.k sees only i - j."""

    def __init__(self, head_dim: int, n_dims: int = 1, base: float = 10000.0) -> None:
        super().__init__(n_dims)
        if head_dim % (2 * n_dims):
            raise ConfigError(f"RoPE needs head_dim={head_dim} divisible by {2 * n_dims}")
        self.channels_per_dim, self.base = head_dim // n_dims, base

    def signal(self, positions: torch.Tensor) -> PositionSignal:
        angles = _axial_angles(positions, self.channels_per_dim, self.base)
        return PositionSignal(layers=[AttentionExtras(rotary=(angles.cos(), angles.sin()))])


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Press et al.'s head slopes: a geometric sequence, interleaved when heads are not 2^k."""
    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_two(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    extra = power_of_two(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(power_of_two(closest) + extra)


class ALiBi(PositionEncoding):
    """A per-head linear penalty on query-key distance; fused kernels take the slopes directly."""

    def __init__(self, n_head: int, n_dims: int = 1) -> None:
        super().__init__(n_dims)
        if n_dims != 1:
            raise ConfigError("position.n_dims: ALiBi is defined for 1-D sequences")
        self.register_buffer("slopes", alibi_slopes(n_head), persistent=False)

    def signal(self, positions: torch.Tensor) -> PositionSignal:
        return PositionSignal(layers=[AttentionExtras(alibi_slopes=self.slopes)])
