"""A full disk while saving: one line saying "disk full" with the path, exit 2, the partial tag
removed, and the previous tag intact for the rerun (a real tmpfs of limited size; needs root)."""
import os
import subprocess

import pytest

from _launch import check, tiny_config, train

pytestmark = pytest.mark.multiprocess

STEPS = {"save_every": 2, "keep_last": 1, "eval_every": 100}


def tag_bytes(tag_dir):
    return sum(p.stat().st_size for p in tag_dir.iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """Mounts a tmpfs at tmp_path/disk; yields `mount(size_bytes)`; unmounts afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = []

    def mount(size):
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_during_a_save_is_one_line_and_removes_the_partial_tag(tmp_path, data_manifest, small_disk):
    probe = tiny_config(tmp_path, data_manifest, name="probe", train={"max_steps": 2, **STEPS},
                        deepspeed={"zero_stage": 0})
    check(train(probe, nproc=1))
    size = tag_bytes(tmp_path / "probe" / "checkpoints" / "step_00000002")
    disk = small_disk(int(size * 1.5) + (256 << 10))  # room for one tag, not for a second before pruning

    config = tiny_config(disk, data_manifest, train={"max_steps": 6, **STEPS}, deepspeed={"zero_stage": 0})
    result = train(config, nproc=1)
    assert result.returncode == 2
    checkpoints = disk / "run" / "checkpoints"
    assert result.stderr.strip().splitlines()[-1] == (
        f"megaseqpe-train: error: disk full while writing checkpoint {checkpoints / 'step_00000004'}: the partial "
        f"tag was removed; free space under {checkpoints} and rerun to resume from step_00000002")
    assert not (checkpoints / "step_00000004").exists()
    assert (checkpoints / "step_00000002" / "COMPLETE").exists()
    assert (checkpoints / "latest").read_text() == "step_00000002"
