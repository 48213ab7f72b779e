"""A corrupt shard stops the stream naming the shard, or with on_corrupt="skip" is counted.

Any change to a shard fails its sha256 first; tests of the checks behind it (tar structure,
sample decoding, sample count) ``reseal`` the manifest: they rewrite its hashes to match the
damaged shards, as a manifest rewritten along with its shards would.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tarfile
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from webdataset import TarWriter

from megaseqpe.data import (CorruptShardError, TextShardDataset, build_train_loader, decode_tokens, encode_sample,
                            eval_batches, iter_raw_samples, load_manifest)

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


def reseal(manifest_path: Path) -> None:
    """Make the manifest's sha256 of every shard match the shard as it is now."""
    data = json.loads(manifest_path.read_text())
    for split in data["splits"].values():
        for shard in split["shards"]:
            shard["sha256"] = hashlib.sha256((manifest_path.parent / shard["path"]).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(data))


def truncate_first_shard(manifest_path: Path, resealed: bool = False) -> tuple[Path, int]:
    """Cut the first train shard in half; returns it and how many samples that loses: all of them
    (sha256 mismatch), or with ``resealed`` those the tar no longer holds."""
    manifest = load_manifest(manifest_path)
    shard = manifest.splits["train"].shards[0]
    path = manifest.shard_path(shard)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    if not resealed:
        return path, shard.samples
    reseal(manifest_path)
    lost = shard.samples - readable_samples(path)
    assert 0 < lost < shard.samples
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
    with pytest.raises(CorruptShardError) as caught:
        drain_epoch(loader)
    # A worker's error arrives as the worker raised it, not wrapped in torch's worker traceback.
    assert str(caught.value).startswith(f"{path}: corrupt shard: sha256 mismatch (manifest ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("resealed", [False, True])
def test_truncated_shard_skipped_and_counted(data_copy: Path, caplog: pytest.LogCaptureFixture,
                                             resealed: bool) -> None:
    path, lost = truncate_first_shard(data_copy, resealed)
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
    # the worker holding the damaged shard may wrap (and count it again) before the other ends its epoch
    assert loader.skipped_samples >= lost and loader.skipped_samples % lost == 0
    assert sum(r["skipped"] for r in loader.state_dict()["readers"].values()) == loader.skipped_samples  # the count travels in the checkpointable state


def rewrite_shard(manifest_path: Path, path: Path, transform) -> None:
    """Replace each sample of the shard by ``transform(i, sample)`` (None drops it), then reseal."""
    samples = [transform(i, s) for i, s in enumerate(iter_raw_samples(path))]
    with open(path, "wb") as f, TarWriter(f, encoder=False, mtime=0) as tar:
        for sample in samples:
            if sample is not None:
                tar.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})
    reseal(manifest_path)


def test_undecodable_sample(data_copy: Path) -> None:
    manifest = load_manifest(data_copy)
    path = manifest.shard_path(manifest.splits["train"].shards[1])
    rewrite_shard(data_copy, path, lambda i, s: {**s, "tokens.npy": b"garbage"} if i == 1 else s)
    with pytest.raises(CorruptShardError, match=rf"{path}: corrupt shard: .*undecodable tokens.npy"):
        drain_epoch(build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4))
    loader = build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4, on_corrupt="skip")
    drain_epoch(loader)
    assert loader.skipped_samples in (1, 2)


def test_shard_shorter_than_manifest_says(data_copy: Path) -> None:
    """A tar that ends cleanly but early (tarfile would not notice) is caught by the counts."""
    manifest = load_manifest(data_copy)
    path = manifest.shard_path(manifest.splits["train"].shards[2])
    rewrite_shard(data_copy, path, lambda i, s: None if i == 0 else s)
    with pytest.raises(CorruptShardError, match=rf"{path}: corrupt shard: \d+ readable samples, "
                                                r"manifest lists \d+"):
        drain_epoch(build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4))


def alter_first_token(path: Path, vocab_size: int) -> None:
    """Change the first token id of the shard's first sample in place to another valid id: the tar
    still parses and every sample decodes, only the sha256 tells."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".tokens.npy"))
    with open(path, "r+b") as f:
        f.seek(member.offset_data + 8)  # .npy: magic (6), version (2), header length (2), header
        start = member.offset_data + 10 + int.from_bytes(f.read(2), "little")
        f.seek(start)
        token = int(np.frombuffer(f.read(2), dtype=np.uint16)[0])
        f.seek(start)
        f.write(np.uint16((token + 1) % vocab_size).tobytes())


def test_altered_token_bytes_are_refused_or_skipped_whole(data_copy: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    manifest = load_manifest(data_copy)
    shard = manifest.splits["train"].shards[3]
    path = manifest.shard_path(shard)
    vocab = manifest.tokenizer.vocab_size
    alter_first_token(path, vocab)
    assert len([decode_tokens(s, vocab) for s in iter_raw_samples(path)]) == shard.samples  # valid, but altered
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CorruptShardError) as caught:
        drain_epoch(build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4))
    assert str(caught.value).startswith(f"{path}: corrupt shard: sha256 mismatch "
                                        f"(manifest {shard.sha256[:16]}..., file {actual[:16]}...)")
    # skip mode: not one sample of the altered shard is used, all of them are counted, one warning
    shard_keys = {s["__key__"] for s in iter_raw_samples(path)}
    counter = [0]
    with caplog.at_level(logging.WARNING, logger="megaseqpe.data"):
        dataset = TextShardDataset(data_copy, max_seq_len=SEQ, on_corrupt="skip")
        keys = [k for k, _ in dataset.reader_documents(0, 0, counter)]
    assert counter == [shard.samples] and not shard_keys & set(keys)
    assert len(keys) == manifest.splits["train"].samples - shard.samples
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"skipped {shard.samples} unreadable sample(s) of corrupt shard {path} "
                              f"(corrupt shard: sha256 mismatch")


def test_token_id_beyond_the_vocabulary_names_shard_and_sample(data_copy: Path) -> None:
    manifest = load_manifest(data_copy)
    path = manifest.shard_path(manifest.splits["train"].shards[0])
    vocab = manifest.tokenizer.vocab_size
    bad = np.array([3, vocab, 4], dtype=np.uint16)
    keys = []

    def plant(i: int, sample: dict) -> dict:
        if i == 1:
            keys.append(sample["__key__"])
            return {**sample, "tokens.npy": encode_sample(sample["__key__"], bad, "x", 0)["tokens.npy"]}
        return sample

    rewrite_shard(data_copy, path, plant)
    message = (rf"^{path}: corrupt shard: sample '{keys[0]}': token id {vocab} is outside the manifest's "
               rf"vocabulary \[0, {vocab}\)")
    with pytest.raises(CorruptShardError, match=message):
        drain_epoch(build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4))
    with pytest.raises(CorruptShardError, match=message):
        list(eval_batches(data_copy, "train", max_seq_len=SEQ, batch_size=4))
    loader = build_train_loader(data_copy, max_seq_len=SEQ, micro_batch_size=4, on_corrupt="skip")
    drain_epoch(loader)
    assert loader.skipped_samples in (1, 2)
