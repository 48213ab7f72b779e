"""Length extrapolation, measured: every position type trained the same way, evaluated to 16L.

On the embedded corpus (`make demo`'s shards), each type gets configs/demo.yaml with the same
model, data, steps and seed at L = --length, trained with DeepSpeed on 2 CPU processes, then
`megaseqpe-eval` at L, 2L, 4L, 8L, 16L. Runs go to benchmarks/runs/study-<type> (a finished run
is reused); results to benchmarks/results/extrapolation_study.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TYPES = ("learned", "sinusoidal", "rope", "alibi", "nope", "seqpe")


def run(command: list[str]) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default="data/demo/shards/manifest.json")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=16384, help="tokens scored per evaluation length")
    parser.add_argument("--types", default=",".join(TYPES))
    args = parser.parse_args()
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    lengths = [args.length * k for k in (1, 2, 4, 8, 16)]
    results = {}
    for kind in args.types.split(","):
        run_dir = REPO / "benchmarks" / "runs" / f"study-{kind}"
        overrides = [f"position.type={kind}", f"model.max_seq_len={args.length}", "position.max_position=4096",
                     f"train.max_steps={args.steps}", f"train.warmup_steps={args.steps // 10}",
                     f"train.eval_every={args.steps}", f"train.save_every={args.steps}",
                     f"data.manifest={args.manifest}", f"run.dir={run_dir}"]
        print(f"{kind}: training {args.steps} steps at L = {args.length}", flush=True)
        run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "megaseqpe.training",
             "--config", "configs/demo.yaml", *overrides])
        run([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(run_dir),
             "--lengths", ",".join(map(str, lengths)), "--max-tokens", str(args.max_tokens)])
        results[kind] = json.loads((run_dir / "eval" / "extrapolation.json").read_text())
        print("  " + "  ".join(f"{n}: {p:.1f}" for n, p in results[kind]["ppl"].items() if p), flush=True)
    write_result("extrapolation_study", {"config": vars(args), "lengths": lengths, "runs": results})


if __name__ == "__main__":
    main()
