"""`megaseqpe-train --config FILE.yaml [section.key=value ...]`: train, or resume the same run."""
from __future__ import annotations

import argparse
import os
import sys

from ..config import ConfigError, dump_config, load_config
from ..process_exit import skip_final_collection


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="megaseqpe-train",
        description="Train a GPT with SeqPE or a baseline position encoding under DeepSpeed. Re-running "
                    "the same command resumes from the run's latest complete checkpoint. Launch several "
                    "processes with torchrun, the deepspeed launcher or SLURM.",
        epilog="Exit codes: 0 done, 2 bad input, 1 aborted, 75 checkpointed on SIGTERM/SIGUSR1 (requeue).")
    parser.add_argument("--config", required=True, help="YAML run config (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="override config keys, e.g. train.max_steps=100 model.n_layer=2")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (YAML, after overrides and aliases) and exit without training")
    args = parser.parse_args(argv)
    skip_final_collection(argv)
    try:  # before torch is imported (seconds): a mistyped key is reported at once
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(dump_config(config), end="")
            return 0
        if not config.data.primary_manifest:
            raise ConfigError("data.manifest: not set (the manifest.json written by megaseqpe-prep shards; "
                              "or data.sources for a weighted mixture)")
    except ConfigError as error:
        print(f"megaseqpe-train: error: {error}", file=sys.stderr)
        return 2
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    from ..data import CorruptShardError, DataStreamMismatch, ManifestError, NotEnoughShardsError
    from ..rundir import CheckpointError
    from .divergence import TrainingAborted
    from .lifecycle import StaleBuildLockError
    from .loop import train
    from .run_lock import RunLockedError
    try:
        code = train(config)
    except (ConfigError, ManifestError, NotEnoughShardsError, CheckpointError, CorruptShardError,
            DataStreamMismatch, RunLockedError, StaleBuildLockError) as error:
        print(f"megaseqpe-train: error: {error}", file=sys.stderr)
        return 2
    except TrainingAborted as error:
        print(f"megaseqpe-train: {error}", file=sys.stderr)
        return 1
    _shutdown()
    return code


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _shutdown() -> None:
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
