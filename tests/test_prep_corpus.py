"""Bad corpus content is counted and reported, never fatal and never silently dropped."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import sentencepiece as spm

from data_prep.cli import main as prep_main
from data_prep.corpus import read_documents
from data_prep.discovery import discover_files
from data_prep.skips import SkipLog
from megaseqpe.data import MAX_SKIP_EXAMPLES, SKIP_REASONS, decode_meta, decode_tokens, iter_raw_samples, load_manifest

GOOD_TEXT = "def hello():\n    return 'wörld'\n"


def make_bad_corpus(root: Path) -> dict[tuple[str, int], str]:
    """One file of each bad kind plus good text/.jsonl/.jsonl.gz; returns the good documents by
    (name below ``root``, index)."""
    root.mkdir()
    (root / "good.txt").write_text(GOOD_TEXT, encoding="utf-8")
    (root / "empty.txt").write_text("")
    (root / "binary.dat").write_bytes(b"abc\x00\x01\x02")
    (root / "latin1.txt").write_bytes("caf\xe9 ol\xe9".encode("latin-1"))
    (root / "unreadable.txt").symlink_to(root / "gone")  # dangling: open() fails, even as root
    good_gz = gzip.compress(b"some compressed text that is long enough " * 50)
    (root / "truncated.txt.gz").write_bytes(good_gz[: len(good_gz) // 2])
    lines = [json.dumps({"text": "first line doc"}), '{"text": "broken', json.dumps({"text": "second"})]
    (root / "docs.jsonl").write_text("\n".join(lines) + "\n")
    (root / "more.jsonl.gz").write_bytes(gzip.compress(
        (json.dumps({"text": "gz one"}) + "\n" + json.dumps({"text": "gz two"}) + "\n").encode()))
    return {("good.txt", 0): GOOD_TEXT, ("docs.jsonl", 0): "first line doc", ("docs.jsonl", 1): "second",
            ("more.jsonl.gz", 0): "gz one", ("more.jsonl.gz", 1): "gz two"}


EXPECTED_SKIPS = {**dict.fromkeys(SKIP_REASONS, 0), "empty": 1, "binary": 1, "bad_utf8": 1, "unreadable": 1,
                  "corrupt": 2}


def test_each_bad_kind_is_counted(tmp_path: Path) -> None:
    good = make_bad_corpus(tmp_path / "corpus")
    skips = SkipLog()
    docs = list(read_documents(discover_files([tmp_path / "corpus"]), skips))
    assert {(d.source, d.index): d.text for d in docs} == good
    assert skips.as_dict() == EXPECTED_SKIPS
    reasons = "\n".join(skips.examples)
    for needle in ["empty.txt: empty file", "binary.dat: binary file", "latin1.txt: invalid UTF-8",
                   "unreadable.txt: No such file", "truncated.txt.gz: truncated or invalid gzip",
                   "docs.jsonl:2: undecodable JSON line"]:
        assert needle in reasons


def test_bad_corpus_through_the_cli(tmp_path: Path, data_tokenizer: Path) -> None:
    """The manifest lists every good document and the exact skip counts; a summary line is printed."""
    good = make_bad_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "data_prep", "shards", "--input",
                             str(tmp_path / "corpus"), "--tokenizer", str(data_tokenizer), "--out",
                             str(out), "--val-fraction", "0", "--workers", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert ("skipped 6 inputs: empty 1, binary 1, bad_utf8 1, unreadable 1, corrupt 2"
            in result.stdout)
    manifest = load_manifest(out)
    assert manifest.inputs.skipped == EXPECTED_SKIPS
    assert manifest.inputs.files_seen == 8 and manifest.inputs.documents == len(good)
    assert len(manifest.inputs.examples_skipped) == 6
    sp = spm.SentencePieceProcessor(model_file=str(data_tokenizer))
    found = {}
    for shard in manifest.splits["train"].shards:
        for sample in iter_raw_samples(manifest.shard_path(shard)):
            meta = decode_meta(sample)
            found[(meta["source"], meta["index"])] = sp.decode(decode_tokens(sample).tolist())
    assert found == good


def test_examples_are_capped(tmp_path: Path) -> None:
    for i in range(MAX_SKIP_EXAMPLES + 5):
        (tmp_path / f"e{i:02d}.txt").write_text("  \n")
    skips = SkipLog()
    assert list(read_documents(discover_files([tmp_path]), skips)) == []
    assert skips.counts["empty"] == MAX_SKIP_EXAMPLES + 5
    assert len(skips.examples) == MAX_SKIP_EXAMPLES


def test_glob_and_text_key(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir(parents=True)
    (tmp_path / "sub" / "a.py").write_text("a = 1\n")
    (tmp_path / "b.txt").write_text("b\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "c"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    assert discover_files([tmp_path], ["*.py"]) == [tmp_path / "sub" / "a.py"]
    assert discover_files([tmp_path], ["sub/*"]) == [tmp_path / "sub" / "a.py"]
    # an explicit file is always taken; duplicates collapse; order is stable
    assert discover_files([tmp_path / "b.txt", tmp_path], ["*.py"]) == [tmp_path / "b.txt",
                                                                         tmp_path / "sub" / "a.py"]
    skips = SkipLog()
    docs = list(read_documents([tmp_path / "c.jsonl"], skips, text_key="body"))
    assert [d.text for d in docs] == ["c"] and skips.counts["missing_key"] == skips.total == 1
    assert "c.jsonl:2: no 'body' key" in skips.examples[0]


def test_symlinked_directories_are_followed_and_loops_counted(tmp_path: Path, data_tokenizer: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "linked.txt").write_text("a document behind a symlinked directory\n")
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "own.txt").write_text("a document of the corpus itself\n")
    (corpus / "linked").symlink_to(elsewhere, target_is_directory=True)
    (corpus / "sub" / "loop").symlink_to(corpus, target_is_directory=True)  # walked naively: forever
    skips = SkipLog()
    assert discover_files([corpus], skips=skips) == [corpus / "own.txt", corpus / "linked" / "linked.txt"]
    assert skips.as_dict()["unreadable"] == 1
    assert skips.examples == [f"{corpus}/sub/loop: symlink loop to {os.path.realpath(corpus)}, not followed"]
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert prep_main(["shards", "--input", str(corpus), "--tokenizer", str(data_tokenizer), "--out", str(out),
                          "--val-fraction", "0", "--workers", "1"]) == 0
    manifest = load_manifest(out)
    assert (manifest.inputs.files_seen, manifest.inputs.documents) == (2, 2)
    assert manifest.inputs.skipped["unreadable"] == 1 and "symlink loop" in manifest.inputs.examples_skipped[0]
