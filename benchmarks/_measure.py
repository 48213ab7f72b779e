"""Measurement helpers shared by the benchmarks: interleaved timing, peak memory in a fresh
process, machine facts, JSON results. Every comparison is measured side by side in one run."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# Same allocator settings on both sides of every comparison: glibc's dynamic mmap threshold
# otherwise turns large temporaries into page faults that dominate a 2-core CPU (TARGETS.md).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def ensure_allocator_env() -> None:
    """Re-exec this script under ALLOCATOR_ENV unless it already runs under it."""
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"]:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})


def time_interleaved(runs: Mapping[str, Callable[[], None]], warmup: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each callable, called in turn A B C A B C ... after `warmup` rounds."""
    times = {name: [] for name in runs}
    for index in range(warmup + steps):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) * 1024


def report_peak_growth(run: Callable[[], None], calls: int = 2) -> None:
    """In a child process: print the peak-RSS growth over `calls` calls of `run` as JSON."""
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: set-up does not count
    for _ in range(calls):
        run()
    print(json.dumps({"peak_bytes": max(0, _status_bytes("VmHWM") - before)}))


def tensor_peak_bytes(run: Callable[[], None], calls: int = 1) -> int:
    """The largest, over `calls` calls of `run()`, of a call's peak bytes of live tensors less
    parameters, gradients and buffers, from torch's MemTracker (torch.distributed._tools.mem_tracker,
    one per call: it tracks one iteration), which follows every tensor's storage: on CPU, where the
    allocator keeps no statistics and peak RSS mostly shows glibc's heap, this is what the tensors
    themselves need."""
    from torch.distributed._tools.mem_tracker import MemTracker

    peaks = []
    for _ in range(calls):
        tracker = MemTracker()
        with tracker:
            run()
        peaks.append(sum(size for peak in tracker.get_tracker_snapshot("peak").values() for kind, size in peak.items()
                         if kind != "Total" and kind.name not in ("PARAM", "GRAD", "BUFFER")))
    return max(peaks)


def peak_in_subprocess(script: str, args: Sequence[str]) -> int:
    """Run `script args` (which ends in report_peak_growth) in a fresh process; its peak growth."""
    result = subprocess.run([sys.executable, script, *args], env={**os.environ, **ALLOCATOR_ENV},
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed: {result.stderr.strip()[-800:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
