"""The three image extrapolation protocols (resize / pad / pad_moved): how each builds its input,
and the report an untrained ViT gets through them on a tiny real image manifest."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _launch import REPO, tensorboard_scalars as scalars
from data_prep.cli import main as prep_main
from megaseqpe.config import load_config
from megaseqpe.data import resize_images
from megaseqpe.evaluation.report import markdown_table, write_report
from megaseqpe.rundir import RunDir
from megaseqpe.tasks import ExtrapolationRequest, build_task
from megaseqpe.tasks.images import PROTOCOLS, padded, padded_moved, resized

TRAIN, PATCH = 16, 4


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Four 28x28 grey pictures with no zero pixel, so a blank canvas pixel is always the padding."""
    return torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1


def test_resize_shows_the_source_at_each_side_and_is_the_training_input_at_1x(images):
    for size in (16, 24, 48):
        assert torch.equal(resized(images, size, TRAIN), resize_images(images, size))
    assert resized(images, 48, TRAIN).shape == (4, 1, 48, 48)
    upscaled_training_input = resize_images(resize_images(images, TRAIN), 48)
    assert not torch.allclose(resized(images, 48, TRAIN), upscaled_training_input, atol=0.05)  # real detail


@pytest.mark.parametrize("size", [16, 24, 32, 48])
def test_pad_keeps_the_training_image_at_its_trained_place_and_adds_only_blank(images, size):
    canvas = padded(images, size, TRAIN)
    assert canvas.shape == (4, 1, size, size)
    assert torch.equal(canvas[..., :TRAIN, :TRAIN], resize_images(images, TRAIN))
    rest = canvas.clone()
    rest[..., :TRAIN, :TRAIN] = 0
    assert not rest.any()


@pytest.mark.parametrize("size", [32, 48])
def test_pad_moved_puts_the_image_only_on_positions_beyond_the_training_grid(images, size):
    canvas = padded_moved(images, size, TRAIN)
    assert torch.equal(canvas[..., TRAIN:2 * TRAIN, TRAIN:2 * TRAIN], resize_images(images, TRAIN))
    grid = size // PATCH
    patches = canvas.reshape(4, 1, grid, PATCH, grid, PATCH).abs().sum((0, 1, 3, 5))  # [row, col]
    rows, cols = torch.nonzero(patches, as_tuple=True)
    assert rows.min() == cols.min() == TRAIN // PATCH and rows.max() == cols.max() == 2 * TRAIN // PATCH - 1
    assert int(patches.count_nonzero()) == (TRAIN // PATCH) ** 2


def test_protocols_apply_from_their_smallest_canvas():
    applies = {name: [size for size in (8, 16, 24, 32, 48) if protocol.applies(size, TRAIN)]
               for name, protocol in PROTOCOLS.items()}
    assert applies == {"resize": [8, 16, 24, 32, 48], "pad": [16, 24, 32, 48], "pad_moved": [32, 48]}
    with pytest.raises(ValueError, match="does not fit a 24 px canvas"):
        padded_moved(torch.ones(1, 1, 28, 28), 24, TRAIN)


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory) -> str:
    """40 random 28x28 images of 10 classes written by the real `megaseqpe-prep images`."""
    tmp = tmp_path_factory.mktemp("tiny_images")
    rng = np.random.default_rng(0)
    np.savez(tmp / "x.npz", images=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), labels=np.arange(40) % 10)
    assert prep_main(["images", "--input", str(tmp / "x.npz"), "--out", str(tmp / "out"), "--val-fraction", "0.5"]) == 0
    return str(tmp / "out" / "manifest.json")


@pytest.mark.parametrize("kind,longer", [("seqpe", "extend"), ("learned", "interpolate")])
def test_an_untrained_vit_gets_the_three_protocol_report(tmp_path, tiny_manifest, kind, longer):
    config = load_config(REPO / "configs" / f"vit-digits-{kind}.yaml", [f"data.manifest={tiny_manifest}"])
    task = build_task(config)
    model = task.build_model().eval()
    request = ExtrapolationRequest(manifest=tiny_manifest, split="val", device=torch.device("cpu"), max_images=8)
    result = {"position_type": kind, "checkpoint": "untrained", "step": 0} | task.extrapolation(model, request)
    sizes = ["16", "24", "32", "48"]
    assert result["train_length"] == TRAIN and result["train_grid"] == TRAIN // PATCH
    assert list(result["acc"]) == list(result["images"]) == ["resize", "pad", "pad_moved"]
    assert all(list(result[key][name]) == sizes for key in ("acc", "images") for name in PROTOCOLS)
    assert result["method"] == {"16": "extend", "24": longer, "32": longer, "48": longer}
    scored = {(name, size) for name in PROTOCOLS for size in sizes if result["acc"][name][size] is not None}
    assert scored == {(n, s) for n in PROTOCOLS for s in sizes} - {("pad_moved", "16"), ("pad_moved", "24")}
    assert all(0.0 <= result["acc"][n][s] <= 1.0 and result["images"][n][s] == 8 for n, s in scored)
    assert result["images"]["pad_moved"]["16"] is None and result["images"]["pad_moved"]["24"] is None
    assert result["acc"]["pad"]["16"] == result["acc"]["resize"]["16"]  # both are the training input at 1x

    run = RunDir(tmp_path / "run")
    write_report(run, result)
    assert json.loads((run.eval / "extrapolation.json").read_text()) == result
    table = markdown_table(result)
    assert (run.eval / "extrapolation.md").read_text() == table
    assert "| resolution | x train | resize | pad | pad_moved | images | method |" in table
    assert "| 24 | 1.5 |" in table and "not scored" in table and "| 32 | 2 |" in table
    tags = set(scalars(run.path))
    assert {"eval/acc_resize_res_48", "eval/acc_pad_res_24", "eval/acc_pad_moved_res_32"} <= tags
    assert "eval/acc_pad_moved_res_16" not in tags
