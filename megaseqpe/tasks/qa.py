"""Retrieval QA (`task: qa`): fine-tune a pretrained GPT (`train.init_from`) on `megaseqpe-prep qa`
samples with the loss on the answer tokens only, and score exact match against context length.

The model is the language model's (same build, same weights), so a QA run starts from any text
run of the same model config. Exact match of a sample is greedy decoding of the answer's token
count after the prompt (`megaseqpe.generation.generate`, KV cache) giving exactly the answer.
Positions beyond the training length are reached as `megaseqpe-eval` reaches them for perplexity
(`enable_extrapolation`: the scheme extends, or its table is interpolated, and the report says so).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError
from ..data import TokenBatchLoader, load_manifest
from ..data.manifest import KIND_QA
from ..data.qa import QASample, build_qa_train_loader, qa_batches, qa_samples
from ..generation.sampling import Sampling, generate
from ..positions import StepPlan
from .base import ExtrapolationRequest
from .language import LanguageModeling

QA_SPLIT = "test"  # the split `prep qa` writes every length to: megaseqpe-eval's default for QA runs


def greedy_answer(model: nn.Module, sample: QASample, vocab_size: Optional[int] = None) -> list[int]:
    """The answer's token count decoded greedily after the prompt (no EOS stop: a fixed count)."""
    sampling = Sampling(max_new_tokens=sample.info.answer_tokens, temperature=0.0)
    return list(generate(model, sample.prompt.tolist(), sampling, vocab_size=vocab_size))


def exact_match(model: nn.Module, samples: Iterable[QASample], vocab_size: Optional[int] = None
                ) -> tuple[dict[int, dict[float, int]], dict[int, dict[float, int]]]:
    """(hits, counts) keyed by length, then depth bin: a hit is a greedy answer equal to the answer."""
    hits: dict[int, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    counts: dict[int, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for sample in tqdm(samples, desc="qa", unit="sample", leave=False):
        info = sample.info
        counts[info.length][info.depth] += 1
        hits[info.length][info.depth] += greedy_answer(model, sample, vocab_size) == sample.answer.tolist()
    return hits, counts


def qa_result(hits: dict[int, dict[float, int]], counts: dict[int, dict[float, int]], train_length: int,
              method: str) -> dict:
    """The report's fields: EM per length (`em`), per length and depth (`em_depth`), the counts."""
    lengths = sorted(counts)
    rate = lambda h, n: h / n if n else None  # noqa: E731
    return {"train_length": train_length,
            "em": {str(n): rate(sum(hits[n].values()), sum(counts[n].values())) for n in lengths},
            "em_depth": {str(n): {str(d): rate(hits[n][d], counts[n][d]) for d in sorted(counts[n])} for n in lengths},
            "samples": {str(n): {str(d): counts[n][d] for d in sorted(counts[n])} for n in lengths},
            "method": {str(n): "extend" if n <= train_length else method for n in lengths}}


def score_qa(model: nn.Module, manifest: str, split: str, train_length: int, lengths: Optional[list[int]] = None,
             on_corrupt: str = "error") -> dict:
    """The QA report of `model` (a GPT trained at `train_length`) on a QA manifest's split: every
    sample of the split, or of `lengths` only; beyond-training positions as for perplexity."""
    method = model.position.enable_extrapolation()
    wanted = set(lengths or ())
    samples = (s for s in qa_samples(manifest, split, on_corrupt) if not wanted or s.info.length in wanted)
    vocab = load_manifest(manifest, expect=KIND_QA).tokenizer.vocab_size
    hits, counts = exact_match(model, samples, vocab)
    if not counts:
        raise ValueError(f"{manifest}: split {split!r} has no sample of length {', '.join(map(str, sorted(wanted)))}")
    return qa_result(hits, counts, train_length, method)


class QA(LanguageModeling):
    """Answer-only fine-tuning of the language model on retrieval-QA samples."""

    loss_tag = "train/qa_loss"
    model_task = "language_modeling"

    def check_data(self, manifest: Optional[str] = None) -> None:
        """The run's data is a QA manifest whose vocabulary fits the model; other data (the
        init_from source's text shards, `megaseqpe-eval --data`) must share its tokenizer."""
        c = self.config
        if c.data.sources or c.data.document_masking:
            raise ConfigError("task: qa reads one data.manifest (no data.sources) without data.document_masking")
        own = load_manifest(c.data.manifest, expect=KIND_QA).tokenizer
        if own.vocab_size > c.model.vocab_size:
            raise ConfigError(f"model.vocab_size={c.model.vocab_size} is smaller than the tokenizer's vocabulary of "
                              f"{own.vocab_size} ({c.data.manifest})")
        other = load_manifest(manifest, expect=None).tokenizer if manifest else own
        if other is None or other.sha256 != own.sha256:
            raise ConfigError(f"{manifest} was not tokenized with the tokenizer of the run's data {c.data.manifest}")

    def build_loader(self, seed: int, rank: int, world_size: int) -> TokenBatchLoader:
        c = self.config
        return build_qa_train_loader(c.data.manifest, micro_batch_size=c.data.micro_batch_size, seed=seed, rank=rank,
                                     world_size=world_size, num_workers=c.data.num_workers,
                                     shuffle_buffer=c.data.shuffle_buffer, on_corrupt=c.data.on_corrupt)

    def to_device(self, batch, device: torch.device):
        return tuple(part.to(device) for part in batch)

    @staticmethod
    def model_inputs(batch, positions: Optional[torch.Tensor] = None) -> dict[str, Optional[torch.Tensor]]:
        """Teacher-forced inputs: every token but the last, targets the labels shifted by one."""
        tokens, labels = batch
        inputs = tokens[:, :-1]
        if positions is not None:
            positions = positions[:, :inputs.shape[1]]
        return {"tokens": inputs, "targets": labels[:, 1:], "positions": positions}

    def forward(self, model: nn.Module, batch, plan: StepPlan):
        out = model(**self.model_inputs(batch, plan.positions), objectives=plan.objectives)
        return out, {self.loss_tag: out.loss}

    def eval_batches(self, rank: int, world_size: int, manifest: Optional[str] = None) -> Iterator:
        c = self.config
        return qa_batches(manifest or c.data.manifest, c.data.val_split, batch_size=c.data.micro_batch_size,
                          rank=rank, world_size=world_size, on_corrupt=c.data.on_corrupt)

    def eval_totals(self, model: nn.Module, batch) -> torch.Tensor:
        """(answer nll sum, answer tokens, teacher-forced exact matches, samples): a row whose every
        answer token is the argmax is exactly a row that greedy decoding answers right."""
        inputs = self.model_inputs(batch)
        out, targets = model(**inputs), inputs["targets"]
        scored = targets != -100
        right = (out.logits.argmax(-1) == targets) | ~scored
        count = int(scored.sum())
        return torch.tensor([out.loss.item() * count, count, float(right.all(-1).sum()), len(targets)],
                            dtype=torch.float64)

    def val_metrics(self, totals: torch.Tensor) -> dict[str, float]:
        return {"val/loss": float(totals[0] / totals[1]), "val/em": float(totals[2] / totals[3])}

    def extrapolation(self, model: nn.Module, request: ExtrapolationRequest) -> dict:
        """Exact match per length and depth on the requested lengths (default: all of the split)."""
        return score_qa(model, request.manifest, request.split, self.config.model.max_seq_len, request.lengths,
                        self.config.data.on_corrupt)
