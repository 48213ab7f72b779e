"""megaseqpe-prep as a user runs it: --help, and one clear line (no traceback) per user mistake."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "megaseqpe-prep"


def prep(*args: str, module: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "data_prep", *args] if module else [str(BIN), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("sub", ["tokenizer", "shards"])
def test_help_documents_every_flag(sub: str) -> None:
    result = prep(sub, "--help", module=False)
    assert result.returncode == 0
    flags = {"tokenizer": ["--vocab-size", "--model-type", "--max-sentences", "--out", "--overwrite"],
             "shards": ["--tokenizer", "--val-fraction", "--shard-tokens", "--workers", "--overwrite"]}
    for flag in ["--input", "--glob", "--text-key", "--stdlib-corpus", *flags[sub]]:
        assert flag in result.stdout


def test_top_level_help_lists_subcommands() -> None:
    result = prep("--help")
    assert result.returncode == 0 and "tokenizer" in result.stdout and "shards" in result.stdout


def test_the_command_lines_start_without_importing_torch() -> None:
    """--help and every argument error come back at once: importing torch takes seconds, and no
    command line module needs it before its command runs."""
    modules = ["data_prep.cli", "megaseqpe.training.cli", "megaseqpe.evaluation.cli", "megaseqpe.generation.cli",
               "megaseqpe.export.cli"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(sorted(m for m in sys.modules if m.startswith('torch')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_missing_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert_one_line_error(prep("tokenizer", "--input", str(missing), "--vocab-size", "300",
                               "--out", str(tmp_path / "tok")), "input not found", str(missing))


def test_no_input_given(tmp_path: Path) -> None:
    assert_one_line_error(prep("tokenizer", "--vocab-size", "300", "--out", str(tmp_path)), "--input")


def test_missing_tokenizer(tmp_path: Path, data_corpus_files) -> None:
    assert_one_line_error(prep("shards", "--input", str(data_corpus_files[0]), "--tokenizer",
                               str(tmp_path / "tok.model"), "--out", str(tmp_path / "o")),
                          "tokenizer not found", "tok.model")


def test_not_a_tokenizer(tmp_path: Path, data_corpus_files) -> None:
    fake = tmp_path / "tokenizer.model"
    fake.write_text("not a model")
    assert_one_line_error(prep("shards", "--input", str(data_corpus_files[0]), "--tokenizer",
                               str(fake), "--out", str(tmp_path / "o")), "not a SentencePiece model")


def test_unwritable_output(tmp_path: Path, data_corpus_files, data_tokenizer) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a path below a regular file cannot be created, even by root
    assert_one_line_error(prep("shards", "--input", str(data_corpus_files[0]), "--tokenizer",
                               str(data_tokenizer), "--out", str(blocker / "out")),
                          "cannot write to output directory", str(blocker / "out"))
    assert_one_line_error(prep("tokenizer", "--input", str(data_corpus_files[0]), "--vocab-size",
                               "300", "--out", str(blocker / "tok")), "cannot write")


def test_vocab_too_large_for_corpus(tmp_path: Path, data_corpus_files) -> None:
    result = prep("tokenizer", "--input", str(data_corpus_files[0]), "--vocab-size", "50000",
                  "--out", str(tmp_path / "tok"))
    assert_one_line_error(result, "--vocab-size 50000", "too high")
    assert not list((tmp_path / "tok").iterdir())  # nothing half-written


def test_existing_output_needs_overwrite(tmp_path: Path, data_corpus_files, data_tokenizer) -> None:
    args = ["shards", "--input", *map(str, data_corpus_files[:3]), "--tokenizer", str(data_tokenizer),
            "--out", str(tmp_path / "out"), "--workers", "1"]
    first = prep(*args)
    assert first.returncode == 0, first.stderr
    assert "wrote" in first.stdout and "skipped" in first.stdout
    assert_one_line_error(prep(*args), "already holds", "--overwrite")
    before = (tmp_path / "out" / "manifest.json").read_bytes()
    again = prep(*args, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out" / "manifest.json").read_bytes() == before


def test_existing_tokenizer_needs_overwrite(tmp_path: Path, data_tokenizer) -> None:
    out = tmp_path / "tok"
    out.mkdir()
    shutil.copy(data_tokenizer, out / "tokenizer.model")
    assert_one_line_error(prep("tokenizer", "--input", str(data_tokenizer.parent), "--vocab-size",
                               "300", "--out", str(out)), "already holds tokenizer.model")


@pytest.mark.parametrize("flag,value", [("--val-fraction", "1.5"), ("--shard-tokens", "0"),
                                         ("--workers", "-2")])
def test_bad_flag_values(tmp_path: Path, flag: str, value: str) -> None:
    result = prep("shards", "--input", str(tmp_path), "--tokenizer", "t", "--out", "o", flag, value)
    assert result.returncode == 2
    assert_one_line_error(result, flag)


def test_no_documents_at_all(tmp_path: Path, data_tokenizer) -> None:
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(prep("shards", "--input", str(tmp_path / "empty.txt"), "--tokenizer",
                               str(data_tokenizer), "--out", str(tmp_path / "o")),
                          "no documents", "empty 1")
