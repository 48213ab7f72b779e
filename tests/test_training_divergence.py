"""A diverging run aborts after train.max_bad_steps bad steps in a row, exits non-zero, and keeps
the last checkpoint from before the first bad step whatever keep_last says (real training)."""
import pytest

from _launch import check, metrics, tiny_config, train

pytestmark = pytest.mark.multiprocess


def test_an_lr_that_diverges_aborts_and_keeps_the_checkpoint_from_before(tmp_path, data_manifest):
    steps = {"max_steps": 4, "save_every": 1, "keep_last": 1, "eval_every": 100, "max_bad_steps": 3}
    config = tiny_config(tmp_path, data_manifest, train=steps, deepspeed={"zero_stage": 0})
    check(train(config, nproc=1))
    # lr 50 from step 5 on: finite but huge updates, then infinite gradient norms.
    result = train(config, "train.max_steps=40", "train.lr=50", nproc=1)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("megaseqpe-train: aborting: 3 bad steps in a row at step ")
    bad = [int(line.split(":")[0].split()[-1]) for line in (result.stdout + result.stderr).splitlines()
           if "bad in a row)" in line]
    assert len(bad) == 3 and bad == list(range(bad[0], bad[0] + 3))
    kept = f"step_{bad[0] - 1:08d}"
    assert f"kept {kept} from before the first bad step ({bad[0]})" in last
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (checkpoints / kept / "COMPLETE").exists(), "keep_last=1 must not prune the last good tag"
    assert (checkpoints / "latest").read_text() == kept
    later = [p.name for p in checkpoints.glob("step_*") if p.name > kept]
    assert later, "tags were written during the bad streak (save_every=1), so keep_last=1 was tested"
    assert max(m["step"] for m in metrics(tmp_path / "run")) < 40
