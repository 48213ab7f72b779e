"""`megaseqpe-generate` on a real (tiny, 2-step) run directory: it streams the continuation token by
token, stops at --max-new-tokens, and its KV cache changes no greedy token."""
import importlib

import pytest

from _launch import check, tiny_config, train
from megaseqpe.generation.cli import main
from megaseqpe.safe_loading import FORCE_WEIGHTS_ONLY


# Imported now, so that DeepSpeed's logger binds to the real stdout rather than to the recorder below.
importlib.import_module("deepspeed.utils.zero_to_fp32")


class RecordingStdout:
    """stdout that remembers what was shown at each flush."""

    def __init__(self):
        self.text, self.flushed = "", []

    def write(self, text):
        self.text += text

    def flush(self):
        self.flushed.append(self.text)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, data_manifest):
    tmp_path = tmp_path_factory.mktemp("generate")
    config = tiny_config(tmp_path, data_manifest, train={"max_steps": 2, "save_every": 2, "eval_every": 100},
                         deepspeed={"zero_stage": 0})
    check(train(config, nproc=1))
    return tmp_path / "run"


def generate(monkeypatch, *args):
    """(exit code, recorded stdout) of the CLI run in this process, leaving the environment as it was."""
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.delenv(FORCE_WEIGHTS_ONLY, raising=False)  # set by the CLI; undone after the test
    stdout = RecordingStdout()
    monkeypatch.setattr("sys.stdout", stdout)
    return main([str(a) for a in args]), stdout


def test_generate_streams_token_by_token_and_stops_at_max_new_tokens(text_run, monkeypatch, capsys):
    # Sampled (seeded): after 2 steps the model's greedy choice is always the newline.
    args = ["--run", text_run, "--prompt", "def main():", "--max-new-tokens", 24, "--temperature", 0.8, "--seed", 0]
    code, cached = generate(monkeypatch, *args)
    assert code == 0, capsys.readouterr().err
    assert len(cached.flushed) == 24, "one flush per new token, and no more than --max-new-tokens"
    assert cached.text.strip() and len(set(cached.flushed)) > 1, "the text grows as it is generated"
    assert "24 tokens in" in capsys.readouterr().err
    code, uncached = generate(monkeypatch, *args, "--no-cache")
    assert code == 0 and uncached.text == cached.text


def test_generate_errors_are_one_line(tmp_path, monkeypatch, capsys):
    code, _ = generate(monkeypatch, "--run", tmp_path, "--prompt", "x")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("megaseqpe-generate: error: no checkpoint in")
