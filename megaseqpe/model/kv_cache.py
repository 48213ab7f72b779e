"""Keys and values of the tokens decoded so far, so that generation computes each token once.

A layer's cache holds k and v as the attention kernel saw them: with the key's own position terms
already applied (RoPE's rotation, SeqPE's `pe_k` concatenated or its `k_mul` factor). Every such
term depends on the key's own position only (`PositionSignal`), so a decoding step needs the
position signal of its new tokens alone, and a cached key is never encoded or rotated again.
"""
from __future__ import annotations

from typing import Optional

import torch


class LayerCache:
    """One layer's keys and values `[B, H, tokens, width]`, grown by `append`."""

    def __init__(self) -> None:
        self.keys: Optional[torch.Tensor] = None
        self.values: Optional[torch.Tensor] = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' keys and values; returns those of every token so far."""
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], dim=-2), torch.cat([self.values, values], dim=-2)
        self.keys, self.values = keys, values
        return keys, values


class KVCache:
    """Every layer's `LayerCache`; `GPT.forward(tokens, cache=...)` extends it in place."""

    def __init__(self, n_layer: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layer)]

    @property
    def length(self) -> int:
        """Tokens seen so far, i.e. the position of the next one."""
        return self.layers[0].length
