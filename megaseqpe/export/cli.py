"""`megaseqpe-export --run RUN [--tag T] --out DIR [--dtype fp32|bf16] [--format native|hf] [--overwrite]`:
a trained text run's model as safetensors with its config and tokenizer, or as a Hugging Face folder."""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..process_exit import skip_final_collection


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megaseqpe-export",
        description="Write a text run's checkpoint (its consolidated weights, whatever ZeRO stage and number of "
                    "processes wrote it) into a folder. native: model.safetensors, config.yaml and the "
                    "SentencePiece tokenizer.model (megaseqpe.export.native.load_native reads it back). hf: a folder "
                    "that transformers loads offline: a stock GPT2LMHeadModel for learned-position runs of "
                    "GPT-2's shape, else the model with its own code (trust_remote_code=True), and the tokenizer "
                    "for AutoTokenizer.",
        epilog="Exit codes: 0 written, 2 bad input (run, checkpoint, manifest, tokenizer, an image run, an "
               "existing --out without --overwrite).")
    parser.add_argument("--run", required=True, type=Path, help="run directory written by megaseqpe-train")
    parser.add_argument("--tag", help="checkpoint tag (default: the run's latest)")
    parser.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weight precision (default: fp32)")
    parser.add_argument("--format", choices=("native", "hf"), default="native", help="folder layout (default: native)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return parser


def _replace_folder(out: Path, overwrite: bool, write: Callable[[Path], str]) -> str:
    """Run `write` on a fresh folder beside `out`, then put it in place of `out`: a failed export
    leaves nothing half-written, and an existing `out` is only replaced once the new one is whole."""
    from .sources import ExportError
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not empty; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.chmod(0o755)  # mkdtemp's 0700 (and safetensors' 0600 files) would hide a model meant to be shared
    for path in staging.iterdir():
        path.chmod(0o644)
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    staging.rename(out)
    return summary


def _export(args: argparse.Namespace) -> str:
    """Load the run and write the folder; a one-line summary."""
    import torch

    from ..config import ConfigError
    from ..data import load_manifest
    from ..evaluation.trained import load_trained
    from ..generation.cli import _tokenizer
    from ..rundir import RunDir
    from ..tasks import LanguageModeling
    from .hf import write_hf
    from .native import DTYPES, write_native
    trained = load_trained(args.run, args.tag, torch.device("cpu"))
    if not isinstance(trained.task, LanguageModeling):
        raise ConfigError(f"task: {args.run} is a {trained.config.task} run; megaseqpe-export writes text runs "
                          "(task: language_modeling)")
    manifest = trained.config.data.primary_manifest
    processor, info = _tokenizer(manifest)  # checks that the file is still the one the shards used
    tokenizer_file = load_manifest(manifest).tokenizer_path()
    config_file = RunDir(args.run).config_for(trained.tag)
    dtype = DTYPES[args.dtype]
    if args.format == "hf":
        write = lambda folder: write_hf(folder, trained, config_file, tokenizer_file, processor, info, dtype)
    else:
        metadata = {"run": str(args.run), "tag": trained.tag, "step": str(trained.step)}
        write = lambda folder: f"{write_native(folder, trained.model, config_file, tokenizer_file, dtype, metadata)} tensors"
    summary = _replace_folder(args.out, args.overwrite, write)
    return f"wrote {args.out} ({args.format}: {summary}, {args.dtype}, {trained.tag}, step {trained.step})"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    skip_final_collection(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed is imported only to read ZeRO checkpoints
    from ..config import ConfigError
    from ..data import ManifestError
    from ..rundir import CheckpointError
    try:
        summary = _export(args)
    except ImportError as error:  # --format hf needs transformers; safetensors is needed by both
        print(f"megaseqpe-export: error: {error.name or error} is not installed: pip install transformers "
              "safetensors (or the dev extra)".splitlines()[0], file=sys.stderr)
        return 2
    except (ConfigError, ManifestError, CheckpointError, ValueError, OSError) as error:
        print(f"megaseqpe-export: error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    print(f"megaseqpe-export: {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
