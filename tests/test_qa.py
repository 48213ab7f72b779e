"""Long-context retrieval QA: `megaseqpe-prep qa`, `task: qa` (answer-only loss on `train.init_from`),
and `megaseqpe-eval --task qa` (exact match per length and depth), all on real shards and real runs."""
import json
from collections import Counter

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F

from _launch import check, metrics, tensorboard_scalars, tiny_config, train
from data_prep.cli import main as prep_main
from data_prep.qa import KEYS, NEEDLE, QUESTION, no_retrieval_floor
from megaseqpe.config import Config, DataConfig, ModelConfig, PositionConfig
from megaseqpe.data import load_manifest
from megaseqpe.data.qa import QASample, collate_qa, qa_samples
from megaseqpe.evaluation.cli import main as eval_main
from megaseqpe.model import build_gpt
from megaseqpe.safe_loading import FORCE_WEIGHTS_ONLY
from megaseqpe.tasks.qa import QA, exact_match, qa_result

L, LENGTHS, PER_LENGTH = 64, (64, 128, 256), 5


def prep_qa(out, manifest, tokenizer, *extra):
    return prep_main(["qa", "--corpus", str(manifest), "--tokenizer", str(tokenizer), "--out", str(out),
                      "--train-length", str(L), "--lengths", ",".join(map(str, LENGTHS)), "--per-length",
                      str(PER_LENGTH), "--train-samples", "16", "--shard-samples", "8", *extra])


@pytest.fixture(scope="module")
def qa_manifest(tmp_path_factory, data_manifest, data_tokenizer):
    out = tmp_path_factory.mktemp("qa") / "set"
    assert prep_qa(out, data_manifest, data_tokenizer, "--seed", "3") == 0
    return out / "manifest.json"


def shard_bytes(manifest):
    loaded = load_manifest(manifest, expect=None)
    return {s.path: loaded.shard_path(s).read_bytes() for split in loaded.splits.values() for s in split.shards}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_samples(tmp_path, qa_manifest, data_manifest,
                                                                          data_tokenizer):
    assert prep_qa(tmp_path / "again", data_manifest, data_tokenizer, "--seed", "3") == 0
    assert prep_qa(tmp_path / "other", data_manifest, data_tokenizer, "--seed", "4") == 0
    first = shard_bytes(qa_manifest)
    assert shard_bytes(tmp_path / "again" / "manifest.json") == first
    assert (tmp_path / "again" / "manifest.json").read_text() != "" and \
        json.loads((tmp_path / "again" / "manifest.json").read_text())["splits"] == \
        json.loads(qa_manifest.read_text())["splits"]
    other = {s.tokens.tobytes() for s in qa_samples(tmp_path / "other" / "manifest.json", "test")}
    assert other.isdisjoint(s.tokens.tobytes() for s in qa_samples(qa_manifest, "test"))


def test_every_sample_has_its_length_and_the_fact_at_its_recorded_depth(qa_manifest, data_tokenizer):
    processor = spm.SentencePieceProcessor(model_file=str(data_tokenizer))
    question = processor.encode(QUESTION)
    cells = Counter()
    for split, lengths in (("train", {L}), ("val", {L}), ("test", set(LENGTHS))):
        for sample in qa_samples(qa_manifest, split):
            info, key = sample.info, processor.decode(sample.answer.tolist())
            assert info.length in lengths and len(sample.tokens) == info.length + 1
            assert key.isdigit() and len(key) == 5
            needle = processor.encode(NEEDLE.format(key=key))
            at, filler = info.needle_at, info.length + 1 - len(needle) - len(question) - info.answer_tokens
            assert sample.tokens[at:at + len(needle)].tolist() == needle
            assert at == round(info.depth * filler)
            assert sample.prompt[-len(question):].tolist() == question
            assert f"The pass key is {key}." in processor.decode(sample.prompt.tolist())
            if split == "test":
                cells[info.length, info.depth] += 1
    assert cells == {(n, d): 1 for n in LENGTHS for d in (0.0, 0.25, 0.5, 0.75, 1.0)}


@pytest.mark.parametrize("flags,message", [
    ({"--lengths": "128,256"}, "--lengths 128,256 must include --train-length 64"),
    ({"--lengths": "8,64"}, "8 tokens cannot hold the fact"),
    ({"--train-length": "x"}, "argument --train-length: invalid"),
    ({"--tokenizer": "/nonexistent.model"}, "--tokenizer /nonexistent.model: no such file"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, capsys, data_manifest, data_tokenizer, flags, message):
    given = {"--corpus": str(data_manifest), "--tokenizer": str(data_tokenizer), "--out": str(tmp_path / "x"),
             "--train-length": "64", "--per-length": "5", "--train-samples": "5", **flags}
    args = ["qa", *(item for pair in given.items() for item in pair)]
    try:
        code = prep_main(args)
    except SystemExit as exit_:  # argparse's own refusals
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x" / "train").exists()  # refused before anything was written


def tiny_qa_config(manifest):
    return Config(task="qa", model=ModelConfig(n_layer=2, n_head=4, d_model=64, vocab_size=1000, max_seq_len=L,
                                               dropout=0.0),
                  position=PositionConfig(type="learned"), data=DataConfig(manifest=str(manifest)))


def test_the_loss_counts_the_answer_tokens_only(qa_manifest):
    torch.manual_seed(0)
    config = tiny_qa_config(qa_manifest)
    task, model = QA(config), build_gpt(config)
    rows = list(qa_samples(qa_manifest, "train"))[:3]
    short = QASample(rows[2].tokens[20:], rows[2].info.__class__(**{**vars(rows[2].info), "length": L - 20}))
    batch = collate_qa([rows[0], rows[1], short])  # the short row is right-padded
    inputs = task.model_inputs(batch)
    loss = model(**inputs).loss
    logits = model(inputs["tokens"]).logits
    answers = [(i, len(row.tokens) - row.info.answer_tokens + k) for i, row in enumerate([rows[0], rows[1], short])
               for k in range(row.info.answer_tokens)]
    # the logit at t predicts token t + 1: the answer tokens, and nothing else
    manual = torch.stack([F.cross_entropy(logits[i, t - 1], batch[0][i, t]) for i, t in answers]).mean()
    assert int((inputs["targets"] != -100).sum()) == len(answers) == sum(r.info.answer_tokens for r in rows)
    torch.testing.assert_close(loss, manual)


def always_zero(config):
    """A GPT whose logits are all 0 (final norm zeroed): greedy decoding always picks token id 0."""
    model = build_gpt(config).eval()
    with torch.no_grad():
        model.final_norm.weight.zero_()
        model.final_norm.bias.zero_()
    return model


def test_exact_match_is_greedy_decoding_of_the_whole_answer(qa_manifest):
    config = tiny_qa_config(qa_manifest)
    model = always_zero(config)
    samples = [s for s in qa_samples(qa_manifest, "test") if s.info.depth in (0.0, 0.5)]
    # answers the model gives (all zeros), answers it does not, and one it gets half right
    forced = [QASample(np.concatenate([s.prompt, np.zeros(s.info.answer_tokens, s.tokens.dtype)]), s.info)
              if s.info.depth == 0.0 else s for s in samples]
    half = forced[0]
    forced.append(QASample(np.concatenate([half.prompt, [0, 7]]).astype(half.tokens.dtype),
                           half.info.__class__(**{**vars(half.info), "answer_tokens": 2, "depth": 0.5,
                                                  "length": len(half.prompt) + 1})))
    hits, counts = exact_match(model, forced, vocab_size=1000)
    result = qa_result(hits, counts, L, "interpolate")
    for n in LENGTHS:
        assert result["em_depth"][str(n)]["0.0"] == 1.0 and result["em_depth"][str(n)]["0.5"] == 0.0
        assert result["em"][str(n)] == 0.5
    assert result["method"] == {"64": "extend", "128": "interpolate", "256": "interpolate",
                                str(len(half.prompt) + 1): "extend" if len(half.prompt) + 1 <= L else "interpolate"}
    assert result["samples"][str(len(half.prompt) + 1)] == {"0.5": 1}
    # the teacher-forced validation metric agrees with greedy decoding
    at_l = [s for s in forced[:-1] if s.info.length == L]
    totals = QA(config).eval_totals(model, collate_qa(at_l))
    assert (totals[2], totals[3]) == (1, 2)


@pytest.mark.multiprocess
def test_pretrain_finetune_and_evaluate_qa(tmp_path, data_manifest, qa_manifest, monkeypatch, capsys):
    monkeypatch.delenv(FORCE_WEIGHTS_ONLY, raising=False)  # load_trained sets it; undone after the test
    short = {"max_steps": 2, "save_every": 2, "eval_every": 100}
    check(train(tiny_config(tmp_path, data_manifest, name="pre", model={"max_seq_len": L}, train=short,
                            deepspeed={"zero_stage": 0}), nproc=1))
    finetune = tiny_config(tmp_path, qa_manifest, name="qa", model={"max_seq_len": L},
                           train={"max_steps": 3, "save_every": 3, "eval_every": 3, "eval_batches": 2,
                                  "init_from": str(tmp_path / "pre")}, deepspeed={"zero_stage": 0})
    result = train(finetune, "task=qa", nproc=1)
    check(result)
    assert "initialised from" in result.stdout + result.stderr
    logged = metrics(tmp_path / "qa")
    assert any("train/qa_loss" in m for m in logged)
    assert [m["step"] for m in logged if "val/em" in m] == [0, 3]  # init_from validates at step 0
    assert all(0.0 <= m["val/em"] <= 1.0 for m in logged if "val/em" in m)
    assert eval_main(["--run", str(tmp_path / "qa")]) == 0
    report = json.loads((tmp_path / "qa" / "eval" / "qa.json").read_text())
    assert list(report["em"]) == [str(n) for n in LENGTHS] and report["split"] == "test"
    assert all(0.0 <= v <= 1.0 for v in report["em"].values())
    assert all(sum(c.values()) == PER_LENGTH and set(c.values()) == {1} for c in report["samples"].values())
    assert (tmp_path / "qa" / "eval" / "qa.png").stat().st_size > 0
    assert "| 256 | 4 |" in (tmp_path / "qa" / "eval" / "qa.md").read_text()
    scalars = tensorboard_scalars(tmp_path / "qa")
    assert scalars["qa/em/128"] == [report["em"]["128"]] and "qa/em/256/depth_0.5" in scalars
    # a language-model run is scored zero-shot on a QA set given with --data, and refused without one
    out = tmp_path / "zero_shot"
    assert eval_main(["--run", str(tmp_path / "pre"), "--task", "qa", "--data", str(qa_manifest),
                      "--lengths", "64", "--out", str(out)]) == 0
    assert list(json.loads((out / "qa.json").read_text())["em"]) == ["64"]
    capsys.readouterr()
    assert eval_main(["--run", str(tmp_path / "pre"), "--task", "qa"]) == 2
    assert "give the QA set to score with --data" in capsys.readouterr().err


def test_the_no_retrieval_floor_is_the_loss_of_the_best_model_that_ignores_the_context(data_tokenizer):
    """Counted independently: a model that knows only the keys' distribution predicts each answer
    token from the keys sharing the tokens before it; its mean loss per answer token is the floor."""
    processor = spm.SentencePieceProcessor(model_file=str(data_tokenizer))
    answers = [tuple(processor.encode(str(key))) for key in range(*KEYS)]
    prefixes = Counter(answer[:i] for answer in answers for i in range(len(answer) + 1))
    loss = sum(-np.log(prefixes[a[:i + 1]] / prefixes[a[:i]]) for a in answers for i in range(len(a)))
    floor = no_retrieval_floor(processor)
    assert floor == pytest.approx(loss / sum(map(len, answers)), rel=1e-9)
    assert 0 < floor < np.log(KEYS[1] - KEYS[0])
