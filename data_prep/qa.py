"""`megaseqpe-prep qa`: a synthetic retrieval-QA set (the passkey test) from any corpus.

Each sample is filler text from the user's corpus (documents joined by EOS, as pretraining packs
them) with a fact inserted at a depth of the filler — "The pass key is 48213. Remember it." — and a
question at the end, "What is the pass key? The pass key is", whose answer is the key's few
tokens. Prompt + answer is exactly `length + 1` tokens, so the model reads `length` of them.
Train and val splits are at the training length L only; the test split holds every length.
Depths cycle through DEPTHS, so each (length, depth) cell gets the same count. Everything is a
pure function of the flags and the corpus: the same seed gives byte-identical shards.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import sentencepiece as spm

import megaseqpe
from megaseqpe.data.manifest import (KIND_QA, InputsInfo, Manifest, ManifestError, SplitInfo, TokenizerInfo,
                                     load_manifest)
from megaseqpe.data.qa_samples import QAInfo, QASample, encode_qa_sample
from megaseqpe.data.samples import decode_tokens, token_dtype
from megaseqpe.data.shard_reader import iter_shard_samples

from .corpus import read_documents
from .discovery import discover_files, input_root
from .errors import BadInputError
from .outputs import write_json_atomic
from .shard_writer import SplitShardWriter
from .shards import relative_path
from .skips import SkipLog
from .tokenizer import file_sha256

DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
NEEDLE = "The pass key is {key}. Remember it."
QUESTION = "What is the pass key? The pass key is"
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}  # each split draws its own keys and filler windows
KEYS = (10_000, 100_000)  # pass keys are drawn uniformly from [low, high): five digits


def is_manifest(path: Path) -> bool:
    return path.name == "manifest.json" or (path.is_dir() and (path / "manifest.json").is_file())


def manifest_filler(path: Path, split: str, tokenizer: Path, limit: int) -> tuple[list[np.ndarray], int]:
    """Documents of a text manifest's split (up to `limit` tokens); it must share the tokenizer."""
    try:
        manifest = load_manifest(path)
    except ManifestError as error:
        raise BadInputError(f"--corpus: {error}") from None
    if manifest.tokenizer.sha256 != file_sha256(tokenizer):
        raise BadInputError(f"--corpus {path} was tokenized with {manifest.tokenizer_path()}, not --tokenizer "
                            f"{tokenizer} (sha256 differs): give the same tokenizer")
    documents, total = [], 0
    vocab = manifest.tokenizer.vocab_size
    for shard in manifest.split(split).shards:
        for _, tokens in iter_shard_samples(manifest.shard_path(shard), shard, "error", lambda n: None,
                                            lambda raw: decode_tokens(raw, vocab)):
            documents.append(tokens)
            total += len(tokens)
            if total >= limit:
                return documents, manifest.inputs.files_seen
    return documents, manifest.inputs.files_seen


def text_filler(inputs: Sequence[Path], processor: spm.SentencePieceProcessor, text_key: str,
                limit: int) -> tuple[list[np.ndarray], int]:
    """Documents of input files (any format the shards command reads), tokenized, up to `limit` tokens."""
    skips = SkipLog()
    files = discover_files(inputs, (), skips)
    documents, total = [], 0
    for document in read_documents(files, skips, text_key, input_root(inputs)):
        tokens = np.array(processor.encode("".join(document.pieces())), dtype=np.int64)
        if len(tokens):
            documents.append(tokens)
            total += len(tokens)
        if total >= limit:
            break
    return documents, len(files)


def filler_pool(documents: list[np.ndarray], eos_id: int) -> np.ndarray:
    """The documents joined by EOS, as packed pretraining rows join them."""
    if not documents:
        raise BadInputError("--corpus: no documents with text to use as filler")
    return np.concatenate([np.append(doc, eos_id) for doc in documents]).astype(np.int64)


def no_retrieval_floor(processor: spm.SentencePieceProcessor) -> float:
    """The lowest answer-token loss (nats per token) of a model that does not read the fact: the
    keys' entropy, ln(number of keys), over the mean answer tokens per key (every key counted once).
    A loss below it means the model takes something from the context."""
    tokens = sum(len(processor.encode(str(key))) for key in range(*KEYS))
    count = KEYS[1] - KEYS[0]
    return math.log(count) * count / tokens


class QAMaker:
    """Builds samples from a filler pool with one tokenizer."""

    def __init__(self, processor: spm.SentencePieceProcessor, pool: np.ndarray, seed: int) -> None:
        self.processor, self.pool, self.seed = processor, pool, seed
        self.question = np.array(processor.encode(QUESTION), dtype=np.int64)

    def sample(self, split: str, length: int, index: int) -> QASample:
        """Sample `index` of `split` at `length` (its own generator: any subset is reproducible)."""
        rng = np.random.default_rng([self.seed, SPLIT_SEEDS[split], length, index])
        key = str(int(rng.integers(*KEYS)))
        needle = np.array(self.processor.encode(NEEDLE.format(key=key)), dtype=np.int64)
        answer = np.array(self.processor.encode(key), dtype=np.int64)
        filler_len = length + 1 - len(needle) - len(self.question) - len(answer)
        if filler_len < 0:
            raise BadInputError(f"--lengths: {length} tokens cannot hold the fact, the question and the answer "
                                f"({length + 1 - filler_len} tokens); use longer lengths")
        start = int(rng.integers(0, len(self.pool)))
        filler = np.take(self.pool, np.arange(start, start + filler_len), mode="wrap")
        depth = DEPTHS[index % len(DEPTHS)]
        at = round(depth * filler_len)
        tokens = np.concatenate([filler[:at], needle, filler[at:], self.question, answer])
        return QASample(tokens, QAInfo(answer_tokens=len(answer), length=length, depth=depth,
                                       needle_at=at, needle_tokens=len(needle)))


def split_plan(train_length: int, lengths: Sequence[int], per_length: int,
               train_samples: int) -> dict[str, list[tuple[int, int]]]:
    """(length, index) of every sample, per split."""
    return {"train": [(train_length, i) for i in range(train_samples)],
            "val": [(train_length, i) for i in range(per_length)],
            "test": [(length, i) for length in lengths for i in range(per_length)]}


def write_splits(maker: QAMaker, plan: dict[str, list[tuple[int, int]]], out: Path, shard_samples: int,
                 dtype: np.dtype) -> dict[str, SplitInfo]:
    splits = {}
    for split, items in plan.items():
        writer = SplitShardWriter(out, split, shard_tokens=2**62, shard_samples=shard_samples)
        for length, index in items:
            sample = maker.sample(split, length, index)
            sample = QASample(sample.tokens.astype(dtype), sample.info)
            writer.write_sample(encode_qa_sample(f"{split}-{length:07d}-{index:07d}", sample, f"qa/{split}/{length}",
                                                 index), len(sample.tokens))
        splits[split] = SplitInfo(tuple(writer.close()))
    return splits


def build_qa(*, corpus: Sequence[Path], corpus_split: str, text_key: str, tokenizer: Path,
             processor: spm.SentencePieceProcessor, out: Path, train_length: int, lengths: Sequence[int],
             per_length: int, train_samples: int, seed: int, shard_samples: int, filler_tokens: int) -> Manifest:
    """Write out/{train,val,test}/shard-*.tar, out/qa.json (the settings) and out/manifest.json last."""
    if len(corpus) == 1 and is_manifest(corpus[0]):
        documents, files_seen = manifest_filler(corpus[0], corpus_split, tokenizer, filler_tokens)
    else:
        documents, files_seen = text_filler(corpus, processor, text_key, filler_tokens)
    maker = QAMaker(processor, filler_pool(documents, processor.eos_id()), seed)
    for index in range(per_length):  # a length too short for a sample fails before any shard is written
        maker.sample("test", min(lengths), index)
    plan = split_plan(train_length, lengths, per_length, train_samples)
    splits = write_splits(maker, plan, out, shard_samples, token_dtype(processor.vocab_size()))
    write_json_atomic(out / "qa.json", {"train_length": train_length, "lengths": list(lengths), "depths": list(DEPTHS),
                                        "per_length": per_length, "train_samples": train_samples, "seed": seed,
                                        "needle": NEEDLE, "question": QUESTION})
    manifest = Manifest(
        created_by=f"megaseqpe-prep {megaseqpe.__version__} qa", kind=KIND_QA,
        tokenizer=TokenizerInfo(path=relative_path(tokenizer, out), sha256=file_sha256(tokenizer),
                                vocab_size=processor.vocab_size(), eos_id=processor.eos_id()),
        splits=splits, inputs=InputsInfo(files_seen=files_seen, documents=len(documents)), root=out)
    write_json_atomic(out / "manifest.json", manifest.to_dict())
    return manifest

