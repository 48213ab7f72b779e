"""`megaseqpe-generate --run RUN [--tag T] --prompt TEXT | --prompt-file F`: continue a text with a
trained run's model, streaming the new text to stdout as it is decoded."""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..process_exit import skip_final_collection

if TYPE_CHECKING:  # the CLI imports torch and the library only once its arguments parse
    from ..data.manifest import TokenizerInfo

# Decoding the last few shown tokens with the new ones gives SentencePiece's word-initial spaces right.
_CONTEXT_TOKENS = 8


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megaseqpe-generate",
        description="Continue a prompt with a text run's model (its checkpoint's consolidated weights, the "
                    "SentencePiece tokenizer of its manifest), through a KV cache. The prompt starts a "
                    "document (it follows an end-of-document token, as documents do in training, or a BOS "
                    "for runs trained with data.document_masking); "
                    "generation stops at --max-new-tokens or at end-of-document. Positions beyond the "
                    "training length are reached as megaseqpe-eval reaches them.",
        epilog="Exit codes: 0 done, 2 bad input (run, checkpoint, manifest, tokenizer, an image run).")
    parser.add_argument("--run", required=True, type=Path, help="run directory written by megaseqpe-train")
    parser.add_argument("--tag", help="checkpoint tag (default: the run's latest)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the text to continue")
    prompt.add_argument("--prompt-file", type=Path, help="a UTF-8 file holding the text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default: 128)")
    parser.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default: 1)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default: 0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="sample among the fewest most likely tokens whose probability reaches p "
                             "(default: 1 = all)")
    parser.add_argument("--seed", type=int, help="seed of the sampling (default: a fresh one)")
    parser.add_argument("--device", help="torch device (default: cuda when there is one, else cpu)")
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute the whole sequence for every token (the reference the KV cache reproduces)")
    return parser


class TextStream:
    """The text each new token adds, decoded with the few tokens before it (SentencePiece gives a
    word's leading space only in context). A character that byte-fallback spreads over several
    tokens decodes to U+FFFD until it is whole: it is held back until then."""

    def __init__(self, decode: Callable[[list[int]], str], prompt: Sequence[int]) -> None:
        self.decode, self.shown, self.pending = decode, list(prompt[-_CONTEXT_TOKENS:]), []

    def push(self, token: int) -> str:
        """The text that `token` completes ("" while a character is incomplete)."""
        self.pending.append(token)
        before, after = self.decode(self.shown), self.decode(self.shown + self.pending)
        if not after.startswith(before) or after.endswith("\ufffd"):
            return ""
        self.shown, self.pending = (self.shown + self.pending)[-_CONTEXT_TOKENS:], []
        return after[len(before):]

    def flush(self) -> str:
        """Whatever is still held back, as it decodes."""
        return self.decode(self.shown + self.pending)[len(self.decode(self.shown)):] if self.pending else ""


def _tokenizer(manifest_path: str) -> tuple[Any, TokenizerInfo]:
    """The SentencePiece model the run's data was tokenised with, and that data's tokenizer record;
    the file must still be the one the manifest names (same sha256)."""
    import sentencepiece

    from ..data import ManifestError, load_manifest
    manifest = load_manifest(manifest_path)
    path = manifest.tokenizer_path()
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != manifest.tokenizer.sha256:
        raise ManifestError(f"tokenizer {path}: missing, or not the one {manifest_path} was tokenised with "
                            f"(sha256 {manifest.tokenizer.sha256[:12]})")
    return sentencepiece.SentencePieceProcessor(model_file=str(path)), manifest.tokenizer


def _generate(args: argparse.Namespace) -> tuple[int, float]:
    """Load the run, stream the continuation to stdout; (tokens generated, seconds)."""
    import torch

    from ..config import ConfigError
    from ..evaluation.trained import load_trained
    from ..tasks import LanguageModeling
    from .sampling import Sampling, generate
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    text = args.prompt if args.prompt is not None else args.prompt_file.read_text(encoding="utf-8")
    trained = load_trained(args.run, args.tag, torch.device(args.device) if args.device else None)
    if not isinstance(trained.task, LanguageModeling):
        raise ConfigError(f"task: {args.run} is a {trained.config.task} run; megaseqpe-generate needs a text "
                          "run (task: language_modeling)")
    processor, tokenizer = _tokenizer(trained.config.data.primary_manifest)
    prompt = [*_document_start(trained.task, tokenizer.eos_id), *processor.encode(text)]
    start, count, stream = time.perf_counter(), 0, TextStream(processor.decode, prompt)
    for count, token in enumerate(generate(trained.model, prompt, sampling, eos_id=tokenizer.eos_id,
                                           vocab_size=tokenizer.vocab_size, use_cache=not args.no_cache), 1):
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush() + "\n")
    return count, time.perf_counter() - start


def _document_start(task: Any, eos_id: int) -> list[int]:
    """What a document's text follows in training: the previous document's EOS in packed rows, or,
    with `data.document_masking`, the BOS that starts each document at position 0 (nothing when the
    tokenizer has no BOS, so the prompt's first token is at position 0 as documents were)."""
    if task.markers is None:
        return [eos_id]
    return [] if task.bos_id is None else [task.bos_id]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    skip_final_collection(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed is imported only to read ZeRO checkpoints
    from ..config import ConfigError
    from ..data import ManifestError
    from ..rundir import CheckpointError
    try:
        count, seconds = _generate(args)
    except (ConfigError, ManifestError, CheckpointError, ValueError, OSError) as error:
        print(f"megaseqpe-generate: error: {error}".splitlines()[0], file=sys.stderr)
        return 2
    print(f"megaseqpe-generate: {count} tokens in {seconds:.2f} s ({count / max(seconds, 1e-9):.1f} tokens/s, "
          f"KV cache {'off' if args.no_cache else 'on'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
