"""The training stream over real shards: rank × worker splitting, packing, endless epochs."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch

from megaseqpe.data import (Manifest, NotEnoughShardsError, ShardInfo, SplitInfo, TextShardDataset,
                            build_train_loader, iter_raw_samples, load_manifest)

SEQ = 127  # rows of 128 tokens


def all_train_keys(manifest_path: Path) -> list[str]:
    manifest = load_manifest(manifest_path)
    return [s["__key__"] for shard in manifest.splits["train"].shards
            for s in iter_raw_samples(manifest.shard_path(shard))]


def expected_rows(ds: TextShardDataset, reader: int, n_rows: int) -> np.ndarray:
    """What reader ``reader`` must produce: its epochs' documents + EOS, cut into rows."""
    eos = ds.manifest.tokenizer.eos_id
    pieces, total, epoch = [], 0, 0
    row_len = ds.max_seq_len + 1
    while total < n_rows * row_len:
        for _, tokens in ds.reader_documents(reader, epoch):
            pieces += [tokens.astype(np.int64), np.array([eos])]
            total += len(tokens) + 1
        epoch += 1
    return np.concatenate(pieces)[: n_rows * row_len].reshape(n_rows, row_len)


def test_two_ranks_two_workers_disjoint_and_complete(data_manifest: Path) -> None:
    """Every sample is read exactly once per epoch across 2 ranks x 2 workers, in every epoch."""
    datasets = [TextShardDataset(data_manifest, max_seq_len=SEQ, rank=r, world_size=2, num_workers=2,
                                 seed=3) for r in range(2)]
    keys = all_train_keys(data_manifest)
    for epoch in range(3):
        seen = Counter(key for ds in datasets for w in range(2)
                       for key, _ in ds.reader_documents(ds.reader_id(w), epoch))
        assert seen.keys() == set(keys) and set(seen.values()) == {1}, epoch
    orders = [[k for k, _ in datasets[0].reader_documents(0, e)] for e in range(2)]
    assert orders[0] != orders[1]  # reshuffled every epoch


def test_real_dataloader_workers_read_their_share(data_manifest: Path) -> None:
    """The batches of a real 2-worker DataLoader, per rank, are exactly the readers' packed streams."""
    for rank in range(2):
        loader = build_train_loader(data_manifest, max_seq_len=SEQ, micro_batch_size=3, seed=3,
                                    rank=rank, world_size=2, num_workers=2)
        batches = list(islice(loader, 40))
        assert all(b.shape == (3, SEQ + 1) and b.dtype == torch.int64 for b in batches)
        for worker in range(2):
            got = torch.cat(batches[worker::2]).numpy()
            reader = loader.dataset.reader_id(worker)
            np.testing.assert_array_equal(got, expected_rows(loader.dataset, reader, len(got)))


def test_packing_has_no_padding_and_eos_between_documents(data_manifest: Path) -> None:
    loader = build_train_loader(data_manifest, max_seq_len=SEQ, micro_batch_size=4, seed=0,
                                shuffle_buffer=1)
    ds = loader.dataset
    rows = torch.cat(list(islice(loader, 30))).numpy()
    docs = [tokens for _, tokens in ds.reader_documents(0, 0)]
    stream = rows.reshape(-1)
    # documents follow each other in order, each closed by exactly one EOS, no padding
    eos = ds.manifest.tokenizer.eos_id
    expected = np.concatenate([np.append(t.astype(np.int64), eos) for t in docs])[: len(stream)]
    np.testing.assert_array_equal(stream, expected)
    assert len(docs) > 3 and all(eos not in t for t in docs)
    # shuffle_buffer=1 keeps each shard's sample order
    manifest = load_manifest(data_manifest)
    first_shard = manifest.splits["train"].shards[ds.epoch_shards(0, 0)[0]]
    in_shard = [s["__key__"] for s in iter_raw_samples(manifest.shard_path(first_shard))]
    assert [k for k, _ in islice(ds.reader_documents(0, 0), len(in_shard))] == in_shard


def test_seed_changes_order_not_content(data_manifest: Path) -> None:
    a = TextShardDataset(data_manifest, max_seq_len=SEQ, seed=1)
    b = TextShardDataset(data_manifest, max_seq_len=SEQ, seed=2)
    ka = [k for k, _ in a.reader_documents(0, 0)]
    kb = [k for k, _ in b.reader_documents(0, 0)]
    assert ka != kb and sorted(ka) == sorted(kb)


def test_unequal_shards_never_run_dry(tmp_path: Path, data_manifest: Path) -> None:
    """One tiny shard and one big one on 2 ranks: both ranks keep producing batches forever."""
    manifest = load_manifest(data_manifest)
    shards = sorted(manifest.splits["train"].shards, key=lambda s: s.tokens)
    small, big = shards[0], shards[-1]
    assert big.tokens > 3 * small.tokens
    def moved(shard: ShardInfo) -> ShardInfo:  # the new manifest lives in tmp_path; shards stay inside it
        (tmp_path / shard.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(manifest.shard_path(shard), tmp_path / shard.path)
        return shard

    lopsided = Manifest(created_by="test", tokenizer=manifest.tokenizer, inputs=manifest.inputs,
                        splits={"train": SplitInfo((moved(small), moved(big)))}, root=tmp_path)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(lopsided.to_dict()))
    loaders = [build_train_loader(path, max_seq_len=SEQ, micro_batch_size=2, rank=r, world_size=2)
               for r in range(2)]
    iters = [iter(loader) for loader in loaders]
    for _ in range(200):  # lockstep, as DDP steps would be
        for it in iters:
            assert next(it).shape == (2, SEQ + 1)
    # 200 batches are far more than the small shard holds: its rank wrapped into later epochs
    # while the other may still be in its first one
    assert 200 * 2 * (SEQ + 1) > 3 * small.tokens
    epochs = [loader.epoch for loader in loaders]
    assert max(epochs) >= 1, epochs


def test_fewer_shards_than_readers_is_a_clear_error(data_manifest: Path) -> None:
    n = len(load_manifest(data_manifest).splits["train"].shards)
    with pytest.raises(NotEnoughShardsError, match=rf"has {n} shard\(s\), but 4 rank\(s\) x 4 worker\(s\) "
                                                    r"need at least 16"):
        build_train_loader(data_manifest, max_seq_len=SEQ, micro_batch_size=1, world_size=4, rank=0,
                           num_workers=4)


def test_bad_arguments(data_manifest: Path) -> None:
    with pytest.raises(ValueError, match="on_corrupt"):
        TextShardDataset(data_manifest, max_seq_len=SEQ, on_corrupt="ignore")
    with pytest.raises(ValueError, match="rank"):
        TextShardDataset(data_manifest, max_seq_len=SEQ, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no split 'test'"):
        TextShardDataset(data_manifest, "test", max_seq_len=SEQ)
