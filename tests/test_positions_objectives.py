import numpy as np
import pytest
import torch

from megaseqpe.config import ConfigError, PositionConfig
from megaseqpe.positions import ContrastiveObjective, DistillationObjective


def contrastive(n_dims=1, **overrides):
    settings = dict(n_dims=n_dims, max_position=2000 if n_dims == 1 else 60, contrastive_batch_size=64,
                    contrastive_num=16, dist_sample_range=32 if n_dims == 1 else 8)
    settings.update(overrides)
    return ContrastiveObjective(PositionConfig(**settings), n_head=4)


@pytest.mark.parametrize("n_dims", [1, 2])
def test_sampler_invariants(n_dims):
    objective = contrastive(n_dims)
    for seed in range(5):
        batch = objective.sample(np.random.default_rng(seed))
        assert batch.pivots.shape == (64, n_dims) and batch.candidates.shape == (64, 16, n_dims)
        assert batch.pivots.min() >= 0 and batch.pivots.max() < objective.limit
        assert batch.candidates.min() >= 0 and batch.candidates.max() < objective.limit
        for pivot, candidates, label in zip(batch.pivots, batch.candidates, batch.labels):
            rows = {tuple(c.tolist()) for c in candidates}
            assert len(rows) == len(candidates), "no duplicate candidates"
            assert tuple(pivot.tolist()) not in rows, "the pivot is never a candidate"
            distance = ((candidates - pivot) ** 2).sum(-1)
            assert distance[label] == distance.min(), "the label is the true nearest"
            assert (distance == distance.min()).sum() == 1, "and it is the only one that near"


def test_sampler_mixes_random_hard_and_local_candidates():
    objective = contrastive(contrastive_batch_size=400)
    batch = objective.sample(np.random.default_rng(0))
    spread = (batch.candidates - batch.pivots[:, None]).abs().amax(dim=(1, 2))  # [P]
    local = spread <= objective.window
    nearest = (batch.candidates - batch.pivots[:, None]).abs().amin(dim=(1, 2))
    assert 0.1 < local.float().mean() < 0.35  # about 20% of pivots draw from a small window
    assert ((nearest <= 3) & ~local).float().mean() > 0.1  # hard near candidates among random ones


def test_sampler_is_reproducible_from_its_generator():
    objective = contrastive(2)
    a, b = objective.sample(np.random.default_rng(7)), objective.sample(np.random.default_rng(7))
    assert torch.equal(a.candidates, b.candidates) and torch.equal(a.labels, b.labels)


def test_contrastive_loss_prefers_embeddings_that_rank_the_nearest_first():
    objective = contrastive(contrastive_per_head=True)
    batch = objective.sample(np.random.default_rng(0))
    # Points on a circle: the dot product falls with distance (up to half a turn).
    line = lambda p: torch.cat([(p / 300.0).cos(), (p / 300.0).sin()] * 4, dim=-1) * 4
    aligned = objective.loss(line(batch.pivots.float()), line(batch.candidates.float()), batch.labels)
    shuffled = objective.loss(line(batch.pivots.float()), line(batch.candidates.flip(1).float()), batch.labels)
    assert aligned < shuffled


def test_window_too_small_for_the_candidates_is_a_config_error():
    with pytest.raises(ConfigError, match="dist_sample_range"):
        PositionConfig(contrastive_num=32, dist_sample_range=16)


def distillation(**overrides):
    settings = dict(max_position=1000, distill_batch_size=4, distill_num=8)
    settings.update(overrides)
    return DistillationObjective(PositionConfig(**settings), n_head=2)


def test_distillation_teacher_is_shared_and_student_offsets_are_per_rank():
    objective = distillation()
    rank0 = objective.sample((64,), np.random.default_rng(11), np.random.default_rng([11, 0]))
    rank1 = objective.sample((64,), np.random.default_rng(11), np.random.default_rng([11, 1]))
    assert torch.equal(rank0.teacher, rank1.teacher)
    assert not torch.equal(rank0.student, rank1.student)
    for batch in (rank0, rank1):
        assert batch.teacher.max() < 64
        offsets = batch.student - batch.teacher
        assert (offsets == offsets[:, :1]).all(), "one shift per example"
        assert offsets.min() >= 64 and (batch.student.max() < 1000)
        assert all(len(set(row.flatten().tolist())) == 8 for row in batch.teacher)


def test_distillation_two_dimensional_grid():
    objective = distillation(n_dims=2, max_position=40, distill_num=6)
    batch = objective.sample((4, 5), np.random.default_rng(0), np.random.default_rng(1))
    assert batch.teacher.shape == (4, 6, 2)
    assert (batch.teacher[..., 0] < 4).all() and (batch.teacher[..., 1] < 5).all()
    assert (batch.student[..., 0] >= 4).all() and (batch.student[..., 1] >= 5).all()


@pytest.mark.parametrize("kind,per_head", [("kl", False), ("kl", True), ("mse", False)])
def test_distillation_loss_zero_iff_student_matches_teacher_and_teacher_gets_no_gradient(kind, per_head):
    objective = distillation(distill_loss=kind, distill_per_head=per_head)
    teacher = torch.randn(4, 8, 16, requires_grad=True)
    same = teacher.detach().clone().requires_grad_()
    assert objective.loss(teacher, same).abs().item() < 1e-6
    student = torch.randn(4, 8, 16, requires_grad=True)
    loss = objective.loss(teacher, student)
    assert loss.item() > 1e-3
    loss.backward()
    assert teacher.grad is None, "the teacher side is detached"
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_needs_room_for_the_shifted_window():
    with pytest.raises(ValueError, match="max_position"):
        distillation(max_position=100).sample((64,), np.random.default_rng(0), np.random.default_rng(0))
