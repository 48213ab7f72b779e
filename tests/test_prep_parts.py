"""``megaseqpe-prep shards --part I/N`` and ``merge``: parts partition the inputs, and their merge
has exactly a single-machine run's documents and counts."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from data_prep.cli import main as prep_main
from data_prep.discovery import discover_files, input_root
from data_prep.parts import assign_parts, select_part
from megaseqpe.data import ManifestError, eval_batches, iter_raw_samples, load_manifest
from megaseqpe.data.samples import decode_meta, decode_tokens
from megaseqpe.data.shard_reader import read_verified
from test_prep_corpus import make_bad_corpus

PARTS = 3


def make_corpus(root: Path) -> Path:
    """Files of many sizes (several documents each in .jsonl), every kind of skip, and a symlink
    loop (a skip found while searching the inputs, which every part sees)."""
    make_bad_corpus(root)
    for i in range(14):
        words = " ".join(f"word{j % (7 + i)} line {j}" for j in range(40 * (i + 1)))
        (root / f"doc{i:02d}.md").write_text(f"# Document {i}\n\n{words}\n", encoding="utf-8")
    records = [json.dumps({"text": f"record {n}: " + "abc " * n}) for n in range(1, 30)]
    (root / "records.jsonl").write_text("\n".join(records) + "\n")
    (root / "sub").mkdir()
    (root / "sub" / "loop").symlink_to("..")  # relative: still a loop when the corpus moves
    return root


def shards_args(corpus: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return ["shards", "--input", str(corpus), "--tokenizer", str(tokenizer), "--out", str(out),
            "--workers", "1", "--val-fraction", "0.3", "--shard-tokens", "300", *extra]


def documents(manifest_path: Path, split: str, partial: bool = False) -> Counter:
    """The split's documents as a multiset of (source, index, token bytes), every shard's sha256
    checked against the manifest first."""
    manifest = load_manifest(manifest_path, partial=partial)
    found: Counter = Counter()
    for shard in manifest.split(split).shards:
        path = manifest.shard_path(shard)
        for sample in iter_raw_samples(path, read_verified(path, shard.sha256)):
            meta = decode_meta(sample)
            found[meta["source"], meta["index"], decode_tokens(sample).tobytes()] += 1
    return found


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, data_tokenizer: Path) -> dict[str, Path]:
    """The corpus prepared once as a single run and as PARTS parts (not yet merged)."""
    tmp = tmp_path_factory.mktemp("parts")
    corpus = make_corpus(tmp / "corpus")
    assert prep_main(shards_args(corpus, data_tokenizer, tmp / "single")) == 0
    for index in range(PARTS):
        assert prep_main(shards_args(corpus, data_tokenizer, tmp / "parts", "--part", f"{index}/{PARTS}")) == 0
    return {"corpus": corpus, "single": tmp / "single", "parts": tmp / "parts", "tmp": tmp}


def test_parts_partition_the_inputs_by_name_and_size_wherever_the_corpus_is(tmp_path: Path) -> None:
    sized = [(f"f{i}", size) for i, size in enumerate([50, 7, 7, 300, 0, 120, 64, 64, 9, 1])]
    for count in range(1, 6):
        assigned = assign_parts(sized, count)
        assert set(assigned) <= set(range(count)) and len(assigned) == len(sized)
        loads = [sum(size for (_, size), part in zip(sized, assigned) if part == p) for p in range(count)]
        assert max(loads) - min(loads) <= max(size for _, size in sized), "balanced by bytes"
        assert assign_parts(sized[::-1], count) == assigned[::-1], "a function of (name, size) only"
    first = make_corpus(tmp_path / "a")
    moved = tmp_path / "elsewhere" / "b"
    shutil.copytree(first, moved, symlinks=True)
    names = {}
    for corpus in (first, moved):
        files, root = discover_files([corpus]), input_root([corpus])
        chosen = [select_part(files, root, i, PARTS) for i in range(PARTS)]
        assert len({fingerprint for _, fingerprint in chosen}) == 1
        union = [f for part, _ in chosen for f in part]
        assert sorted(union) == sorted(files) and len(union) == len(files), "each file in exactly one part"
        assert all(part == [f for f in files if f in part] for part, _ in chosen), "input order kept"
        names[corpus] = [sorted(f.relative_to(corpus).as_posix() for f in part) for part, _ in chosen]
    assert names[first] == names[moved] and all(names[first]), "same parts after the move, none empty"


def test_merge_of_parts_equals_a_single_run(prepared: dict[str, Path], tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    shutil.copytree(prepared["parts"], parts)
    assert prep_main(["merge", "--out", str(parts)]) == 0
    single, merged = load_manifest(prepared["single"]), load_manifest(parts)
    assert merged.inputs.files_seen == single.inputs.files_seen
    assert merged.inputs.documents == single.inputs.documents
    assert merged.inputs.skipped == single.inputs.skipped
    assert single.inputs.skipped["unreadable"] == 2, "the dangling link and the loop, each once"
    assert merged.tokenizer == single.tokenizer
    for split in ("train", "val"):
        assert (merged.splits[split].samples, merged.splits[split].tokens) == \
            (single.splits[split].samples, single.splits[split].tokens)
        assert single.splits[split].samples > 3
        assert documents(parts, split) == documents(prepared["single"], split)
    batches = list(eval_batches(parts / "manifest.json", "val", max_seq_len=32, batch_size=4))
    assert sum(b.shape[0] for b in batches) == sum(b.shape[0] for b in eval_batches(
        prepared["single"] / "manifest.json", "val", max_seq_len=32, batch_size=4)) > 0
    shutil.move(str(parts), tmp_path / "moved")  # the merged dataset moves as a whole
    assert documents(tmp_path / "moved", "train") == documents(prepared["single"], "train")


def test_a_part_alone_is_refused_by_the_pipeline(prepared: dict[str, Path]) -> None:
    part = prepared["parts"] / f"part-00001-of-{PARTS:05d}"
    with pytest.raises(ManifestError, match=r"manifest.json: is part 1 of 3 .* join all parts with `megaseqpe-prep merge`"):
        load_manifest(part)
    assert load_manifest(part, partial=True).part.index == 1


def merge_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    """Run merge in-process; it must exit 2 with one error line, which is returned."""
    capsys.readouterr()
    assert prep_main(["merge", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_merge_refuses_parts_that_do_not_make_one_run(prepared: dict[str, Path], data_tokenizer: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parts = tmp_path / "parts"
    shutil.copytree(prepared["parts"], parts)
    names = sorted(p.name for p in parts.iterdir())
    line = merge_error(capsys, str(parts / names[0]), str(parts / names[0]), "--out", str(parts))
    assert "part 0 of 3 given twice" in line and names[0] in line, line
    shutil.move(str(parts / names[2]), tmp_path / "aside")
    line = merge_error(capsys, "--out", str(parts))
    assert line.startswith("megaseqpe-prep merge: error: part 2 of 3 is missing") and names[2] in line, line
    line = merge_error(capsys, str(parts / names[0]), str(parts / names[1]), str(tmp_path / "aside"),
                       "--out", str(parts))
    assert "aside: outside" in line, line
    shutil.move(str(tmp_path / "aside"), parts / names[2])
    other = tmp_path / "tok"
    assert prep_main(["tokenizer", "--input", str(prepared["corpus"]), "--vocab-size", "300",
                      "--out", str(other)]) == 0
    assert prep_main(shards_args(prepared["corpus"], other / "tokenizer.model", parts, "--part", "1/3",
                                 "--overwrite")) == 0
    line = merge_error(capsys, "--out", str(parts))
    assert f"{names[1]}/manifest.json: tokenised with another tokenizer" in line, line
    assert prep_main(shards_args(prepared["corpus"], data_tokenizer, parts, "--part", "1/3", "--overwrite",
                                 "--max-files", "5")) == 0
    line = merge_error(capsys, "--out", str(parts))
    assert f"{names[1]}/manifest.json: part.inputs_sha256 differs" in line and "--input/--glob" in line, line
    assert prep_main(shards_args(prepared["corpus"], data_tokenizer, parts, "--part", "0/2")) == 0
    line = merge_error(capsys, "--out", str(parts))
    assert "part-00000-of-00003/manifest.json: is part 0 of 3, but" in line and "one of 2" in line, line
    assert not (parts / "manifest.json").exists(), "no merged manifest after a refusal"


@pytest.mark.parametrize("value, needle", [("3/3", "0 <= I < N"), ("1/0", "N >= 1"), ("-1/2", "expected I/N"),
                                           ("1", "expected I/N")])
def test_part_flag_is_validated_in_one_line(value: str, needle: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        prep_main(["shards", "--input", str(tmp_path), "--tokenizer", "t.model", "--out", str(tmp_path),
                   f"--part={value}"])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("megaseqpe-prep shards: error: argument --part: ") and needle in line, line
    assert not list(tmp_path.iterdir()), "nothing written"


def test_help_documents_parts_and_merge(capsys: pytest.CaptureFixture) -> None:
    for command, needles in (("shards", ["--part I/N", "0-based", "part-IIIII-of-NNNNN", "merge"]),
                             ("merge", ["--out DIR", "--overwrite", "PART", "exactly once", "tokenizer",
                                        "shard boundaries do not"])):
        with pytest.raises(SystemExit) as exited:
            prep_main([command, "--help"])
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert all(needle in text for needle in needles), (command, text)
