"""Damaged data met by the real commands: one error line naming the shard, exit 2, no traceback."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _launch import REPO, check, environment, metrics, tiny_config, train
from megaseqpe.data import load_manifest

pytestmark = pytest.mark.multiprocess


def error_line(result: subprocess.CompletedProcess, prog: str) -> str:
    """The command's one error line, after checking it ended the way bad input should. (Searched
    for rather than taken last: training's progress bar is redrawn when the process exits.)"""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr, result.stderr[-3000:]
    [line] = re.findall(rf"{prog}: error: .*", result.stderr)
    return line


def test_missing_and_altered_shards_stop_eval_and_training_with_one_line(tmp_path: Path,
                                                                          data_manifest: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_manifest.parent, data)
    manifest = load_manifest(data)
    config = tiny_config(tmp_path, data / "manifest.json",
                         train={"max_steps": 2, "save_every": 2, "eval_every": 2})
    check(train(config, nproc=1))

    val = manifest.shard_path(manifest.splits["val"].shards[0])
    val.rename(tmp_path / "aside.tar")
    result = subprocess.run([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(tmp_path / "run"),
                             "--lengths", "32", "--max-tokens", "256"], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=300)
    assert error_line(result, "megaseqpe-eval").startswith(f"megaseqpe-eval: error: {val}: missing shard")
    (tmp_path / "aside.tar").rename(val)

    for shard in manifest.splits["train"].shards:  # one changed byte each: every shard is now refused
        path = manifest.shard_path(shard)
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(raw)
    # The resumed run reads them in its DataLoader worker process (data.num_workers=1).
    line = error_line(train(config, "train.max_steps=4", nproc=1), "megaseqpe-train")
    assert re.match(rf"megaseqpe-train: error: {re.escape(str(data))}/train/shard-\d{{6}}\.tar: corrupt shard: "
                    rf"sha256 mismatch \(manifest [0-9a-f]{{16}}\.\.\., file [0-9a-f]{{16}}\.\.\.\)", line), line

    # Under on_corrupt=skip every altered shard is a counted skip; with none left readable the run
    # still stops with one line rather than waiting for data forever.
    line = error_line(train(config, "train.max_steps=4", "data.on_corrupt=skip", nproc=1), "megaseqpe-train")
    assert "found no readable sample in epoch 0 of split 'train'" in line, line
    logged = [m["data/skipped_samples"] for m in metrics(tmp_path / "run") if "data/skipped_samples" in m]
    assert logged and logged[-1] == 0.0, "the trainer logs the stream's skip count"
