"""Each position type really optimises a tiny GPT on CPU (no mocks, seeded), through the trainer's own
step loss (`Task.training_loss`) and step planner, with a plain torch optimizer instead of DeepSpeed."""
from pathlib import Path

import numpy as np
import pytest
import torch

import megaseqpe
from megaseqpe.config import Config, ModelConfig, PositionConfig, TrainConfig
from megaseqpe.model import build_gpt
from megaseqpe.positions import build_step_planner
from megaseqpe.tasks import build_task

VOCAB, LENGTH, BATCH, STEPS = 48, 32, 8, 150
POSITION_TYPES = ("seqpe", "learned", "sinusoidal", "rope", "alibi", "nope")

CASES = [
    ("learned", {}), ("sinusoidal", {}), ("rope", {}), ("alibi", {}), ("nope", {}),
    ("seqpe", {"use": "input_add"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "single"}),
    ("seqpe", {"use": "attn_scalar", "attn_scalar_proj": "multi"}),
]


def config(position_type, **position):
    model = ModelConfig(n_layer=2, n_head=4, d_model=64, vocab_size=VOCAB, max_seq_len=LENGTH)
    knobs = dict(max_position=1000, contrastive_batch_size=16, contrastive_num=8, dist_sample_range=32,
                 distill_batch_size=4, distill_num=8, encoder_dropout=0.0, random_shift_rate=0.0)
    return Config(model=model, position=PositionConfig(type=position_type, **knobs, **position),
                  train=TrainConfig(seed=0))


def repetitive_batches(seed):
    """Rows of L + 1 tokens from a fixed random pattern repeated: next tokens are predictable."""
    rng = np.random.default_rng(seed)
    stream = torch.as_tensor(np.tile(rng.permutation(VOCAB)[:20], 50))
    while True:
        starts = rng.integers(0, len(stream) - LENGTH - 1, BATCH)
        yield torch.stack([stream[s:s + LENGTH + 1] for s in starts])


@pytest.mark.parametrize("position_type,knobs", CASES, ids=lambda c: c if isinstance(c, str) else
                         "-".join(str(v) for v in c.values()))
def test_every_position_type_learns(position_type, knobs):
    torch.manual_seed(0)
    cfg = config(position_type, **knobs)
    task, model = build_task(cfg), build_gpt(cfg)
    planner = build_step_planner(cfg, task.position_extents)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step, batch in zip(range(STEPS), repetitive_batches(0)):
        # The objectives' positions join the model's in one encoder pass; their losses come back by name.
        step_loss = task.training_loss(model, batch, planner.plan(step, rank=0, device=torch.device("cpu")))
        aux = {k for k in step_loss.parts if k.startswith("train/seqpe_")}
        assert aux == ({"train/seqpe_contrastive_loss", "train/seqpe_distill_loss"} if position_type == "seqpe" else set())
        optimizer.zero_grad()
        step_loss.loss.backward()
        optimizer.step()
        losses.append(step_loss.parts["train/lm_loss"].item())
    initial, final = np.mean(losses[:5]), np.mean(losses[-10:])
    assert np.isfinite(losses).all()
    assert final < 0.25 * initial, f"{position_type}: loss {initial:.3f} → {final:.3f}"


def test_sequences_beyond_the_learned_table_are_a_clear_error_unless_interpolating():
    model = build_gpt(config("learned")).eval()
    tokens = torch.randint(0, VOCAB, (1, LENGTH * 2))
    with pytest.raises(ValueError, match=r"position 63 is beyond the learned table of 32 positions"):
        model(tokens)
    assert model.position.enable_extrapolation() == "interpolate"
    with torch.no_grad():
        assert model(tokens).logits.shape == (1, 64, VOCAB)


def test_positions_beyond_the_seqpe_range_are_a_clear_error():
    model = build_gpt(config("seqpe")).eval()
    with pytest.raises(ValueError, match=r"position \(1000,\)"):
        model(torch.zeros(1, 8, dtype=torch.long), positions=torch.arange(995, 1003).view(1, 8, 1))


def test_baselines_reject_objective_positions():
    seqpe = config("seqpe")
    sample = build_step_planner(seqpe, (LENGTH,)).plan(0, 0, torch.device("cpu")).objectives
    model = build_gpt(config("rope"))
    with pytest.raises(ValueError, match="SeqPE feature"):
        model(torch.zeros(1, 4, dtype=torch.long), objectives=sample)


@pytest.mark.parametrize("package", ["model", "training", "evaluation", "tasks", "generation"])
def test_models_trainer_and_evaluation_never_branch_on_the_position_type_name(package):
    """Only megaseqpe/positions/ (its registry) turns a position type's name into behaviour."""
    root = Path(megaseqpe.__file__).parent / package
    files = [root] if root.suffix else sorted(root.rglob("*.py"))
    assert files
    for path in files:
        source = path.read_text().lower()
        for name in POSITION_TYPES:
            assert f'"{name}"' not in source and f"'{name}'" not in source, f"{path} names {name!r}"
