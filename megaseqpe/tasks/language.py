"""Language modelling: a GPT on packed token shards, scored by perplexity against length."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError
from ..data import (ManifestError, TokenBatchLoader, build_mixture_loader, build_train_loader, check_same_tokenizer,
                    eval_batches, load_manifest)
from ..data.packing import document_layout
from ..model import build_gpt
from ..positions import StepPlan
from .base import ExtrapolationRequest, Task


def default_lengths(train_length: int) -> list[int]:
    return [train_length * k for k in (1, 2, 4, 8, 16)]


@dataclass(frozen=True)
class DocumentMarkers:
    """What `data.document_masking` needs of the tokenizer: EOS ends a document, so the token after
    it starts the next one; BOS (None when the tokenizer has none) is packed in front of each."""

    eos_id: int
    bos_id: Optional[int]

    @classmethod
    def of(cls, manifest_path: str) -> "DocumentMarkers":
        """The markers of the SentencePiece model `manifest_path`'s data was tokenised with."""
        import sentencepiece

        manifest = load_manifest(manifest_path)
        path = manifest.tokenizer_path()
        if not path.is_file():
            raise ManifestError(f"tokenizer {path}: missing; data.document_masking reads its BOS id")
        bos = sentencepiece.SentencePieceProcessor(model_file=str(path)).bos_id()
        return cls(manifest.tokenizer.eos_id, bos if bos >= 0 else None)


def model_inputs(batch: torch.Tensor, markers: Optional[DocumentMarkers],
                 positions: Optional[torch.Tensor] = None) -> dict[str, Optional[torch.Tensor]]:
    """The GPT's keyword arguments for packed rows `batch` `[B, N + 1]`: tokens, targets, positions
    and, with document `markers`, each token's document. Masked, the positions restart at each
    document, from the first position of `positions` (SeqPE's shifted window starts there), and
    targets that are a BOS are ignored (-100, cross-entropy's ignore_index): after an EOS a BOS
    always follows, and counting it would flatter every loss against an unmasked run."""
    tokens, targets = batch[:, :-1], batch[:, 1:]
    if markers is None:
        return {"tokens": tokens, "targets": targets, "positions": positions}
    documents, restart = document_layout(tokens, markers.eos_id)
    start = 0 if positions is None else positions[:, :1]
    if markers.bos_id is not None:
        targets = targets.masked_fill(targets == markers.bos_id, -100)
    return {"tokens": tokens, "targets": targets, "positions": start + restart[..., None], "documents": documents}


def scored_tokens(inputs: dict[str, Optional[torch.Tensor]]) -> int:
    """Targets that count in the mean loss of `model_inputs(...)`."""
    return int((inputs["targets"] != -100).sum())


def perplexity(model: nn.Module, manifest: str, split: str, length: int, max_tokens: int,
               device: torch.device, on_corrupt: str = "error",
               markers: Optional[DocumentMarkers] = None) -> tuple[Optional[float], int]:
    """(perplexity, tokens scored) over windows of `length`; (None, 0) if no full window exists.
    With document `markers` (document masking) each token sees its own document only."""
    nll, tokens = 0.0, 0
    windows = max(1, max_tokens // length)
    bos_id = None if markers is None else markers.bos_id
    with torch.no_grad(), tqdm(total=windows, desc=f"len {length}", unit="window", leave=False) as bar:
        for batch in eval_batches(manifest, split, max_seq_len=length, batch_size=1, on_corrupt=on_corrupt,
                                  bos_id=bos_id):
            inputs = model_inputs(batch.to(device), markers)
            out = model(**inputs)
            nll += out.loss.item() * scored_tokens(inputs)
            tokens += scored_tokens(inputs)
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
        own = self.config.data.primary_manifest
        if self.config.data.sources:
            check_same_tokenizer([source.manifest for source in self.config.data.sources])
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

    @functools.cached_property
    def markers(self) -> Optional[DocumentMarkers]:
        """The run's document markers with `data.document_masking`, else None (rows as packed)."""
        return DocumentMarkers.of(self.config.data.primary_manifest) if self.config.data.document_masking else None

    @property
    def bos_id(self) -> Optional[int]:
        """What the packer puts in front of each document (None: nothing)."""
        return None if self.markers is None else self.markers.bos_id

    def build_loader(self, seed: int, rank: int, world_size: int) -> TokenBatchLoader:
        c = self.config
        options = dict(max_seq_len=c.model.max_seq_len, micro_batch_size=c.data.micro_batch_size, seed=seed,
                       rank=rank, world_size=world_size, num_workers=c.data.num_workers,
                       shuffle_buffer=c.data.shuffle_buffer, on_corrupt=c.data.on_corrupt, bos_id=self.bos_id)
        if c.data.sources:
            return build_mixture_loader(c.data.sources, **options)
        return build_train_loader(c.data.manifest, **options)

    @property
    def position_extents(self) -> tuple[int, ...]:
        return (self.config.model.max_seq_len,)

    @property
    def sequence_length(self) -> int:
        return self.config.model.max_seq_len

    def forward(self, model: nn.Module, batch: torch.Tensor, plan: StepPlan):
        out = model(**model_inputs(batch, self.markers, plan.positions), objectives=plan.objectives)
        return out, {self.loss_tag: out.loss}

    def eval_sources(self, rank: int, world_size: int) -> dict[str, Iterator[torch.Tensor]]:
        if not self.config.data.sources:
            return super().eval_sources(rank, world_size)
        return {source.name: self.eval_batches(rank, world_size, source.manifest) for source in self.config.data.sources}

    def eval_batches(self, rank: int, world_size: int, manifest: Optional[str] = None) -> Iterator[torch.Tensor]:
        c = self.config
        return eval_batches(manifest or c.data.manifest, c.data.val_split, max_seq_len=c.model.max_seq_len,
                            batch_size=c.data.micro_batch_size, rank=rank, world_size=world_size,
                            on_corrupt=c.data.on_corrupt, bos_id=self.bos_id)

    def eval_totals(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        inputs = model_inputs(batch, self.markers)
        out, count = model(**inputs), scored_tokens(inputs)
        return torch.tensor([out.loss.item() * count, count], dtype=torch.float64)

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        loss = float(totals[0] / totals[1])
        return {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}

    def extrapolation(self, model: nn.Module, request: ExtrapolationRequest) -> dict:
        train_length = self.config.model.max_seq_len
        method = model.position.enable_extrapolation()
        result = {"train_length": train_length, "ppl": {}, "tokens": {}, "method": {}}
        for length in request.lengths or default_lengths(train_length):
            ppl, tokens = perplexity(model, request.manifest, request.split, length, request.max_tokens,
                                     request.device, self.config.data.on_corrupt, self.markers)
            result["ppl"][str(length)], result["tokens"][str(length)] = ppl, tokens
            result["method"][str(length)] = "extend" if length <= train_length else method
        return result
