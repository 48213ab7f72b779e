"""Reading one token shard with WebDataset's tar iterators, with the corrupt-shard policy.

The manifest says how many samples each shard holds, so a shard is checked as it is read: a tar
that is truncated, fails to parse, holds an undecodable sample or simply ends early is caught
even when ``tarfile`` itself would stop quietly at a member boundary. ``on_corrupt="error"``
raises :class:`CorruptShardError` naming the shard; ``"skip"`` drops what cannot be read, counts
the missing samples and logs one warning per shard.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

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


def iter_raw_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Every sample of a tar as a dict of member bytes keyed by extension (WebDataset grouping)."""
    with open(path, "rb") as stream:
        files = tar_file_expander([{"url": str(path), "stream": stream}], handler=reraise_exception)
        yield from group_by_keys(files, handler=reraise_exception)


def iter_shard_tokens(path: Path, expected_samples: int, on_corrupt: str,
                      on_skip: Callable[[int], None]) -> Iterator[tuple[str, np.ndarray]]:
    """``(key, tokens)`` for each good sample of the token shard at ``path`` (see
    :func:`iter_shard_samples`)."""
    return iter_shard_samples(path, expected_samples, on_corrupt, on_skip, decode_tokens)


def iter_shard_samples(path: Path, expected_samples: int, on_corrupt: str,
                       on_skip: Callable[[int], None],
                       decode: Callable[[dict[str, Any]], Any]) -> Iterator[tuple[str, Any]]:
    """``(key, decode(sample))`` for each good sample of the shard at ``path``.

    ``decode`` raises :class:`SampleFormatError` for a bad sample. ``on_skip(n)`` is called once,
    after the shard, with the number of samples that were lost (only in ``"skip"`` mode;
    ``"error"`` mode raises instead).
    """
    good = 0
    try:
        for sample in iter_raw_samples(path):
            try:
                tokens = decode(sample)
            except SampleFormatError as exc:
                if on_corrupt == "error":
                    raise CorruptShardError(f"{path}: corrupt shard: {exc}") from None
                continue
            good += 1
            yield sample["__key__"], tokens
    except CorruptShardError:
        raise
    except Exception as exc:  # tarfile.ReadError, OSError, EOFError, ValueError from webdataset...
        if on_corrupt == "error":
            raise CorruptShardError(f"{path}: corrupt shard ({type(exc).__name__}: {exc}); "
                                    f"set on_corrupt='skip' to skip its unreadable samples") from None
    lost = expected_samples - good
    if lost > 0 and on_corrupt == "error":
        raise CorruptShardError(f"{path}: corrupt shard: {good} readable samples, manifest lists "
                                f"{expected_samples}; set on_corrupt='skip' to skip them")
    if lost > 0:
        log.warning("skipped %d unreadable sample(s) of corrupt shard %s", lost, path)
        on_skip(lost)
