"""megaseqpe-prep shards on real stdlib text with a real SentencePiece model: content and format."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data_prep.discovery import input_root
from data_prep.shards import is_val
from megaseqpe.data import decode_meta, decode_tokens, iter_raw_samples, load_manifest, token_dtype


def _samples(manifest_path: Path):
    manifest = load_manifest(manifest_path)
    for split in ("train", "val"):
        for shard in manifest.splits[split].shards:
            for sample in iter_raw_samples(manifest.shard_path(shard)):
                yield split, shard, sample


def test_round_trip_every_document(data_manifest: Path, data_tokenizer: Path,
                                   data_corpus_files: list[Path]) -> None:
    """Decoding a document's tokens gives its file's text exactly; every good file is there."""
    sp = spm.SentencePieceProcessor(model_file=str(data_tokenizer))
    root = input_root(data_corpus_files)
    seen = {}
    for _, _, sample in _samples(data_manifest):
        meta = decode_meta(sample)
        tokens = decode_tokens(sample)
        assert tokens.dtype == np.uint16
        assert sp.decode(tokens.tolist()) == (root / meta["source"]).read_text(encoding="utf-8")
        assert meta["index"] == 0
        seen[meta["source"]] = sample["__key__"]
    non_empty = {f.relative_to(root).as_posix() for f in data_corpus_files if f.read_text().strip()}
    assert set(seen) == non_empty
    assert len(set(seen.values())) == len(seen)  # keys unique
    manifest = load_manifest(data_manifest)
    assert manifest.inputs.documents == len(seen)
    assert manifest.inputs.files_seen == len(data_corpus_files)
    assert manifest.inputs.skipped["empty"] == len(data_corpus_files) - len(non_empty)


def test_manifest_counts_and_hashes(data_manifest: Path, data_tokenizer: Path) -> None:
    manifest = load_manifest(data_manifest)
    raw = json.loads(data_manifest.read_text())
    assert raw["format_version"] == 1 and raw["kind"] == "text"
    assert raw["created_by"].startswith("megaseqpe-prep ")
    assert manifest.tokenizer_path().resolve() == data_tokenizer.resolve()
    assert manifest.tokenizer.eos_id == spm.SentencePieceProcessor(model_file=str(data_tokenizer)).eos_id()
    assert len(manifest.splits["train"].shards) >= 8 and len(manifest.splits["val"].shards) >= 1
    for split in manifest.splits.values():
        for shard in split.shards:
            path = manifest.shard_path(shard)
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
            lengths = [len(decode_tokens(s)) for s in iter_raw_samples(path)]
            assert (len(lengths), sum(lengths)) == (shard.samples, shard.tokens)
            # A shard closes at the first document that reaches --shard-tokens.
            assert sum(lengths[:-1]) < 10000
    assert not list(data_manifest.parent.rglob("*.tmp"))


def test_val_split_is_a_stable_hash_of_the_key(data_manifest: Path) -> None:
    fractions = []
    for split, _, sample in _samples(data_manifest):
        assert is_val(sample["__key__"], 0.1) == (split == "val")
        fractions.append(split == "val")
    assert 0 < sum(fractions) < len(fractions)


def test_tar_headers_are_pinned(data_manifest: Path) -> None:
    manifest = load_manifest(data_manifest)
    with tarfile.open(manifest.shard_path(manifest.splits["train"].shards[0])) as tar:
        members = tar.getmembers()
    assert members and all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.mode == 0o444
                           and m.uname == "megaseqpe" and not m.pax_headers for m in members)
    names = [m.name for m in members]
    assert names[0].endswith(".meta.json") and names[1].endswith(".tokens.npy")


def test_same_inputs_give_byte_identical_output(tmp_path: Path, data_corpus_files, data_tokenizer,
                                                data_build_shards, data_manifest: Path) -> None:
    """Re-running, with a different number of workers, reproduces every byte."""
    again = data_build_shards(data_corpus_files, data_tokenizer, tmp_path / "again", "--shard-tokens",
                              "10000", "--val-fraction", "0.1", "--workers", "1")
    first = {p.relative_to(data_manifest.parent): p.read_bytes()
             for p in data_manifest.parent.rglob("*") if p.is_file()}
    second = {p.relative_to(again.parent): p.read_bytes() for p in again.parent.rglob("*") if p.is_file()}
    assert first.keys() == second.keys()
    for name in first:
        if name.name != "manifest.json":
            assert first[name] == second[name], name
    a, b = json.loads(data_manifest.read_text()), json.loads(again.read_text())
    assert a["splits"] == b["splits"] and a["inputs"] == b["inputs"]


def test_bpe_tokenizer_round_trips(tmp_path: Path, data_corpus_files, data_build_shards) -> None:
    from data_prep.cli import main

    files = data_corpus_files[:8]
    assert main(["tokenizer", "--input", *map(str, files), "--vocab-size", "600", "--model-type", "bpe",
                 "--out", str(tmp_path / "tok")]) == 0
    manifest = data_build_shards(files, tmp_path / "tok" / "tokenizer.model", tmp_path / "out",
                                 "--val-fraction", "0")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    root = input_root(files)
    count = 0
    for split, _, sample in _samples(manifest):
        assert split == "train"
        assert sp.decode(decode_tokens(sample).tolist()) == (root / decode_meta(sample)["source"]).read_text()
        count += 1
    assert count == load_manifest(manifest).inputs.documents > 0
    assert load_manifest(manifest).splits["val"].shards == ()


@pytest.mark.parametrize("vocab,dtype", [(1000, np.uint16), (65536, np.uint16), (65537, np.int32)])
def test_token_dtype(vocab: int, dtype) -> None:
    assert token_dtype(vocab) == np.dtype(dtype)
