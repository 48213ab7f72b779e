"""Peak memory of ``megaseqpe-prep shards`` on inputs of growing size, in two shapes.

``--format text``: one document of N bytes without a single newline, the worst case for a plain
text file: it used to be read, encoded and written whole (a 200 MB line took about 10 GB). Now it
is read in blocks, encoded in bounded pieces and streamed into its shard.
``--format jsonl``: N bytes of JSON Lines records of 500 to 5,000 characters (``{"id", "text"}``),
which used to be read whole; now line by line.
In both the peak should not grow with N.

For each ``--bytes`` size, in a temporary directory: the input, of random words (drawn from the
identifiers of Python's standard library); ``megaseqpe-prep shards`` on it as a child process,
with a small tokenizer trained once on the embedded corpus. Its peak is read two ways:
``ru_maxrss`` from ``wait4`` (the largest single process: the main process or a worker) and the
largest sum of RSS over its process tree (main + workers), sampled every 50 ms.

Writes benchmarks/results/prep_memory.json (the runs of the other format, measured earlier, are
kept) and prints it. Run: ``python benchmarks/prep_memory.py [--format text|jsonl]
[--bytes 100000000 300000000] [--workers 2]`` (default: 1 GB of text, 2 GB of JSON Lines).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # a dependency of deepspeed

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from _measure import RESULTS, write_result  # noqa: E402
from data_prep.cli import main as prep_main  # noqa: E402
from megaseqpe.data import load_manifest, stdlib_sources  # noqa: E402

BLOCK_BYTES = 1 << 20
BLOCKS = 16  # distinct blocks of random words, written in random order
RECORD_CHARS = (500, 5_000)
DEFAULT_BYTES = {"text": 1_000_000_000, "jsonl": 2_000_000_000}
MiB = 1 << 20


def word_blocks(rng: random.Random) -> list[str]:
    """BLOCKS strings of about BLOCK_BYTES of space-separated words, each ending in a space."""
    words = sorted(set(re.findall(r"[A-Za-z_]{2,}", "".join(f.read_text() for f in stdlib_sources(2_000_000)))))
    blocks = []
    for _ in range(BLOCKS):
        text = " ".join(rng.choices(words, k=BLOCK_BYTES // 6))[:BLOCK_BYTES]
        blocks.append(text[: text.rfind(" ") + 1])
    return blocks


def write_one_line(path: Path, size: int, seed: int = 0) -> int:
    """``size`` bytes (about) of space-separated words and no newline, written block by block;
    returns the number of documents (1)."""
    rng = random.Random(seed)
    blocks = [block.encode("ascii") for block in word_blocks(rng)]
    written = 0
    with open(path, "wb") as f:
        while written < size:
            block = rng.choice(blocks)[: size - written]
            f.write(block)
            written += len(block)
    return 1


def write_jsonl(path: Path, size: int, seed: int = 0) -> int:
    """About ``size`` bytes of JSON Lines, records of RECORD_CHARS characters cut from the word
    blocks; returns the number of records."""
    rng = random.Random(seed)
    blocks = word_blocks(rng)
    written = records = 0
    with open(path, "wb") as f:
        while written < size:
            start, length = rng.randrange(BLOCK_BYTES // 2), rng.randrange(*RECORD_CHARS)
            line = json.dumps({"id": records, "text": rng.choice(blocks)[start:start + length]}) + "\n"
            f.write(line.encode("ascii"))
            written, records = written + len(line), records + 1
    return records


WRITERS = {"text": write_one_line, "jsonl": write_jsonl}


def train_tokenizer(out: Path) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        assert prep_main(["tokenizer", "--stdlib-corpus", "--max-bytes", "2000000", "--vocab-size", "2000",
                          "--out", str(out)]) == 0
    return out / "tokenizer.model"


def tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def measure(command: list[str]) -> dict:
    """Run ``command``; its exit code, wall time, largest single-process and process-tree RSS."""
    start = time.perf_counter()
    errors = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the child runs
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=errors)
    process, tree_peak = psutil.Process(child.pid), 0
    while True:
        # wait4 both reaps the child and gives its own rusage (its workers included), unlike
        # getrusage(RUSAGE_CHILDREN), which would mix in every earlier run.
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        tree_peak = max(tree_peak, tree_rss(process))
        time.sleep(0.05)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        errors.seek(0)
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}): "
                         f"{errors.read().decode(errors='replace')[-2000:]}")
    errors.close()
    return {"seconds": round(time.perf_counter() - start, 1), "max_process_rss_mib": round(usage.ru_maxrss / 1024),
            "max_tree_rss_mib": round(tree_peak / MiB)}


def run_size(size: int, fmt: str, model: Path, workers: int, work: Path) -> dict:
    source = work / f"input.{fmt}"
    documents = WRITERS[fmt](source, size)
    out = work / "shards"
    result = measure([sys.executable, "-m", "data_prep", "shards", "--input", str(source), "--tokenizer", str(model),
                      "--out", str(out), "--val-fraction", "0", "--workers", str(workers), "--overwrite"])
    manifest = load_manifest(out)
    assert manifest.inputs.documents == documents, manifest.inputs
    source.unlink()
    return {"format": fmt, "bytes": size, "documents": documents, "workers": workers,
            "tokens": manifest.splits["train"].tokens, **result}


def earlier_runs(replaced: str) -> list[dict]:
    """The runs of the other format in the results file (those from before formats were named
    measured one-line text)."""
    path = RESULTS / "prep_memory.json"
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    runs = [{"format": "text", "workers": old.get("workers"), **run} for run in old["runs"]]
    return [run for run in runs if run["format"] != replaced]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=sorted(WRITERS), default="text", help="input shape")
    parser.add_argument("--bytes", type=int, nargs="+", help="input sizes to measure (default: by format)")
    parser.add_argument("--workers", type=int, default=2, help="megaseqpe-prep shards --workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prep-memory-") as tmp:
        model = train_tokenizer(Path(tmp) / "tok")
        runs = []
        for size in args.bytes or [DEFAULT_BYTES[args.format]]:
            runs.append(run_size(size, args.format, model, args.workers, Path(tmp)))
            print(runs[-1], flush=True)
    write_result("prep_memory", {"runs": earlier_runs(args.format) + runs})


if __name__ == "__main__":
    main()
