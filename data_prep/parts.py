"""Preparing one corpus on many machines: ``shards --part I/N`` and ``merge``.

Which part an input goes to is a pure function of every input's name below the inputs' root and
its size: inputs are taken largest first (ties by name) and each goes to the part with the fewest
bytes so far (ties to the lowest index), so parts are balanced by bytes, and the assignment is the
same on every machine and when the corpus moves. A part writes its shards and a *partial* manifest
(``"part"``: index, count, a fingerprint of the whole input list, ``--val-fraction`` and
``--text-key``) to ``OUT/part-IIIII-of-NNNNN/``. A document's split depends only on its key (input
name and index), never on the part, so the parts' documents per split are exactly a
single-machine run's.

``merge`` checks that the parts belong together (all N present once, same count, inputs,
settings and tokenizer) and writes ``OUT/manifest.json``, which lists the parts' shards in place
(paths relative to ``OUT``, sha256 unchanged, parts in index order) and sums their counts.
Shard boundaries differ from a single run's: a shard ends after ``--shard-tokens`` of its part's
documents, and documents follow part order.
"""
from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import re
from pathlib import Path
from typing import Sequence

import megaseqpe
from megaseqpe.data import MAX_SKIP_EXAMPLES, SKIP_REASONS, InputsInfo, Manifest, ManifestError, SplitInfo
from megaseqpe.data.manifest import SPLITS, ShardInfo, load_manifest

from .discovery import input_name
from .errors import BadInputError
from .formats import dataset_files
from .outputs import write_json_atomic
from .shards import relative_path

PART_DIR = "part-{index:05d}-of-{count:05d}"
_PART_DIR_RE = re.compile(r"part-\d{5,}-of-\d{5,}")


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` (0-based I, as SLURM_ARRAY_TASK_ID) as ``(I, N)``; ValueError when malformed."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"expected I/N (e.g. 0/8), got {text!r}")
    index, count = map(int, match.groups())
    if count < 1 or index >= count:
        raise ValueError(f"I/N needs N >= 1 and 0 <= I < N (parts are numbered from 0), got {text}")
    return index, count


def part_dir(out: Path, index: int, count: int) -> Path:
    """Where part ``index`` of ``count`` writes its shards and partial manifest."""
    return out / PART_DIR.format(index=index, count=count)


def _input_size(path: Path) -> int:
    """Bytes of an input (a dataset folder: its data files); 0 when unreadable (reading it later
    counts the skip, in exactly one part)."""
    try:
        files = dataset_files(path) if path.is_dir() else None
        return sum(f.stat().st_size for f in files) if files is not None else path.stat().st_size
    except OSError:
        return 0


def assign_parts(sized: Sequence[tuple[str, int]], count: int) -> list[int]:
    """The part of each ``(name, size)`` input: largest first into the lightest part so far."""
    loads = [(0, index) for index in range(count)]
    assigned = [0] * len(sized)
    for position in sorted(range(len(sized)), key=lambda i: (-sized[i][1], sized[i][0])):
        load, index = heapq.heappop(loads)
        assigned[position] = index
        heapq.heappush(loads, (load + sized[position][1], index))
    return assigned


def select_part(files: Sequence[Path], root: Path, index: int, count: int) -> tuple[list[Path], str]:
    """Part ``index``'s inputs (in input order) and the fingerprint of the whole input list."""
    sized = [(input_name(path, root), _input_size(path)) for path in files]
    fingerprint = hashlib.sha256(json.dumps(sorted(sized)).encode("utf-8")).hexdigest()
    assigned = assign_parts(sized, count)
    return [path for path, part in zip(files, assigned) if part == index], fingerprint


def find_parts(out: Path) -> list[Path]:
    """The part directories below ``out`` (``part-*-of-*``), sorted."""
    found = sorted(p for p in out.glob("part-*-of-*") if _PART_DIR_RE.fullmatch(p.name) and p.is_dir())
    if not found:
        raise BadInputError(f"no parts in {out}: expected {out}/part-IIIII-of-NNNNN/ from "
                            f"`megaseqpe-prep shards --part I/N --out {out}`")
    return found


def _load_part(path: Path) -> Manifest:
    manifest_path = path / "manifest.json" if path.is_dir() or not path.name.endswith(".json") else path
    try:
        manifest = load_manifest(manifest_path, partial=True)
    except ManifestError as exc:
        raise BadInputError(str(exc)) from None
    if manifest.part is None:
        raise BadInputError(f"{manifest_path}: not a part (no \"part\" key): merge joins the "
                            f"manifests of `megaseqpe-prep shards --part I/N`")
    return manifest


def _tokenizer_identity(manifest: Manifest) -> tuple:
    return manifest.tokenizer.sha256, manifest.tokenizer.vocab_size, manifest.tokenizer.eos_id


def _check_together(parts: Sequence[Manifest]) -> list[Manifest]:
    """The parts in index order; BadInputError naming the first part that does not belong."""
    first = parts[0]
    by_index: dict[int, Manifest] = {}
    for part in parts:
        where = part.root / "manifest.json"
        if part.part.count != first.part.count:
            raise BadInputError(f"{where}: is part {part.part.index} of {part.part.count}, but "
                                f"{first.root} is one of {first.part.count}")
        if _tokenizer_identity(part) != _tokenizer_identity(first):
            raise BadInputError(f"{where}: tokenised with another tokenizer (sha256 "
                                f"{part.tokenizer.sha256[:16]}...) than {first.root} "
                                f"({first.tokenizer.sha256[:16]}...); every part needs the same --tokenizer")
        for key, flag in (("inputs_sha256", "--input/--glob/--max-*"), ("val_fraction", "--val-fraction"),
                          ("text_key", "--text-key")):
            if getattr(part.part, key) != getattr(first.part, key):
                raise BadInputError(f"{where}: part.{key} differs from {first.root}'s: the parts were "
                                    f"made with different {flag}")
        if part.part.index in by_index:
            raise BadInputError(f"{where}: part {part.part.index} of {part.part.count} given twice "
                                f"(also {by_index[part.part.index].root})")
        by_index[part.part.index] = part
    missing = [i for i in range(first.part.count) if i not in by_index]
    if missing:
        expected = part_dir(first.root.parent, missing[0], first.part.count)
        raise BadInputError(f"part {missing[0]} of {first.part.count} is missing ({len(missing)} "
                            f"missing; expected {expected}/manifest.json: did its task fail?)")
    return [by_index[i] for i in range(first.part.count)]


def _shards_in_place(part: Manifest, split: str, out: Path) -> tuple[ShardInfo, ...]:
    """The part's shards of ``split`` named relative to ``out`` (the files stay where they are)."""
    shards = []
    for shard in part.split(split).shards:
        path = part.shard_path(shard)
        if not path.is_file():
            raise BadInputError(f"{path}: missing shard of {part.root / 'manifest.json'}")
        shards.append(dataclasses.replace(shard, path=relative_path(path, out)))
    return tuple(shards)


def merge_parts(paths: Sequence[Path], out: Path) -> Manifest:
    """Join the partial manifests at ``paths`` (directories or manifest files) into
    ``out/manifest.json``; every part must lie inside ``out``, whose manifest lists its shards."""
    parts = _check_together([_load_part(path) for path in paths])
    base = out.resolve()
    for part in parts:
        if base != part.root and base not in part.root.parents:
            raise BadInputError(f"{part.root}: outside {out}; the merged manifest lists shards in "
                                f"place, so move the part below {out} (or merge into a directory above it)")
    examples = [line for part in parts for line in part.inputs.examples_skipped][:MAX_SKIP_EXAMPLES]
    manifest = Manifest(
        created_by=f"megaseqpe-prep {megaseqpe.__version__} (merge of {len(parts)} parts)",
        tokenizer=dataclasses.replace(parts[0].tokenizer, path=relative_path(parts[0].tokenizer_path(), out)),
        splits={name: SplitInfo(tuple(s for part in parts for s in _shards_in_place(part, name, out)))
                for name in SPLITS},
        inputs=InputsInfo(files_seen=sum(p.inputs.files_seen for p in parts),
                          documents=sum(p.inputs.documents for p in parts),
                          skipped={r: sum(p.inputs.skipped[r] for p in parts) for r in SKIP_REASONS},
                          examples_skipped=tuple(examples)),
        root=base)
    if manifest.inputs.documents == 0:
        raise BadInputError(f"no documents in any of the {len(parts)} parts: nothing to merge")
    write_json_atomic(out / "manifest.json", manifest.to_dict())
    return load_manifest(out)  # what the pipeline will read: paths and totals validated

