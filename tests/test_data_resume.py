"""Resuming the training stream: rows after a restore equal those of an uninterrupted run."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
import torch

from megaseqpe.data import DataStreamMismatch, build_train_loader

SEQ = 255


def make(manifest: Path, num_workers: int, **kw):
    return build_train_loader(manifest, max_seq_len=SEQ, micro_batch_size=4, seed=7, rank=1,
                              world_size=2, num_workers=num_workers, **kw)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rows_after_restore_equal_uninterrupted(data_manifest: Path, num_workers: int) -> None:
    total, cuts = 300, (1, 37, 151, 263)  # odd cuts: the next batch is due from worker 1, not 0
    reference = make(data_manifest, num_workers)
    rows = list(islice(reference, total))
    assert min(int(s["epoch"]) for s in reference.state_dict()["readers"].values()) >= 1  # wrapped
    for cut in cuts:
        first = make(data_manifest, num_workers)
        head = list(islice(first, cut))
        state = json.loads(json.dumps(first.state_dict()))  # it must survive serialisation
        resumed = make(data_manifest, num_workers)
        resumed.load_state_dict(state)
        tail = list(islice(resumed, total - cut))
        for i, batch in enumerate(head + tail):
            assert torch.equal(batch, rows[i]), (cut, i)


def test_iterating_again_continues(data_manifest: Path) -> None:
    """Breaking out and iterating the same loader again continues, it does not restart."""
    reference = list(islice(make(data_manifest, 2), 9))
    loader = make(data_manifest, 2)
    got = list(islice(loader, 4)) + list(islice(loader, 5))
    assert all(torch.equal(a, b) for a, b in zip(got, reference))


def test_state_of_another_layout_is_refused(data_manifest: Path) -> None:
    state = make(data_manifest, 2).state_dict()
    with pytest.raises(ValueError, match="num_workers was 2 when saved and is 0 now"):
        make(data_manifest, 0).load_state_dict(state)
    other_seed = build_train_loader(data_manifest, max_seq_len=SEQ, micro_batch_size=4, seed=8,
                                    rank=1, world_size=2, num_workers=2)
    with pytest.raises(ValueError, match="seed was 7"):
        other_seed.load_state_dict(state)


def test_state_of_other_shards_is_refused_naming_the_manifest(data_manifest: Path) -> None:
    """The message names the data (the CLI prints it as its one error line, exit 2)."""
    state = {**make(data_manifest, 0).state_dict(), "shards_sha256": "0" * 64}
    with pytest.raises(DataStreamMismatch) as caught:
        make(data_manifest, 0).load_state_dict(state)
    assert str(caught.value).startswith(f"{data_manifest}: cannot resume the data stream: shards_sha256 was ")
    assert "the shards changed since the checkpoint" in str(caught.value)
