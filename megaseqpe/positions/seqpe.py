"""SeqPE: a small Transformer that reads a position's digits (SEQPE.md §2-4).

`SeqPEEncoder` maps unique positions `[U, n_dims]` to vectors. `SeqPE` is the position module
the model talks to: it puts every position a step needs (the model's own and any extra tensors
for the objectives) through ONE de-duplicated encoder pass and scatters the results back, and at
inference it serves the model from a cached table, so SeqPE costs a lookup there.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import ConfigError, ModelConfig, PositionConfig
from .base import AttentionExtras, PositionEncoding, PositionSignal
from .digits import check_encodable, digits_needed, to_digits


class SeqPEEncoder(nn.Module):
    """Digits → pre-LN Transformer → summary token → (LayerNorm) → Linear → / temperature."""

    def __init__(self, *, n_dims: int, max_digits: int, base: int, width: int, n_layer: int,
                 n_head: int, out_dim: int, causal: bool = True, mask_padding: bool = False,
                 final_layernorm: bool = True, temperature: float = 1.0, dropout: float = 0.1,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        if width % n_head:
            raise ConfigError(f"position.d_pe: encoder width {width} is not divisible by {n_head} heads")
        self.n_dims, self.max_digits, self.base = n_dims, max_digits, base
        self.n_head, self.mask_padding, self.temperature = n_head, mask_padding, temperature
        seq_len = n_dims * max_digits
        self.digit_embedding = nn.Embedding(base, width)
        self.slot_embedding = nn.Embedding(seq_len, width)
        # One learned vector per dimension, shared by that dimension's slots: tells rows from columns.
        self.dim_embedding = nn.Embedding(n_dims, width) if n_dims > 1 else None
        self.summary_token = nn.Parameter(torch.randn(width) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList()
        for _ in range(n_layer):
            layer = nn.TransformerEncoderLayer(width, n_head, 4 * width, dropout, activation="gelu",
                                               batch_first=True, norm_first=True)
            # torch uses one dropout for attention and residual; the reference runs want them apart.
            layer.self_attn.dropout = attention_dropout
            self.layers.append(layer)
        self.final_norm = nn.LayerNorm(width) if final_layernorm else nn.Identity()
        self.out_proj = nn.Linear(width, out_dim)
        self.register_buffer("dim_index", torch.arange(n_dims).repeat_interleave(max_digits), persistent=False)
        # The summary token sits at the END, so under a causal mask it still sees every digit.
        blocked = torch.ones(seq_len + 1, seq_len + 1).triu(1).bool() if causal else \
            torch.zeros(seq_len + 1, seq_len + 1, dtype=torch.bool)
        self.register_buffer("blocked", blocked, persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions `[U, n_dims]` → embeddings `[U, out_dim]`."""
        digits, significant = to_digits(positions, self.max_digits, self.base)
        x = self.digit_embedding(digits) + self.slot_embedding.weight
        if self.dim_embedding is not None:
            x = x + self.dim_embedding(self.dim_index)
        x = torch.cat([x, self.summary_token.expand(x.shape[0], 1, -1)], dim=1)
        x = self.dropout(x)
        mask = self._attention_mask(significant)
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        return self.out_proj(self.final_norm(x[:, -1])) / self.temperature

    def _attention_mask(self, significant: torch.Tensor) -> torch.Tensor:
        if not self.mask_padding:
            return self.blocked
        # Hide padding digits as keys, but let every token see itself: a row with no visible key
        # would give NaNs that leak into the summary token through the next layer's values.
        pad_key = torch.cat([significant == 0, torch.zeros_like(significant[:, :1], dtype=torch.bool)], 1)
        eye = torch.eye(self.blocked.shape[0], dtype=torch.bool, device=significant.device)
        blocked = self.blocked | (pad_key[:, None, :] & ~eye)
        return blocked.repeat_interleave(self.n_head, dim=0)


class SeqPE(PositionEncoding):
    """The SeqPE position module: unique-position batching, `input_add` or `attn_scalar` use."""

    def __init__(self, position: PositionConfig, model: ModelConfig) -> None:
        super().__init__(position.n_dims)
        self.max_digits = digits_needed(position.max_position, position.base)
        self.encoder = SeqPEEncoder(
            n_dims=position.n_dims, max_digits=self.max_digits, base=position.base,
            width=position.d_pe or model.d_model, n_layer=position.encoder_layers,
            n_head=position.encoder_heads or model.n_head, out_dim=model.d_model,
            causal=position.attn_direction == "causal", mask_padding=position.mask_padding,
            final_layernorm=position.final_layernorm, temperature=position.temperature,
            dropout=position.encoder_dropout, attention_dropout=position.encoder_attention_dropout)
        self.n_head, self.d_model = model.n_head, model.d_model
        self.pe_scale = position.scalar_scale
        self.qk_projections = nn.ModuleList()
        if position.use == "attn_scalar":
            count = model.n_layer if position.attn_scalar_proj == "multi" else 1
            self.qk_projections.extend(nn.Linear(model.d_model, 2 * model.d_model) for _ in range(count))
        # Coordinates are folded into one int64 key so that de-duplication is a 1-D unique.
        self.coordinate_limit = coordinate_limit = position.base ** self.max_digits
        if coordinate_limit ** position.n_dims >= 2 ** 62:
            raise ConfigError("position.max_position: too many digits per dimension to index positions")
        strides = coordinate_limit ** torch.arange(position.n_dims - 1, -1, -1, dtype=torch.int64)
        self.register_buffer("key_strides", strides, persistent=False)
        self._table: tuple | None = None  # (key, extents, embeddings, qk per projection)

    # ----------------------------------------------------------------- unique-position batching
    def encode(self, *position_tensors: torch.Tensor) -> list[torch.Tensor]:
        """Embed any number of position tensors `[..., n_dims]` with one encoder pass."""
        embeddings, inverses = self._encode_unique(position_tensors)
        return [embeddings[index] for index in inverses]

    def _encode_unique(self, position_tensors: Sequence[torch.Tensor]):
        for positions in position_tensors:  # before keying: a key would wrap an overflow silently
            check_encodable(positions, self.max_digits, self.encoder.base)
        keys = [(p.reshape(-1, self.n_dims).to(torch.int64) * self.key_strides).sum(-1) for p in position_tensors]
        unique_keys, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        unique_positions = self._unravel(unique_keys)
        embeddings = self.encoder(unique_positions)
        inverses = [i.view(p.shape[:-1]) for i, p in zip(inverse.split([k.numel() for k in keys]), position_tensors)]
        return embeddings, inverses

    def _unravel(self, keys: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.div(keys, stride, rounding_mode="floor") % self.coordinate_limit
                            for stride in self.key_strides.tolist()], dim=-1)

    # ----------------------------------------------------------------- the model's view
    def forward(self, positions: torch.Tensor, extra_positions: Sequence[torch.Tensor] = ()) -> PositionSignal:
        self._check_positions(positions)
        if not self.training and not torch.is_grad_enabled() and not extra_positions:
            return self._signal_from_table(positions)
        embeddings, inverses = self._encode_unique([positions, *extra_positions])
        main = inverses[0]
        qk = [projection(embeddings)[main] for projection in self.qk_projections]
        return self._signal(embeddings[main], qk, extra=[embeddings[i] for i in inverses[1:]],
                            unique=embeddings.shape[0])

    def _signal(self, main: torch.Tensor, qk: list[torch.Tensor], extra: list[torch.Tensor],
                unique: int) -> PositionSignal:
        if not qk:
            return PositionSignal(input_embedding=main, extra_embeddings=extra, unique_positions=unique)
        layers = []
        for both in qk:  # [B|1, N, 2 * d_model] → two [B|1, N, heads, head_dim]
            pe_q, pe_k = both.unflatten(-1, (2, self.n_head, -1)).unbind(-3)
            layers.append(AttentionExtras(pe_q=pe_q, pe_k=pe_k, pe_scale=self.pe_scale))
        return PositionSignal(layers=layers, extra_embeddings=extra, unique_positions=unique)

    # ----------------------------------------------------------------- inference table
    def _signal_from_table(self, positions: torch.Tensor) -> PositionSignal:
        """Gather from embeddings of the grid [0, extent) per dimension, computed once.

        The table is rebuilt only when a position falls outside it or a parameter changed
        (each in-place update, such as an optimizer step or a checkpoint load, bumps its version).
        """
        check_encodable(positions, self.max_digits, self.encoder.base)
        needed = positions.reshape(-1, self.n_dims).amax(0) + 1
        key = (positions.device, torch.is_autocast_enabled(), tuple(p._version for p in self.parameters()))
        if self._table is None or self._table[0] != key or bool((needed > self._table[1]).any()):
            extents = needed if self._table is None or self._table[0] != key else torch.maximum(needed, self._table[1])
            grid = torch.stack(torch.meshgrid(*[torch.arange(int(e), device=positions.device) for e in extents],
                                              indexing="ij"), dim=-1).reshape(-1, self.n_dims)
            embeddings = self.encoder(grid)
            self._table = (key, extents, embeddings, [p(embeddings) for p in self.qk_projections])
        _, extents, embeddings, qk = self._table
        strides = torch.ones_like(extents)
        if self.n_dims > 1:
            strides[:-1] = torch.flip(torch.cumprod(torch.flip(extents[1:], [0]), 0), [0])
        index = (positions * strides).sum(-1)
        return self._signal(embeddings[index], [t[index] for t in qk], extra=[], unique=embeddings.shape[0])
