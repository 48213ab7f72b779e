"""Activation checkpointing and torch.compile of a trunk's blocks, applied from outside the model
(as torchtitan does): the GPT and the ViT know nothing of either.

Both keep every parameter name: a checkpointed block's `forward` is replaced on the instance
(no wrapper module, so no `_checkpoint_wrapped_module.` level in the state_dict), and a compiled
block is compiled in place with `nn.Module.compile` (no `_orig_mod.` level). Checkpoints therefore
resume, export and `train.init_from` across any setting of either knob.

- `full`: every block keeps only its inputs; its activations are recomputed in the backward.
- `selective`: every block, with torch's selective activation checkpointing (SAC): the outputs of
  the matrix multiplications and attention kernels are saved, everything cheap in between (norms,
  GELU, dropout, residual adds, the SeqPE q/k concatenation) is recomputed. torchtitan's
  "selective op" policy, without its every-other-matmul refinement.

The position signal (learned table, SeqPE encoder, rotary tables) is computed once outside the
blocks; its per-layer extras are inputs of the checkpointed blocks, so their gradients reach the
position module through the recomputation. A position module's own blocks (SeqPE's encoder layers,
`PositionEncoding.checkpointable_blocks`) are checkpointed in the same mode: at long contexts the
encoder's activations would otherwise outweigh a fully checkpointed trunk's. Dropout draws the same masks on recomputation
(`preserve_rng_state=True`), so losses and gradients equal the unchecked model's.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..config import ACTIVATION_CHECKPOINTING

_aten = torch.ops.aten
# The expensive ops whose outputs `selective` keeps; the rest of a block is recomputed.
_SAVED_OPS = {
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
}


def _save_matmuls(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts() -> tuple[Any, Any]:
    return create_selective_checkpoint_contexts(_save_matmuls)


def _checkpointed_forward(block: nn.Module, context_fn: Callable[[], tuple[Any, Any]] | None,
                          *args: Any, **kwargs: Any) -> Any:
    forward = type(block).forward
    if not torch.is_grad_enabled():
        # Nothing to save under no_grad (evaluation, generation): and a KV cache extended in
        # place must not be extended twice by a recomputation.
        return forward(block, *args, **kwargs)
    options = {} if context_fn is None else {"context_fn": context_fn}
    return checkpoint(forward, block, *args, use_reentrant=False, preserve_rng_state=True, **options, **kwargs)


def apply_activation_checkpointing(blocks: Iterable[nn.Module], mode: str) -> None:
    """Checkpoint every block of `blocks` in place (`mode`: none, full or selective)."""
    if mode not in ACTIVATION_CHECKPOINTING:
        raise ValueError(f"activation checkpointing {mode!r} is not one of {', '.join(ACTIVATION_CHECKPOINTING)}")
    if mode == "none":
        return
    context_fn = _selective_contexts if mode == "selective" else None
    for block in blocks:
        # A partial of the block itself (not a closure): a deepcopy of the model gets a forward
        # bound to the copied block, and the instance attribute adds no module to the state_dict.
        block.forward = functools.partial(_checkpointed_forward, block, context_fn)


def compile_blocks(blocks: nn.ModuleList) -> None:
    """torch.compile each block in place, as torchtitan compiles per block: the blocks are
    identical, so one compiled graph serves them all, and the parameter names are unchanged."""
    for block in blocks:
        block.compile()


def prepare_trunk(model: nn.Module, activation_checkpointing: str, compile: bool) -> nn.Module:
    """Apply the run's activation checkpointing, then compilation (torchtitan's order), to the
    blocks of `model` (a GPT or a ViT: anything with `blocks` and a `position` module; checkpointing
    covers that module's own blocks too); returns `model`, changed in place."""
    apply_activation_checkpointing([*model.blocks, *model.position.checkpointable_blocks()], activation_checkpointing)
    if compile:
        compile_blocks(model.blocks)
    return model
