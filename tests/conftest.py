"""Data-test fixtures (all prefixed ``data_``): a real tokenizer and real shards, built once.

The corpus is a slice of Python's standard library sources, so nothing is downloaded; the
tokenizer is a real SentencePiece model and the shards are real WebDataset tars written by
``megaseqpe-prep`` itself.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.cli import main as prep_main
from megaseqpe.data import stdlib_sources

DATA_CORPUS_BYTES = 600_000
DATA_VOCAB = 1000


@pytest.fixture(scope="session")
def data_corpus_files() -> list[Path]:
    """About 600 kB of stdlib .py files (a few dozen documents)."""
    return stdlib_sources(max_bytes=DATA_CORPUS_BYTES)


@pytest.fixture(scope="session")
def data_tokenizer(tmp_path_factory: pytest.TempPathFactory, data_corpus_files: list[Path]) -> Path:
    """A unigram SentencePiece model trained on the corpus."""
    out = tmp_path_factory.mktemp("data_tok")
    args = ["tokenizer", "--input", *map(str, data_corpus_files), "--vocab-size", str(DATA_VOCAB),
            "--out", str(out)]
    assert prep_main(args) == 0
    return out / "tokenizer.model"


def _build_shards(corpus: list[Path], tokenizer: Path, out: Path, *extra: str) -> Path:
    args = ["shards", "--input", *map(str, corpus), "--tokenizer", str(tokenizer), "--out", str(out),
            *extra]
    assert prep_main(args) == 0
    return out / "manifest.json"


@pytest.fixture(scope="session")
def data_build_shards():
    """``build(corpus_files, tokenizer, out_dir, *extra_flags) -> manifest path`` (in-process CLI)."""
    return _build_shards


@pytest.fixture(scope="session")
def data_manifest(tmp_path_factory: pytest.TempPathFactory, data_corpus_files: list[Path],
                  data_tokenizer: Path) -> Path:
    """Shards of ~10k tokens (a dozen train shards), 10% validation, 2 workers."""
    out = tmp_path_factory.mktemp("data_shards") / "out"
    return _build_shards(data_corpus_files, data_tokenizer, out, "--shard-tokens", "10000",
                             "--val-fraction", "0.1", "--workers", "2")


@pytest.fixture(scope="session")
def vit_digits_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 8x8 digits as image shards (256 images each: 6 train, 2 val), built by the CLI."""
    out = tmp_path_factory.mktemp("vit_digits") / "digits"
    assert prep_main(["images", "--sklearn-digits", "--out", str(out), "--shard-samples", "256",
                      "--val-fraction", "0.15"]) == 0
    return out / "manifest.json"
