"""Output directories and atomic file writes.

Every output appears under its final name only when complete (write to a temporary name in the
same directory, then ``os.replace``), so a crash never leaves a half-written shard, model or
manifest that a later step would trust.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .errors import UserError

TMP_SUFFIX = ".tmp"


def prepare_output_dir(out: Path, owned: Sequence[str], overwrite: bool) -> None:
    """Create ``out`` (writable), refusing an earlier result unless ``overwrite``.

    A directory holding any of ``owned`` (our outputs) is refused without ``overwrite``; with it
    those entries are removed, first ones first (put the manifest first, so no manifest ever
    describes shards that are being replaced). Other files in ``out`` are left alone.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
    present = [name for name in owned if (out / name).exists()]
    if present and not overwrite:
        raise UserError(f"output directory {out} already holds {', '.join(present)}; "
                        f"pass --overwrite to replace it")
    for name in present:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def temp_path(path: Path) -> Path:
    """The temporary name a file is written under before :func:`commit` renames it."""
    return path.with_name(path.name + TMP_SUFFIX)


def commit(path: Path) -> None:
    """Publish a file written at :func:`temp_path` under its final name (atomic on POSIX)."""
    os.replace(temp_path(path), path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (sorted nowhere: key order is part of the readable layout) atomically."""
    tmp = temp_path(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    commit(path)
