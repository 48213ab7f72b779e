"""Generation through the KV cache equals generation without it, for every position type, also
beyond the training length; SeqPE serves positions from its table (encoder calls O(log length))."""
import math

import pytest
import torch

from megaseqpe.config import Config, ModelConfig, PositionConfig
from megaseqpe.generation import Sampling, generate, sample_next
from megaseqpe.model import KVCache, build_gpt

VOCAB, LENGTH = 64, 16
CASES = [
    ("learned", {}), ("sinusoidal", {}), ("rope", {}), ("alibi", {}), ("nope", {}),
    ("seqpe", {"use": "input_add"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "single"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "multi"}),
    ("seqpe", {"use": "attn_mul", "attn_scalar_proj": "multi"}),
]
IDS = ["-".join([kind, *map(str, knobs.values())]) for kind, knobs in CASES]


def tiny_model(position_type, backend="sdpa", **position):
    """A random float64 GPT (untied: a tied head repeats the last token) whose weights are large enough
    that positions move its greedy choices
    (at GPT-2's init scale the logits are nearly flat), in float64 so that no near-tie can flip."""
    model_config = ModelConfig(n_layer=2, n_head=2, d_model=32, vocab_size=VOCAB, max_seq_len=LENGTH,
                               attention_backend=backend, tie_embeddings=False)
    config = Config(model=model_config, position=PositionConfig(type=position_type, max_position=1000, **position))
    torch.manual_seed(0)
    model = build_gpt(config).double().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.3)
    return model


PROMPT = [3, 1, 4, 1, 5]


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("position_type,knobs", CASES, ids=IDS)
def test_cached_and_uncached_greedy_decoding_agree_beyond_the_training_length(position_type, knobs, backend):
    model = tiny_model(position_type, backend, **knobs)
    for sampling in (Sampling(max_new_tokens=3 * LENGTH, temperature=0),  # 5 + 48 tokens: 3.3x L
                     # greedy decoding of a random model soon cycles; a sampled one visits many choices
                     Sampling(max_new_tokens=3 * LENGTH, temperature=1.0, seed=0)):
        cached = list(generate(model, PROMPT, sampling))
        assert cached == list(generate(model, PROMPT, sampling, use_cache=False))
        assert len(cached) == sampling.max_new_tokens
    assert len(set(cached)) > 10


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("position_type,knobs", CASES, ids=IDS)
def test_a_prompt_fed_in_chunks_through_the_cache_gives_the_full_forward_logits(position_type, knobs, backend):
    model = tiny_model(position_type, backend, **knobs)
    model.position.enable_extrapolation(2 * LENGTH)
    tokens = torch.randint(0, VOCAB, (1, 2 * LENGTH), generator=torch.Generator().manual_seed(2))
    cache = KVCache(len(model.blocks))
    with torch.no_grad():
        full = model(tokens).logits
        parts = [model(tokens[:, a:b], cache=cache).logits for a, b in ((0, 7), (7, 20), (20, 21), (21, 32))]
    # eager takes its softmax in float32 whatever the inputs: float32 rounding, not float64's
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if backend == "eager" else {"rtol": 1e-9, "atol": 1e-10}
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **tolerance)


def test_the_seqpe_encoder_runs_a_logarithmic_number_of_times_not_once_per_token():
    model = tiny_model("seqpe")
    calls = []
    model.position.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].rows))
    tokens = list(generate(model, PROMPT, Sampling(max_new_tokens=120, temperature=0)))
    assert len(tokens) == 120
    assert len(calls) <= 1 + math.ceil(math.log2((len(PROMPT) + 120) / len(PROMPT))), calls  # 5 → 10 → ... → 160
    assert calls[0] == len(PROMPT) and sum(calls) < 2 * 4 * (len(PROMPT) + 120)


def test_sampling_is_seeded_and_its_limits_reduce_to_greedy():
    model = tiny_model("rope")
    run = lambda **settings: list(generate(model, PROMPT, Sampling(max_new_tokens=20, **settings)))
    greedy = run(temperature=0)
    assert run(temperature=1.0, top_k=1, seed=5) == greedy
    assert run(temperature=1.0, top_p=1e-9, seed=5) == greedy
    assert run(temperature=1.5, seed=7) == run(temperature=1.5, seed=7) != run(temperature=1.5, seed=8)


def test_generation_stops_at_eos_and_keeps_to_the_tokenizer_vocabulary():
    model = tiny_model("alibi")
    greedy = list(generate(model, PROMPT, Sampling(max_new_tokens=20, temperature=0)))
    stop = next(i for i, token in enumerate(greedy) if token not in greedy[:i] and i > 0)
    stopped = generate(model, PROMPT, Sampling(max_new_tokens=20, temperature=0), eos_id=greedy[stop])
    assert list(stopped) == greedy[:stop]
    limited = list(generate(model, PROMPT, Sampling(max_new_tokens=50, temperature=2.0, seed=0), vocab_size=10))
    assert max(limited) < 10


def test_top_p_keeps_the_fewest_tokens_that_reach_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    generator = torch.Generator().manual_seed(0)
    drawn = {sample_next(logits.clone(), Sampling(top_p=0.8), generator) for _ in range(200)}
    assert drawn == {0, 1}
