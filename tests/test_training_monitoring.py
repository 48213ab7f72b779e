"""What a user watches: TensorBoard tags read back from real event files, the eval report, errors."""
import json
import math
import re
import subprocess
import sys

import pytest

from _launch import (REPO, check, environment, metrics, tensorboard_scalars as scalars, tiny_config, train,
                     train_concurrently)
from megaseqpe.evaluation import evaluate_run

pytestmark = pytest.mark.multiprocess
POSITION_TYPES = ("seqpe", "learned", "sinusoidal", "rope", "alibi", "nope")
TRAIN_TAGS = {"train/loss", "train/lm_loss", "train/seqpe_contrastive_loss", "train/seqpe_distill_loss",
              "train/lr", "train/grad_norm", "train/tokens_per_second", "train/unique_positions",
              "train/skipped_steps", "val/loss", "val/ppl", "seqpe/teacher_entropy"}
OPERATOR_TAGS = {"throughput(tps)", "tflops", "time_metrics/end_to_end(s)", "time_metrics/data_loading(s)",
                 "time_metrics/data_loading(%)", "memory/max_rss(GiB)", "model/params"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_manifest):
    """One short single-process run per position type; its captured (not a terminal) stdout and stderr
    kept beside it as KIND.stdout, KIND.stderr."""
    tmp = tmp_path_factory.mktemp("types")
    configs = [tiny_config(tmp, data_manifest, name=kind, position={"type": kind},
                           train={"max_steps": 4, "eval_every": 2, "save_every": 4}) for kind in POSITION_TYPES]
    for kind, result in zip(POSITION_TYPES, train_concurrently([(config, ()) for config in configs])):
        check(result)
        (tmp / f"{kind}.stdout").write_text(result.stdout)
        (tmp / f"{kind}.stderr").write_text(result.stderr)
    return {kind: tmp / kind for kind in POSITION_TYPES}


def test_tensorboard_has_every_documented_tag_and_metrics_jsonl_the_same_numbers(runs):
    run_dir = runs["seqpe"]
    events = scalars(run_dir)
    assert TRAIN_TAGS <= set(events), TRAIN_TAGS - set(events)
    assert "train/mfu" not in events, "no MFU where the accelerator's peak is unknown (CPU)"
    records = metrics(run_dir)
    assert [m["train/loss"] for m in records if "train/loss" in m] == pytest.approx(events["train/loss"])
    assert len(events["val/ppl"]) == 2 and all(math.isfinite(v) for v in events["val/ppl"])


def test_stdout_that_is_a_file_gets_one_plain_line_per_log_step_with_the_val_loss(runs):
    run_dir = runs["seqpe"]
    stdout = (run_dir.parent / "seqpe.stdout").read_text()
    lines = {int(m.group(1)): m.group(0) for m in re.finditer(r"^step (\d+)/4 \| .*$", stdout, re.MULTILINE)}
    assert sorted(lines) == [1, 2, 3, 4], stdout  # log_every 1, eval_every 2
    events = scalars(run_dir)
    assert "val" not in lines[1]
    assert f"| val {events['val/loss'][0]:.3f} (new) |" in lines[2]
    assert f"| val {events['val/loss'][0]:.3f} (step 2) |" in lines[3]
    assert f"| val {events['val/loss'][1]:.3f} (new) |" in lines[4]
    assert re.search(r"\| loss \d+\.\d{3} \| .*\| lr \S+ \| \S+ tok/s \(\S+/dev\) \| step \S+s \(data \d+%\) \| "
                     r"rss \d+\.\d GiB$", lines[4]), lines[4]
    assert "step/s" not in (run_dir.parent / "seqpe.stderr").read_text(), "no progress bar in a file"
    assert "MFU: no peak known for cpu; not reported" in stdout


def test_operator_tags_in_tensorboard_and_the_parameter_count_once(runs):
    run_dir = runs["seqpe"]
    events = scalars(run_dir)
    assert OPERATOR_TAGS <= set(events), OPERATOR_TAGS - set(events)
    assert "mfu(%)" not in events and "memory/max_active(GiB)" not in events, "CPU: no peak, no CUDA memory"
    stdout = (run_dir.parent / "seqpe.stdout").read_text()
    parameters = int(re.search(r"^model: ([\d,]+) parameters", stdout, re.MULTILINE).group(1).replace(",", ""))
    assert events["model/params"] == [parameters] and parameters > 10_000
    assert all(0 <= share <= 100 for share in events["time_metrics/data_loading(%)"])
    assert all(seconds > 0 for seconds in events["time_metrics/end_to_end(s)"])
    assert events["throughput(tps)"] == pytest.approx(events["train/tokens_per_second"])  # one process


@pytest.mark.parametrize("kind", POSITION_TYPES)
def test_eval_gives_finite_perplexity_at_every_length(runs, kind):
    run_dir = runs[kind]
    result = evaluate_run(run_dir, lengths=[32, 64, 128, 512], max_tokens=1024)
    assert set(result["ppl"]) == {"32", "64", "128", "512"}
    assert all(math.isfinite(p) and p > 1 for p in result["ppl"].values()), result
    longer = "interpolate" if kind == "learned" else "extend"
    assert result["method"] == {"32": "extend", "64": longer, "128": longer, "512": longer}
    saved = json.loads((run_dir / "eval" / "extrapolation.json").read_text())
    assert saved["position_type"] == kind and saved["train_length"] == 32 and saved["ppl"] == result["ppl"]
    assert (run_dir / "eval" / "extrapolation.png").stat().st_size > 1000
    assert "| 512 | 16 |" in (run_dir / "eval" / "extrapolation.md").read_text()
    assert {"eval/ppl_len_32", "eval/ppl_len_512"} <= set(scalars(run_dir))


def test_eval_cli_prints_the_table(runs):
    result = subprocess.run([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(runs["rope"]),
                             "--lengths", "32,64", "--max-tokens", "256"], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=300)
    check(result)
    assert "| 64 | 2 |" in result.stdout


def test_eval_out_writes_elsewhere_and_leaves_the_runs_report(runs, tmp_path):
    run_dir = runs["alibi"]
    evaluate_run(run_dir, lengths=[32], max_tokens=256)
    before = (run_dir / "eval" / "extrapolation.json").read_text()
    result = subprocess.run([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(run_dir), "--lengths", "64",
                             "--max-tokens", "256", "--out", str(tmp_path / "out")], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=300)
    check(result)
    assert set(json.loads((tmp_path / "out" / "extrapolation.json").read_text())["ppl"]) == {"64"}
    assert (tmp_path / "out" / "extrapolation.png").exists() and "eval/ppl_len_64" in scalars(tmp_path / "out")
    assert (run_dir / "eval" / "extrapolation.json").read_text() == before


def test_eval_refuses_data_made_with_another_tokenizer(runs, tmp_path, data_corpus_files, data_build_shards):
    from data_prep.cli import main as prep_main
    assert prep_main(["tokenizer", "--input", *map(str, data_corpus_files[:10]), "--vocab-size", "500",
                      "--out", str(tmp_path / "tok")]) == 0
    other = data_build_shards(data_corpus_files[:10], tmp_path / "tok" / "tokenizer.model", tmp_path / "shards",
                              "--val-fraction", "0.5")
    result = subprocess.run([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(runs["nope"]),
                             "--data", str(other), "--lengths", "32"], cwd=REPO, env=environment(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("megaseqpe-eval: error:") and "was tokenized with a different tokenizer" in last


@pytest.mark.parametrize("overrides,message", [
    (["model.n_layyer=2"], "unknown key model.n_layyer (did you mean 'n_layer'?)"),
    (["data.manifest=/nonexistent/manifest.json"], "/nonexistent/manifest.json"),
])
def test_train_cli_errors_are_one_clear_line(tmp_path, data_manifest, overrides, message):
    config = tiny_config(tmp_path, data_manifest)
    result = train(config, *overrides, nproc=1)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("megaseqpe-train: error:") and message in last
    assert "Traceback" not in result.stderr


def test_eval_cli_error_for_a_directory_that_is_not_a_run(tmp_path):
    result = subprocess.run([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(tmp_path)],
                            cwd=REPO, env=environment(), capture_output=True, text=True)
    assert result.returncode == 2 and "not a run directory" in result.stderr


def test_non_finite_losses_are_skipped_then_the_run_aborts(tmp_path, data_manifest):
    config = tiny_config(tmp_path, data_manifest, train={"lr": 1e6, "grad_clip": 1e9, "max_steps": 50,
                                                         "max_bad_steps": 3, "warmup_steps": 0})
    result = train(config, nproc=1)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "non-finite" in result.stderr.strip().splitlines()[-1]
    assert "skipped" in result.stdout + result.stderr
