"""Scaling: SeqPE's encoder pass against the number of unique positions, and data parallelism.

1. Forward + backward time of one encoder pass (width 256, 2 layers, 5 digits) for U distinct
   positions drawn from [0, 20000), with and without shared digit prefixes; a least-squares line
   through the points says whether the cost is linear in U.
2. Training tokens/s of configs/demo.yaml with 2 processes against 1 (DeepSpeed, gloo), from
   the runs' own train/tokens_per_second.
Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import ensure_allocator_env, time_interleaved, write_result  # noqa: E402

from megaseqpe.positions import DigitGraphs, SeqPEEncoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def encoder_scaling(counts: list[int], steps: int) -> dict:
    torch.manual_seed(0)
    encoder = SeqPEEncoder(DigitGraphs(n_dims=1, max_digits=5, base=10), width=256, n_layer=2, n_head=4, out_dim=256)
    rows = []
    for count in counts:
        positions = torch.as_tensor(np.sort(np.random.default_rng(count).choice(20000, count, replace=False)))[:, None]

        def run(share: bool):
            def step():
                encoder.graphs.share_prefixes = share
                encoder.embed(positions).sum().backward()
                encoder.zero_grad(set_to_none=True)
            return step
        seconds = time_interleaved({"shared_prefixes": run(True), "every_digit": run(False)}, 1, steps)
        rows.append({"unique_positions": count, **{f"seconds_{k}": v for k, v in seconds.items()}})
        print(f"U={count:>6}: shared prefixes {seconds['shared_prefixes'] * 1e3:8.1f} ms, "
              f"every digit {seconds['every_digit'] * 1e3:8.1f} ms", flush=True)
    fits = {}
    for key in ("seconds_shared_prefixes", "seconds_every_digit"):
        x, y = np.array([r["unique_positions"] for r in rows]), np.array([r[key] for r in rows])
        slope, intercept = np.polyfit(x, y, 1)
        fitted = slope * x + intercept
        fits[key] = {"seconds_per_position": slope, "intercept_seconds": intercept,
                     "r_squared": 1 - ((y - fitted) ** 2).sum() / ((y - y.mean()) ** 2).sum()}
    return {"rows": rows, "linear_fit": fits}


def data_parallel(manifest: str, steps: int) -> dict:
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = {}
    for nproc in (1, 2):
        run_dir = Path(tempfile.mkdtemp(prefix=f"scaling{nproc}-"))
        command = [torchrun, "--standalone", f"--nproc_per_node={nproc}", "-m", "megaseqpe.training",
                   "--config", "configs/demo.yaml", f"train.max_steps={steps}", f"train.eval_every={steps}",
                   f"train.save_every={steps}", "train.log_every=10", f"data.manifest={manifest}", f"run.dir={run_dir}"]
        env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(2 // nproc)}
        subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
        rates = [json.loads(line)["train/tokens_per_second"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                 if "train/tokens_per_second" in line][1:]  # the first window includes start-up
        out[f"{nproc}_process"] = float(np.median(rates))
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"{nproc} process(es): {out[f'{nproc}_process']:,.0f} tokens/s", flush=True)
    out["ratio_2_over_1"] = out["2_process"] / out["1_process"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="256,1024,2048,4096,8192,16384")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--manifest", default="data/demo/shards/manifest.json")
    parser.add_argument("--train-steps", type=int, default=80)
    args = parser.parse_args()
    ensure_allocator_env()
    result = {"config": vars(args), "encoder": encoder_scaling([int(c) for c in args.counts.split(",")], args.steps)}
    result["data_parallel"] = data_parallel(args.manifest, args.train_steps)
    write_result("scaling", result)


if __name__ == "__main__":
    main()
