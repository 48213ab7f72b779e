"""Data throughput: ``megaseqpe-prep shards`` against raw SentencePiece, and the training loader.

Measured in one run on the embedded corpus (Python's standard library sources):

* raw ``SentencePieceProcessor.encode`` of every document, one call per document, one process:
  the ceiling for one tokenising worker;
* the same with 2 raw encoders running at once: how far this machine's cores scale at all;
* ``megaseqpe-prep shards`` end to end (read, encode, write tar shards, hash, manifest) with 1 and
  2 workers; targets: >= 0.8x raw per worker and near-linear in workers;
* the training loader's packed rows/s (0 and 2 workers) against the rows/s the demo model
  (configs/demo.yaml, one CPU process) consumes in forward + backward + optimizer step.

Writes benchmarks/results/data_throughput.json and prints it. Run: ``python benchmarks/data_throughput.py``
(``--max-bytes N`` for a quicker, smaller corpus).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from itertools import islice
from multiprocessing import Pool
from pathlib import Path

import sentencepiece as spm
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_prep.cli import main as prep_main  # noqa: E402
from data_prep.corpus import read_documents  # noqa: E402
from data_prep.skips import SkipLog  # noqa: E402
from megaseqpe.data import build_train_loader, load_manifest, stdlib_sources  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "data_throughput.json"


def quiet_prep(args: list[str]) -> None:
    """Run megaseqpe-prep in-process with its report lines swallowed (the benchmark prints its own)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if prep_main(args) != 0:
            raise SystemExit(f"megaseqpe-prep {args[0]} failed")


def raw_encode_tokens_per_s(texts: list[str], model: Path, repeats: int) -> tuple[float, int]:
    processor = spm.SentencePieceProcessor(model_file=str(model))
    best = float("inf")
    tokens = 0
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = sum(len(processor.encode(text)) for text in texts)
        best = min(best, time.perf_counter() - start)
    return tokens / best, tokens


def _encode_all(args: tuple[list[str], str]) -> tuple[int, float]:
    texts, model = args
    processor = spm.SentencePieceProcessor(model_file=model)
    start = time.perf_counter()
    tokens = sum(len(processor.encode(text)) for text in texts)
    return tokens, time.perf_counter() - start


def raw_encode_parallel_tokens_per_s(texts: list[str], model: Path, processes: int) -> float:
    """Aggregate rate of ``processes`` raw encoders running at once: what the cores can give.

    On small VMs two busy processes rarely run at twice the speed of one (shared caches, memory
    bandwidth, CPU quotas); this is the ceiling ``shards`` with that many workers can reach.
    """
    with Pool(processes) as pool:
        results = pool.map(_encode_all, [(texts, str(model))] * processes)
    return sum(tokens for tokens, _ in results) / max(elapsed for _, elapsed in results)


def shards_tokens_per_s(files: list[Path], model: Path, workers: int, work: Path,
                        repeats: int, shard_tokens: int) -> tuple[float, str]:
    best = float("inf")
    for run in range(repeats):
        out = work / f"shards-w{workers}-{run}"
        start = time.perf_counter()
        quiet_prep(["shards", "--input", *map(str, files), "--tokenizer", str(model), "--out", str(out),
                    "--workers", str(workers), "--shard-tokens", str(shard_tokens), "--val-fraction", "0.01"])
        best = min(best, time.perf_counter() - start)
    manifest = load_manifest(out)
    tokens = manifest.splits["train"].tokens + manifest.splits["val"].tokens
    return tokens / best, str(out / "manifest.json")


def loader_rows_per_s(manifest: str, seq: int, batch: int, num_workers: int, batches: int) -> float:
    loader = build_train_loader(manifest, max_seq_len=seq, micro_batch_size=batch, num_workers=num_workers)
    stream = iter(loader)
    next(stream)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in islice(stream, batches):
        pass
    return batches * batch / (time.perf_counter() - start)


def demo_model_rows_per_s(steps: int) -> dict:
    """Rows/s one CPU process of the demo model trains on (forward + backward + AdamW step)."""
    try:
        from megaseqpe.config import load_config
        from megaseqpe.model.gpt import GPT
        from megaseqpe.positions import build_position_encoding
    except ImportError as exc:  # the model is another part of the project; report, don't fail
        return {"rows_per_s": None, "note": f"model not importable: {exc}"}
    config = load_config(REPO / "configs" / "demo.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # the demo runs 2 ranks on the cores
    model = GPT(config.model, build_position_encoding(config))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch, seq = config.data.micro_batch_size, config.model.max_seq_len
    tokens = torch.randint(0, config.model.vocab_size, (batch, seq + 1))
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        loss = model(tokens[:, :-1], targets=tokens[:, 1:]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    rate = steps * batch / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    return {"rows_per_s": rate, "micro_batch_size": batch, "max_seq_len": seq,
            "note": "one rank, language-model loss only (SeqPE objectives add more work)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-bytes", type=int, default=None, help="cap the stdlib corpus size")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings")
    args = parser.parse_args()

    files = stdlib_sources(max_bytes=args.max_bytes)
    skips = SkipLog()
    texts = [doc.text for doc in read_documents(files, skips)]
    corpus_bytes = sum(len(t.encode("utf-8")) for t in texts)
    with tempfile.TemporaryDirectory(prefix="megaseqpe-bench-") as tmp:
        work = Path(tmp)
        quiet_prep(["tokenizer", "--input", *map(str, files), "--vocab-size", str(args.vocab_size),
                    "--out", str(work / "tok"), "--max-sentences", "300000"])
        model = work / "tok" / "tokenizer.model"
        raw, tokens = raw_encode_tokens_per_s(texts, model, args.repeats)
        raw_2 = raw_encode_parallel_tokens_per_s(texts, model, 2)
        shards = {}
        for workers in (1, 2):
            rate, manifest = shards_tokens_per_s(files, model, workers, work, args.repeats,
                                                 shard_tokens=max(tokens // 16, 1000))
            shards[workers] = rate
        demo = demo_model_rows_per_s(steps=20)
        seq, batch = 64, 8  # the demo's max_seq_len and micro_batch_size
        loader = {w: loader_rows_per_s(manifest, seq, batch, w, batches=3000) for w in (0, 2)}

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "sentencepiece": spm.__version__, "torch": torch.__version__},
        "corpus": {"files": len(files), "documents": len(texts), "bytes": corpus_bytes,
                   "tokens": tokens, "vocab_size": args.vocab_size},
        "raw_encode_tokens_per_s": raw,
        "raw_encode_2_concurrent_processes_tokens_per_s": raw_2,
        "shards_tokens_per_s": {str(w): r for w, r in shards.items()},
        "shards_vs_raw_per_worker": {str(w): r / w / raw for w, r in shards.items()},
        "shards_speedup_2_vs_1_workers": shards[2] / shards[1],
        "raw_speedup_2_vs_1_processes": raw_2 / raw,
        "shards_2_workers_vs_2_raw_processes": shards[2] / raw_2,
        "loader_rows_per_s": {str(w): r for w, r in loader.items()},
        "loader_row_shape": [batch, seq + 1],
        "demo_model_consumes_rows_per_s": demo,
        "loader_vs_model": (loader[0] / demo["rows_per_s"]) if demo["rows_per_s"] else None,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = RESULTS.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(result, indent=2) + "\n")
    tmp_path.replace(RESULTS)
    print(json.dumps(result, indent=2))
    print(f"\nshards: {shards[1]:,.0f} tok/s (1 worker, {shards[1] / raw:.2f}x raw), "
          f"{shards[2]:,.0f} tok/s (2 workers, {shards[2] / shards[1]:.2f}x of 1 worker); "
          f"raw encode {raw:,.0f} tok/s (1 process), {raw_2:,.0f} tok/s (2 at once, "
          f"{raw_2 / raw:.2f}x: the machine's own scaling)")
    print(f"loader: {loader[0]:,.0f} rows/s in-process, {loader[2]:,.0f} rows/s with 2 workers; "
          f"demo model consumes {demo['rows_per_s'] or float('nan'):,.0f} rows/s per rank")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
