"""Nothing loaded from a run directory runs code: a pickle payload planted in any file of a
checkpoint tag is refused by resume (same and different world size) and by evaluation, with one
line naming the file, and the payload never runs. Real DeepSpeed checkpoints, real processes."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

from _launch import REPO, check, environment, tiny_config, train

pytestmark = pytest.mark.multiprocess

TAG = "step_00000002"
DEEPSPEED_FILES = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                   "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
STEPS = {"max_steps": 2, "save_every": 2, "eval_every": 100}


class Payload:
    """Unpickling this calls os.mkdir(marker): the proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_manifest):
    """A 2-process ZeRO-2 run with one checkpoint tag and its universal conversion."""
    tmp = tmp_path_factory.mktemp("safety")
    check(train(tiny_config(tmp, data_manifest, train=STEPS)))
    return tmp / "run"


def planted_copy(trained, tmp_path, file_name):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    marker = tmp_path / "payload-ran"
    torch.save({"module": Payload(marker)}, run / "checkpoints" / TAG / file_name)
    return run, marker


def resume(run, manifest, nproc):
    """The run's own command with train.max_steps raised (run.dir = the copy)."""
    return train(tiny_config(run.parent, manifest, train=STEPS), "train.max_steps=4", nproc=nproc)


def assert_refused(result, run, file_name, marker, program="megaseqpe-train"):
    assert result.returncode != 0
    line = next((l for l in result.stderr.splitlines() if l.startswith(f"{program}: error: checkpoint file")), "")
    assert file_name in line and "refused: loading it would call posix.mkdir" in line, result.stderr[-3000:]
    assert not marker.exists(), "the planted code ran"


@pytest.mark.parametrize("file_name", DEEPSPEED_FILES)
def test_resume_on_the_same_world_size_refuses_a_planted_file(trained, tmp_path, data_manifest, file_name):
    run, marker = planted_copy(trained, tmp_path, file_name)
    assert_refused(resume(run, data_manifest, nproc=2), run, file_name, marker)


@pytest.mark.parametrize("file_name", DEEPSPEED_FILES)
def test_universal_resume_refuses_a_planted_file(trained, tmp_path, data_manifest, file_name):
    run, marker = planted_copy(trained, tmp_path, file_name)
    result = resume(run, data_manifest, nproc=1)
    assert result.returncode == 2
    assert_refused(result, run, file_name, marker)
    assert not (run / "checkpoints" / f"{TAG}_universal").exists(), "nothing converted from a planted tag"


@pytest.mark.parametrize("file_name", DEEPSPEED_FILES)
def test_evaluation_refuses_a_planted_file(trained, tmp_path, file_name):
    run, marker = planted_copy(trained, tmp_path, file_name)
    result = subprocess.run([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(run), "--max-tokens", "64"],
                            cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert_refused(result, run, file_name, marker, program="megaseqpe-eval")


def test_a_planted_file_in_an_earlier_universal_conversion_is_refused(trained, tmp_path, data_manifest):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    check(resume(run, data_manifest, nproc=1))  # converts step 2 and goes on to step 4 on one process
    converted = run / "checkpoints" / f"{TAG}_universal"
    victim = sorted(converted.rglob("*.pt"))[0]
    marker = tmp_path / "payload-ran"
    torch.save({"param": Payload(marker)}, victim)
    (run / "checkpoints" / "latest").write_text(TAG)  # resume from step 2 on one process again
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    result = resume(run, data_manifest, nproc=1)
    assert result.returncode == 2
    assert_refused(result, run, victim.name, marker)


def test_deepspeeds_own_loaders_are_weights_only_under_our_entry_points(trained, tmp_path):
    """DeepSpeed's consolidation unpickles with weights_only=False; after enforce_weights_only
    (which training and evaluation call first) the same call refuses the payload."""
    run, marker = planted_copy(trained, tmp_path, DEEPSPEED_FILES[1])
    code = ("import sys; from megaseqpe.safe_loading import enforce_weights_only; enforce_weights_only()\n"
            "from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint as load\n"
            f"load({str(run / 'checkpoints')!r}, tag={TAG!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=environment(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0 and "Weights only load failed" in result.stderr
    assert not marker.exists()
