"""`megaseqpe-eval --run DIR`: perplexity at L, 2L, 4L, 8L, 16L from the run's checkpoint (image
runs: top-1 accuracy at 1x, 1.5x, 2x, 3x the training resolution under three protocols: the source
image resized, the training image padded at its trained place, and moved onto unseen positions)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..process_exit import skip_final_collection


def comma_separated_sizes(text: str) -> list[int]:
    """argparse type of --lengths / --resolutions: positive integers separated by commas."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="megaseqpe-eval",
        description="Measure perplexity at several evaluation lengths (batch 1, non-overlapping windows of "
                    "the validation shards), or for image runs top-1 accuracy at several input resolutions "
                    "under three protocols (resize: the source image resized to each side; pad: the "
                    "training-size image at the top-left of a blank canvas; pad_moved: it at offset "
                    "(train, train), on positions never trained, for sides >= 2x train), and write "
                    "RUN/eval/extrapolation.{json,md,png}.")
    parser.add_argument("--run", required=True, type=Path, help="run directory written by megaseqpe-train")
    parser.add_argument("--checkpoint", help="checkpoint tag (default: the run's latest)")
    parser.add_argument("--lengths", type=comma_separated_sizes, help="text runs: comma-separated lengths (default: L,2L,4L,8L,16L)")
    parser.add_argument("--resolutions", type=comma_separated_sizes,
                        help="image runs: comma-separated image sides in pixels, multiples of the patch size "
                             "(default: 1x, 1.5x, 2x, 3x the training resolution)")
    parser.add_argument("--max-images", type=int,
                        help="image runs: images scored per resolution and protocol (default: all)")
    parser.add_argument("--data", help="manifest.json to evaluate on (default: the run's data.manifest); "
                                       "refused unless made with the run's tokenizer (same sha256)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="write extrapolation.{json,md,png} and TensorBoard scalars to DIR instead of "
                             "RUN/eval (the run's own report is left as it is)")
    parser.add_argument("--split", help="manifest split (default: the run's data.val_split)")
    parser.add_argument("--max-tokens", type=int, default=32768, help="tokens scored per length (default: 32768)")
    parser.add_argument("--task", choices=["qa"],
                        help="qa: exact match on a `megaseqpe-prep qa` set per length and depth, written to "
                             "qa.{json,md,png} (default for task: qa runs; a language-model run needs --data)")
    args = parser.parse_args(argv)
    skip_final_collection(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from ..config import ConfigError, load_config
    from ..data import CorruptShardError, ManifestError
    from ..rundir import CheckpointError, RunDir
    from .extrapolation import evaluate_run, markdown_table
    if not RunDir(args.run).config.is_file():
        print(f"megaseqpe-eval: error: {RunDir(args.run).config} not found: not a run directory", file=sys.stderr)
        return 2
    try:
        if args.task == "qa" or load_config(RunDir(args.run).config).task == "qa":
            return _qa(args)
        result = evaluate_run(args.run, tag=args.checkpoint, lengths=args.lengths, manifest=args.data,
                              split=args.split, max_tokens=args.max_tokens, resolutions=args.resolutions,
                              max_images=args.max_images, out=args.out)
    except (ConfigError, ManifestError, CheckpointError, CorruptShardError, ValueError) as error:
        print(f"megaseqpe-eval: error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(result), end="")
    print(f"wrote {args.out or RunDir(args.run).eval}/extrapolation.{{json,md,png}}")
    return 0


def _qa(args: argparse.Namespace) -> int:
    """`--task qa` (or a qa run): exact match per length and depth, written as qa.{json,md,png}."""
    from ..rundir import RunDir
    from .qa import evaluate_qa, qa_table
    result = evaluate_qa(args.run, tag=args.checkpoint, manifest=args.data, split=args.split, lengths=args.lengths,
                         out=args.out)
    print(qa_table(result), end="")
    print(f"wrote {args.out or RunDir(args.run).eval}/qa.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
