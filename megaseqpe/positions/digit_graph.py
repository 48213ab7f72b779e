"""Distinct positions as a graph of digit tokens: the input of one SeqPE encoder pass (docs/method.md §1.2).

`DigitGraphs` lays positions out as the tokens the encoder computes, and a pass over several
position tensors as one `EncoderPass` (de-duplicated, range-checked, laid out). It holds no
parameters, so the step planner can prepare a training pass on the host, off the critical path,
and ship it to the device with the plan (planning.py); the encoder then only runs it.

Under the default causal attention a digit's states depend only on the digits before it, so
positions sharing a prefix (0..19999 share 2, 20, 200, 2000 prefixes at slots 0-3) share those
tokens: each distinct prefix is one token, and only the last digit and the summary token are per
position. Bidirectional attention gets one token per digit.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import ConfigError, PositionConfig
from .digits import DeferredRangeCheck, digits_needed, to_digits


@dataclass
class DigitGraph:
    """The tokens of one encoder pass: digit tokens `digit`, `slot` `[T]`, then one summary token per
    position (`rows` of them) last. Token t of the T + rows attends to tokens `keys[t]` `[T + rows,
    S + 1]` (S digit slots) where `visible[t]`."""

    digit: torch.Tensor
    slot: torch.Tensor
    keys: torch.Tensor
    visible: torch.Tensor
    rows: int


@dataclass
class EncoderPass:
    """One encoder pass over the distinct positions of several position tensors: their `graph` and,
    per tensor, `inverses` (its shape less the coordinate dimension) indexing the pass's rows."""

    graph: DigitGraph
    inverses: list[torch.Tensor]
    layout: tuple  # `DigitGraphs.layout` of the layout that made it


class DigitGraphs:
    """How an encoder with these digit settings lays out positions `[U, n_dims]` (see the module
    docstring). `share_prefixes` (causal only) is False to compute every digit of every position (tests)."""

    def __init__(self, *, n_dims: int, max_digits: int, base: int, causal: bool = True,
                 mask_padding: bool = False) -> None:
        self.n_dims, self.max_digits, self.base = n_dims, max_digits, base
        self.causal, self.mask_padding, self.share_prefixes = causal, mask_padding, causal
        self.seq_len = n_dims * max_digits
        # Coordinates are folded into one int64 key so that de-duplication is a 1-D unique.
        self.coordinate_limit = base ** max_digits
        if self.coordinate_limit ** n_dims >= 2 ** 62:
            raise ConfigError("position.max_position: too many digits per dimension to index positions")

    @property
    def layout(self) -> tuple:
        """Every setting the layout depends on: two `DigitGraphs` with one layout lay positions out alike."""
        return self.n_dims, self.max_digits, self.base, self.causal, self.mask_padding, self.share_prefixes

    @classmethod
    def for_position(cls, position: PositionConfig) -> "DigitGraphs":
        """The layout of the encoder that `position` configures."""
        return cls(n_dims=position.n_dims, max_digits=digits_needed(position.max_position, position.base),
                   base=position.base, causal=position.attn_direction == "causal",
                   mask_padding=position.mask_padding)

    def encoder_pass(self, position_tensors: Sequence[torch.Tensor]) -> EncoderPass:
        """One pass over the distinct positions of `position_tensors` (each `[..., n_dims]`). Every
        tensor's range is checked first (ValueError naming the position): a key would wrap an overflow
        silently. The check reads its copy of the bounds after the unique, whose host sync it shares."""
        flat = torch.cat([p.reshape(-1, self.n_dims).to(torch.int64) for p in position_tensors])
        range_check = DeferredRangeCheck(position_tensors, flat, self.max_digits, self.base)
        keys = flat[:, 0]
        for dim in range(1, self.n_dims):
            keys = keys * self.coordinate_limit + flat[:, dim]
        unique_keys, inverse = torch.unique(keys, return_inverse=True)
        range_check.finish()
        counts = [p.numel() // self.n_dims for p in position_tensors]
        inverses = [i.view(p.shape[:-1]) for i, p in zip(inverse.split(counts), position_tensors)]
        return EncoderPass(self.graph(self._unravel(unique_keys), checked=True), inverses, self.layout)

    def _unravel(self, keys: torch.Tensor) -> torch.Tensor:
        powers = [self.coordinate_limit ** (self.n_dims - 1 - dim) for dim in range(self.n_dims)]
        return torch.stack([torch.div(keys, power, rounding_mode="floor") % self.coordinate_limit
                            for power in powers], dim=-1)

    def graph(self, positions: torch.Tensor, checked: bool = False) -> DigitGraph:
        """The graph of distinct positions `[U, n_dims]`. `checked`: the caller has checked that they
        are encodable (`encoder_pass` checks a whole pass at once)."""
        digits, significant = to_digits(positions, self.max_digits, self.base, checked=checked)
        build = self._prefix_graph if self.share_prefixes else self._full_graph
        return build(digits, significant.bool())

    def _visible(self, significant: torch.Tensor, own_slot: torch.Tensor) -> torch.Tensor:
        """Which of the S+1 keys (S digits, then the summary) each token sees.

        Causal: keys up to its own slot. Padding digits are hidden when `mask_padding`, but a
        token always sees itself: a row with no visible key would give NaNs that leak into the
        summary token through the next layer's values."""
        columns = torch.arange(self.seq_len + 1, device=significant.device)
        visible = torch.ones(own_slot.shape[0], self.seq_len + 1, dtype=torch.bool, device=significant.device)
        if self.causal:
            visible &= columns <= own_slot[:, None]
        if self.mask_padding:
            padded = torch.cat([~significant, torch.zeros_like(significant[:, :1])], dim=1)
            visible &= ~padded | (columns == own_slot[:, None])
        return visible

    def _prefix_graph(self, digits: torch.Tensor, significant: torch.Tensor) -> DigitGraph:
        """One token per distinct digit prefix; token keys are its prefix's tokens (causal).

        Every slot's prefixes are de-duplicated by ONE unique (one host sync, not one per slot):
        a prefix is keyed with a leading digit 1, so slot s's keys lie in [base^(s+1), 2 base^(s+1))
        and never meet another slot's; sorted, they list the tokens slot by slot."""
        rows, device = digits.shape[0], digits.device
        marked = torch.empty_like(digits)
        prefix = torch.ones(rows, dtype=torch.int64, device=device)
        for slot in range(self.seq_len):
            prefix = prefix * self.base + digits[:, slot]
            marked[:, slot] = prefix
        distinct, nodes = torch.unique(marked, return_inverse=True)  # nodes [U, S]: each row's prefix tokens
        offset, row = distinct.numel(), torch.arange(rows, device=device)
        cells = nodes.flatten()
        # Any row holding a token stands for it: those rows agree on the digits up to its slot.
        representative = torch.empty_like(distinct).scatter_(0, cells, row.repeat_interleave(self.seq_len))
        node_slot = torch.empty_like(distinct).scatter_(0, cells, torch.arange(self.seq_len, device=device).repeat(rows))
        summary = offset + row
        rep = torch.cat([representative, row])  # a row that has each token
        slot = torch.cat([node_slot, torch.full((rows,), self.seq_len, device=device)])
        keys = torch.cat([nodes[rep], summary[rep, None]], dim=1)  # later slots are hidden below
        return DigitGraph(distinct % self.base, node_slot, keys, self._visible(significant[rep], slot), rows)

    def _full_graph(self, digits: torch.Tensor, significant: torch.Tensor) -> DigitGraph:
        """One token per digit of every position; each attends over its whole sequence."""
        rows, device = digits.shape[0], digits.device
        row = torch.arange(rows, device=device)
        row_keys = torch.cat([row[:, None] * self.seq_len + torch.arange(self.seq_len, device=device),
                              rows * self.seq_len + row[:, None]], dim=1)  # [U, S+1]
        owner = torch.cat([row.repeat_interleave(self.seq_len), row])
        slot = torch.cat([torch.arange(self.seq_len, device=device).repeat(rows),
                          torch.full((rows,), self.seq_len, device=device)])
        return DigitGraph(digits.flatten(), slot[:-rows], row_keys[owner],
                          self._visible(significant[owner], slot), rows)
