"""Peak memory of ``megaseqpe-prep shards`` on one-line text files of growing size.

One document of N bytes without a single newline is the worst case for prep: it used to be read,
encoded and written whole (a 200 MB line took about 10 GB). Now it is read in blocks, encoded in
bounded pieces and streamed into its shard, so the peak should not grow with N.

For each ``--bytes`` size, in a temporary directory: a file of random words (drawn from the
identifiers of Python's standard library) on one line; ``megaseqpe-prep shards`` on it as a child
process, with a small tokenizer trained once on the embedded corpus. Its peak is read two ways:
``ru_maxrss`` from ``wait4`` (the largest single process: the main process or a worker) and the
largest sum of RSS over its process tree (main + workers), sampled every 50 ms.

Writes benchmarks/results/prep_memory.json and prints it. Run:
``python benchmarks/prep_memory.py [--bytes 100000000 300000000] [--workers 2]`` (default: 1 GB).
"""
from __future__ import annotations

import argparse
import contextlib
import io
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

from _measure import write_result  # noqa: E402
from data_prep.cli import main as prep_main  # noqa: E402
from megaseqpe.data import load_manifest, stdlib_sources  # noqa: E402

BLOCK_BYTES = 1 << 20
BLOCKS = 16  # distinct blocks of random words, written in random order
MiB = 1 << 20


def write_one_line(path: Path, size: int, seed: int = 0) -> None:
    """``size`` bytes (about) of space-separated words and no newline, written block by block."""
    words = sorted(set(re.findall(r"[A-Za-z_]{2,}", "".join(f.read_text() for f in stdlib_sources(2_000_000)))))
    rng = random.Random(seed)
    blocks = []
    for _ in range(BLOCKS):
        text = " ".join(rng.choices(words, k=BLOCK_BYTES // 6))[:BLOCK_BYTES]
        blocks.append(text[: text.rfind(" ") + 1].encode("ascii"))
    written = 0
    with open(path, "wb") as f:
        while written < size:
            block = rng.choice(blocks)[: size - written]
            f.write(block)
            written += len(block)


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


def run_size(size: int, model: Path, workers: int, work: Path) -> dict:
    text = work / "one-line.txt"
    write_one_line(text, size)
    out = work / "shards"
    result = measure([sys.executable, "-m", "data_prep", "shards", "--input", str(text), "--tokenizer", str(model),
                      "--out", str(out), "--val-fraction", "0", "--workers", str(workers), "--overwrite"])
    manifest = load_manifest(out)
    assert manifest.inputs.documents == 1, manifest.inputs
    text.unlink()
    return {"bytes": size, "tokens": manifest.splits["train"].tokens, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, nargs="+", default=[1_000_000_000], help="file sizes to measure")
    parser.add_argument("--workers", type=int, default=2, help="megaseqpe-prep shards --workers")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prep-memory-") as tmp:
        model = train_tokenizer(Path(tmp) / "tok")
        runs = []
        for size in args.bytes:
            runs.append(run_size(size, model, args.workers, Path(tmp)))
            print(runs[-1], flush=True)
    write_result("prep_memory", {"workers": args.workers, "runs": runs})


if __name__ == "__main__":
    main()
