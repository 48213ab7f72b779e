"""Model shapes beyond GPT-2's (`model.norm`, `model.mlp`, `model.n_kv_head`, `model.bias`,
`model.tie_embeddings`) and the size presets: every position type trains with every shape, grouped-query
attention is multi-head attention with shared k/v heads, parameter and FLOP counts follow their
formulas, and the KV cache still gives the uncached tokens. Tiny float64 models, except the presets,
which are counted on the meta device."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megaseqpe.config import (MODEL_PRESETS, Config, ConfigError, ModelConfig, PositionConfig, config_from_dict,
                              load_config)
from megaseqpe.export.gpt2 import fits_gpt2
from megaseqpe.generation import Sampling, generate
from megaseqpe.model import KVCache, attention, build_gpt, build_vit
from megaseqpe.model.attention import repeat_kv
from megaseqpe.model.gpt import MLP, make_norm
from megaseqpe.training.cli import main as train_main
from megaseqpe.training.flops import FlopCounter
from test_vit_positions import vit_config

VOCAB, LENGTH, HEADS, KV_HEADS = 64, 16, 4, 2
GPT2 = {}
LLAMA = {"norm": "rmsnorm", "mlp": "swiglu", "n_kv_head": KV_HEADS, "bias": False, "tie_embeddings": False,
         "mlp_multiple_of": 16}
SHAPES = {"gpt2": GPT2, "llama": LLAMA}
POSITIONS = [
    ("learned", {}), ("sinusoidal", {}), ("rope", {}), ("alibi", {}), ("nope", {}),
    ("seqpe", {"use": "input_add"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "single"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "multi"}),
    ("seqpe", {"use": "attn_mul", "attn_scalar_proj": "multi"}),
]
POSITION_IDS = ["-".join([kind, *map(str, knobs.values())]) for kind, knobs in POSITIONS]


def text_config(position_type: str = "nope", position: dict | None = None, **model) -> Config:
    model = {"n_layer": 2, "n_head": HEADS, "d_model": 32, "vocab_size": VOCAB, "max_seq_len": LENGTH, **model}
    return Config(model=ModelConfig(**model),
                  position=PositionConfig(type=position_type, max_position=1000, **(position or {})))


def random_gpt(config: Config, seed: int = 0):
    """A float64 GPT with weights large enough (std 0.3) that positions and shapes move its outputs."""
    torch.manual_seed(seed)
    model = build_gpt(config).double()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.3)
    return model


def tokens(length: int = LENGTH, batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("position_type,knobs", POSITIONS, ids=POSITION_IDS)
def test_every_position_type_trains_with_every_shape(position_type, knobs, shape):
    torch.manual_seed(0)
    model = build_gpt(text_config(position_type, knobs, **SHAPES[shape])).train()
    ids = tokens()
    out = model(ids[:, :-1], targets=ids[:, 1:])
    loss = out.loss + sum(out.position_signal.aux_losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    trunk = {name: p for name, p in model.named_parameters() if not name.startswith("position.")}
    missing = [name for name, p in trunk.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    assert any(".mlp.gate." in name for name in trunk) == (shape == "llama")


def _gqa_into_mha(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """A GQA model's weights for the MHA model that repeats each k/v head for its query heads."""
    width, group = config.head_dim, config.n_head // config.kv_heads
    expanded = dict(state)
    for name, value in state.items():
        if ".attention.qkv." in name:
            q, k, v = value.split([config.d_model, config.kv_heads * width, config.kv_heads * width])
            repeat = lambda x: x.unflatten(0, (config.kv_heads, width)).repeat_interleave(group, 0).flatten(0, 1)
            expanded[name] = torch.cat([q, repeat(k), repeat(v)])
    return expanded


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("position_type,knobs", POSITIONS, ids=POSITION_IDS)
def test_grouped_query_attention_is_mha_with_each_kv_head_repeated(position_type, knobs, backend):
    gqa_config = text_config(position_type, knobs, n_kv_head=KV_HEADS, attention_backend=backend)
    gqa = random_gpt(gqa_config).eval()
    mha = random_gpt(text_config(position_type, knobs, attention_backend=backend)).eval()
    mha.load_state_dict(_gqa_into_mha(gqa.state_dict(), gqa_config.model))
    assert gqa.num_parameters() < mha.num_parameters()
    ids = tokens()
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, rtol=1e-9, atol=1e-9)


def test_as_many_kv_heads_as_query_heads_is_exactly_the_mha_model_and_its_checkpoints():
    mha = random_gpt(text_config("rope"))
    same = build_gpt(text_config("rope", n_kv_head=HEADS)).double()
    same.load_state_dict(mha.state_dict(), strict=True)  # the [q | k | v] layout of older checkpoints
    ids = tokens()
    with torch.no_grad():
        assert torch.equal(same(ids).logits, mha(ids).logits)


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("documents", [False, True])
def test_attention_with_fewer_kv_heads_equals_attention_on_repeated_ones(backend, documents):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, HEADS, 10, 8, generator=generator, dtype=torch.float64)
    k, v = (torch.randn(2, KV_HEADS, 10, 8, generator=generator, dtype=torch.float64) for _ in range(2))
    angles = torch.randn(1, 10, 4, generator=generator, dtype=torch.float64)
    pe = torch.randn(1, 10, HEADS, 8, generator=generator, dtype=torch.float64)
    extras = [{"rotary": (angles.cos(), angles.sin())}, {"alibi_slopes": torch.tensor([0.5, 0.25, 0.125, 0.0625])},
              {"pe_q": pe, "pe_k": pe.flip(1), "pe_scale": 0.5}, {"q_mul": pe.exp(), "k_mul": pe.flip(1).exp()}]
    ids = torch.tensor([[0] * 4 + [1] * 6, [2] * 10]) if documents else None
    for kwargs in extras:
        grouped = attention(q, k, v, causal=True, backend=backend, documents=ids, **kwargs)
        repeated = attention(q, repeat_kv(k, HEADS), repeat_kv(v, HEADS), causal=True, backend=backend,
                             documents=ids, **kwargs)
        torch.testing.assert_close(grouped, repeated, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="do not group"):
        attention(q, k[:, :1], v, causal=True, backend=backend)


def expected_parameters(model: ModelConfig, position_rows: int = 0) -> int:
    """The trunk's parameters by formula (plus a learned table of `position_rows` rows)."""
    d, bias = model.d_model, int(model.bias)
    qkv_out = (model.n_head + 2 * model.kv_heads) * model.head_dim
    matrices = 3 if model.mlp == "swiglu" else 2
    attention_params = d * qkv_out + bias * qkv_out + d * d + bias * d
    mlp_params = matrices * d * model.mlp_width + bias * ((matrices - 1) * model.mlp_width + d)
    norm = d * (1 + bias) if model.norm == "layernorm" else d
    block = attention_params + mlp_params + 2 * norm
    embeddings = model.vocab_size * d * (1 if model.tie_embeddings else 2) + position_rows * d
    return model.n_layer * block + norm + embeddings


@pytest.mark.parametrize("shape", [GPT2, LLAMA, {**LLAMA, "n_kv_head": 1, "mlp_hidden": 40},
                                   {"mlp": "swiglu", "n_kv_head": 1}])
def test_parameter_count_follows_the_formula(shape):
    config = text_config(**shape)
    assert build_gpt(config).num_parameters() == expected_parameters(config.model)


def test_presets_have_their_documented_sizes_at_gpt2s_vocabulary():
    nominal = {"gpt2-124m": 124e6, "gpt2-350m": 350e6, "gpt2-760m": 760e6, "gpt2-1.3b": 1.3e9}
    assert set(nominal) == set(MODEL_PRESETS)
    for name, size in nominal.items():
        config = config_from_dict({"model": {"preset": name, "vocab_size": 50257, "max_seq_len": 1024},
                                   "position": {"type": "learned"}})
        with torch.device("meta"):  # shapes only: 1.3B parameters are never allocated
            count = build_gpt(config).num_parameters()
        assert count == expected_parameters(config.model, position_rows=1024)
        assert abs(count / size - 1) < 0.03, f"{name}: {count / 1e6:.1f}M"
    assert math.isclose(expected_parameters(load_config(None, ["model.preset=gpt2-124m", "model.vocab_size=50257",
                                                               "model.max_seq_len=1024"]).model, 1024), 124_439_808)


def test_preset_and_explicit_keys_resolve_in_print_config(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: gpt2-350m\n  n_layer: 3\n")
    assert train_main(["--config", str(path), "--print-config", "model.n_kv_head=4"]) == 0
    printed = capsys.readouterr().out
    for line in ("n_layer: 3", "n_head: 16", "d_model: 1024", "preset: gpt2-350m", "n_kv_head: 4"):
        assert f"\n  {line}\n" in printed
    assert config_from_dict({"model": {"preset": "gpt2-1.3b"}}).model.d_model == 2048


@pytest.mark.parametrize("override,key", [
    ("model.n_kv_head=3", "model.n_kv_head: 3 does not divide model.n_head=4"),
    ("model.norm=batchnorm", "model.norm: 'batchnorm' is not one of layernorm, rmsnorm"),
    ("model.mlp=relu", "model.mlp: 'relu' is not one of gelu, swiglu"),
    ("model.preset=gpt2-7b", "model.preset: 'gpt2-7b' is not one of gpt2-124m"),
    ("model.mlp_hidden=-1", "model.mlp_hidden: must be >= 0"),
])
def test_bad_shape_keys_are_one_line_errors_naming_the_key(tmp_path, capsys, override, key):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  n_head: 4\n")
    assert train_main(["--config", str(path), "--print-config", override]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"megaseqpe-train: error: {key}" in error
    with pytest.raises(ConfigError, match=key.split(":")[0]):
        load_config(None, [override])


def test_rmsnorm_and_swiglu_compute_their_formulas():
    config = ModelConfig(d_model=12, n_head=4, norm="rmsnorm", mlp="swiglu", bias=False, mlp_multiple_of=8)
    assert config.mlp_width == 32  # 2/3 * 4 * 12 = 32, a multiple of 8
    assert ModelConfig(d_model=100, n_head=4, mlp="swiglu", mlp_multiple_of=64).mlp_width == 320  # 266 → 320
    assert ModelConfig(d_model=768, n_head=12, mlp="swiglu").mlp_width == 2048  # LLaMA's rule at 768
    assert ModelConfig(d_model=64, n_head=4).mlp_width == 256  # GPT-2's 4 x d
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    norm, mlp = make_norm(config).double(), MLP(config).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
        torch.testing.assert_close(norm(x), expected, rtol=1e-12, atol=1e-12)
        gate, up = x @ mlp.gate.weight.T, x @ mlp.up.weight.T
        expected = (gate * torch.sigmoid(gate) * up) @ mlp.down.weight.T
        torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)
    assert isinstance(make_norm(ModelConfig()), torch.nn.LayerNorm) and MLP(ModelConfig()).gate is None


CACHE_CASES = [("rope", {}), ("alibi", {}), ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "single"}),
               ("seqpe", {"use": "attn_mul", "attn_scalar_proj": "multi"})]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("position_type,knobs", CACHE_CASES, ids=["rope", "alibi", "seqpe-scalar", "seqpe-mul"])
def test_kv_cache_generation_of_a_gqa_model_equals_uncached(position_type, knobs, backend):
    model = random_gpt(text_config(position_type, knobs, attention_backend=backend, **LLAMA)).eval()
    prompt = [3, 1, 4, 1, 5]
    sampling = Sampling(max_new_tokens=LENGTH, temperature=1.0, seed=0)  # 5 + 16 tokens: past L
    cached = list(generate(model, prompt, sampling))
    assert cached == list(generate(model, prompt, sampling, use_cache=False)) and len(set(cached)) > 8
    cache = KVCache(len(model.blocks))
    with torch.no_grad():
        model(torch.tensor([prompt]), cache=cache)
    # Rotary and ALiBi keep GQA's fewer heads in the cache; SeqPE's per-head key terms need them all.
    assert cache.layers[0].keys.shape[1] == (HEADS if position_type == "seqpe" else KV_HEADS)


def test_flop_counter_attention_term_holds_under_gqa():
    """torch's FLOP counter (matmuls only) on a whole forward + backward of an untied GQA SwiGLU model
    equals 6 x its matrix parameters (less the embedding lookup) + 12 x layers x d x L per token."""
    config = text_config(attention_backend="eager", **LLAMA)
    model = build_gpt(config)
    ids = tokens()
    with FlopCounterMode(display=False) as counted:
        model(ids, targets=ids).loss.backward()
    n_tokens, shape = ids.numel(), config.model
    lookup = shape.vocab_size * shape.d_model
    vectors = sum(p.numel() for p in model.parameters() if p.dim() < 2)
    matrices = model.num_parameters() - lookup - vectors
    attention_term = 12 * shape.n_layer * shape.d_model * LENGTH
    assert counted.get_total_flops() == (6 * matrices + attention_term) * n_tokens
    counter = FlopCounter(model, shape.n_layer, shape.d_model, LENGTH)
    assert counter.step_flops(n_tokens, 0) == counted.get_total_flops() + 6 * (lookup + vectors) * n_tokens


@pytest.mark.parametrize("position", ["rope", "seqpe"])
def test_the_vit_trains_with_the_llama_shape(position):
    shape = [f"model.{key}={str(value).lower()}" for key, value in LLAMA.items()]
    config = vit_config(f"position.type={position}", "position.use=attn_mul", "position.attn_scalar_proj=multi", *shape)
    torch.manual_seed(0)
    model = build_vit(config)
    out = model(torch.rand(2, 1, 16, 16), labels=torch.tensor([1, 7]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert isinstance(model.final_norm, torch.nn.RMSNorm)
    assert all(p.grad is not None for name, p in model.named_parameters() if ".attention." in name)


def test_only_gpt2_shaped_learned_runs_export_as_stock_gpt2():
    assert fits_gpt2(text_config("learned"))
    for change in ({"norm": "rmsnorm"}, {"mlp": "swiglu"}, {"n_kv_head": KV_HEADS}, {"bias": False}):
        assert not fits_gpt2(text_config("learned", **change)), change
    assert not fits_gpt2(text_config("rope"))

