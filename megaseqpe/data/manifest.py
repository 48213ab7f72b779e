"""The manifest.json schema (format_version 1), shared by the writer (data_prep) and the readers.

One module owns the schema so that ``megaseqpe-prep shards`` and the training pipeline can never
disagree about a key: data_prep builds a :class:`Manifest` and calls :meth:`Manifest.to_dict`,
the pipeline calls :func:`load_manifest`, which validates every key and names the first bad one.
Paths inside a manifest are relative to the manifest's own directory, so a dataset directory can
be moved or copied as a whole; shard paths must stay inside it (checked at load, symlinks resolved).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

FORMAT_VERSION = 1
KIND_TEXT = "text"
KIND_IMAGE = "image"
#: Retrieval QA samples (`megaseqpe-prep qa`): token prompts + answers, tokenizer as for text.
KIND_QA = "qa"
KINDS = (KIND_TEXT, KIND_IMAGE, KIND_QA)
SPLITS = ("train", "val")
#: Why an input (a file, a dataset folder, or one record of a file of records) was left out of
#: the shards. The last three came later: a manifest without them read them as 0.
SKIP_REASONS = ("empty", "binary", "bad_utf8", "unreadable", "corrupt", "unsupported", "missing_key", "not_text")
_LATER_SKIP_REASONS = frozenset(SKIP_REASONS[-3:])
#: At most this many "path: reason" examples are kept in ``inputs.examples_skipped``.
MAX_SKIP_EXAMPLES = 20


class ManifestError(ValueError):
    """A manifest that cannot be read or does not follow the schema; the message names the key."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard: its path relative to the manifest, sample and token counts, sha256.

    In image manifests ``tokens`` counts pixel values (height x width x channels per image)."""

    path: str
    samples: int
    tokens: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    """The shards of one split and their totals."""

    shards: tuple[ShardInfo, ...] = ()

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


@dataclass(frozen=True)
class TokenizerInfo:
    """The SentencePiece model the shards were tokenised with (path relative to the manifest)."""

    path: str
    sha256: str
    vocab_size: int
    eos_id: int


@dataclass(frozen=True)
class ImageInfo:
    """What every image of an image manifest looks like, and the class names by label index."""

    height: int
    width: int
    channels: int
    classes: tuple[str, ...]


@dataclass(frozen=True)
class InputsInfo:
    """What the corpus held: files seen, documents written, and what was skipped and why."""

    files_seen: int
    documents: int
    skipped: Mapping[str, int] = field(default_factory=lambda: {r: 0 for r in SKIP_REASONS})
    examples_skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class PartInfo:
    """Marks a partial manifest: part ``index`` (0-based) of ``count`` written by ``megaseqpe-prep
    shards --part``. ``inputs_sha256`` fingerprints the whole input list (names below the inputs'
    root and sizes) and, with ``val_fraction`` and ``text_key``, must agree across the parts that
    ``megaseqpe-prep merge`` joins; the pipeline refuses to train on one part by mistake."""

    index: int
    count: int
    inputs_sha256: str
    val_fraction: float
    text_key: str


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest; ``root`` is the directory its relative paths are resolved against.

    A ``"text"`` manifest has ``tokenizer``; an ``"image"`` manifest has ``image`` instead.
    """

    created_by: str
    tokenizer: TokenizerInfo | None
    splits: Mapping[str, SplitInfo]
    inputs: InputsInfo
    root: Path = Path(".")
    kind: str = KIND_TEXT
    image: ImageInfo | None = None
    part: PartInfo | None = None

    def split(self, name: str) -> SplitInfo:
        """The named split, or a ManifestError listing the splits that exist."""
        if name not in self.splits:
            raise ManifestError(f"{self.root / 'manifest.json'}: no split {name!r} "
                                f"(has: {', '.join(sorted(self.splits))})")
        return self.splits[name]

    def shard_path(self, shard: ShardInfo) -> Path:
        """Absolute location of a shard."""
        return self.root / shard.path

    def tokenizer_path(self) -> Path:
        """Absolute location of the SentencePiece model."""
        return self.root / self.tokenizer.path

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the order of the format description."""
        if self.kind == KIND_IMAGE:
            content = {"image": {"height": self.image.height, "width": self.image.width,
                                 "channels": self.image.channels, "classes": list(self.image.classes)}}
        else:
            content = {"tokenizer": {"path": self.tokenizer.path, "sha256": self.tokenizer.sha256,
                                     "vocab_size": self.tokenizer.vocab_size, "eos_id": self.tokenizer.eos_id}}
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "created_by": self.created_by,
            **({"part": dict(vars(self.part))} if self.part else {}),
            **content,
            "splits": {
                name: {"shards": [{"path": s.path, "samples": s.samples, "tokens": s.tokens,
                                   "sha256": s.sha256} for s in split.shards],
                       "samples": split.samples, "tokens": split.tokens}
                for name, split in self.splits.items()
            },
            "inputs": {"files_seen": self.inputs.files_seen, "documents": self.inputs.documents,
                       "skipped": {r: int(self.inputs.skipped.get(r, 0)) for r in SKIP_REASONS},
                       "examples_skipped": list(self.inputs.examples_skipped)},
        }


class _Reader:
    """Typed access to nested JSON that names the full key path in every error."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> ManifestError:
        return ManifestError(f"{self.source}: {key} {problem}")

    def get(self, obj: Mapping[str, Any], key: str, name: str, kind: type) -> Any:
        full = f"{key}.{name}" if key else name
        if not isinstance(obj, Mapping) or name not in obj:
            raise self.fail(full, "is missing")
        value = obj[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.fail(full, f"must be an integer, got {value!r}")
        if kind is not int and not isinstance(value, kind):
            raise self.fail(full, f"must be a {kind.__name__}, got {type(value).__name__}")
        return value

    def count(self, obj: Mapping[str, Any], key: str, name: str) -> int:
        value = self.get(obj, key, name, int)
        if value < 0:
            raise self.fail(f"{key}.{name}", f"must be >= 0, got {value}")
        return value


def _inside(r: _Reader, root: Path, key: str, path: str) -> str:
    """``path`` when it names a file inside ``root``: a manifest must not make the pipeline read
    (and train on) files elsewhere, by an absolute path, ``..`` or a symlink pointing out."""
    base = root.resolve()
    relative = PurePosixPath(path)
    if relative.is_absolute() or ".." in relative.parts or base not in (base / relative).resolve().parents:
        raise r.fail(key, f"{path!r} is outside the manifest's directory {base}")
    return path


def _parse_split(r: _Reader, obj: Any, key: str, root: Path) -> SplitInfo:
    shards = []
    for i, s in enumerate(r.get(obj, key, "shards", list)):
        skey = f"{key}.shards[{i}]"
        path = _inside(r, root, f"{skey}.path", r.get(s, skey, "path", str))
        shards.append(ShardInfo(path=path, samples=r.count(s, skey, "samples"),
                                tokens=r.count(s, skey, "tokens"), sha256=r.get(s, skey, "sha256", str)))
    split = SplitInfo(tuple(shards))
    for total in ("samples", "tokens"):
        if r.count(obj, key, total) != getattr(split, total):
            raise r.fail(f"{key}.{total}", f"is not the sum over its shards ({getattr(split, total)})")
    return split


def _parse_tokenizer(r: _Reader, data: Any) -> TokenizerInfo:
    tok = r.get(data, "", "tokenizer", dict)
    tokenizer = TokenizerInfo(path=r.get(tok, "tokenizer", "path", str),
                              sha256=r.get(tok, "tokenizer", "sha256", str),
                              vocab_size=r.count(tok, "tokenizer", "vocab_size"),
                              eos_id=r.count(tok, "tokenizer", "eos_id"))
    if not 0 <= tokenizer.eos_id < tokenizer.vocab_size:
        raise r.fail("tokenizer.eos_id", f"must be in [0, vocab_size), got {tokenizer.eos_id}")
    return tokenizer


def _parse_image(r: _Reader, data: Any) -> ImageInfo:
    obj = r.get(data, "", "image", dict)
    sizes = {name: r.count(obj, "image", name) for name in ("height", "width", "channels")}
    for name, value in sizes.items():
        if value < 1:
            raise r.fail(f"image.{name}", f"must be >= 1, got {value}")
    classes = r.get(obj, "image", "classes", list)
    if not classes or not all(isinstance(c, str) for c in classes):
        raise r.fail("image.classes", "must be a non-empty list of class names")
    return ImageInfo(**sizes, classes=tuple(classes))


def _parse_part(r: _Reader, data: Any, partial: bool) -> PartInfo | None:
    """The ``part`` marker of a partial manifest; refused unless the caller reads parts."""
    if "part" not in data:
        return None
    obj = r.get(data, "", "part", dict)
    part = PartInfo(index=r.count(obj, "part", "index"), count=r.count(obj, "part", "count"),
                    inputs_sha256=r.get(obj, "part", "inputs_sha256", str),
                    val_fraction=r.get(obj, "part", "val_fraction", float),
                    text_key=r.get(obj, "part", "text_key", str))
    if not 0 <= part.index < part.count:
        raise r.fail("part.index", f"must be in [0, part.count={part.count}), got {part.index}")
    if not partial:
        raise ManifestError(f"{r.source}: is part {part.index} of {part.count} of a split preparation "
                            f"(megaseqpe-prep shards --part); join all parts with `megaseqpe-prep "
                            f"merge` and read the merged manifest.json")
    return part


def manifest_from_dict(data: Any, root: Path, source: str = "manifest.json",
                       expect: str | None = KIND_TEXT, partial: bool = False) -> Manifest:
    """Validate a decoded manifest; raises ManifestError naming the first bad key.

    ``expect`` is the kind the caller's pipeline reads (``None`` accepts either); a partial
    manifest (one part of ``megaseqpe-prep shards --part``) is read only when ``partial``."""
    r = _Reader(source)
    version = r.get(data, "", "format_version", int)
    if version != FORMAT_VERSION:
        raise r.fail("format_version", f"is {version}, this megaseqpe reads {FORMAT_VERSION}")
    kind = r.get(data, "", "kind", str)
    if kind not in KINDS:
        raise r.fail("kind", f"is {kind!r}, expected one of {', '.join(map(repr, KINDS))}")
    if expect is not None and kind != expect:
        raise r.fail("kind", f"is {kind!r}, the {expect} pipeline needs {expect!r}")
    part = _parse_part(r, data, partial)
    tokenizer = _parse_tokenizer(r, data) if kind in (KIND_TEXT, KIND_QA) else None
    image = _parse_image(r, data) if kind == KIND_IMAGE else None
    splits_obj = r.get(data, "", "splits", dict)
    splits = {name: _parse_split(r, r.get(splits_obj, "splits", name, dict), f"splits.{name}", root)
              for name in splits_obj}
    inp = r.get(data, "", "inputs", dict)
    skipped_obj = r.get(inp, "inputs", "skipped", dict)
    inputs = InputsInfo(
        files_seen=r.count(inp, "inputs", "files_seen"),
        documents=r.count(inp, "inputs", "documents"),
        skipped={reason: r.count(skipped_obj, "inputs.skipped", reason)
                 if reason in skipped_obj or reason not in _LATER_SKIP_REASONS else 0 for reason in SKIP_REASONS},
        examples_skipped=tuple(r.get(inp, "inputs", "examples_skipped", list)),
    )
    return Manifest(created_by=r.get(data, "", "created_by", str), tokenizer=tokenizer,
                    splits=splits, inputs=inputs, root=root, kind=kind, image=image, part=part)


def load_manifest(path: str | Path, expect: str | None = KIND_TEXT, partial: bool = False) -> Manifest:
    """Read and validate ``manifest.json`` (or the directory holding it); ``expect`` and
    ``partial`` as in :func:`manifest_from_dict`."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest (run `megaseqpe-prep shards` first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read manifest: {exc}") from None
    return manifest_from_dict(data, root=path.parent.resolve(), source=str(path), expect=expect,
                              partial=partial)
