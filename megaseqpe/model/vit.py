"""A Vision Transformer that takes any 2-D position module (SeqPE over (row, col), a learned grid
table, sinusoidal, axial RoPE or none).

Images are cut into `patch_size` squares, each linearly embedded (a strided convolution, as in
ViT); a CLS token is prepended and the classification head reads its final state. The position
module gets the (row, col) coordinate of every patch, so a larger image simply means a larger
grid of coordinates: that is what resolution extrapolation tests. The CLS token has no grid
coordinate: it gets its own learned position vector (as in the reference), handed to the position
module as a prefix; the returned signal covers CLS + patches, whether the scheme adds the vector
to the input or puts it through its attention projections. Like the GPT, the model never asks
which position scheme it has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..positions.base import PositionEncoding, PositionSignal, grid_positions
from .attention import with_score_bias
from .gpt import Block, init_trunk, make_norm


@dataclass
class ViTOutput:
    logits: torch.Tensor  # [B, num_classes]
    loss: Optional[torch.Tensor]  # mean cross-entropy, when labels were given
    position_signal: PositionSignal  # the position scheme's auxiliary losses and statistics


class ViT(nn.Module):
    def __init__(self, config: ModelConfig, position: PositionEncoding) -> None:
        super().__init__()
        self.config = config
        self.patch_size = config.patch_size
        self.patch_embedding = nn.Conv2d(config.channels, config.d_model, kernel_size=config.patch_size,
                                         stride=config.patch_size, bias=config.bias)
        self.cls_token = nn.Parameter(torch.zeros(config.d_model))
        self.cls_position = nn.Parameter(torch.zeros(config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=False) for _ in range(config.n_layer))
        self.final_norm = make_norm(config)
        self.head = nn.Linear(config.d_model, config.num_classes, bias=config.bias)
        init_trunk(self, self.blocks)
        # The convolution keeps PyTorch's default (fan-in) initialisation, as in timm: patch
        # embeddings of O(0.1-1) let the CLS token's attention see the image from the first step,
        # where GPT-2's 0.02 would leave it reading mostly itself for hundreds of steps.
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.cls_position, std=0.02)
        self.position = position

    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of patches of `images` `[B, C, H, W]`; H and W must be multiples of the patch."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        return height // self.patch_size, width // self.patch_size

    def forward(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                positions: Optional[torch.Tensor] = None,
                objectives: Optional[Any] = None) -> ViTOutput:
        """images `[B, C, H, W]`; positions `[B|1, patches, 2]` (default: the patch grid from (0, 0));
        labels `[B]`. `objectives` (a step plan's sample) go to the position module with `positions`."""
        if images.dim() != 4 or images.shape[1] != self.config.channels:
            raise ValueError(f"images must be [batch, {self.config.channels}, height, width], "
                             f"got {tuple(images.shape)}")
        rows, cols = self.grid(images)
        if positions is None:
            positions = grid_positions(rows, cols, images.device)
        # The signal covers the CLS slot (its position vector as a one-row prefix) and the patches.
        signal = self.position(positions, objectives, prefix=self.cls_position.view(1, 1, -1))
        # Pixels in [0, 1] centred to [-1, 1]: a blank patch then embeds to a signal, not to the bias.
        x = self.patch_embedding(images * 2.0 - 1.0).flatten(2).transpose(1, 2)  # [B, patches, d]
        x = torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        if signal.input_embedding is not None:
            x = x + signal.input_embedding.to(x.dtype)
        x = self.dropout(x)
        # flex (and sdpa on CPU): SeqPE's bias once, not per layer
        attending = with_score_bias(signal, self.config.attention_backend,
                                    dropout_p=self.config.attention_dropout if self.training else 0.0)
        for index, block in enumerate(self.blocks):
            x = block(x, attending.for_layer(index))
        logits = self.head(self.final_norm(x[:, 0]))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return ViTOutput(logits=logits, loss=loss, position_signal=signal)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
