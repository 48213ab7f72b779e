"""Weighted mixtures (`data.sources`): the row shares a real mixture loader hands out against the
weights, and what drawing rows one at a time costs against one manifest's loader.

Two manifests of the embedded corpus (Python's standard library sources: the first and the second
half of the files) share one SentencePiece tokenizer; weights 3:1. For a few seeds, ROWS rows of
rank 0 are drawn with 0 DataLoader workers and each source's share is compared with its weight and
with the binomial standard deviation sqrt(p (1 - p) / ROWS). Writes
benchmarks/results/mixture_proportions.json. Run: ``python benchmarks/mixture_proportions.py``.
"""
from __future__ import annotations

import contextlib
import io
import math
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _measure import write_result  # noqa: E402
from data_prep.cli import main as prep_main  # noqa: E402
from megaseqpe.config import DataSource  # noqa: E402
from megaseqpe.data import build_mixture_loader, build_train_loader, stdlib_sources  # noqa: E402

ROWS, BATCH, SEQ, WEIGHTS, SEEDS = 4000, 8, 255, (3.0, 1.0), (0, 1, 2)


def _prep(*args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert prep_main(list(args)) == 0, args


def _manifests(tmp: Path) -> list[Path]:
    files = [str(path) for path in stdlib_sources(max_bytes=2_000_000)]
    _prep("tokenizer", "--input", *files, "--vocab-size", "4000", "--out", str(tmp))
    halves = {"first": files[: len(files) // 2], "second": files[len(files) // 2:]}
    for name, inputs in halves.items():
        _prep("shards", "--input", *inputs, "--tokenizer", str(tmp / "tokenizer.model"), "--out", str(tmp / name),
              "--shard-tokens", "20000", "--val-fraction", "0.05")
    return [tmp / name / "manifest.json" for name in halves]


def _rows_per_second(loader) -> float:
    start = time.perf_counter()
    for _ in islice(loader, ROWS // BATCH):
        pass
    return ROWS / (time.perf_counter() - start)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        manifests = _manifests(Path(tmp))
        sources = [DataSource(str(m), w, m.parent.name) for m, w in zip(manifests, WEIGHTS)]
        shares = []
        for seed in SEEDS:
            loader = build_mixture_loader(sources, max_seq_len=SEQ, micro_batch_size=BATCH, seed=seed)
            rate = _rows_per_second(loader)
            counts = loader.rows_by_source()
            shares.append({"seed": seed, "rows": counts, "share_first": counts["first"] / ROWS, "rows_per_s": rate})
        single = _rows_per_second(build_train_loader(manifests[0], max_seq_len=SEQ, micro_batch_size=BATCH))
    p = WEIGHTS[0] / sum(WEIGHTS)
    sd = math.sqrt(p * (1 - p) / ROWS)
    result = {"rows": ROWS, "weights": dict(zip(("first", "second"), WEIGHTS)), "expected_share_first": p,
              "binomial_sd": sd, "seeds": shares,
              "max_deviation_in_sd": max(abs(s["share_first"] - p) / sd for s in shares),
              "single_source_rows_per_s": single, "max_seq_len": SEQ, "micro_batch_size": BATCH, "num_workers": 0}
    write_result("mixture_proportions", result)
    for s in shares:
        print(f"seed {s['seed']}: {s['rows']} -> first {s['share_first']:.4f} (expected {p:.4f} +- {sd:.4f}), "
              f"{s['rows_per_s']:.0f} rows/s")
    print(f"one manifest: {single:.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
