"""A GPT-2 style decoder that takes any position module.

The model never asks which position scheme it has: it adds `signal.input_embedding` when there
is one and hands each layer's `AttentionExtras` to the attention call. Parallelism (DeepSpeed
ZeRO) is applied from outside, by the trainer.

The trunk's shape follows the config: GPT-2's (LayerNorm, GELU MLP, multi-head attention, biases,
tied head) by default, or today's LLaMA-style choices (`model.norm: rmsnorm`, `model.mlp: swiglu`,
grouped-query attention with `model.n_kv_head`, `model.bias: false`, `model.tie_embeddings: false`).
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
from .attention import attention, with_score_bias
from .kv_cache import KVCache, LayerCache


def make_norm(config: ModelConfig) -> nn.Module:
    """The trunk's normalisation layer (`model.norm`); RMSNorm has no bias, as in LLaMA."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.d_model, eps=1e-5)
    return nn.LayerNorm(config.d_model, bias=config.bias)


class SelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention: causal for the decoder, bidirectional for the ViT."""

    def __init__(self, config: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.n_head, self.backend, self.causal = config.n_head, config.attention_backend, causal
        self.n_kv_head = config.kv_heads
        # One fused projection: n_head query heads, then n_kv_head key and as many value heads (with
        # n_kv_head = n_head, the [q | k | v] layout GPT-2 and our older checkpoints have).
        self.qkv = nn.Linear(config.d_model, (config.n_head + 2 * self.n_kv_head) * config.head_dim, bias=config.bias)
        self.out = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.attention_dropout = config.attention_dropout
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, extras: AttentionExtras, cache: Optional[LayerCache] = None,
                documents: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, length, width = x.shape
        heads = self.qkv(x).view(batch, length, self.n_head + 2 * self.n_kv_head, -1).transpose(1, 2)
        q, k, v = heads.split([self.n_head, self.n_kv_head, self.n_kv_head], dim=1)
        y = attention(q, k, v, causal=self.causal, backend=self.backend, cache=cache, documents=documents,
                      dropout_p=self.attention_dropout if self.training else 0.0, **extras.as_kwargs())
        return self.residual_dropout(self.out(y.transpose(1, 2).reshape(batch, length, width)))


class MLP(nn.Module):
    """GPT-2's `down(gelu(up(x)))` (exact GELU) or LLaMA's SwiGLU `down(silu(gate(x)) * up(x))`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.mlp_width
        self.up = nn.Linear(config.d_model, width, bias=config.bias)
        self.gate = nn.Linear(config.d_model, width, bias=config.bias) if config.mlp == "swiglu" else None
        self.down = nn.Linear(width, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.up(x)) if self.gate is None else F.silu(self.gate(x)) * self.up(x)
        return self.dropout(self.down(hidden))


class Block(nn.Module):
    """Pre-norm Transformer block (causal attention unless `causal=False`)."""

    def __init__(self, config: ModelConfig, causal: bool = True) -> None:
        super().__init__()
        self.norm_attention = make_norm(config)
        self.attention = SelfAttention(config, causal)
        self.norm_mlp = make_norm(config)
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
        self.final_norm = make_norm(config)
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
        # A score bias (flex; sdpa on CPU) is built here once for every block; a KV cache holds pe_k in its
        # keys instead.
        dropout_p = self.config.attention_dropout if self.training else 0.0
        attending = signal if cache is not None else with_score_bias(
            signal, self.config.attention_backend, documents=documents, dropout_p=dropout_p)
        for index, block in enumerate(self.blocks):
            x = block(x, attending.for_layer(index), None if cache is None else cache.layers[index], documents)
        logits = self.lm_head(self.final_norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        return GPTOutput(logits=logits, loss=loss, position_signal=signal)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
