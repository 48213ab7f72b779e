"""SeqPE's objectives follow the authors' sampler and losses (docs/method.md §2.2-2.3)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megaseqpe.config import Config, ConfigError, ModelConfig, PositionConfig, TrainConfig
from megaseqpe.positions import ContrastiveObjective, DistillationObjective, build_position_encoding
from megaseqpe.positions.contrastive import squared_distance
from megaseqpe.positions.digit_edits import digit_edit_neighbours, to_digit_string


def contrastive(n_dims=1, **overrides):
    settings = dict(n_dims=n_dims, max_position=2000 if n_dims == 1 else 60, contrastive_batch_size=64,
                    contrastive_num=16, dist_sample_range=32 if n_dims == 1 else 8)
    settings.update(overrides)
    return ContrastiveObjective(PositionConfig(**settings), n_head=4)


def batch_of(objective, seed=0, step=0):
    return objective.sample(np.random.default_rng(seed), objective.epoch_pivots(seed, 0, step))


def reachable(digits, edits, max_len):
    """Every digit string within `edits` inserts, deletes, swaps (any two places) or replacements."""
    frontier, seen = {tuple(digits)}, {tuple(digits)}
    for _ in range(edits):
        following = set()
        for d in frontier:
            n = len(d)
            following |= {d[:i] + (x,) + d[i:] for i in range(n + 1) for x in range(10) if n < max_len}
            following |= {d[:i] + d[i + 1:] for i in range(n) if n > 1}
            following |= {d[:i] + (d[j],) + d[i + 1:j] + (d[i],) + d[j + 1:] for i in range(n) for j in range(i + 1, n)}
            following |= {d[:i] + (x,) + d[i + 1:] for i in range(n) for x in range(10)}
        frontier = following - seen
        seen |= following
    return seen


def as_positions(strings, n_dims, max_digits):
    """The positions a digit string can be read back as (n-D: every cut into coordinates, or padded)."""
    value = lambda part: int("".join(map(str, part)))
    positions = set()
    for d in strings:
        padded = [d] if len(d) >= n_dims else [(0,) + d, d + (0,)]
        for s in padded:
            if n_dims == 1:
                positions.add((value(s),))
            else:
                positions |= {(value(s[:k]), value(s[k:])) for k in range(1, len(s))
                              if k <= max_digits and len(s) - k <= max_digits}
    return positions


@pytest.mark.parametrize("n_dims", [1, 2])
def test_sampler_invariants(n_dims):
    objective = contrastive(n_dims, contrastive_mode_shares=(0.4, 0.3, 0.3))
    for seed in range(5):
        batch = batch_of(objective, seed)
        assert batch.pivots.shape == (64, n_dims) and batch.candidates.shape == (64, 16, n_dims)
        assert batch.candidates.min() >= 0 and batch.candidates.max() < objective.limit
        for pivot, candidates, label in zip(batch.pivots, batch.candidates, batch.labels):
            rows = {tuple(c.tolist()) for c in candidates}
            assert len(rows) == len(candidates), "no duplicate candidates"
            assert tuple(pivot.tolist()) not in rows, "the pivot is never a candidate"
            distance = ((candidates - pivot) ** 2).sum(-1)
            assert distance[label] == distance.min(), "the label is the true nearest"
            assert (distance == distance.min()).sum() == 1, "and it is the only one that near"


@pytest.mark.parametrize("n_dims,pivot,limit,max_digits", [(1, [57], 1000, 3), (1, [7], 1000, 3),
                                                           (2, [5, 40], 100, 2)])
def test_hard_candidates_are_digit_edits_of_the_pivot(n_dims, pivot, limit, max_digits):
    pivot = np.array(pivot)
    edits = digit_edit_neighbours(pivot, 12, np.random.default_rng(0), base=10, max_digits=max_digits, limit=limit)
    assert len(edits) == 12 and len({tuple(e) for e in edits.tolist()}) == 12
    assert edits.min() >= 0 and edits.max() < limit and not (edits == pivot).all(-1).any()
    within_three = as_positions(reachable(to_digit_string(pivot, 10), 3, n_dims * max_digits), n_dims, max_digits)
    assert {tuple(e) for e in edits.tolist()} <= within_three, "one to three digit edits of the pivot"


def test_a_hard_candidate_is_never_the_label_and_is_farther_than_the_nearest_random_one():
    objective = contrastive(max_position=20000, contrastive_num=32, contrastive_hard_ratio=0.25,
                            contrastive_mode_shares=(0.0, 1.0, 0.0))
    rng, found = np.random.default_rng(3), 0
    for pivot in objective.epoch_pivots(3, 0, 0):
        randoms = objective._uniform(rng, objective.num + 1)
        hard = objective._hard_negatives(pivot, randoms, rng)
        found += len(hard)
        kept_randoms = randoms[: len(randoms) - objective.hard]
        nearest = squared_distance(kept_randoms[(kept_randoms != pivot).any(-1)], pivot).min()
        assert (squared_distance(hard, pivot) > nearest).all()
        kept = objective._assemble(pivot, [hard, randoms], rng)
        label = kept[np.argmin(squared_distance(kept, pivot))]
        assert not (hard == label).all(-1).any(), "a hard negative is never the label"
        is_hard = [tuple(row) in {tuple(h) for h in hard.tolist()} for row in kept.tolist()]
        assert is_hard == sorted(is_hard, reverse=True), "special candidates come first"
    assert found >= 16 * 2, "most hard-mode pivots get hard negatives"


def test_window_candidates_come_from_a_random_window_independent_of_the_pivot():
    objective = contrastive(max_position=20000, contrastive_num=32, dist_sample_range=256,
                            contrastive_mode_shares=(0.0, 0.0, 1.0), contrastive_batch_size=200)
    batch = batch_of(objective, 1)
    assert objective.window == 256
    spans = batch.candidates[..., 0].amax(1) - batch.candidates[..., 0].amin(1)
    assert (spans < 256).all(), "every candidate of a pivot lies in one window"
    low, high = batch.candidates[..., 0].amin(1), batch.candidates[..., 0].amax(1)
    contains = ((low <= batch.pivots[:, 0]) & (batch.pivots[:, 0] <= high)).float().mean()
    assert contains < 0.1, "the window usually does not contain the pivot"


def test_the_default_mode_shares_are_the_reference_ones():
    assert PositionConfig().contrastive_mode_shares == (0.0, 0.4, 0.6)
    assert PositionConfig(n_dims=2, max_position=100).contrastive_mode_shares == (0.5, 0.3, 0.2)
    objective = contrastive(max_position=20000, contrastive_num=32, dist_sample_range=256,
                            contrastive_batch_size=500, contrastive_mode_shares=None)
    batch = batch_of(objective, 2)
    spans = batch.candidates[..., 0].amax(1) - batch.candidates[..., 0].amin(1)
    assert 0.5 < (spans < 256).float().mean() < 0.7  # 60% of pivots in window mode, none random-only


def test_each_rank_visits_every_pivot_once_per_epoch():
    objective = contrastive(max_position=200, contrastive_num=8, dist_sample_range=32, contrastive_batch_size=20)
    epoch = np.concatenate([objective.epoch_pivots(5, 0, step) for step in range(10)])[:, 0]
    assert sorted(epoch.tolist()) == list(range(200))
    other_rank = np.concatenate([objective.epoch_pivots(5, 1, step) for step in range(10)])[:, 0]
    assert sorted(other_rank.tolist()) == list(range(200)) and not np.array_equal(epoch, other_rank)
    assert not np.array_equal(np.concatenate([objective.epoch_pivots(5, 0, s) for s in range(10, 20)])[:, 0], epoch)


def test_contrastive_loss_prefers_embeddings_that_rank_the_nearest_first():
    objective = contrastive(contrastive_per_head=True)
    batch = batch_of(objective)
    # Points on a circle: the dot product falls with distance (up to half a turn).
    line = lambda p: torch.cat([(p / 300.0).cos(), (p / 300.0).sin()] * 4, dim=-1) * 4
    aligned = objective.loss(line(batch.pivots.float()), line(batch.candidates.float()), batch.labels)
    shuffled = objective.loss(line(batch.pivots.float()), line(batch.candidates.flip(1).float()), batch.labels)
    assert aligned < shuffled


def distillation(**overrides):
    settings = dict(max_position=1000, distill_batch_size=64, distill_num=8)
    settings.update(overrides)
    return DistillationObjective(PositionConfig(**settings), n_head=2)


def test_distillation_teacher_is_shared_and_1d_student_starts_are_per_rank_in_the_reference_range():
    objective = distillation()
    rank0 = objective.sample((64,), np.random.default_rng(11), np.random.default_rng([11, 0]))
    rank1 = objective.sample((64,), np.random.default_rng(11), np.random.default_rng([11, 1]))
    assert torch.equal(rank0.teacher, rank1.teacher)
    assert not torch.equal(rank0.student, rank1.student)
    for batch in (rank0, rank1):
        assert batch.teacher.max() < 64
        offsets = batch.student - batch.teacher
        assert (offsets == offsets[:, :1]).all(), "one start per example"
        assert offsets.min() >= 64 // 4 and offsets.max() < 1000 - 64, "starts in [L//4, max - L)"
        assert all(len(set(row.flatten().tolist())) == 8 for row in batch.teacher)
    assert (rank0.student - rank0.teacher).min() < 64, "starts below L occur (the reference's L//4)"


def test_2d_students_need_only_one_coordinate_beyond_the_training_grid():
    objective = distillation(n_dims=2, max_position=16, distill_num=6, distill_batch_size=400)
    batch = objective.sample((4, 5), np.random.default_rng(0), np.random.default_rng(1))
    assert batch.teacher.shape == (400, 6, 2)
    assert (batch.teacher[..., 0] < 4).all() and (batch.teacher[..., 1] < 5).all()
    starts = (batch.student - batch.teacher)[:, 0]
    assert ((starts[:, 0] >= 4) | (starts[:, 1] >= 5)).all(), "at least one coordinate beyond"
    assert ((starts[:, 0] < 4) & (starts[:, 1] >= 5)).any() and ((starts[:, 0] >= 4) & (starts[:, 1] < 5)).any()
    assert batch.student.max() < 16


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")
def test_kl_is_kl_div_with_mean_reduction_both_ways_per_head():
    objective = distillation(distill_per_head=True)
    torch.manual_seed(0)
    teacher, student = torch.randn(3, 8, 16), torch.randn(3, 8, 16, requires_grad=True)
    split = lambda e: e.unflatten(-1, (2, 8)).transpose(1, 2)  # [E, heads, m, d]
    log_t = (split(teacher) @ split(teacher).transpose(-1, -2)).log_softmax(-1)
    log_s = (split(student) @ split(student).transpose(-1, -2)).log_softmax(-1)
    numel = log_t.numel()
    by_hand = ((log_t.exp() * (log_t - log_s)).sum() + (log_s.exp() * (log_s - log_t)).sum()) / numel
    loss, entropy = objective.loss(teacher, student)
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(loss, F.kl_div(log_s, log_t, log_target=True) + F.kl_div(log_t, log_s, log_target=True))
    torch.testing.assert_close(entropy, -(log_t.exp() * log_t).sum(-1).mean())


@pytest.mark.parametrize("kind,per_head", [("kl", False), ("kl", True), ("mse", False)])
def test_distillation_loss_zero_iff_student_matches_teacher_and_teacher_gets_no_gradient(kind, per_head):
    objective = distillation(distill_loss=kind, distill_per_head=per_head)
    teacher = torch.randn(4, 8, 16, requires_grad=True)
    same = teacher.detach().clone().requires_grad_()
    assert objective.loss(teacher, same)[0].abs().item() < 1e-6
    student = torch.randn(4, 8, 16, requires_grad=True)
    loss, _ = objective.loss(teacher, student)
    assert loss.item() > 1e-4
    loss.backward()
    assert teacher.grad is None, "the teacher side is detached"
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_distillation_needs_room_for_the_student_starts():
    with pytest.raises(ConfigError, match="position.max_position: 70 leaves no student start"):
        distillation(max_position=70).check((64,))
    distillation(max_position=81).check((64,))  # 81 - 64 > 64 // 4


def test_attention_space_similarity_is_the_bias_attention_adds():
    model = ModelConfig(n_layer=2, n_head=2, d_model=16, max_seq_len=8)
    position = PositionConfig(max_position=100, distill_space="attention", scalar_scale=0.5,
                              attn_scalar_proj="multi", contrastive_num=8)
    seqpe = build_position_encoding(Config(model=model, position=position, train=TrainConfig()))
    embeddings = torch.randn(3, 5, 16)
    scores = seqpe.attention_similarity(embeddings)
    assert scores.shape == (3, 2 * 2, 5, 5)  # projections x heads
    pe_q, pe_k = seqpe.qk_projections[1](embeddings).unflatten(-1, (2, 2, 8)).unbind(-3)
    expected = 0.5 * (pe_q[0, 1, 1] @ pe_k[0, 3, 1]) / 8 ** 0.5  # layer 1, head 1, query slot 1, key slot 3
    torch.testing.assert_close(scores[0, 3, 1, 3], expected)


def test_attention_space_distillation_needs_attn_scalar():
    with pytest.raises(ConfigError, match="position.distill_space: attention needs position.use=attn_scalar"):
        PositionConfig(distill_space="attention", use="input_add")
