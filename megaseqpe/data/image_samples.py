"""The image shard sample format: ``<key>.image.npy``, ``<key>.cls``, ``<key>.meta.json``.

``image.npy`` is the picture as uint8 ``[height, width, channels]`` (``np.save`` bytes depend only
on the data, so shards are deterministic, and no image codec is needed to read them back);
``cls`` is the label as decimal text (the WebDataset convention); ``meta.json`` is the same
``{"source", "index"}`` record as in token shards. Writer and readers share this module.
"""
from __future__ import annotations

import io
import json
from typing import Any, Mapping

import numpy as np

from .samples import SampleFormatError, check_key


def encode_image_sample(key: str, image: np.ndarray, label: int, source: str, index: int) -> dict[str, Any]:
    """The tar members of one image (uint8 ``[H, W, C]``), as bytes for ``TarWriter(encoder=False)``."""
    check_key(key)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"sample {key!r}: image must be uint8 [height, width, channels], got {image.dtype} "
                         f"{image.shape}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
    meta = json.dumps({"source": source, "index": index}, sort_keys=True).encode("utf-8")
    return {"__key__": key, "image.npy": buf.getvalue(), "cls": str(int(label)).encode("ascii"),
            "meta.json": meta}


def decode_image_sample(sample: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """``(uint8 [H, W, C] image, label)`` of a sample read back by webdataset's tar iterators."""
    key = sample.get("__key__")
    if "image.npy" not in sample or "cls" not in sample:
        raise SampleFormatError(f"sample {key!r} needs image.npy and cls "
                                f"(members: {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        image = np.load(io.BytesIO(sample["image.npy"]), allow_pickle=False)
        label = int(sample["cls"].decode("ascii"))
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise SampleFormatError(f"sample {key!r}: undecodable image or label: {exc}") from None
    if image.ndim != 3 or image.dtype != np.uint8:
        raise SampleFormatError(f"sample {key!r}: image.npy must be uint8 [H, W, C], got {image.dtype} "
                                f"{image.shape}")
    return image, label
