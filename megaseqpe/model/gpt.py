"""A GPT-2 style decoder that takes any position module.

The model never asks which position scheme it has: it adds `signal.input_embedding` when there
is one and hands each layer's `AttentionExtras` to the attention call. Parallelism (DeepSpeed
ZeRO) is applied from outside, by the trainer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..positions.base import AttentionExtras, PositionEncoding, PositionSignal, default_positions
from .attention import attention
from .kv_cache import KVCache, LayerCache


class SelfAttention(nn.Module):
    """Multi-head self-attention: causal for the decoder, bidirectional for the ViT."""

    def __init__(self, config: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.n_head, self.backend, self.causal = config.n_head, config.attention_backend, causal
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.out = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, extras: AttentionExtras, cache: Optional[LayerCache] = None,
                documents: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_head, -1).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, causal=self.causal, backend=self.backend, cache=cache, documents=documents,
                      dropout_p=self.attention_dropout if self.training else 0.0, **extras.as_kwargs())
        return self.residual_dropout(self.out(y.transpose(1, 2).reshape(batch, length, width)))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.down = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-LN Transformer block (causal attention unless `causal=False`)."""

    def __init__(self, config: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attention = SelfAttention(config, causal)
        self.norm_mlp = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, extras: AttentionExtras, cache: Optional[LayerCache] = None,
                documents: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x), extras, cache, documents)
        return x + self.mlp(self.norm_mlp(x))


def init_trunk(model: nn.Module, blocks: Sequence[Block]) -> None:
    """GPT-2's initialisation of a trunk (shared by the GPT and the ViT): normal(0, 0.02) weights,
    zero biases, and residual projections scaled down with depth so the residual stream stays O(1).
    Call it before attaching the position module, which keeps its own initialisation."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for block in blocks:
        for projection in (block.attention.out, block.mlp.down):
            nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * len(blocks)))


@dataclass
class GPTOutput:
    logits: torch.Tensor  # [B, N, vocab]
    loss: Optional[torch.Tensor]  # mean next-token cross-entropy, when targets were given
    position_signal: PositionSignal  # the position scheme's auxiliary losses and statistics


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, position: PositionEncoding) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = nn.LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight
        init_trunk(self, self.blocks)
        # Attached after the trunk's init: the position module keeps its own initialisation.
        self.position = position

    def forward(self, tokens: torch.Tensor, positions: Optional[torch.Tensor] = None,
                targets: Optional[torch.Tensor] = None, objectives: Optional[Any] = None,
                cache: Optional[KVCache] = None, documents: Optional[torch.Tensor] = None) -> GPTOutput:
        """tokens `[B, N]`; positions `[B|1, N, n_dims]` (default 0..N-1); targets `[B, N]`.

        `objectives` (a step plan's sample, opaque here) go to the position module with
        `positions`; its losses come back in `position_signal.aux_losses`. `cache` (generation)
        holds the keys and values of the tokens before `tokens` and is extended in place; the
        default positions then go on after them. `documents` `[B, N]` (document masking, see
        `megaseqpe.data.packing.document_layout`): each token's document id; attention stays inside
        a document, whose positions the caller restarts in `positions`.
        """
        if positions is None:
            positions = default_positions(tokens.shape[1], tokens.device, start=0 if cache is None else cache.length)
        signal = self.position(positions, objectives)
        x = self.token_embedding(tokens)
        if signal.input_embedding is not None:
            x = x + signal.input_embedding.to(x.dtype)
        x = self.dropout(x)
        for index, block in enumerate(self.blocks):
            x = block(x, signal.for_layer(index), None if cache is None else cache.layers[index], documents)
        logits = self.lm_head(self.final_norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return GPTOutput(logits=logits, loss=loss, position_signal=signal)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
