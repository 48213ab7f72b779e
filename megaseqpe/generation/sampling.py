"""The decoding loop: one token at a time through the KV cache, greedy or sampled.

The prompt goes through the model once; each later step feeds only the newest token, with the
keys and values of all earlier ones from `KVCache` and its position signal for its own position
(`megaseqpe.model.kv_cache`). Without the cache every step runs the whole sequence again: the
reference that the cache must reproduce, and the baseline of its speed-up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from ..model import GPT, KVCache


@dataclass
class Sampling:
    """How the next token is chosen from the model's logits."""

    max_new_tokens: int = 128
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the fewest most likely tokens whose probability reaches p; 1 = all
    seed: Optional[int] = None  # None = a fresh seed every run

    def __post_init__(self) -> None:
        for name, ok, bounds in (("max_new_tokens", self.max_new_tokens >= 0, ">= 0"),
                                 ("temperature", self.temperature >= 0, ">= 0"), ("top_k", self.top_k >= 0, ">= 0"),
                                 ("top_p", 0 < self.top_p <= 1, "in (0, 1]")):
            if not ok:
                raise ValueError(f"{name} must be {bounds}, got {getattr(self, name)}")


def sample_next(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next token from one position's logits `[vocab]` (on the CPU, as `generator`)."""
    if sampling.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        ordered, order = logits.sort(descending=True)
        probabilities = ordered.softmax(-1)
        # Drop a token when the more likely ones already reach p: the most likely always stays.
        dropped = probabilities.cumsum(-1) - probabilities >= sampling.top_p
        logits[order[dropped]] = float("-inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


@torch.no_grad()
def generate(model: GPT, prompt: Sequence[int], sampling: Sampling, *, eos_id: Optional[int] = None,
             vocab_size: Optional[int] = None, use_cache: bool = True) -> Iterator[int]:
    """The new tokens after `prompt` (at least one id), yielded as they are chosen; stops after
    `sampling.max_new_tokens` or at `eos_id` (not yielded). Only ids below `vocab_size` (the
    tokenizer's; the model's table may be larger) are chosen.

    Positions beyond the training length are reached as `megaseqpe-eval` reaches them: the scheme
    extends, or its table is stretched, once, to the whole prompt + new tokens."""
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    model.eval()
    model.position.enable_extrapolation(len(prompt) + sampling.max_new_tokens)
    device = next(model.parameters()).device
    cache = KVCache(len(model.blocks)) if use_cache else None
    # Sampled on the CPU: the same seed gives the same text on any device.
    generator = torch.Generator()
    if sampling.seed is None:
        generator.seed()
    else:
        generator.manual_seed(sampling.seed)
    step_input = torch.tensor([list(prompt)], device=device)
    for _ in range(sampling.max_new_tokens):
        logits = model(step_input, cache=cache).logits[0, -1, :vocab_size].cpu()
        token = sample_next(logits, sampling, generator)
        if token == eos_id:
            return
        yield token
        new = torch.tensor([[token]], device=device)
        step_input = new if use_cache else torch.cat([step_input, new], dim=1)
