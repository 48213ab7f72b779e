"""`megaseqpe-export` on real run directories: the native safetensors folder reads back as the same
model; the `--format hf` folders load in transformers (in a process where megaseqpe cannot be
imported) and give our logits at L and 4L, our greedy continuation and our tokenizer's ids, for every
position type.

One tiny real run is trained (SeqPE, 2 steps); the other types are models built from config with
fresh weights, written as a ZeRO-0 checkpoint of a run directory, so every export goes through the
real CLI from a run directory."""
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece
import torch
import yaml
from safetensors import safe_open

from _launch import REPO, check, environment, tiny_config, train
from megaseqpe.config import load_config
from megaseqpe.data import load_manifest
from megaseqpe.evaluation.trained import load_trained
from megaseqpe.export.cli import main as export_main
from megaseqpe.export.native import load_native
from megaseqpe.generation.cli import TextStream
from megaseqpe.generation.cli import main as generate_main
from megaseqpe.generation.sampling import Sampling, generate
from megaseqpe.model import build_gpt
from megaseqpe.rundir import RunDir
from megaseqpe.safe_loading import FORCE_WEIGHTS_ONLY

# Imported now, so that DeepSpeed's logger binds to the real stdout rather than to a test's recorder.
importlib.import_module("deepspeed.utils.zero_to_fp32")

L = 32  # tiny_config's model.max_seq_len
PROMPT = "def main():\n    return"
TEXTS = [PROMPT, "  two  spaces\tand a tab\n\n", "unicode é 漢字 and </s> <unk> typed as text", ""]
# name → (position type, model overrides). learned with biases is GPT-2's shape (a stock GPT2LMHeadModel);
# without them it exports with its code, its table stretched beyond L as megaseqpe-eval stretches it.
# Fresh weights with a tied head make greedy decoding repeat one token: the others are untied, so their
# greedy continuations vary (the SeqPE run and the stock GPT-2 cover the tied head).
UNTIED = {"tie_embeddings": False}
RANDOM_RUNS = {"learned": ("learned", {}), "learned_nobias": ("learned", {"bias": False, **UNTIED}),
               "sinusoidal": ("sinusoidal", UNTIED), "rope": ("rope", UNTIED), "alibi": ("alibi", UNTIED),
               "nope": ("nope", UNTIED),
               # today's shapes (tests/test_model_shapes.py): not GPT-2's, so they export with their code
               "rope_llama": ("rope", {"norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": 2, "bias": False,
                                       "mlp_multiple_of": 16, **UNTIED})}
ALL_RUNS = ("seqpe", *RANDOM_RUNS)
BF16_RUNS = ("seqpe", "learned")


def export(*args) -> int:
    return export_main([str(a) for a in args])


def random_run(root: Path, source: Path, name: str, position_type: str, model: dict) -> Path:
    """A run directory like `source`'s but with another position module, holding one ZeRO-0
    checkpoint (the model-states file DeepSpeed writes at stage 0) of random weights."""
    run = root / name
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["position"] = {"type": position_type}
    config["model"].update(model, dropout=0.0)
    config["run"]["dir"] = str(run)
    tag = run / "checkpoints" / "step_00000000"
    tag.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copyfile(run / "config.yaml", tag / "config.yaml")
    torch.manual_seed(len(name))
    model = build_gpt(load_config(run / "config.yaml"))
    with torch.no_grad():  # weights of std 0.2, not 0.02: activations O(1), where GELU variants differ
        for parameter in model.parameters():
            parameter.mul_(10 if parameter.dim() > 1 else 1)
    torch.save({"module": model.state_dict()}, tag / "mp_rank_00_model_states.pt")
    (tag / "trainer.json").write_text(json.dumps({"step": 0}))
    (tag / "COMPLETE").touch()
    (run / "checkpoints" / "latest").write_text(tag.name)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_manifest) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export_runs")
    config = tiny_config(root, data_manifest, name="seqpe",
                         train={"max_steps": 2, "save_every": 2, "eval_every": 100}, deepspeed={"zero_stage": 0})
    check(train(config, nproc=1))
    found = {"seqpe": root / "seqpe"}
    for name, (position_type, model) in RANDOM_RUNS.items():
        found[name] = random_run(root, found["seqpe"], name, position_type, model)
    return found


@pytest.fixture(scope="module")
def ours(runs) -> dict[str, torch.nn.Module]:
    """Each run's model as megaseqpe-eval and megaseqpe-generate use it (positions past L reachable)."""
    models = {}
    for name, run in runs.items():
        models[name] = load_trained(run, device=torch.device("cpu")).model
        models[name].position.enable_extrapolation()
    return models


@pytest.fixture(scope="module")
def tokenizer(data_manifest):
    manifest = load_manifest(data_manifest)
    return sentencepiece.SentencePieceProcessor(model_file=str(manifest.tokenizer_path())), manifest.tokenizer


def logit_inputs(name: str) -> list[torch.Tensor]:
    """Token ids at L and at 4L (GPT-2's table has L rows: the stock export stops at L)."""
    generator = torch.Generator().manual_seed(0)
    lengths = (L,) if name == "learned" else (L, 4 * L)
    return [torch.randint(3, 1000, (1, n), generator=generator) for n in lengths]


def max_new_tokens(name: str, prompt: list[int]) -> int:
    """Past L for the types that extend; within L for the stock GPT-2."""
    return L - len(prompt) if name == "learned" else L


@pytest.fixture(scope="module")
def hf(runs, tokenizer, tmp_path_factory):
    """(folders, what transformers made of each) from one client process that cannot import megaseqpe."""
    root = tmp_path_factory.mktemp("export_hf")
    processor, info = tokenizer
    prompt = [info.eos_id, *processor.encode(PROMPT)]
    folders, request = {}, {}
    for name, dtype in [*((n, "fp32") for n in ALL_RUNS), *((n, "bf16") for n in BF16_RUNS)]:
        folders[name, dtype] = root / f"{name}-{dtype}"
        assert export("--run", runs[name], "--out", folders[name, dtype], "--format", "hf", "--dtype", dtype) == 0
        request[str(folders[name, dtype])] = {"ids": logit_inputs(name), "prompt": prompt, "texts": TEXTS,
                                              "max_new_tokens": max_new_tokens(name, prompt)}
    torch.save(request, root / "request.pt")
    client = subprocess.run([sys.executable, str(REPO / "tests" / "probes" / "hf_client.py"), str(root / "request.pt"),
                             str(root / "results.pt")], cwd=root, env={**environment(), "HF_HUB_OFFLINE": "1"},
                            capture_output=True, text=True, timeout=300)
    assert client.returncode == 0, client.stderr[-5000:]
    results = torch.load(root / "results.pt")
    return folders, {key: results[str(folder)] for key, folder in folders.items()}, prompt


def test_native_export_reads_back_as_the_same_model(runs, ours, tmp_path, data_manifest):
    for name in ("seqpe", "rope"):  # tied and untied LM head
        out = tmp_path / name
        assert export("--run", runs[name], "--out", out) == 0
        with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
            stored = set(handle.keys())
        assert ("lm_head.weight" in stored) == (name == "rope"), "a tied head is stored once, as the embedding"
        model = load_native(out)
        model.position.enable_extrapolation()
        for ids in logit_inputs(name):
            with torch.no_grad():
                assert torch.equal(model(ids).logits, ours[name](ids).logits)
        run = RunDir(runs[name])
        assert (out / "config.yaml").read_bytes() == run.config_for(run.resolve_tag(None)).read_bytes()
        assert (out / "tokenizer.model").read_bytes() == load_manifest(data_manifest).tokenizer_path().read_bytes()
    assert export("--run", runs["seqpe"], "--out", tmp_path / "bf16", "--dtype", "bf16") == 0
    bf16 = load_native(tmp_path / "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert torch.equal(bf16.token_embedding.weight, ours["seqpe"].token_embedding.weight.bfloat16())


def test_learned_exports_as_stock_gpt2_and_others_with_their_code(hf):
    folders, results, _ = hf
    for (name, _), folder in folders.items():
        config = json.loads((folder / "config.json").read_text())
        stock = name == "learned"
        assert results[name, "fp32"]["class"] == ("GPT2LMHeadModel" if stock else "MegaSeqPEForCausalLM")
        assert ("auto_map" in config) != stock and (folder / "modeling_megaseqpe.py").exists() != stock
        assert not results[name, "fp32"]["training"], "from_pretrained gives an eval-mode model"


def test_hf_logits_equal_ours_at_L_and_4L(hf, ours):
    _, results, _ = hf
    for name in ALL_RUNS:
        got = results[name, "fp32"]["logits"]
        assert len(got) == (1 if name == "learned" else 2)
        for ids, logits in zip(logit_inputs(name), got):
            with torch.no_grad():
                expected = ours[name](ids).logits
            assert logits.shape == expected.shape
            torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0, msg=f"{name} at {ids.shape[1]}")
        first, logits = logit_inputs(name)[0], got[0]
        expected_loss = torch.nn.functional.cross_entropy(logits[0, :-1], first[0, 1:])  # labels=ids: shifted
        torch.testing.assert_close(results[name, "fp32"]["loss"], expected_loss, atol=1e-5, rtol=0)


def test_hf_greedy_generate_matches_megaseqpe_generate(hf, ours, runs, tokenizer, monkeypatch, capsys):
    _, results, prompt = hf
    processor, info = tokenizer
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.delenv(FORCE_WEIGHTS_ONLY, raising=False)  # set by the CLI; undone after the test
    for name in ALL_RUNS:
        new = max_new_tokens(name, prompt)
        theirs = results[name, "fp32"]["generated"]
        sampling = Sampling(max_new_tokens=new, temperature=0)
        assert theirs == list(generate(ours[name], prompt, sampling, eos_id=info.eos_id, vocab_size=info.vocab_size))
        if RANDOM_RUNS.get(name, (None, {}))[1].get("tie_embeddings") is False:
            assert len(set(theirs)) > L // 4, f"{name}: a repetitive continuation would show little"
        capsys.readouterr()
        assert generate_main(["--run", str(runs[name]), "--prompt", PROMPT, "--temperature", "0",
                              "--max-new-tokens", str(new)]) == 0
        stream = TextStream(processor.decode, prompt)
        assert capsys.readouterr().out == "".join(map(stream.push, theirs)) + stream.flush() + "\n", name


def test_autotokenizer_gives_our_ids(hf, tokenizer):
    _, results, _ = hf
    processor, info = tokenizer
    for key, result in results.items():
        assert result["encoded"] == [processor.encode(text) for text in TEXTS], key
        assert result["eos_token_id"] == info.eos_id


def test_bf16_exports_load_as_bf16_with_our_weights(hf, ours):
    _, results, _ = hf
    for name in BF16_RUNS:
        result = results[name, "bf16"]
        assert result["dtype"] == torch.bfloat16
        embedding = result["weights"]["transformer.wte.weight" if name == "learned" else "model.token_embedding.weight"]
        assert torch.equal(embedding, ours[name].token_embedding.weight.bfloat16())
        fp32 = results[name, "fp32"]["logits"][0]
        assert (result["logits"][0] - fp32).abs().max() < 0.1 * fp32.std(), "bf16 rounding, not another model"


def test_export_errors_are_one_line(runs, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert export("--run", runs["nope"], "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists and is not empty; pass --overwrite" in err[0]
    assert (out / "keep.txt").exists() and not list(tmp_path.glob(".taken.*")), "nothing written, nothing left"
    assert export("--run", runs["nope"], "--out", out, "--overwrite") == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    capsys.readouterr()
    assert export("--run", tmp_path / "missing", "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[-1].startswith("megaseqpe-export: error: no checkpoint in")
