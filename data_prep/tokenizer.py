"""Training and loading the SentencePiece tokenizer.

Settings chosen so that any UTF-8 text round-trips exactly (``decode(encode(t)) == t``): byte
fallback for unseen characters, identity normalisation, whitespace kept as it is, no dummy
prefix, and newline as its own piece (code and prose keep their line structure cheaply).
Training reads at most ``max_sentences`` lines, sampled uniformly from the whole corpus
(SentencePiece's reservoir sampling), so memory stays bounded on any corpus size.

SentencePiece silently drops every line longer than its ``max_sentence_length`` (in bytes), so a
corpus of long lines (minified code, one-line dumps) would train on nothing of them. Lines longer
than :data:`SENTENCE_CHARS` characters are therefore cut into pieces of at most that many, at word
boundaries where possible, and the cuts are counted (:class:`LineSplits`) and reported.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm
from tqdm import tqdm

from .corpus import Document, FileDocument, split_text
from .errors import UserError
from .outputs import commit, temp_path

MODEL_TYPES = ("unigram", "bpe")
MODEL_NAME = "tokenizer.model"
VOCAB_NAME = "tokenizer.vocab"


#: Longest sentence handed to SentencePiece, in characters; its byte limit is set to 4x this,
#: the most UTF-8 bytes so many characters can take, so that it never drops one.
SENTENCE_CHARS = 4096


@dataclass
class LineSplits:
    """Turns documents into SentencePiece sentences (their non-blank lines, long ones cut) and
    counts the lines longer than ``limit`` characters and the sentences they were cut into."""

    limit: int = SENTENCE_CHARS
    lines: int = 0
    pieces: int = 0
    _length: int = field(default=0, init=False, repr=False)  # characters of the current line so far
    _parts: int = field(default=0, init=False, repr=False)   # sentences yielded from it so far

    def sentences(self, documents: Iterable[Document | FileDocument]) -> Iterator[str]:
        """Non-blank lines of every document, none longer than ``limit``, with a progress bar.

        Documents come as bounded pieces (a line may span pieces), so lines are tracked across them.
        """
        for doc in tqdm(documents, desc="tokenizer: reading", unit="doc", disable=None):
            for piece in doc.pieces():
                *ended, last = piece.split("\n")
                for fragment in ended:
                    yield from self._cut(fragment)
                    self._end_line()
                yield from self._cut(last)
            self._end_line()

    def _cut(self, fragment: str) -> Iterator[str]:
        self._length += len(fragment)
        for part in split_text(fragment, self.limit):
            if part.strip():
                self._parts += 1
                yield part

    def _end_line(self) -> None:
        if self._length > self.limit:
            self.lines += 1
            self.pieces += self._parts
        self._length = self._parts = 0

    def summary(self) -> str:
        """One line for the terminal, e.g. ``cut 1 line longer than 4,096 characters into 3 pieces``."""
        return (f"cut {self.lines:,} line(s) longer than {self.limit:,} characters into {self.pieces:,} "
                f"pieces (SentencePiece would drop them)")


def _spm_message(exc: Exception) -> str:
    """SentencePiece's own explanation without its C++ source location prefix."""
    return re.sub(r"^.*?\)\s*\[.*?\]\s*", "", str(exc).strip().splitlines()[0])


def train_tokenizer(documents: Iterable[Document | FileDocument], out_dir: Path, *, vocab_size: int,
                    model_type: str = "unigram", max_sentences: int = 1_000_000,
                    character_coverage: float = 0.9995, seed: int = 0,
                    threads: int | None = None) -> tuple[Path, LineSplits]:
    """Train ``out_dir/tokenizer.model`` (+ ``.vocab``); return the model's path and the long lines
    that were cut to fit SentencePiece.

    Raises UserError when the vocabulary does not fit the corpus (too large for what the text
    can support, or too small for the required characters and bytes).
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"--model-type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    model, vocab = out_dir / MODEL_NAME, out_dir / VOCAB_NAME
    prefix = temp_path(out_dir / "tokenizer")
    splits = LineSplits()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=splits.sentences(documents), model_prefix=str(prefix),
            max_sentence_length=4 * splits.limit,
            vocab_size=vocab_size, model_type=model_type, byte_fallback=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, allow_whitespace_only_pieces=True,
            user_defined_symbols=["\n"], character_coverage=character_coverage,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            num_threads=threads or os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as exc:
        for leftover in (Path(f"{prefix}.model"), Path(f"{prefix}.vocab")):
            leftover.unlink(missing_ok=True)
        raise UserError(f"--vocab-size {vocab_size} does not fit this corpus: "
                        f"{_spm_message(exc)}") from None
    os.replace(f"{prefix}.vocab", vocab)
    os.replace(f"{prefix}.model", temp_path(model))
    commit(model)
    return model, splits


def load_tokenizer(path: Path) -> spm.SentencePieceProcessor:
    """A trained model with an EOS piece, or UserError saying what is wrong with ``path``."""
    if not path.is_file():
        raise UserError(f"tokenizer not found: {path} (train one with `megaseqpe-prep tokenizer`)")
    try:
        processor = spm.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as exc:
        raise UserError(f"{path} is not a SentencePiece model: {_spm_message(exc)}") from None
    if processor.eos_id() < 0:
        raise UserError(f"tokenizer {path} has no EOS piece; documents need a separator")
    return processor


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
