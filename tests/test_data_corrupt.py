"""A corrupt shard stops the stream naming the shard, or with on_corrupt="skip" is counted."""
from __future__ import annotations

import logging
import shutil
from itertools import islice
from pathlib import Path

import pytest
from webdataset import TarWriter

from megaseqpe.data import CorruptShardError, TextShardDataset, build_train_loader, iter_raw_samples, load_manifest

SEQ = 127


@pytest.fixture
def data_copy(tmp_path: Path, data_manifest: Path) -> Path:
    """A private copy of the shards (train/, val/, manifest.json) that a test may damage."""
    out = tmp_path / "copy"
    shutil.copytree(data_manifest.parent, out)
    return out / "manifest.json"


def readable_samples(path: Path) -> int:
    count = 0
    try:
        for _ in iter_raw_samples(path):
            count += 1
    except Exception:
        pass
    return count


def truncate_first_shard(manifest_path: Path) -> tuple[Path, int]:
    """Cut the first train shard in half; returns it and how many samples that loses."""
    manifest = load_manifest(manifest_path)
    shard = manifest.splits["train"].shards[0]
    path = manifest.shard_path(shard)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    lost = shard.samples - readable_samples(path)
    assert lost > 0
    return path, lost


def drain_epoch(loader) -> None:
    for _ in islice(loader, 100_000):
        if loader.epoch >= 1:
            return
    raise AssertionError("epoch did not end")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_truncated_shard_is_an_error_naming_it(data_copy: Path, num_workers: int) -> None:
    path, _ = truncate_first_shard(data_copy)
    loader = build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4, num_workers=num_workers)
    with pytest.raises(CorruptShardError, match=rf"{path}: corrupt shard"):
        drain_epoch(loader)


def test_truncated_shard_skipped_and_counted(data_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, lost = truncate_first_shard(data_copy)
    loader = build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4, on_corrupt="skip")
    with caplog.at_level(logging.WARNING, logger="megaseqpe.data"):
        drain_epoch(loader)
    # Counted when read: by the time rows of epoch 1 flow, the shuffle buffer may already have
    # read (and counted) the damaged shard's second pass.
    assert loader.skipped_samples in (lost, 2 * lost)
    assert f"skipped {lost} unreadable sample(s) of corrupt shard {path}" in caplog.text
    # everything else was read: the epoch's documents are all samples but the lost ones
    ds = TextShardDataset(data_copy, max_seq_len=SEQ, on_corrupt="skip")
    counter = [0]
    keys = [k for k, _ in ds.reader_documents(0, 0, counter)]
    assert counter == [lost]
    assert len(keys) == load_manifest(data_copy).splits["train"].samples - lost


def test_skip_counts_across_workers(data_copy: Path) -> None:
    _, lost = truncate_first_shard(data_copy)
    loader = build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4, num_workers=2,
                                on_corrupt="skip")
    drain_epoch(loader)
    assert loader.skipped_samples in (lost, 2 * lost)
    assert sum(r["skipped"] for r in loader.state_dict()["readers"].values()) == loader.skipped_samples  # the count travels in the checkpointable state


def rewrite_shard(path: Path, transform) -> None:
    samples = [transform(i, s) for i, s in enumerate(iter_raw_samples(path))]
    with open(path, "wb") as f, TarWriter(f, encoder=False, mtime=0) as tar:
        for sample in samples:
            if sample is not None:
                tar.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})


def test_undecodable_sample(data_copy: Path) -> None:
    manifest = load_manifest(data_copy)
    path = manifest.shard_path(manifest.splits["train"].shards[1])
    rewrite_shard(path, lambda i, s: {**s, "tokens.npy": b"garbage"} if i == 1 else s)
    with pytest.raises(CorruptShardError, match=rf"{path}: corrupt shard: .*undecodable tokens.npy"):
        drain_epoch(build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4))
    loader = build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4, on_corrupt="skip")
    drain_epoch(loader)
    assert loader.skipped_samples in (1, 2)


def test_shard_shorter_than_manifest_says(data_copy: Path) -> None:
    """A tar that ends cleanly but early (tarfile would not notice) is caught by the counts."""
    manifest = load_manifest(data_copy)
    path = manifest.shard_path(manifest.splits["train"].shards[2])
    rewrite_shard(path, lambda i, s: None if i == 0 else s)
    with pytest.raises(CorruptShardError, match=rf"{path}: corrupt shard: \d+ readable samples, "
                                                r"manifest lists \d+"):
        drain_epoch(build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4))
