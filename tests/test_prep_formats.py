"""Every input format prep reads, made here with the real libraries and round-tripped: the shards'
decoded text equals the source text, and every skipped file or record is counted under its reason."""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import json
import lzma
import random
import shutil
import tarfile
import tracemalloc
import zipfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm
import zstandard

from data_prep.cli import main as prep_main
from data_prep.corpus import read_documents
from data_prep.json_array import array_items
from data_prep.skips import SkipLog
from megaseqpe.data import SKIP_REASONS, Manifest, decode_meta, decode_tokens, iter_raw_samples, load_manifest

TEXTS = ["A first document.\nWith two lines.", "  indented, naïve — ünïcödé ✓ 🙂\n",
         "{not json} [nor this]: just text", "x" * 3000 + "\nthe end"]
ENCODINGS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda data: data, "gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress,
    "xz": lzma.compress, "bz2": bz2.compress, "bom": lambda data: b"\xef\xbb\xbf" + data}


def skipped(**counts: int) -> dict[str, int]:
    return {**dict.fromkeys(SKIP_REASONS, 0), **counts}


def shards(tokenizer: Path, out: Path, *inputs: Path, flags: tuple[str, ...] = ()) -> Manifest:
    """``megaseqpe-prep shards`` in-process, everything in train unless ``flags`` say otherwise."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert prep_main(["shards", "--input", *map(str, inputs), "--tokenizer", str(tokenizer), "--out", str(out),
                          "--workers", "1", "--val-fraction", "0", *flags]) == 0
    return load_manifest(out)


def decoded(manifest: Manifest, tokenizer: Path) -> dict[tuple[str, int], str]:
    """Every document of the shards, decoded, by (source, index)."""
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    found = {}
    for split in manifest.splits.values():
        for shard in split.shards:
            for sample in iter_raw_samples(manifest.shard_path(shard)):
                meta = decode_meta(sample)
                found[(meta["source"], meta["index"])] = sp.decode(decode_tokens(sample).tolist())
    return found


def jsonl(records: list[object]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def write_arrow(path: Path, table: pa.Table, stream: bool, chunk: int = 2) -> None:
    with pa.OSFile(str(path), "wb") as sink:
        with (pa.ipc.new_stream if stream else pa.ipc.new_file)(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=chunk)


def test_plain_text_and_markdown(tmp_path: Path, data_tokenizer: Path) -> None:
    """Text that merely starts like JSON (wikitext, a Markdown link) stays text, whatever its name."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sources = {"notes.md": "# Title\n\n- [link](http://x) item\n", "prose.txt": TEXTS[1],
               "wiki.json": "{{Infobox | name = x}}\n'''X''' is a thing.\n", "links.md": "[a](b) and [c](d)\n",
               "sub/README": "no suffix at all\n"}
    for name, text in sources.items():
        (corpus / name).parent.mkdir(exist_ok=True)
        (corpus / name).write_text(text, encoding="utf-8")
    (corpus / "zipped.md.zst").write_bytes(zstandard.ZstdCompressor().compress(TEXTS[0].encode()))
    manifest = shards(data_tokenizer, tmp_path / "out", corpus)
    expected = {(name, 0): text for name, text in {**sources, "zipped.md.zst": TEXTS[0]}.items()}
    assert decoded(manifest, data_tokenizer) == expected
    assert (manifest.inputs.files_seen, manifest.inputs.documents) == (6, 6)
    assert manifest.inputs.skipped == skipped()


@pytest.mark.parametrize("name,encoding", [
    ("c4-train.00000-of-01024.json.gz", "gzip"), ("data.jsonl", "none"), ("data.ndjson.zst", "zstd"),
    ("data.json.xz", "xz"), ("data.jsonl.bz2", "bz2"), ("misnamed.txt", "zstd"), ("no-suffix", "none"),
    ("excel-export.jsonl", "bom")])
def test_json_lines(tmp_path: Path, data_tokenizer: Path, name: str, encoding: str) -> None:
    records = [{"body": TEXTS[0], "id": 1}, {"id": 2}, {"body": None}, {"body": 7}, {"body": "  \n"},
               {"body": TEXTS[1]}, ["body"], {"body": TEXTS[3]}]
    data = jsonl(records[:3]) + b"\n" + b'{"body": "cut\n' + jsonl(records[3:])  # a blank and a broken line
    (tmp_path / name).write_bytes(ENCODINGS[encoding](data))
    manifest = shards(data_tokenizer, tmp_path / "out", tmp_path / name, flags=("--text-key", "body"))
    assert decoded(manifest, data_tokenizer) == {(name, 0): TEXTS[0], (name, 1): TEXTS[1], (name, 2): TEXTS[3]}
    assert manifest.inputs.skipped == skipped(missing_key=2, not_text=2, empty=1, corrupt=1)
    examples = "\n".join(manifest.inputs.examples_skipped)
    for needle in [f"{name}:2: no 'body' key", f"{name}:3: 'body' is null, not a string",
                   f"{name}:5: undecodable JSON line", f"{name}:6: 'body' is a number",
                   f"{name}:7: empty 'body'", f"{name}:9: an array, not an object with 'body'"]:
        assert needle in examples


@pytest.mark.parametrize("encoding", ["none", "gzip", "bom"])
def test_json_array(tmp_path: Path, data_tokenizer: Path, encoding: str) -> None:
    records = [{"text": TEXTS[0]}, {"meta": 1}, {"text": TEXTS[2]}, {"text": False}, {"text": TEXTS[3]}]
    path = tmp_path / "records.json"
    path.write_bytes(ENCODINGS[encoding](json.dumps(records, indent=2).encode()))
    manifest = shards(data_tokenizer, tmp_path / "out", path)
    assert decoded(manifest, data_tokenizer) == {("records.json", i): TEXTS[t] for i, t in enumerate([0, 2, 3])}
    assert manifest.inputs.skipped == skipped(missing_key=1, not_text=1)
    assert manifest.inputs.examples_skipped[0].endswith("records.json[1]: no 'text' key")


def test_json_array_items_decode_across_any_read_size() -> None:
    """Elements cut anywhere by the reads (numbers, escapes, surrogate pairs) decode exactly."""
    rng = random.Random(0)
    alphabet = ['a', ' ', '"', '\\', '\n', 'é', '🙂', '\u2028']
    items = [{"text": "".join(rng.choices(alphabet, k=rng.randrange(40))), "n": rng.random() * 1e-20,
              "k": [rng.randrange(-10 ** 9, 10 ** 9), None, True, {}]} for _ in range(30)] + [1.5e300, "tail"]
    for ascii_only in (True, False):
        text = json.dumps(items, ensure_ascii=ascii_only, indent=1)
        for size in (1, 2, 3, 5, 13, 1 << 20):
            stream = io.StringIO(text)
            assert list(array_items(lambda _, s=stream, n=size: s.read(n))) == items


@pytest.mark.parametrize("name,rows_per_group", [("data.parquet", 2), ("data.bin", 1000)])
def test_parquet(tmp_path: Path, data_tokenizer: Path, name: str, rows_per_group: int) -> None:
    table = pa.table({"id": [0, 1, 2, 3, 4], "content": [TEXTS[3], None, TEXTS[1], "", TEXTS[0]]})
    pq.write_table(table, tmp_path / name, row_group_size=rows_per_group)
    manifest = shards(data_tokenizer, tmp_path / "out", tmp_path / name, flags=("--text-key", "content"))
    assert decoded(manifest, data_tokenizer) == {(name, 0): TEXTS[3], (name, 1): TEXTS[1], (name, 2): TEXTS[0]}
    assert manifest.inputs.skipped == skipped(not_text=1, empty=1)
    assert f"{name}[1]: 'content' is null" in manifest.inputs.examples_skipped[0]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "file"])
def test_arrow_ipc(tmp_path: Path, data_tokenizer: Path, stream: bool) -> None:
    write_arrow(tmp_path / "data.arrow", pa.table({"text": TEXTS + [None]}), stream)
    manifest = shards(data_tokenizer, tmp_path / "out", tmp_path / "data.arrow")
    assert decoded(manifest, data_tokenizer) == {("data.arrow", i): text for i, text in enumerate(TEXTS)}
    assert manifest.inputs.skipped == skipped(not_text=1)


def save_to_disk(folder: Path, texts: list[str], files: int = 1) -> None:
    """What Hugging Face ``Dataset.save_to_disk`` writes: Arrow IPC stream data files, the
    dataset's info and its state listing them (both indented JSON)."""
    folder.mkdir(parents=True)
    table = pa.table({"id": list(range(len(texts))), "text": texts})
    names = [f"data-{i:05d}-of-{files:05d}.arrow" for i in range(files)]
    step = -(-len(texts) // files)
    for i, name in enumerate(names):
        write_arrow(folder / name, table.slice(i * step, step), stream=True, chunk=1000)
    info = {"citation": "", "description": "", "features": {"id": {"dtype": "int64", "_type": "Value"},
            "text": {"dtype": "string", "_type": "Value"}}, "homepage": "", "license": ""}
    (folder / "dataset_info.json").write_text(json.dumps(info, indent=2))
    state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": "0123456789abcdef",
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))


def test_hugging_face_save_to_disk_folders(tmp_path: Path, data_tokenizer: Path) -> None:
    """A dataset folder is one input, its data files one table; its JSON metadata is no document.
    A DatasetDict's splits are one input each; a folder given as the input is named by its name."""
    save_to_disk(tmp_path / "corpus" / "hf", TEXTS, files=2)
    save_to_disk(tmp_path / "corpus" / "dd" / "train", TEXTS[:2])
    save_to_disk(tmp_path / "corpus" / "dd" / "test", TEXTS[2:])
    (tmp_path / "corpus" / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    manifest = shards(data_tokenizer, tmp_path / "out", tmp_path / "corpus")
    expected = {**{("hf", i): t for i, t in enumerate(TEXTS)}, **{("dd/train", i): t for i, t in enumerate(TEXTS[:2])},
                **{("dd/test", i): t for i, t in enumerate(TEXTS[2:])}}
    assert decoded(manifest, data_tokenizer) == expected
    assert (manifest.inputs.files_seen, manifest.inputs.documents) == (3, 8)
    assert manifest.inputs.skipped == skipped()
    alone = shards(data_tokenizer, tmp_path / "alone", tmp_path / "corpus" / "hf", flags=("--glob", "*.txt"))
    assert decoded(alone, data_tokenizer) == {("hf", i): t for i, t in enumerate(TEXTS)}


def make_bad_inputs(root: Path) -> dict[str, str]:
    """One file per way of not being usable; returns the start of each file's skip example."""
    root.mkdir()
    with zipfile.ZipFile(root / "a.zip", "w") as archive:
        archive.writestr("inside.txt", "text")
    with tarfile.open(root / "b.tar.gz", "w:gz") as archive:
        info = tarfile.TarInfo("inside.txt")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"text"))
    (root / "c.json").write_text(json.dumps({"config": {"a": 1}}, indent=2))
    pq.write_table(pa.table({"body": ["x"]}), root / "d.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), root / "e.parquet")
    (root / "f.parquet.gz").write_bytes(gzip.compress((root / "d.parquet").read_bytes()))
    # Over 128 KiB, zstd's largest block: the cut spares the first blocks, read to tell the format.
    rng = random.Random(0)
    records = jsonl([{"text": f"{rng.getrandbits(4000):x}"} for _ in range(300)])
    (root / "g.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records)[:-20])
    (root / "h.json").write_text('[{"text": "kept"}, {"text": }, {"text": "lost"}]')
    (root / "i.json").write_text("[]")
    return {"a.zip": "a zip archive", "b.tar.gz": "a tar archive", "c.json": "one JSON document over several lines",
            "d.parquet": "no column 'text' (has: body)", "e.parquet": "column 'text' is int64, not a string",
            "f.parquet.gz": "Parquet inside gzip", "g.jsonl.zst": "truncated or invalid zstd JSON Lines",
            "h.json[1]": "malformed JSON array", "i.json": "no records"}


def test_unusable_inputs_are_named_and_counted(tmp_path: Path, data_tokenizer: Path) -> None:
    needles = make_bad_inputs(tmp_path / "bad")
    (tmp_path / "bad" / "good.txt").write_text(TEXTS[0])
    manifest = shards(data_tokenizer, tmp_path / "out", tmp_path / "bad")
    found = decoded(manifest, data_tokenizer)
    assert found.pop(("h.json", 0)) == "kept" and found.pop(("good.txt", 0)) == TEXTS[0]
    assert {key[0] for key in found} == {"g.jsonl.zst"}  # the records before the truncation
    assert manifest.inputs.skipped == skipped(unsupported=4, missing_key=1, not_text=1, corrupt=2, empty=1)
    examples = sorted(manifest.inputs.examples_skipped)
    assert len(examples) == len(needles)
    for example, (where, needle) in zip(examples, sorted(needles.items())):
        assert example.startswith(f"{tmp_path / 'bad' / where}: ") and needle in example, example


@pytest.mark.parametrize("kind", ["jsonl", "array"])
def test_records_stream_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    """Reading 16 MB of records (zstd, 1 MB on disk) never holds more than a few records."""
    records = [{"text": f"record {i} " + "word " * 200} for i in range(16_000)]
    data = jsonl(records) if kind == "jsonl" else json.dumps(records).encode()
    (tmp_path / "big").write_bytes(zstandard.ZstdCompressor().compress(data))
    skips = SkipLog()
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_documents([tmp_path / "big"], skips))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == len(records) and skips.total == 0
    assert peak < 4 << 20, f"peak {peak:,} bytes for {len(data):,} bytes of records"


def test_split_and_shards_do_not_depend_on_where_the_corpus_is(tmp_path: Path, data_tokenizer: Path) -> None:
    """The same corpus at two absolute paths gives byte-identical shards and the same split."""
    corpus = tmp_path / "a" / "corpus"
    corpus.mkdir(parents=True)
    for i, text in enumerate(TEXTS * 3):
        (corpus / f"doc{i}.txt").write_text(f"{i}: {text}")
    (corpus / "records.jsonl.gz").write_bytes(gzip.compress(jsonl([{"text": f"record {i}"} for i in range(20)])))
    save_to_disk(corpus / "hf", TEXTS)
    shutil.copytree(corpus, tmp_path / "elsewhere" / "deeper" / "renamed")
    first = shards(data_tokenizer, tmp_path / "out1", corpus, flags=("--val-fraction", "0.5"))
    second = shards(data_tokenizer, tmp_path / "out2", tmp_path / "elsewhere" / "deeper" / "renamed",
                    flags=("--val-fraction", "0.5"))
    assert first.splits == second.splits and first.inputs.documents == 36
    assert first.splits["train"].samples and first.splits["val"].samples


def test_tokenizer_learns_from_record_texts_not_their_syntax(tmp_path: Path) -> None:
    """``megaseqpe-prep tokenizer`` reads the same formats: it learns the records' words, not JSON keys."""
    path = tmp_path / "records.json.gz"
    path.write_bytes(gzip.compress(jsonl([{"text": f"zqxjv number {i} of many"} for i in range(400)])))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert prep_main(["tokenizer", "--input", str(path), "--vocab-size", "300",
                          "--out", str(tmp_path / "tok")]) == 0
    assert "1 file(s) read; skipped 0 inputs" in out.getvalue()
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tok" / "tokenizer.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    assert "z" in pieces and "▁many" in pieces  # read as JSON, the lines would make these pieces:
    assert not [piece for piece in pieces if set(piece) & set('{}":')]
