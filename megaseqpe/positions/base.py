"""The one interface between a position scheme and the model.

A model hands its position module the positions of its tokens (and, in training, the step
plan's objective sample) and gets back a `PositionSignal`: what to add to the input embeddings,
per layer what the attention needs (SeqPE q/k extras, rotary tables, ALiBi slopes), and the
scheme's own training losses by name. Every field may be empty, so the model and the trainer
apply whatever is there and never ask which scheme produced it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import nn


@dataclass
class AttentionExtras:
    """Per-layer inputs to `megaseqpe.model.attention.attention` beyond q, k and v.

    pe_q, pe_k: `[B|1, N, heads, pe_head_dim]`, SeqPE `attn_scalar` (logit += pe_scale * pe_q.pe_k).
    q_mul, k_mul: `[B|1, N, heads, head_dim]`, SeqPE `attn_mul` (q *= q_mul, k *= k_mul elementwise).
    rotary: `(cos, sin)`, each `[B|1, N, head_dim // 2]`, applied to q and k.
    alibi_slopes: `[heads]`, a linear distance penalty per head.
    pe_bias: `[B|1, heads, N, N]` (float32 or wider), `pe_scale * pe_q.pe_k` built once per pass for a
    kernel that adds it as a score bias (`megaseqpe.model.attention.with_score_bias`); else None.
    """

    pe_q: Optional[torch.Tensor] = None
    pe_k: Optional[torch.Tensor] = None
    pe_scale: float = 1.0
    q_mul: Optional[torch.Tensor] = None
    k_mul: Optional[torch.Tensor] = None
    rotary: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    alibi_slopes: Optional[torch.Tensor] = None
    pe_bias: Optional[torch.Tensor] = None

    def with_unpositioned_prefix(self, count: int) -> "AttentionExtras":
        """The same extras for `count` extra leading tokens that have no position (a ViT's CLS).

        Such a token gets zero SeqPE q/k extras (no position term in its logits), unit q/k
        factors and the identity rotation, so it interacts with every patch by content alone.
        """
        def pad(tensor: Optional[torch.Tensor], value: float) -> Optional[torch.Tensor]:
            if tensor is None:
                return None
            prefix = tensor.new_full((tensor.shape[0], count, *tensor.shape[2:]), value)
            return torch.cat([prefix, tensor], dim=1)

        rotary = None if self.rotary is None else (pad(self.rotary[0], 1.0), pad(self.rotary[1], 0.0))
        return AttentionExtras(pe_q=pad(self.pe_q, 0.0), pe_k=pad(self.pe_k, 0.0), pe_scale=self.pe_scale,
                               q_mul=pad(self.q_mul, 1.0), k_mul=pad(self.k_mul, 1.0),
                               rotary=rotary, alibi_slopes=self.alibi_slopes)

    def as_kwargs(self) -> dict:
        return {"pe_q": self.pe_q, "pe_k": self.pe_k, "pe_scale": self.pe_scale, "q_mul": self.q_mul,
                "k_mul": self.k_mul, "rotary": self.rotary, "alibi_slopes": self.alibi_slopes,
                "pe_bias": self.pe_bias}


@dataclass
class PositionSignal:
    """Everything a position scheme contributes to one forward pass.

    Every per-token term belongs to one token: its input embedding, its query's and its key's
    extras (ALiBi's penalty is a distance, recomputed from the query and key counts). A KV cache
    (`megaseqpe.model.kv_cache`) therefore keeps each key with its own terms applied, and a decoding
    step asks for the signal of its new tokens only.
    """

    input_embedding: Optional[torch.Tensor] = None  # [B|1, N, d_model], added to token embeddings
    layers: Sequence[AttentionExtras] = field(default_factory=list)  # one per layer, or one shared
    # The scheme's own training losses by name, already weighted: the trainer adds their sum to
    # the task loss and logs each as `train/<name>`.
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, float | torch.Tensor] = field(default_factory=dict)  # logged under these tags
    encoder_tokens: int = 0  # tokens a position encoder computed in this pass (FLOP counting)

    def for_layer(self, index: int) -> AttentionExtras:
        if not self.layers:
            return AttentionExtras()
        return self.layers[index] if len(self.layers) > 1 else self.layers[0]


class PositionEncoding(nn.Module):
    """Base class of every position scheme: positions `[B|1, N, n_dims]` → `PositionSignal`.

    `objectives` is what the scheme's step planner sampled for its training objectives (see
    `planning.py`); schemes without objectives reject one. `prefix` `[1, P, d_model]` holds learned
    position vectors of P leading tokens that have no coordinate (a ViT's CLS); the signal then
    covers P + N tokens, the prefix first (see `with_prefix`).
    """

    def __init__(self, n_dims: int = 1) -> None:
        super().__init__()
        self.n_dims = n_dims

    def forward(self, positions: torch.Tensor, objectives: Optional[Any] = None,
                prefix: Optional[torch.Tensor] = None) -> PositionSignal:
        if objectives is not None:
            raise ValueError(f"{type(self).__name__} has no position encoder: objective positions "
                             "(contrastive/distillation) are a SeqPE feature")
        self._check_positions(positions)
        return self.with_prefix(self.signal(positions), prefix, positions.shape[1])

    def with_prefix(self, signal: PositionSignal, prefix: Optional[torch.Tensor], n_tokens: int) -> PositionSignal:
        """`signal` for `n_tokens` positioned tokens, extended to the `prefix` tokens in front.

        The prefix vectors are added to those tokens' input like an absolute position embedding
        (rows of zeros for the positioned tokens when the scheme adds nothing to the input), and
        the attention treats them as unpositioned (`AttentionExtras.with_unpositioned_prefix`).
        A scheme that places the vectors in attention instead (SeqPE with a q/k projection) does
        not call this.
        """
        if prefix is None:
            return signal
        count = prefix.shape[1]
        embedding = signal.input_embedding
        if embedding is None:
            embedding = prefix.new_zeros(1, n_tokens, prefix.shape[-1])
        front = prefix.to(embedding.dtype).expand(embedding.shape[0], -1, -1)
        signal.input_embedding = torch.cat([front, embedding], dim=1)
        signal.layers = [extras.with_unpositioned_prefix(count) for extras in signal.layers]
        return signal

    def enable_extrapolation(self, length: Optional[int] = None) -> str:
        """Accept positions beyond the training range from now on (evaluation, generation) and say how
        they are reached: "extend" (the scheme is defined there) or "interpolate" (a table is stretched).

        `length`, when known, is the longest sequence to come (a generation's prompt plus its new
        tokens): a table is then stretched to it once, so that a sequence that grows token by token
        reads the same position vectors at every step (each step would otherwise stretch it anew)."""
        return "extend"

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters applied per encoded position rather than per token (FLOP counting)."""
        return iter(())

    def checkpointable_blocks(self) -> Sequence[nn.Module]:
        """The blocks of the scheme's own network that `model.activation_checkpointing` wraps as it
        wraps the trunk's (each is recomputed in the backward instead of keeping its activations)."""
        return ()

    def signal(self, positions: torch.Tensor) -> PositionSignal:
        """The scheme's contribution for checked positions `[B|1, N, n_dims]`."""
        return PositionSignal()

    def _check_positions(self, positions: torch.Tensor) -> None:
        self._check_shape(positions)
        if bool((positions < 0).any()):
            raise ValueError("positions must be non-negative")

    def _check_shape(self, positions: torch.Tensor) -> None:
        if positions.dim() != 3 or positions.shape[-1] != self.n_dims:
            raise ValueError(f"positions must be [batch, seq, {self.n_dims}], got {tuple(positions.shape)}")


def grid_positions(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """Positions `[1, rows * cols, 2]`: the (row, col) of each patch in row-major order."""
    grid = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
    return torch.stack(grid, dim=-1).view(1, rows * cols, 2)


def default_positions(seq_len: int, device: torch.device, n_dims: int = 1, start: int = 0) -> torch.Tensor:
    """Positions `[1, seq_len, 1]` = start .. start+seq_len-1, shared by every row of a batch (`start`:
    the tokens already in a generation's KV cache)."""
    if n_dims != 1:
        raise ValueError(f"default positions are 1-D; pass explicit {n_dims}-D positions")
    return torch.arange(start, start + seq_len, device=device).view(1, seq_len, 1)
