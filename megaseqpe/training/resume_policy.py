"""What a resumed run may change from the config its checkpoint was written with.

Every checkpoint tag carries the resolved config that wrote it. A rerun compares the new config
with it, key by key, and nothing is silently ignored:
- keys that only say how long, how often or how the run is watched are applied and logged;
- optimisation keys are applied from the new config, the schedule continuing from the saved step;
- keys that the data stream's saved position depends on may change only with the world size
  (then a new stream starts anyway);
- everything else defines the model, its data or the shape of a step: a change is refused.
"""
from __future__ import annotations

from typing import Any

from ..config import Config
from ..rundir import CheckpointError

ADJUSTABLE = frozenset({
    "train.max_steps", "train.log_every", "train.eval_every", "train.eval_batches", "train.save_every",
    "train.keep_last", "train.max_bad_steps", "data.on_corrupt", "data.val_split",
    "model.attention_backend", "run.dir",
    "train.init_from",  # read by a fresh run only: a resumed one already holds its weights
    # How the trunk is computed, not what it is: parameter names and values are the same either way.
    "model.activation_checkpointing", "train.compile",
})
OPTIMISATION = frozenset({
    "train.lr", "train.min_lr_ratio", "train.warmup_steps", "train.decay", "train.weight_decay",
    "train.betas", "train.grad_clip",
})
STREAM = frozenset({"data.num_workers", "data.shuffle_buffer", "train.seed"})


def flatten(config: Config) -> dict[str, Any]:
    """`section.key` → value for every key of `config` (top-level scalars under their own name)."""
    flat = {}
    for name, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{name}.{key}": item for key, item in value.items()})
        else:
            flat[name] = value
    return flat


def resume_changes(saved: Config, now: Config, *, same_world: bool, tag: str) -> list[str]:
    """Log lines for the keys that change on this resume; CheckpointError naming every key that
    may not."""
    before, after = flatten(saved), flatten(now)
    allowed = ADJUSTABLE | OPTIMISATION | (frozenset() if same_world else STREAM)
    changed = [key for key in after if before.get(key) != after[key]]
    refused = [key for key in changed if key not in allowed]
    if refused:
        detail = "; ".join(f"{key} {before.get(key)!r} → {after[key]!r}" for key in refused)
        stream = [key for key in refused if key in STREAM]
        hint = (f" ({', '.join(stream)} may change only with the number of processes, which starts a new "
                "data stream)" if stream else "")
        raise CheckpointError(f"cannot resume from {tag}: {detail} would change what the checkpoint means{hint}; "
                              "keep the saved values or train into a new run.dir")
    return [f"changed on resume: {key} {before.get(key)!r} → {after[key]!r}"
            + (" (schedule continues from the saved step)" if key in OPTIMISATION else "") for key in changed]
