"""The shard sample format: what one document looks like inside a WebDataset tar.

A sample is ``<key>.tokens.npy`` (the document's token ids; uint16 when the vocabulary fits,
else int32) and ``<key>.meta.json`` (``{"source": <input path below the inputs' root>, "index":
<document's index within that input>}``). The writer and the readers both go through this module
so the format lives in one place.
"""
from __future__ import annotations

import io
import json
from typing import Any, Mapping

import numpy as np
from numpy.lib import format as npy_format

SHARD_PATTERN = "shard-{:06d}.tar"


class SampleFormatError(ValueError):
    """A tar member group that is not a valid token sample."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves shard size for every vocabulary up to 65,536 pieces; int32 beyond."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def check_key(key: str) -> None:
    """WebDataset groups tar members by the name before the first '.', inside one directory."""
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/' (WebDataset splits on them)")


def encode_meta(source: str, index: int) -> bytes:
    """The ``meta.json`` member; sorted keys so that equal documents give equal bytes."""
    return json.dumps({"source": source, "index": index}, sort_keys=True).encode("utf-8")


def encode_sample(key: str, tokens: np.ndarray, source: str, index: int) -> dict[str, Any]:
    """The tar members of one document, as bytes, ready for ``webdataset.TarWriter(encoder=False)``.

    ``np.save`` output depends only on dtype, shape and data, and ``meta.json`` is written with
    sorted keys, so equal documents always give equal bytes (deterministic shards).
    """
    check_key(key)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(tokens), allow_pickle=False)
    return {"__key__": key, "tokens.npy": buf.getvalue(), "meta.json": encode_meta(source, index)}


def tokens_header(dtype: np.dtype, count: int) -> bytes:
    """The ``.npy`` header ``np.save`` writes before ``count`` tokens of ``dtype``: a writer that
    streams a long document's tokens puts these bytes first and gets exactly ``np.save``'s file."""
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": npy_format.dtype_to_descr(np.dtype(dtype)),
                                            "fortran_order": False, "shape": (count,)})
    return buf.getvalue()


def decode_tokens(sample: Mapping[str, Any], vocab_size: int | None = None) -> np.ndarray:
    """The token array of a sample read back by webdataset's tar iterators.

    With ``vocab_size`` (the manifest's), every id must lie in ``[0, vocab_size)``: an id beyond
    the vocabulary would otherwise surface as a bare IndexError deep inside the model.
    """
    key = sample.get("__key__")
    if "tokens.npy" not in sample:
        raise SampleFormatError(f"sample {key!r} has no tokens.npy "
                                f"(members: {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        tokens = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise SampleFormatError(f"sample {key!r}: undecodable tokens.npy: {exc}") from None
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise SampleFormatError(f"sample {key!r}: tokens.npy must be a 1-D integer "
                                f"array, got {tokens.dtype} {tokens.shape}")
    if vocab_size is not None and tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        bad = int(tokens[(tokens < 0) | (tokens >= vocab_size)][0])
        raise SampleFormatError(f"sample {key!r}: token id {bad} is outside the manifest's "
                                f"vocabulary [0, {vocab_size})")
    return tokens


def decode_meta(sample: Mapping[str, Any]) -> dict[str, Any]:
    """The ``meta.json`` of a sample (source path and index), for tools and tests."""
    try:
        return json.loads(sample["meta.json"])
    except (KeyError, ValueError) as exc:
        raise SampleFormatError(f"sample {sample.get('__key__')!r}: bad meta.json: {exc}") from None
