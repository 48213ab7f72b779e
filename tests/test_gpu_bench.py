"""`make bench-gpu`'s script, checked on a CPU: `benchmarks/gpu.py --smoke` runs every part where neither
DeepSpeed nor webdataset can be imported (as on the GPU machine), a failing part is recorded while the
others still run, and the report renders what it wrote."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu.py"
PARTS = ["backend_equality", "throughput", "eval_memory", "generation", "trunk_options"]

# Runs gpu.py as __main__ behind an import hook that refuses deepspeed and webdataset, and fails if
# anything imported them all the same.
BLOCKED_RUN = """
import importlib.abc, runpy, sys
BLOCKED = ("deepspeed", "webdataset")
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed on the GPU machine")
sys.meta_path.insert(0, Refuse())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED], "imported a blocked package"
"""


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_smoke_runs_every_part_without_deepspeed_or_webdataset(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "-c", BLOCKED_RUN, str(SCRIPT), "--smoke", "--out", str(out)],
                            capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert list(data["parts"]) == PARTS and data["smoke"] is True
    assert all("error" not in part and _positive(part["seconds"]) for part in data["parts"].values()), data["parts"]
    equality = data["parts"]["backend_equality"]["rows"]
    measured = [row for row in equality if "logits_rel" in row]
    # eager and sdpa run everywhere, for each of the four position types; bf16 stays within tolerance.
    assert {(row["position"], row["backend"]) for row in measured} >= {
        (p, b) for p in ("learned", "rope", "alibi", "seqpe") for b in ("eager", "sdpa")}
    assert all(row["pass"] and 0 < row["logits_rel"] < 0.02 and 0 < row["grads_rel"] < 0.05 for row in measured)
    assert all(len(row) > 2 for row in equality)  # every other row says why: skipped or an error
    for row in data["parts"]["throughput"]["rows"]:
        assert all(_positive(row[name][key]) for name in ("seqpe", "learned") for key in ("tokens_per_s", "step_s"))
        assert row["seqpe"]["encoder_tokens"] > 0 and row["learned"]["encoder_tokens"] == 0  # objectives ran
        assert _positive(row["ratio_seqpe_over_learned"])
    assert set(data["summary"]["seqpe_over_learned_step"]["measured"]) == {"L16_B2", "L32_B2"}
    assert all(_positive(row["seconds"]) for row in data["parts"]["eval_memory"]["rows"].values())
    assert data["parts"]["eval_memory"]["rows"]["learned"]["method"] == "interpolate"
    assert all(_positive(row["tokens_per_s"]) for row in data["parts"]["generation"]["rows"].values())
    options = data["parts"]["trunk_options"]["rows"]
    assert _positive(options["none"]["tokens_per_s"]) and _positive(options["activation_checkpointing_full"]["step_s"])

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        report = "\n".join(_load("gpu_report", ROOT / "benchmarks" / "gpu_report.py").gpu_section(data))
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for heading in ("bf16 backends", "SeqPE against learned APE", "Evaluation forward", "Generation", "Trunk options"):
        assert heading in report


def test_a_failing_part_is_recorded_and_the_next_still_runs():
    gpu = _load("gpu_bench", SCRIPT)
    # Two training positions cannot hold the smoke setting's 4 distillation slots: a real ConfigError.
    sizes = dataclasses.replace(gpu.SMOKE, lengths=(2,))
    ctx = gpu.Context(sizes, gpu.torch.device("cpu"), end=gpu.time.monotonic() + 60)
    failed = gpu.run_part("throughput", ctx)
    assert failed["error"].startswith("ConfigError: position.distill_num") and "traceback" in failed
    generated = gpu.run_part("generation", ctx)
    assert "error" not in generated and _positive(generated["rows"]["kv_cache"]["tokens_per_s"])
    assert gpu.summary({"throughput": failed})["seqpe_over_learned_step"]["met"] is False


def test_parts_past_the_time_budget_are_recorded_as_skipped(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--max-seconds", "0", "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == PARTS and all(part["skipped"].startswith("time budget") for part in parts.values())


@pytest.mark.parametrize("args, message", [(["--parts", "throughput,speed"], "--parts: unknown part(s) speed"),
                                           (["--max-seconds", "soon"], "--max-seconds: invalid float value")])
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and message in result.stderr.strip().splitlines()[-1]
