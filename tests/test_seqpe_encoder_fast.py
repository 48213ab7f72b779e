"""SeqPE's step cost: the summary-only last encoder layer is exact, the digit-prefix graph still
shares every prefix, and a training pass from the step plan never reads the device (the planner
lays the pass out on the host); positions derived from the plan's read it only for `torch.unique`."""
import collections
import itertools
import threading

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from megaseqpe.config import Config, ModelConfig, PositionConfig
from megaseqpe.positions import build_position_encoding, build_step_planner
from megaseqpe.positions.digits import to_digits
from test_positions_seqpe import make_seqpe

# Operators that make the host wait for the device: a scalar read (`bool`, `.item()`), or an output
# whose size depends on the data.
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}


class HostReads(TorchDispatchMode):
    """Counts the host-reading operators that run under it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def last_layer_rows(module) -> list:
    rows = []
    module.encoder.layers[-1].register_forward_hook(lambda mod, args, out: rows.append(out.shape[0]))
    return rows


@pytest.mark.parametrize("n_dims,mask_padding,share_prefixes",
                         [(1, False, True), (1, True, True), (2, False, True), (2, True, True), (1, False, False)])
def test_summary_only_last_layer_equals_the_full_computation(n_dims, mask_padding, share_prefixes):
    module = make_seqpe(n_dims=n_dims, mask_padding=mask_padding).double()
    encoder = module.encoder
    encoder.graphs.share_prefixes = share_prefixes
    generator = torch.Generator().manual_seed(5)
    positions = torch.unique(torch.randint(0, 1000, (200, n_dims), generator=generator), dim=0)
    weights = torch.randn(positions.shape[0], 32, generator=generator, dtype=torch.float64)
    rows = last_layer_rows(module)

    def outputs_and_grads(summary_only: bool):
        encoder.summary_only_last_layer = summary_only
        encoder.zero_grad(set_to_none=True)
        out = encoder.embed(positions)
        (out * weights).sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in encoder.named_parameters()}

    fast, fast_grads = outputs_and_grads(True)
    full, full_grads = outputs_and_grads(False)
    assert rows == [positions.shape[0], encoder.last_token_count] and rows[0] < rows[1]
    torch.testing.assert_close(fast, full, rtol=1e-10, atol=1e-13)
    assert fast_grads.keys() == full_grads.keys()
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-10, atol=1e-13, msg=name)


def test_prefix_graph_has_one_token_per_distinct_prefix_and_one_summary_per_position():
    module = make_seqpe(n_dims=2)  # max_position 1000: 3 digits per coordinate, 6 slots
    positions = torch.unique(torch.randint(0, 1000, (300, 2), generator=torch.Generator().manual_seed(2)), dim=0)
    module.encoder.embed(positions)
    digits, _ = to_digits(positions, 3)
    strings = [tuple(row) for row in digits.tolist()]
    prefixes = {s[: slot + 1] for s, slot in itertools.product(strings, range(6))}
    assert module.encoder.last_token_count == len(prefixes) + len(strings)


def planned_pass(device: str, shift_rate: float = 0.0):
    """A SeqPE module and a training step's plan for it, both on `device`, in float64."""
    model = ModelConfig(n_layer=2, n_head=4, d_model=32, max_seq_len=64)
    config = Config(model=model, position=PositionConfig(type="seqpe", contrastive_num=8, contrastive_batch_size=4,
                                                         distill_batch_size=2, distill_num=8, encoder_dropout=0.0,
                                                         random_shift_rate=shift_rate))
    module = build_position_encoding(config).to(device=device, dtype=torch.float64)
    plan = build_step_planner(config, (64,)).plan(0, 0, torch.device(device))
    assert len(plan.objectives.named_positions()) == 4 - 2 * plan.shifted  # no distillation when shifted
    return module, plan


ON_CUDA_TOO = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                     reason="needs CUDA"))]


@pytest.mark.parametrize("device", ON_CUDA_TOO)
def test_a_planned_training_pass_never_reads_the_device(device):
    module, plan = planned_pass(device)
    assert plan.objectives.prepared_pass(plan.positions, module.encoder.graphs.layout) is not None  # on the device
    with HostReads() as reads:
        signal = module(plan.positions, plan.objectives)
    assert set(signal.aux_losses) == {"seqpe_contrastive_loss", "seqpe_distill_loss"}
    assert reads.counts == {}  # the planner de-duplicated and laid out the pass on the host


@pytest.mark.parametrize("device", ON_CUDA_TOO)
def test_positions_derived_from_the_plans_read_the_device_only_for_their_two_uniques(device):
    module, plan = planned_pass(device)
    restarted = plan.positions.clone()  # as document masking derives its own: not the planned tensor
    assert plan.objectives.prepared_pass(restarted, module.encoder.graphs.layout) is None
    with HostReads() as reads:
        signal = module(restarted, plan.objectives)
    assert set(signal.aux_losses) == {"seqpe_contrastive_loss", "seqpe_distill_loss"}
    # Unique positions, then every digit prefix at once; the range check of all five tensors reads
    # its bounds after the first unique's sync, with no host read of its own.
    assert reads.counts == {"_unique2": 2}


def test_the_planned_pass_serves_aliases_of_the_plans_positions_only_while_they_hold_its_values():
    module, plan = planned_pass("cpu", shift_rate=1.0)  # shifted: positions [B, N, 1] of their own
    layout, sample = module.encoder.graphs.layout, plan.objectives
    assert sample.prepared_pass(plan.positions.detach(), layout) is not None  # as ZeRO-3's module hooks pass it
    assert sample.prepared_pass(plan.positions[:, :-1], layout) is None  # trimmed: other positions
    assert sample.prepared_pass(plan.positions.clone(), layout) is None  # equal values, but nothing vouches for them
    module.encoder.graphs.share_prefixes = False
    assert sample.prepared_pass(plan.positions, module.encoder.graphs.layout) is None  # laid out otherwise
    plan.positions[0, 0, 0] += 1  # written in place after planning
    assert sample.prepared_pass(plan.positions, layout) is None


@pytest.mark.parametrize("shift_rate", [0.0, 1.0])
def test_the_planned_pass_gives_what_the_models_own_pass_gives(shift_rate):
    module, plan = planned_pass("cpu", shift_rate)

    def losses_and_grads(positions):
        module.zero_grad(set_to_none=True)
        signal = module(positions, plan.objectives)
        extras = signal.for_layer(0)
        total = sum(signal.aux_losses.values()) + (extras.pe_q.sum(-1) * extras.pe_k.sum(-1)).sum()
        total.backward()
        return total.detach(), {name: p.grad for name, p in module.named_parameters() if p.grad is not None}

    planned, planned_grads = losses_and_grads(plan.positions)
    own, own_grads = losses_and_grads(plan.positions.clone())
    assert torch.equal(planned, own)
    assert planned_grads.keys() == own_grads.keys() and len(own_grads) > 0
    for name, grad in planned_grads.items():
        torch.testing.assert_close(grad, own_grads[name], rtol=1e-12, atol=0, msg=name)


def test_an_unencodable_objective_position_is_named_in_its_own_tensor():
    module = make_seqpe()  # 3 digits
    pivots = torch.tensor([[5], [1000]])
    with pytest.raises(ValueError, match=r"position \(1000,\) \(at index \(1,\)\).*3 base-10 digits"):
        module.encode(torch.arange(8).view(1, 8, 1), pivots)


def plan_contents(plan) -> list:
    sample = plan.objectives
    labels = [sample.contrastive.labels] if sample.contrastive is not None else []
    graph = sample.encoder_pass.graph
    laid_out = [graph.digit, graph.slot, graph.keys, graph.visible, graph.rows, *sample.encoder_pass.inverses]
    return [plan.positions, plan.shifted, *sample.named_positions().values(), *labels, *laid_out]


def test_prefetched_plans_equal_plans_computed_on_demand_in_order_and_after_a_jump():
    model = ModelConfig(n_layer=2, n_head=4, d_model=32, max_seq_len=32)
    config = Config(model=model, position=PositionConfig(type="seqpe", max_position=1000, random_shift_rate=0.5,
                                                         contrastive_num=8, contrastive_batch_size=4,
                                                         distill_batch_size=2, distill_num=8))
    prefetching, on_demand = build_step_planner(config, (32,)), build_step_planner(config, (32,))
    prefetching.prefetch, on_demand.prefetch = True, False
    cpu = torch.device("cpu")
    shifted = set()
    for step in [0, 1, 2, 3, 9, 10]:  # 3 → 9: a jump (as a resume makes) must not reuse step 4's plan
        ahead, direct = prefetching.plan(step, 1, cpu), on_demand.plan(step, 1, cpu)
        assert any(t.name.startswith("seqpe-plan") for t in threading.enumerate())
        for a, b in zip(plan_contents(ahead), plan_contents(direct), strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
        shifted.add(ahead.shifted)
    assert shifted == {True, False}, "shifted and unshifted steps were both compared"
