"""SeqPE: a small Transformer that reads a position's digits (docs/method.md §1.2-1.3).

`SeqPEEncoder` maps unique positions `[U, n_dims]` to vectors. `SeqPE` is the position module
the model talks to: it puts every position a step needs (the model's own and the objectives'
sample from the step plan) through ONE de-duplicated encoder pass, scatters the results back and
returns the objectives' weighted losses with the signal; at inference it serves the model from a
cached table, so SeqPE costs a lookup there.
"""
from __future__ import annotations

import math

from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError, ModelConfig, PositionConfig
from .base import AttentionExtras, PositionEncoding, PositionSignal
from .digit_graph import DigitGraph, DigitGraphs
from .digits import check_encodable
from .objectives import ObjectiveSample, SeqPEObjectives


# Positions per encoder pass when the inference table is built (see `_signal_from_table`).
TABLE_BLOCK = 2048


def gpt2_init(module: nn.Module) -> None:
    """GPT-2's initialisation (normal(0, 0.02) weights, zero biases), which the reference's
    encoder receives from its host model. PyTorch's default would make SeqPE's output ~30x
    larger than the token embeddings it is added to."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Embedding)):
            nn.init.normal_(sub.weight, std=0.02)
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)


class _EncoderBlock(nn.Module):
    """Pre-LN Transformer block in which each token attends to an explicit list of key tokens."""

    def __init__(self, width: int, n_head: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.n_head, self.attention_dropout = n_head, attention_dropout
        self.norm_attention = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.up = nn.Linear(width, 4 * width)
        self.down = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor,
                outputs: Optional[int] = None) -> torch.Tensor:
        """x `[T, W]`; token t attends to tokens `keys[t]` `[T, K]` where `visible[t]`.

        With `outputs`, only the last `outputs` tokens get a result `[outputs, W]`: every token
        still supplies keys and values, but the others' queries, attention and MLP are skipped."""
        normed = self.norm_attention(x)
        if outputs is None:
            q, k, v = self.qkv(normed).unflatten(-1, (3, self.n_head, -1)).unbind(-3)
        else:
            width = x.shape[-1]
            (w_q, w_kv), (b_q, b_kv) = (p.split([width, 2 * width]) for p in (self.qkv.weight, self.qkv.bias))
            k, v = F.linear(normed, w_kv, b_kv).unflatten(-1, (2, self.n_head, -1)).unbind(-3)
            x, keys, visible = x[-outputs:], keys[-outputs:], visible[-outputs:]
            q = F.linear(normed[-outputs:], w_q, b_q).unflatten(-1, (self.n_head, -1))
        k, v = k[keys].transpose(1, 2), v[keys].transpose(1, 2)  # [T, heads, K, head_dim]
        attended = F.scaled_dot_product_attention(
            q.unsqueeze(2), k, v, attn_mask=visible[:, None, None, :],
            dropout_p=self.attention_dropout if self.training else 0.0)
        x = x + self.dropout(self.out(attended.flatten(1)))
        # GPT-2's tanh-approximated GELU ("gelu_new"), as the reference encoder uses.
        return x + self.dropout(self.down(F.gelu(self.up(self.norm_mlp(x)), approximate="tanh")))


class SeqPEEncoder(nn.Module):
    """Digits → pre-LN Transformer → summary token → (LayerNorm) → Linear → / temperature.

    `graphs` lays positions out as tokens (digit_graph.py): under causal attention one token per
    distinct digit prefix, then one summary token per position.
    """

    def __init__(self, graphs: DigitGraphs, *, width: int, n_layer: int, n_head: int, out_dim: int,
                 final_layernorm: bool = True, temperature: float = 1.0, dropout: float = 0.1,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        if width % n_head:
            raise ConfigError(f"position.d_pe: encoder width {width} is not divisible by {n_head} heads")
        self.graphs, self.temperature = graphs, temperature
        self.digit_embedding = nn.Embedding(graphs.base, width)
        self.slot_embedding = nn.Embedding(graphs.seq_len, width)
        # One learned vector per dimension, shared by that dimension's slots: tells rows from columns.
        self.dim_embedding = nn.Embedding(graphs.n_dims, width) if graphs.n_dims > 1 else None
        self.summary_token = nn.Parameter(torch.randn(width) * 0.02)
        self.layers = nn.ModuleList(_EncoderBlock(width, n_head, dropout, attention_dropout) for _ in range(n_layer))
        self.final_norm = nn.LayerNorm(width) if final_layernorm else nn.Identity()
        self.out_proj = nn.Linear(width, out_dim)
        # The last layer's outputs are read at the summary tokens only, so the digit tokens there
        # only supply keys and values (exact). False computes every token (tests).
        self.summary_only_last_layer = True
        self.last_token_count = 0
        gpt2_init(self)
        dim_of_slot = torch.arange(graphs.n_dims).repeat_interleave(graphs.max_digits)
        self.register_buffer("dim_of_slot", dim_of_slot, persistent=False)

    def embed(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions `[U, n_dims]` (distinct) → embeddings `[U, out_dim]`."""
        return self(self.graphs.graph(positions))

    def forward(self, graph: DigitGraph) -> torch.Tensor:
        """The embeddings `[graph.rows, out_dim]` of the positions laid out in `graph`."""
        x = self.digit_embedding(graph.digit) + self.slot_embedding(graph.slot)
        if self.dim_embedding is not None:
            x = x + self.dim_embedding(self.dim_of_slot[graph.slot])
        # The summary tokens come last, one per position: at the END of its sequence, so under a
        # causal mask it still sees every digit.
        # No dropout on these input embeddings (as the reference): with shared prefixes one token
        # stands for many positions, and dropout lives in the blocks' residual branches.
        x = torch.cat([x, self.summary_token.expand(graph.rows, -1)])
        self.last_token_count = x.shape[0]  # for FLOP counting: what this pass really computed
        last = len(self.layers) - 1
        for index, layer in enumerate(self.layers):
            outputs = graph.rows if index == last and self.summary_only_last_layer else None
            x = layer(x, graph.keys, graph.visible, outputs)
        return self.out_proj(self.final_norm(x[-graph.rows:])) / self.temperature


class SeqPE(PositionEncoding):
    """The SeqPE position module: unique-position batching, `input_add`, `attn_scalar` or `attn_mul` use."""

    def __init__(self, position: PositionConfig, model: ModelConfig) -> None:
        super().__init__(position.n_dims)
        self.encoder = SeqPEEncoder(
            DigitGraphs.for_position(position), width=position.d_pe or model.d_model, n_layer=position.encoder_layers,
            n_head=position.encoder_heads or model.n_head, out_dim=model.d_model,
            final_layernorm=position.final_layernorm, temperature=position.temperature,
            dropout=position.encoder_dropout, attention_dropout=position.encoder_attention_dropout)
        self.n_head, self.d_model = model.n_head, model.d_model
        self.pe_scale, self.use = position.scalar_scale, position.use
        self.objectives = SeqPEObjectives(position, model.n_head)  # their losses; the planner samples
        self.qk_projections = nn.ModuleList()
        if position.use != "input_add":  # attn_scalar and attn_mul: pe_q/pe_k from a projection
            count = model.n_layer if position.attn_scalar_proj == "multi" else 1
            self.qk_projections.extend(nn.Linear(model.d_model, 2 * model.d_model) for _ in range(count))
            gpt2_init(self.qk_projections)
        self._table: tuple | None = None  # (key, extents, embeddings, qk per projection)

    # ----------------------------------------------------------------- unique-position batching
    def encode(self, *position_tensors: torch.Tensor) -> list[torch.Tensor]:
        """Embed any number of position tensors `[..., n_dims]` with one encoder pass."""
        embeddings, inverses = self._encode_unique(position_tensors)
        return [embeddings[index] for index in inverses]

    def _encode_unique(self, position_tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(embeddings of the distinct positions, per tensor the index of each position's row)."""
        prepared = self.encoder.graphs.encoder_pass(position_tensors)
        return self.encoder(prepared.graph), prepared.inverses

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def checkpointable_blocks(self) -> Sequence[nn.Module]:
        # At long contexts the encoder's activations (every prefix token's, in every layer, with the
        # keys gathered per token) outweigh a checkpointed trunk's: its layers are wrapped too.
        return self.encoder.layers

    # ----------------------------------------------------------------- the model's view
    def forward(self, positions: torch.Tensor, objectives: Optional[ObjectiveSample] = None,
                prefix: Optional[torch.Tensor] = None) -> PositionSignal:
        """The signal for `positions` (and a `prefix`, see `_signal`); with the step plan's `objectives`
        sample, also their weighted losses, all from one encoder pass over the distinct positions of both."""
        self._check_shape(positions)  # the range check below covers negative positions too
        if not self.training and not torch.is_grad_enabled() and objectives is None:
            return self._signal_from_table(positions, prefix)
        named = objectives.named_positions() if objectives is not None else {}
        graphs = self.encoder.graphs
        prepared = objectives.prepared_pass(positions, graphs.layout) if objectives is not None else None
        if prepared is not None:  # laid out by the planner, off the critical path: no host sync here
            embeddings, inverses = self.encoder(prepared.graph), prepared.inverses
        else:
            embeddings, inverses = self._encode_unique([positions, *named.values()])
        main = inverses[0]
        signal = self._signal(embeddings[main], [projection(embeddings)[main] for projection in self.qk_projections],
                              prefix)
        signal.stats["train/unique_positions"] = float(embeddings.shape[0])
        signal.encoder_tokens = self.encoder.last_token_count
        if objectives is not None:
            extra = {name: embeddings[index] for name, index in zip(named, inverses[1:])}
            signal.aux_losses, stats = self.objectives.losses(objectives, extra, self.attention_similarity)
            signal.stats.update(stats)
        return signal

    def attention_similarity(self, embeddings: torch.Tensor) -> torch.Tensor:
        """What attn_scalar adds to the attention logits between the positions of each example,
        `s * pe_q[a] . pe_k[b] / sqrt(head_dim)`: `[E, projections x heads, m, m]` for embeddings
        `[E, m, d]` (the space `position.distill_space: attention` distils in)."""
        scores = []
        for projection in self.qk_projections:
            pe_q, pe_k = projection(embeddings).unflatten(-1, (2, self.n_head, -1)).unbind(-3)  # [E, m, H, hd]
            scale = self.pe_scale / math.sqrt(pe_q.shape[-1])
            scores.append(scale * torch.einsum("eahd,ebhd->ehab", pe_q, pe_k))
        return torch.cat(scores, dim=1)

    def _signal(self, main: torch.Tensor, qk: list[torch.Tensor], prefix: Optional[torch.Tensor]) -> PositionSignal:
        """The signal from the embeddings `main` and their projections `qk` (one per projection).

        `prefix` `[1, P, d_model]`: with a q/k projection the prefix vectors count as SeqPE
        embeddings and go through the same projections, in front (the reference's
        cls_token_pos_embed); under input_add they join the input as the base class does."""
        if not qk:
            return self.with_prefix(PositionSignal(input_embedding=main), prefix, main.shape[1])
        layers = []
        for projection, both in zip(self.qk_projections, qk):  # [B|1, N, 2 * d_model]
            if prefix is not None:
                front = projection(prefix).to(both.dtype)
                both = torch.cat([front.expand(both.shape[0], -1, -1), both], dim=1)
            pe_q, pe_k = both.unflatten(-1, (2, self.n_head, -1)).unbind(-3)  # two [B|1, N, heads, head_dim]
            if self.use == "attn_mul":
                layers.append(AttentionExtras(q_mul=pe_q, k_mul=pe_k))
            else:
                layers.append(AttentionExtras(pe_q=pe_q, pe_k=pe_k, pe_scale=self.pe_scale))
        return PositionSignal(layers=layers)

    # ----------------------------------------------------------------- inference table
    def _signal_from_table(self, positions: torch.Tensor, prefix: Optional[torch.Tensor] = None) -> PositionSignal:
        """Gather from embeddings of the grid [0, extent) per dimension, computed once.

        The table is rebuilt only when a position falls outside it or a parameter changed
        (each in-place update, such as an optimizer step or a checkpoint load, bumps its version).
        It grows to at least twice its extent in each dimension it overflows, so that a sequence
        decoded token by token rebuilds it O(log length) times, not once per token.
        """
        graphs = self.encoder.graphs
        check_encodable(positions, graphs.max_digits, graphs.base)
        needed = positions.reshape(-1, self.n_dims).amax(0) + 1
        key = (positions.device, torch.is_autocast_enabled(), tuple(p._version for p in self.parameters()))
        if self._table is None or self._table[0] != key or bool((needed > self._table[1]).any()):
            extents = needed
            if self._table is not None and self._table[0] == key:
                old = self._table[1]
                grown = torch.maximum(needed, 2 * old).clamp(max=graphs.coordinate_limit)
                extents = torch.where(needed > old, grown, old)
            grid = torch.stack(torch.meshgrid(*[torch.arange(int(e), device=positions.device) for e in extents],
                                              indexing="ij"), dim=-1).reshape(-1, self.n_dims)
            # In blocks of positions: one pass over the whole grid would keep every prefix token's
            # keys and values, gathered per token, alive at once.
            embeddings = torch.cat([self.encoder.embed(block) for block in grid.split(TABLE_BLOCK)])
            self._table = (key, extents, embeddings, [p(embeddings) for p in self.qk_projections])
        _, extents, embeddings, qk = self._table
        strides = torch.ones_like(extents)
        if self.n_dims > 1:
            strides[:-1] = torch.flip(torch.cumprod(torch.flip(extents[1:], [0]), 0), [0])
        index = (positions * strides).sum(-1)
        return self._signal(embeddings[index], [t[index] for t in qk], prefix)
