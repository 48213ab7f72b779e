"""Weighted mixtures (`data.sources`): proportions, determinism, exact resume, one tokenizer,
config checks, and per-source metrics of a real training run killed with SIGKILL and resumed."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import pytest
import torch
import yaml

from _launch import REPO, check, environment, tensorboard_scalars, tiny_config, train, train_command, wait_for_step
from data_prep.cli import main as prep_main
from megaseqpe.config import ConfigError, DataSource, config_from_dict, dump_config
from megaseqpe.data import DataStreamMismatch, build_mixture_loader, build_train_loader, source_of_row
from megaseqpe.rundir import CheckpointError
from megaseqpe.training.resume_policy import resume_changes

SEQ = 31


@pytest.fixture(scope="module")
def second_manifest(tmp_path_factory, data_corpus_files, data_tokenizer, data_build_shards) -> Path:
    """Other documents (the corpus' second half), same tokenizer as `data_manifest`."""
    out = tmp_path_factory.mktemp("mix") / "second"
    half = data_corpus_files[len(data_corpus_files) // 2:]
    return data_build_shards(half, data_tokenizer, out, "--shard-tokens", "5000", "--val-fraction", "0.1")


@pytest.fixture(scope="module")
def sources(data_manifest, second_manifest) -> list[DataSource]:
    return [DataSource(str(data_manifest), 3.0, "first"), DataSource(str(second_manifest), 1.0, "second")]


def mixture(sources, seed=7, num_workers=0, micro_batch_size=4):
    return build_mixture_loader(sources, max_seq_len=SEQ, micro_batch_size=micro_batch_size, seed=seed, rank=1,
                                world_size=2, num_workers=num_workers)


def test_row_choices_match_the_weights_within_binomial_tolerance() -> None:
    """Over n rows the share of a source of probability p has standard deviation sqrt(p(1-p)/n):
    0.0031 for p = 3/4 and n = 20000; 5 of them (0.015) leave a false failure chance below 1e-6."""
    n = 20_000
    for weights in ([3.0, 1.0], [1.0, 2.0, 5.0]):
        picks = [source_of_row(11, 0, row, weights) for row in range(n)]
        for index, weight in enumerate(weights):
            p = weight / sum(weights)
            assert abs(picks.count(index) / n - p) < 5 * math.sqrt(p * (1 - p) / n), (weights, index)


def test_rows_come_from_each_source_stream_in_proportion(sources) -> None:
    """4000 rows from real shards: the share of each source is within 5 binomial standard deviations
    (0.034) of its weight, and the rows of a source are exactly that source's own stream, in order."""
    loader = mixture(sources, micro_batch_size=8)
    batches = list(islice(loader, 500))
    counts = loader.rows_by_source()
    assert sum(counts.values()) == 4000 and all(b.shape == (8, SEQ + 1) for b in batches)
    share = counts["first"] / 4000
    assert abs(share - 0.75) < 5 * math.sqrt(0.75 * 0.25 / 4000), counts
    rows = torch.cat(batches)
    picks = [source_of_row(7, 1, row, [3.0, 1.0]) for row in range(4000)]
    for index, source in enumerate(sources):
        own = build_train_loader(source.manifest, max_seq_len=SEQ, micro_batch_size=1, seed=7, rank=1, world_size=2)
        expected = torch.cat(list(islice(own, picks.count(index))))
        assert torch.equal(rows[[i for i, p in enumerate(picks) if p == index]], expected), source.name


def test_same_seed_same_batches_other_seed_other_choices(sources) -> None:
    first, again = (list(islice(mixture(sources), 30)) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert [source_of_row(7, 1, r, [3, 1]) for r in range(64)] != [source_of_row(8, 1, r, [3, 1]) for r in range(64)]
    assert [source_of_row(7, 0, r, [3, 1]) for r in range(64)] != [source_of_row(7, 1, r, [3, 1]) for r in range(64)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_after_a_restored_state_equal_the_uninterrupted_ones(sources, num_workers) -> None:
    total, cuts = 60, (1, 23, 41)
    reference = list(islice(mixture(sources, num_workers=num_workers), total))
    for cut in cuts:
        first = mixture(sources, num_workers=num_workers)
        head = list(islice(first, cut))
        state = json.loads(json.dumps(first.state_dict()))  # it must survive the JSON rank state
        assert state["rows_consumed"] == 4 * cut and set(state["streams"]) == {"first", "second"}
        resumed = mixture(sources, num_workers=num_workers)
        resumed.load_state_dict(state)
        assert resumed.rows_by_source() == first.rows_by_source()
        tail = list(islice(resumed, total - cut))
        for i, batch in enumerate(head + tail):
            assert torch.equal(batch, reference[i]), (cut, i)


def test_a_state_of_other_sources_or_weights_is_refused(sources) -> None:
    loader = mixture(sources)
    list(islice(loader, 3))
    state = loader.state_dict()
    reweighted = [sources[0], DataSource(sources[1].manifest, 2.0, "second")]
    for changed, what in ((reweighted, "sources"), (sources[::-1], "sources")):
        with pytest.raises(DataStreamMismatch, match=f"data.sources: cannot resume the data stream: {what} was"):
            mixture(changed).load_state_dict(state)
    with pytest.raises(DataStreamMismatch, match="seed was 7"):
        mixture(sources, seed=8).load_state_dict(state)
    single = build_train_loader(sources[0].manifest, max_seq_len=SEQ, micro_batch_size=4, seed=7, rank=1, world_size=2)
    with pytest.raises(DataStreamMismatch, match="not a mixture's"):
        mixture(sources).load_state_dict(single.state_dict())


@pytest.fixture(scope="module")
def other_tokenizer_manifest(tmp_path_factory, data_corpus_files, data_build_shards) -> Path:
    out = tmp_path_factory.mktemp("other_tok")
    files = [str(path) for path in data_corpus_files[:8]]
    assert prep_main(["tokenizer", "--input", *files, "--vocab-size", "600", "--out", str(out)]) == 0
    return data_build_shards(data_corpus_files[:8], out / "tokenizer.model", out / "shards", "--shard-tokens", "2000")


@pytest.mark.multiprocess
def test_sources_with_different_tokenizers_are_refused_with_one_line(tmp_path, data_manifest,
                                                                     other_tokenizer_manifest) -> None:
    bad = [DataSource(str(data_manifest), 1.0, "a"), DataSource(str(other_tokenizer_manifest), 1.0, "b")]
    with pytest.raises(ConfigError, match=re.escape(f"{other_tokenizer_manifest} was tokenized with a different "
                                                    "tokenizer")) as caught:
        mixture(bad)
    assert str(data_manifest) in str(caught.value)
    config = tiny_config(tmp_path, data_manifest, data={"manifest": "", "sources": [
        {"manifest": str(data_manifest)}, {"manifest": str(other_tokenizer_manifest), "weight": 2}]})
    result = train(config, nproc=1)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = re.findall(r"megaseqpe-train: error: .*", result.stderr)
    assert line.startswith("megaseqpe-train: error: data.sources: ")
    assert str(data_manifest) in line and str(other_tokenizer_manifest) in line
    assert not (tmp_path / "run").exists(), "refused before anything was written"


@pytest.mark.parametrize("data, message", [
    ({"manifest": "a/manifest.json", "sources": [{"manifest": "b"}]},
     "data.sources: set either data.manifest (one source) or data.sources (a mixture), not both"),
    ({"sources": [{"manifest": "a", "weight": 0}]}, "data.sources[0].weight: must be positive, got 0.0"),
    ({"sources": [{"manifest": "a"}, {"manifest": "b", "weight": -1}]}, "data.sources[1].weight: must be positive"),
    ({"sources": [{"manifest": "a", "weight": "heavy"}]}, "data.sources[0].weight: expected float, got str"),
    ({"sources": [{"manifest": "x/a/manifest.json"}, {"manifest": "y/a"}]},
     "data.sources[1].name: 'a' is also the name of data.sources[0]; names must be unique"),
    ({"sources": [{"weight": 1}]}, "data.sources[0].manifest: not set"),
    ({"sources": [{"manifest": "a", "wieght": 2}]}, "data.sources[0]: unknown key 'wieght' (did you mean 'weight'?)"),
    ({"sources": ["a/manifest.json"]}, "data.sources[0]: expected a mapping with manifest and weight"),
    ({"sources": [{"manifest": "a", "name": "web text"}]}, "data.sources[0].name: 'web text' must be letters"),
    ({"sources": {"manifest": "a"}}, "data.sources: expected list, got dict"),
])
def test_config_errors_name_the_key(data, message) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data": data})
    assert str(caught.value).startswith(message), str(caught.value)


def test_sources_resolve_names_round_trip_and_a_change_is_refused_on_resume() -> None:
    config = config_from_dict({"data": {"sources": [{"manifest": "d/web/manifest.json", "weight": 3},
                                                    {"manifest": "d/code", "name": "py"}]}})
    assert [(s.name, s.weight) for s in config.data.sources] == [("web", 3.0), ("py", 1.0)]
    assert config.data.primary_manifest == "d/web/manifest.json"
    again = config_from_dict(yaml.safe_load(dump_config(config)))
    assert again == config and resume_changes(config, again, same_world=True, tag="t") == []
    reweighted = config_from_dict({"data": {"sources": [{"manifest": "d/web/manifest.json", "weight": 2},
                                                        {"manifest": "d/code", "name": "py"}]}})
    for same_world in (True, False):  # as for data.manifest: never, not even with a new world size
        with pytest.raises(CheckpointError, match=r"cannot resume from t: data.sources .*'weight': 3.0.* → "):
            resume_changes(config, reweighted, same_world=same_world, tag="t")
    single = config_from_dict({"data": {"manifest": "d/web"}})
    assert [(s.manifest, s.weight, s.name) for s in single.data.source_list] == [("d/web", 1.0, "web")]
    with pytest.raises(ConfigError, match="data.sources: weighted mixtures are for language_modeling"):
        config_from_dict({"task": "image_classification", "position": {"n_dims": 2},
                          "data": {"sources": [{"manifest": "d/img"}]}})


def kill_after_a_checkpoint(config: Path, run_dir: Path) -> None:
    """Run `config` in one process, kill -9 it past its checkpoint at step 3, then rerun it to the end."""
    process = subprocess.Popen(train_command(config, nproc=1), cwd=REPO, env=environment(), text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_step(run_dir, 4, process)
        os.kill(process.pid, signal.SIGKILL)  # past the checkpoint at step 3
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
    killed_at = int((run_dir / "checkpoints" / "latest").read_text().removeprefix("step_"))
    assert killed_at in range(3, 24, 3), killed_at
    check(train(config, nproc=1))


@pytest.mark.multiprocess
def test_killed_mixture_run_resumes_exactly_with_per_source_tokens_and_validation(tmp_path, sources) -> None:
    """One process, kill -9 after the checkpoint at step 3 (24 steps: the kill lands long before the
    end): the rerun's losses and per-source token counts equal an uninterrupted run's, and the counts
    are those of the rows the choices picked."""
    data = {"manifest": "", "sources": [{"manifest": s.manifest, "weight": s.weight, "name": s.name} for s in sources]}
    steps = {"max_steps": 24, "save_every": 3, "eval_every": 8}
    reference = tiny_config(tmp_path, sources[0].manifest, name="reference", data=data, train=steps)
    with ThreadPoolExecutor(1) as pool:  # the uninterrupted run, beside the killed one (one thread each)
        uninterrupted = pool.submit(train, reference, nproc=1)
        run_dir = tmp_path / "killed"
        kill_after_a_checkpoint(tiny_config(tmp_path, sources[0].manifest, name="killed", data=data, train=steps),
                                run_dir)
        check(uninterrupted.result())

    expected, events = tensorboard_scalars(tmp_path / "reference"), tensorboard_scalars(run_dir)
    for tag in ("train/loss", "data/tokens/first", "data/tokens/second", "val/loss", "val/loss/first",
                "val/loss/second"):
        assert events[tag] == pytest.approx(expected[tag], rel=1e-6), tag
    assert len(events["data/tokens/first"]) == 24, "every step exactly once"
    picks = [source_of_row(1234, 0, row, [3.0, 1.0]) for row in range(24 * 4)]  # train.seed, rank 0, 4 rows a step
    assert events["data/tokens/first"][-1] == picks.count(0) * 32 and events["data/tokens/second"][-1] == picks.count(1) * 32
    assert len(events["val/loss/first"]) == 3 and min(events["val/loss/first"] + events["val/loss/second"]) > 0
