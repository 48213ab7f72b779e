"""manifest.json validation (errors name the key) and the finite evaluation stream."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from megaseqpe.data import ManifestError, eval_batches, iter_raw_samples, load_manifest, decode_tokens


def test_manifest_round_trips(data_manifest: Path) -> None:
    manifest = load_manifest(data_manifest)
    assert manifest.to_dict() == json.loads(data_manifest.read_text())
    assert load_manifest(data_manifest.parent) == manifest  # the directory works too


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.pop("splits"), r"splits is missing"),
    (lambda m: m["splits"]["train"]["shards"][0].pop("sha256"), r"splits\.train\.shards\[0\]\.sha256 is missing"),
    (lambda m: m["splits"]["train"]["shards"][1].update(samples=-1), r"splits\.train\.shards\[1\]\.samples must be >= 0"),
    (lambda m: m["splits"]["val"].update(tokens=1), r"splits\.val\.tokens is not the sum over its shards"),
    (lambda m: m.update(format_version=2), r"format_version is 2, this megaseqpe reads 1"),
    (lambda m: m["tokenizer"].update(eos_id="2"), r"tokenizer\.eos_id must be an integer"),
    (lambda m: m["inputs"]["skipped"].pop("binary"), r"inputs\.skipped\.binary is missing"),
])
def test_manifest_errors_name_the_key(tmp_path: Path, data_manifest: Path, edit, message: str) -> None:
    data = json.loads(data_manifest.read_text())
    edit(data)
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"^{tmp_path}/manifest\.json: {message}"):
        load_manifest(bad)


@pytest.mark.parametrize("escape", ["../outside.tar", "train/../../outside.tar", "/etc/passwd",
                                    "train/link.tar", ""])
def test_shard_paths_must_stay_inside_the_manifests_directory(tmp_path: Path, data_manifest: Path,
                                                              escape: str) -> None:
    """A manifest cannot make training read files elsewhere: not by ``..``, an absolute path, or a
    symlink inside the directory that points out of it."""
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (tmp_path / "outside.tar").write_bytes(b"")
    (root / "train" / "link.tar").symlink_to(tmp_path / "outside.tar")
    data = json.loads(data_manifest.read_text())
    data["splits"]["train"]["shards"][1]["path"] = escape
    (root / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"^{root}/manifest\.json: splits\.train\.shards\[1\]\.path "
                                            rf"'{re.escape(escape)}' is outside the manifest's directory "
                                            rf"{re.escape(str(root.resolve()))}$"):
        load_manifest(root)


def test_missing_and_unparsable_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest"):
        load_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path)


def val_documents(manifest_path: Path) -> list[np.ndarray]:
    manifest = load_manifest(manifest_path)
    return [decode_tokens(s) for shard in manifest.splits["val"].shards
            for s in iter_raw_samples(manifest.shard_path(shard))]


def test_eval_batches_one_ordered_pass(data_manifest: Path) -> None:
    seq, eos = 63, load_manifest(data_manifest).tokenizer.eos_id
    batches = list(eval_batches(data_manifest, max_seq_len=seq, batch_size=5))
    assert all(b.dtype == torch.int64 and b.shape[1] == seq + 1 for b in batches)
    assert all(b.shape[0] == 5 for b in batches[:-1]) and 1 <= batches[-1].shape[0] <= 5
    stream = torch.cat(batches).reshape(-1).numpy()
    expected = np.concatenate([np.append(d.astype(np.int64), eos) for d in val_documents(data_manifest)])
    assert len(expected) - len(stream) < seq + 1  # only the last partial row is dropped
    np.testing.assert_array_equal(stream, expected[: len(stream)])
    again = list(eval_batches(data_manifest, max_seq_len=seq, batch_size=5))
    assert all(torch.equal(a, b) for a, b in zip(batches, again)) and len(again) == len(batches)


def test_eval_ranks_split_documents(data_manifest: Path) -> None:
    docs = val_documents(data_manifest)
    eos = load_manifest(data_manifest).tokenizer.eos_id
    for rank in range(2):
        rows = torch.cat(list(eval_batches(data_manifest, max_seq_len=31, batch_size=4, rank=rank,
                                           world_size=2))).reshape(-1).numpy()
        mine = np.concatenate([np.append(d.astype(np.int64), eos) for d in docs[rank::2]])
        np.testing.assert_array_equal(rows, mine[: len(rows)])
