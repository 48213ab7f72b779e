"""A ViT with each position type trains on the digits shards through the real `megaseqpe-train`
(DeepSpeed; SeqPE on 2 processes) and beats chance on held-out images; the resolution report."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _launch import REPO, check, environment, metrics, tensorboard_scalars as scalars, train, train_concurrently
from megaseqpe.evaluation import evaluate_run

pytestmark = pytest.mark.multiprocess
POSITION_TYPES = ("seqpe", "learned", "sinusoidal", "rope", "nope")
STEPS = 300


@pytest.fixture(scope="module")
def vit_runs(tmp_path_factory, vit_digits_manifest):
    """One short run per position type from its configs/vit-digits-<type>.yaml, same budget."""
    tmp = tmp_path_factory.mktemp("vit_runs")
    jobs = {kind: (REPO / "configs" / f"vit-digits-{kind}.yaml",
                   [f"data.manifest={vit_digits_manifest}", f"run.dir={tmp / kind}", f"train.max_steps={STEPS}",
                    "train.eval_every=150", f"train.save_every={STEPS}", "train.log_every=5",
                    "train.eval_batches=20", "train.warmup_steps=10"]) for kind in POSITION_TYPES}
    config, overrides = jobs.pop("seqpe")
    check(train(config, *overrides, nproc=2))
    for result in train_concurrently(list(jobs.values())):  # the one-process baselines, side by side
        check(result)
    return {kind: tmp / kind for kind in POSITION_TYPES}


@pytest.mark.parametrize("kind", POSITION_TYPES)
def test_every_position_type_beats_chance_on_held_out_digits(vit_runs, kind):
    val = [m["val/acc"] for m in metrics(vit_runs[kind]) if "val/acc" in m]
    assert len(val) == 2 and val[-1] > 0.5, f"{kind}: held-out accuracy {val} (chance is 0.1)"


def test_image_runs_log_accuracy_and_the_seqpe_objectives(vit_runs):
    events = scalars(vit_runs["seqpe"])
    expected = {"train/loss", "train/cls_loss", "train/acc", "train/seqpe_contrastive_loss",
                "train/seqpe_distill_loss", "train/unique_positions", "val/loss", "val/acc"}
    assert expected <= set(events), expected - set(events)
    assert "val/ppl" not in events and "train/lm_loss" not in events


@pytest.mark.parametrize("kind", ["seqpe", "learned"])
def test_resolution_eval_writes_the_accuracy_table(vit_runs, kind):
    run_dir = vit_runs[kind]
    result = evaluate_run(run_dir, max_images=128)
    sizes = ["16", "24", "32", "48"]
    assert list(result["acc"]) == ["resize", "pad", "pad_moved"] and result["train_length"] == 16
    assert all(list(by_size) == sizes for by_size in result["acc"].values())
    scored = [a for by_size in result["acc"].values() for a in by_size.values() if a is not None]
    assert len(scored) == 10 and all(0.0 <= a <= 1.0 for a in scored)
    assert result["acc"]["resize"]["16"] == result["acc"]["pad"]["16"] > 0.5  # both: the training input
    assert result["acc"]["pad_moved"]["16"] is None and result["acc"]["pad_moved"]["24"] is None
    longer = "interpolate" if kind == "learned" else "extend"
    assert result["method"] == {"16": "extend", "24": longer, "32": longer, "48": longer}
    assert {n for by_size in result["images"].values() for n in by_size.values()} == {128, None}
    saved = json.loads((run_dir / "eval" / "extrapolation.json").read_text())
    assert saved["acc"] == result["acc"] and saved["position_type"] == kind
    table = (run_dir / "eval" / "extrapolation.md").read_text()
    assert "| resolution | x train | resize | pad | pad_moved | images | method |" in table and "| 48 | 3 |" in table
    assert (run_dir / "eval" / "extrapolation.png").stat().st_size > 1000
    assert {"eval/acc_resize_res_16", "eval/acc_pad_res_48", "eval/acc_pad_moved_res_48"} <= set(scalars(run_dir))


def test_eval_cli_for_an_image_run(vit_runs):
    command = [sys.executable, "-m", "megaseqpe.evaluation", "--run", str(vit_runs["rope"]), "--max-images", "64"]
    result = subprocess.run([*command, "--resolutions", "16,32"], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=300)
    check(result)
    assert "| 32 | 2 |" in result.stdout
    result = subprocess.run([*command, "--resolutions", "18"], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "resolution 18 is not a multiple of model.patch_size=4" in result.stderr
