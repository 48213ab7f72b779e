"""Long lines and long documents in prep: nothing dropped, nothing held whole, all of it counted."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from data_prep.cli import main as prep_main
from data_prep.corpus import LARGE_FILE_BYTES, PIECE_CHARS, FileDocument, read_documents, split_text
from data_prep.skips import SkipLog
from data_prep.tokenizer import SENTENCE_CHARS, LineSplits
from megaseqpe.data import decode_tokens, iter_raw_samples, load_manifest


def test_split_text_cuts_at_lines_then_words_and_joins_back() -> None:
    text = "one two three\nfour five six seven eight\n" + "x" * 25
    pieces = list(split_text(text, 12))
    assert "".join(pieces) == text and max(map(len, pieces)) <= 12
    assert pieces[:4] == ["one two", " three\n", "four five", " six seven"]  # words keep their leading space
    assert pieces[-2:] == ["x" * 12, "x"]  # no boundary at all: cut at the limit


class Pieces:
    """A document that arrives in the given pieces (as a large file's does)."""

    def __init__(self, *pieces: str) -> None:
        self._pieces = pieces

    def pieces(self) -> tuple[str, ...]:
        return self._pieces


def test_line_splits_count_lines_across_pieces() -> None:
    splits = LineSplits(limit=10)
    sentences = list(splits.sentences([Pieces("short\nabcde fghij ", "klmno pqrst\n  \nend"), Pieces("x" * 25)]))
    assert sentences == ["short", "abcde", " fghij ", "klmno", " pqrst", "end", "x" * 10, "x" * 10, "x" * 5]
    assert (splits.lines, splits.pieces) == (2, 7)  # the 24-character line split over two pieces, the 25 x


def test_long_line_reaches_sentencepiece_and_is_counted(tmp_path: Path, data_corpus_files: list[Path],
                                                        capsys: pytest.CaptureFixture) -> None:
    """SentencePiece drops lines over its max_sentence_length without a word; cut, this one is
    learnt from: its made-up word becomes a piece of the vocabulary."""
    line = "zqxjv " * 40_000
    (tmp_path / "long.txt").write_text(f"a short line\n{line}\n")
    assert prep_main(["tokenizer", "--input", *map(str, data_corpus_files[:15]), str(tmp_path / "long.txt"),
                      "--vocab-size", "1000", "--out", str(tmp_path / "tok")]) == 0
    pieces = len(list(split_text(line, SENTENCE_CHARS)))
    summary = f"cut 1 line(s) longer than {SENTENCE_CHARS:,} characters into {pieces} pieces"
    out, err = capsys.readouterr()
    assert summary in out and f"megaseqpe-prep tokenizer: note: {summary}" in err
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    assert sp.piece_to_id("▁zqxjv") != sp.unk_id()


@pytest.mark.parametrize("tail,reason,at", [
    (b"", None, 0),
    (b" \x00", "binary file (NUL byte at offset {})", 1),
    (b" caf\xe9", "invalid UTF-8 at byte {}", 4),
    (b" \xe2\x82", "invalid UTF-8 at byte {}", 1),  # the file ends inside a character
])
def test_large_file_is_checked_and_read_in_pieces(tmp_path: Path, tail: bytes, reason: str | None,
                                                  at: int) -> None:
    """A file over LARGE_FILE_BYTES is checked in blocks first (a bad byte at its very end skips it
    whole, at the exact offset) and then read as bounded pieces that join back to it."""
    path = tmp_path / "one-line.txt"
    words = "naïve words on one line ".encode()  # ï: characters straddle the read blocks
    body = words * (LARGE_FILE_BYTES // len(words) + 1)
    path.write_bytes(body + tail)
    skips = SkipLog()
    documents = list(read_documents([path], skips))
    if reason:
        assert documents == [] and skips.examples == [f"{path}: {reason.format(len(body) + at)}"]
        return
    assert documents == [FileDocument("one-line.txt", str(path))] and skips.total == 0
    pieces = list(documents[0].pieces())
    assert len(pieces) > 1 and max(map(len, pieces)) <= PIECE_CHARS
    assert all(piece.startswith(" ") for piece in pieces[1:])
    assert "".join(pieces) == path.read_text(encoding="utf-8")


def test_long_document_is_one_sample_encoded_in_pieces(tmp_path: Path, data_corpus_files: list[Path],
                                                       data_tokenizer: Path) -> None:
    """A document longer than PIECE_CHARS is encoded piece by piece and streamed into its shard:
    still one sample (one EOS), the exact bytes np.save gives its tokens, which decode to it."""
    code = "".join(path.read_text(encoding="utf-8") for path in data_corpus_files)
    text = code * (PIECE_CHARS // len(code) + 1)
    assert len(text) > PIECE_CHARS
    (tmp_path / "long.py").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        assert prep_main(["shards", "--input", str(tmp_path / "long.py"), "--tokenizer", str(data_tokenizer),
                          "--out", str(out), "--val-fraction", "0", "--workers", "1"]) == 0
    manifest = load_manifest(out)
    [shard] = manifest.splits["train"].shards
    [sample] = list(iter_raw_samples(manifest.shard_path(shard)))
    tokens = decode_tokens(sample)
    assert manifest.inputs.documents == shard.samples == 1 and shard.tokens == len(tokens)
    saved = io.BytesIO()
    np.save(saved, tokens, allow_pickle=False)
    assert sample["tokens.npy"] == saved.getvalue()
    sp = spm.SentencePieceProcessor(model_file=str(data_tokenizer))
    assert sp.decode(tokens.tolist()) == text
    assert len(tokens) == pytest.approx(len(sp.encode(text)), rel=1e-4)  # nearly the tokens of one piece
