"""Each position type really optimises a tiny GPT on CPU (no mocks, seeded)."""
import numpy as np
import pytest
import torch

from megaseqpe.config import Config, ModelConfig, PositionConfig
from megaseqpe.model import build_gpt
from megaseqpe.positions import SeqPEObjectives

VOCAB, LENGTH, BATCH, STEPS = 48, 32, 8, 150

CASES = [
    ("learned", {}), ("sinusoidal", {}), ("rope", {}), ("alibi", {}), ("nope", {}),
    ("seqpe", {"use": "input_add"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "single"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "multi"}),
]


def config(position_type, **position):
    model = ModelConfig(n_layer=2, n_head=4, d_model=64, vocab_size=VOCAB, max_seq_len=LENGTH)
    knobs = dict(max_position=1000, contrastive_batch_size=16, contrastive_num=8, dist_sample_range=32,
                 transfer_batch_size=4, transfer_num=8, encoder_dropout=0.0)
    return Config(model=model, position=PositionConfig(type=position_type, **knobs, **position))


def repetitive_batches(seed):
    """Windows of a fixed random pattern repeated: next tokens are predictable from context."""
    rng = np.random.default_rng(seed)
    stream = torch.as_tensor(np.tile(rng.permutation(VOCAB)[:20], 50))
    while True:
        starts = rng.integers(0, len(stream) - LENGTH - 1, BATCH)
        rows = torch.stack([stream[s:s + LENGTH + 1] for s in starts])
        yield rows[:, :-1], rows[:, 1:]


@pytest.mark.parametrize("position_type,knobs", CASES, ids=lambda c: c if isinstance(c, str) else
                         "-".join(str(v) for v in c.values()))
def test_every_position_type_learns(position_type, knobs):
    torch.manual_seed(0)
    cfg = config(position_type, **knobs)
    model = build_gpt(cfg)
    seqpe = position_type == "seqpe"
    objectives = SeqPEObjectives(cfg.position, cfg.model.n_head) if seqpe else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    losses = []
    for step, (tokens, targets) in zip(range(STEPS), repetitive_batches(0)):
        extra = objectives.sample((LENGTH,), np.random.default_rng(step), rng) if seqpe else None
        # The objectives' positions join the model's in one encoder pass.
        out = model(tokens, targets=targets, extra_positions=extra.positions if seqpe else ())
        loss = out.loss
        if seqpe:
            aux = objectives.losses(extra, out.position_signal.extra_embeddings)
            assert set(aux) == {"seqpe_contrastive_loss", "seqpe_distill_loss"}
            loss = loss + objectives.weighted(aux)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    initial, final = np.mean(losses[:5]), np.mean(losses[-10:])
    assert np.isfinite(losses).all()
    assert final < 0.25 * initial, f"{position_type}: loss {initial:.3f} → {final:.3f}"


def test_sequences_beyond_the_learned_table_are_a_clear_error_unless_interpolating():
    model = build_gpt(config("learned")).eval()
    tokens = torch.randint(0, VOCAB, (1, LENGTH * 2))
    with pytest.raises(ValueError, match=r"position 63 is beyond the learned table of 32 positions"):
        model(tokens)
    model.position.interpolate = True
    with torch.no_grad():
        assert model(tokens).logits.shape == (1, 64, VOCAB)


def test_positions_beyond_the_seqpe_range_are_a_clear_error():
    model = build_gpt(config("seqpe")).eval()
    with pytest.raises(ValueError, match=r"position \(1000,\)"):
        model(torch.zeros(1, 8, dtype=torch.long), positions=torch.arange(995, 1003).view(1, 8, 1))


def test_baselines_reject_objective_positions():
    model = build_gpt(config("rope"))
    with pytest.raises(ValueError, match="SeqPE feature"):
        model(torch.zeros(1, 4, dtype=torch.long), extra_positions=[torch.zeros(2, 1, dtype=torch.long)])


def test_the_model_never_branches_on_the_position_type_name():
    import inspect
    import megaseqpe.model.gpt as gpt
    source = inspect.getsource(gpt)
    for name in ("seqpe", "learned", "sinusoidal", "rope", "alibi", "nope"):
        assert f'"{name}"' not in source.lower()
