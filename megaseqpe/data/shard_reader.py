"""Reading one shard with WebDataset's tar iterators, verified, with the corrupt-shard policy.

A shard is read from disk once, as a whole, and its sha256 is checked against the manifest
before a single sample is parsed: a shard changed since ``megaseqpe-prep`` wrote it (altered
token bytes, truncated, replaced) yields nothing at all, rather than the samples that happen to
come before the damage. Holding one shard in memory is bounded by how prep cuts shards
(``--shard-tokens`` / ``--shard-samples``); hashing while streaming would save that memory but
could only refuse the shard after its first samples had gone into training.

The tar is then parsed from memory and checked once more against the manifest's sample count
(a tar can end cleanly at a member boundary where ``tarfile`` notices nothing), and every sample
is decoded (token ids range-checked against the vocabulary): these catch a manifest that was
rewritten to match bad shards. ``on_corrupt="error"`` raises :class:`CorruptShardError` naming the
shard; ``"skip"`` drops what cannot be used, counts the lost samples and logs one warning per shard.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .manifest import ShardInfo
from .samples import SampleFormatError, decode_tokens

ON_CORRUPT = ("error", "skip")
log = logging.getLogger("megaseqpe.data")


class CorruptShardError(RuntimeError):
    """A shard that cannot be read completely; the message starts with the shard's path."""


def check_on_corrupt(on_corrupt: str) -> str:
    """Validate the policy name early, at construction rather than deep inside a worker."""
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
    return on_corrupt


def worker_error(error: CorruptShardError) -> CorruptShardError:
    """The error a DataLoader worker raised, as that worker raised it.

    torch re-raises a worker's exception in the main process with the worker's whole traceback as
    its message ("Caught CorruptShardError in DataLoader worker process 0. Original Traceback
    ..."), whose last line is ``<module>.CorruptShardError: <original message>``.
    """
    text = str(error)
    if "Original Traceback" not in text:
        return error
    last = text.rstrip().splitlines()[-1]
    return CorruptShardError(last.removeprefix(f"{__name__}.{CorruptShardError.__qualname__}: "))


def iter_raw_samples(path: Path, data: bytes | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of a tar as a dict of member bytes keyed by extension (WebDataset grouping),
    parsed from ``data`` when the shard's bytes were read already, else streamed from ``path``."""
    # Imported here: models, tasks and `benchmarks/gpu.py` import this package on machines without webdataset.
    from webdataset.handlers import reraise_exception
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with (io.BytesIO(data) if data is not None else open(path, "rb")) as stream:
        files = tar_file_expander([{"url": str(path), "stream": stream}], handler=reraise_exception)
        yield from group_by_keys(files, handler=reraise_exception)


def read_verified(path: Path, sha256: str) -> bytes:
    """The bytes of the shard at ``path``, read once, or CorruptShardError when they are missing,
    unreadable or not the bytes whose ``sha256`` the manifest recorded."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptShardError(f"{path}: missing shard (listed in the manifest, not on disk)") from None
    except OSError as exc:
        raise CorruptShardError(f"{path}: unreadable shard ({exc.strerror or exc})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise CorruptShardError(f"{path}: corrupt shard: sha256 mismatch (manifest {sha256[:16]}..., "
                                f"file {actual[:16]}...): changed since megaseqpe-prep wrote it")
    return data


def iter_shard_tokens(path: Path, shard: ShardInfo, on_corrupt: str, on_skip: Callable[[int], None],
                      vocab_size: int) -> Iterator[tuple[str, np.ndarray]]:
    """``(key, tokens)`` for each good sample of the token shard at ``path``, ids checked against
    ``vocab_size`` (see :func:`iter_shard_samples`)."""
    decode = functools.partial(decode_tokens, vocab_size=vocab_size)
    return iter_shard_samples(path, shard, on_corrupt, on_skip, decode)


def _give_up(path: Path, problem: str, lost: int, on_corrupt: str, on_skip: Callable[[int], None]) -> None:
    """``lost`` samples of the shard cannot be used: raise in "error" mode, else warn and count."""
    if on_corrupt == "error":
        raise CorruptShardError(f"{path}: {problem}; set on_corrupt='skip' to skip its unreadable samples")
    log.warning("skipped %d unreadable sample(s) of corrupt shard %s (%s)", lost, path, problem)
    on_skip(lost)


def iter_shard_samples(path: Path, shard: ShardInfo, on_corrupt: str, on_skip: Callable[[int], None],
                       decode: Callable[[dict[str, Any]], Any]) -> Iterator[tuple[str, Any]]:
    """``(key, decode(sample))`` for each good sample of the shard at ``path``, described by the
    manifest's ``shard`` (its sha256 and sample count).

    ``decode`` raises :class:`SampleFormatError` for a bad sample. ``on_skip(n)`` is called once,
    after the shard, with the number of samples that were lost (only in ``"skip"`` mode;
    ``"error"`` mode raises instead). A shard whose sha256 does not match loses all its samples.
    """
    try:
        data = read_verified(path, shard.sha256)
    except CorruptShardError as exc:
        _give_up(path, str(exc).removeprefix(f"{path}: "), shard.samples, on_corrupt, on_skip)
        return
    good, problem = 0, ""
    try:
        for sample in iter_raw_samples(path, data):
            try:
                value = decode(sample)
            except SampleFormatError as exc:
                if on_corrupt == "error":
                    raise CorruptShardError(f"{path}: corrupt shard: {exc}") from None
                problem = problem or str(exc)
                continue
            good += 1
            yield sample["__key__"], value
    except CorruptShardError:
        raise
    except Exception as exc:  # tarfile.ReadError, ValueError from webdataset...
        problem = f"corrupt shard ({type(exc).__name__}: {exc})"
    if good < shard.samples or problem:
        _give_up(path, problem or f"corrupt shard: {good} readable samples, manifest lists {shard.samples}",
                 max(shard.samples - good, 0), on_corrupt, on_skip)
