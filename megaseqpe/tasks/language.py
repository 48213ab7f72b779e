"""Language modelling: a GPT on packed token shards, scored by perplexity against length."""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError
from ..data import TokenBatchLoader, build_train_loader, eval_batches, load_manifest
from ..model import build_gpt
from ..positions import StepPlan
from .base import ExtrapolationRequest, Task


def default_lengths(train_length: int) -> list[int]:
    return [train_length * k for k in (1, 2, 4, 8, 16)]


def perplexity(model: nn.Module, manifest: str, split: str, length: int, max_tokens: int,
               device: torch.device, on_corrupt: str = "error") -> tuple[Optional[float], int]:
    """(perplexity, tokens scored) over windows of `length`; (None, 0) if no full window exists."""
    nll, tokens = 0.0, 0
    windows = max(1, max_tokens // length)
    with torch.no_grad(), tqdm(total=windows, desc=f"len {length}", unit="window", leave=False) as bar:
        for batch in eval_batches(manifest, split, max_seq_len=length, batch_size=1, on_corrupt=on_corrupt):
            batch = batch.to(device)
            out = model(batch[:, :-1], targets=batch[:, 1:])
            nll += out.loss.item() * length
            tokens += length
            bar.update(1)
            if tokens >= max_tokens:
                break
    return (math.exp(nll / tokens), tokens) if tokens else (None, 0)


class LanguageModeling(Task):
    """Next-token prediction with a GPT on packed token shards."""

    loss_tag = "train/lm_loss"

    def check_data(self, manifest: Optional[str] = None) -> None:
        """The vocabulary fits the model; data other than the run's own (`megaseqpe-eval --data`) must
        be tokenized with the run's tokenizer (same sha256), or every number would be wrong."""
        own = self.config.data.manifest
        tokenizer = load_manifest(manifest or own).tokenizer
        if tokenizer.vocab_size > self.config.model.vocab_size:
            raise ConfigError(f"model.vocab_size={self.config.model.vocab_size} is smaller than the tokenizer's "
                              f"vocabulary of {tokenizer.vocab_size} ({manifest or own})")
        if manifest is not None and manifest != own:
            trained = load_manifest(own).tokenizer
            if trained.sha256 != tokenizer.sha256:
                raise ConfigError(f"{manifest} was tokenized with a different tokenizer (sha256 "
                                  f"{tokenizer.sha256[:12]}) than the run's data {own} ({trained.sha256[:12]})")

    def build_model(self) -> nn.Module:
        return build_gpt(self.config)

    def build_loader(self, seed: int, rank: int, world_size: int) -> TokenBatchLoader:
        c = self.config
        return build_train_loader(c.data.manifest, max_seq_len=c.model.max_seq_len,
                                  micro_batch_size=c.data.micro_batch_size, seed=seed, rank=rank,
                                  world_size=world_size, num_workers=c.data.num_workers,
                                  shuffle_buffer=c.data.shuffle_buffer, on_corrupt=c.data.on_corrupt)

    @property
    def position_extents(self) -> tuple[int, ...]:
        return (self.config.model.max_seq_len,)

    @property
    def sequence_length(self) -> int:
        return self.config.model.max_seq_len

    def forward(self, model: nn.Module, batch: torch.Tensor, plan: StepPlan):
        out = model(batch[:, :-1], positions=plan.positions, targets=batch[:, 1:], objectives=plan.objectives)
        return out, {self.loss_tag: out.loss}

    def eval_batches(self, rank: int, world_size: int) -> Iterator[torch.Tensor]:
        c = self.config
        return eval_batches(c.data.manifest, c.data.val_split, max_seq_len=c.model.max_seq_len,
                            batch_size=c.data.micro_batch_size, rank=rank, world_size=world_size,
                            on_corrupt=c.data.on_corrupt)

    def eval_totals(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        out = model(batch[:, :-1], targets=batch[:, 1:])
        return torch.tensor([out.loss.item() * batch[:, 1:].numel(), batch[:, 1:].numel()], dtype=torch.float64)

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        loss = float(totals[0] / totals[1])
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}

    def extrapolation(self, model: nn.Module, request: ExtrapolationRequest) -> dict:
        train_length = self.config.model.max_seq_len
        method = model.position.enable_extrapolation()
        result = {"train_length": train_length, "ppl": {}, "tokens": {}, "method": {}}
        for length in request.lengths or default_lengths(train_length):
            ppl, tokens = perplexity(model, request.manifest, request.split, length, request.max_tokens,
                                     request.device, self.config.data.on_corrupt)
            result["ppl"][str(length)], result["tokens"][str(length)] = ppl, tokens
            result["method"][str(length)] = "extend" if length <= train_length else method
        return result
