"""Long-context retrieval QA, the SeqPE paper's second experiment in a form we can build offline.

`make study-qa` (not part of `make test`):
1. the extrapolation study's corpus and tokenizer (data/study, made by benchmarks/extrapolation_study.py
   if missing) and a passkey QA set from its validation documents (`megaseqpe-prep qa`, L = 64,
   test lengths L..16L, 100 samples per length over 5 depths) under data/study/qa;
2. every position type of the extrapolation study fine-tuned from ITS pretrained study run
   (benchmarks/runs/study/<type>-seed<s>; pretrained here with configs/study/base.yaml when missing)
   with `task: qa`, the same budget, learning rate and seeds;
3. `megaseqpe-eval` exact match per length and depth on the test split.
Results: benchmarks/results/qa_study.json; `benchmarks/report.py` renders them (benchmarks/qa_report.py).

    python benchmarks/qa_study.py                                         # everything
    python benchmarks/qa_study.py --variants seqpe,learned --seeds 1 --steps 5 --qa-steps 5 \\
        --per-length 5 --train-samples 40 --pretrained-dir /tmp/qa/pre --runs-dir /tmp/qa/ft \\
        --qa-data /tmp/qa/set --result qa_study_smoke                   # a smoke test
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _measure import write_result  # noqa: E402
from extrapolation_study import DATA, VARIANTS, prepare_corpus, sh  # noqa: E402

import sentencepiece as spm  # noqa: E402

from data_prep.qa import no_retrieval_floor  # noqa: E402
from megaseqpe.rundir import RunDir  # noqa: E402

BASE = "configs/study/base.yaml"
TRAIN = [sys.executable, "-m", "megaseqpe.training", "--config", BASE]


def prepare_qa(args: argparse.Namespace) -> Path:
    """The QA set from the study corpus's validation documents (reused when present)."""
    manifest = args.qa_data / "manifest.json"
    if not manifest.exists():
        sh([sys.executable, "-m", "data_prep", "qa", "--corpus", str(DATA / "shards"), "--tokenizer",
            str(DATA / "tokenizer" / "tokenizer.model"), "--out", str(args.qa_data), "--train-length", str(args.length),
            "--per-length", str(args.per_length), "--train-samples", str(args.train_samples), "--seed", "0",
            "--shard-samples", "500", "--overwrite"])
    return manifest


def pretrained(variant: str, seed: int, args: argparse.Namespace, corpus: Path) -> Path:
    """The study's pretrained run of `variant`, trained here (the study's settings) when it has no checkpoint."""
    run_dir = args.pretrained_dir / f"{variant}-seed{seed}"
    if RunDir(run_dir).newest_complete_tag() is None:
        print(f"{variant} seed {seed}: pretraining {args.steps} steps", flush=True)
        sh([*TRAIN, *VARIANTS[variant], f"train.seed={seed}", f"train.max_steps={args.steps}",
            f"train.save_every={args.steps}", f"train.warmup_steps={max(1, args.steps // 20)}",
            f"data.manifest={corpus}", f"run.dir={run_dir}"])
    return run_dir


def finetune(variant: str, seed: int, args: argparse.Namespace, corpus: Path, qa: Path) -> dict:
    """Fine-tune on QA from the pretrained run, then score exact match per length and depth."""
    source = pretrained(variant, seed, args, corpus)
    run_dir = args.runs_dir / f"{variant}-seed{seed}"
    report = run_dir / "eval" / "qa.json"
    if not report.exists():
        start = time.perf_counter()
        print(f"{variant} seed {seed}: QA fine-tuning {args.qa_steps} steps", flush=True)
        sh([*TRAIN, *VARIANTS[variant], "task=qa", f"train.init_from={source}", f"train.seed={seed}",
            f"train.max_steps={args.qa_steps}", f"train.save_every={args.qa_steps}", f"train.eval_every={args.qa_steps}",
            f"train.warmup_steps={max(1, args.qa_steps // 20)}", f"train.lr={args.qa_lr}", f"data.manifest={qa}",
            f"run.dir={run_dir}"])
        sh([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(run_dir)])
        seconds = time.perf_counter() - start
        report.write_text(json.dumps({**json.loads(report.read_text()), "seconds": seconds}, indent=2) + "\n")
    result = {"variant": variant, "seed": seed, **json.loads(report.read_text()), **answer_losses(run_dir)}
    print(f"{variant} seed {seed}: EM " + "  ".join(f"{n}: {em:.2f}" for n, em in result["em"].items()), flush=True)
    return result


def answer_losses(run_dir: Path) -> dict:
    """The validation loss on answer tokens before and after fine-tuning (step 0 and the last
    evaluation): whether a type learned anything, which an EM of 0 alone does not tell."""
    records = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]
    losses = [(r["step"], r["val/loss"]) for r in records if "val/loss" in r]
    return {"val_loss_start": losses[0][1], "val_loss_end": losses[-1][1]} if losses else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--steps", type=int, default=1500, help="pretraining steps of a missing study run")
    parser.add_argument("--qa-steps", type=int, default=300, help="QA fine-tuning steps (every type alike)")
    parser.add_argument("--qa-lr", type=float, default=5e-4, help="QA fine-tuning peak learning rate")
    parser.add_argument("--length", type=int, default=64, help="the training length L (configs/study/base.yaml)")
    parser.add_argument("--per-length", type=int, default=100, help="test samples per length")
    parser.add_argument("--train-samples", type=int, default=2000, help="QA training samples")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--pretrained-dir", type=Path, default=REPO / "benchmarks" / "runs" / "study")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "benchmarks" / "runs" / "qa")
    parser.add_argument("--qa-data", type=Path, default=DATA / "qa")
    parser.add_argument("--result", default="qa_study", help="writes benchmarks/results/RESULT.json")
    args = parser.parse_args()
    unknown = set(filter(None, args.variants.split(","))) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    corpus = prepare_corpus(0.02)
    qa = prepare_qa(args)
    jobs = [(v, int(s)) for v in filter(None, args.variants.split(",")) for s in args.seeds.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: finetune(*job, args, corpus, qa), jobs))
    config = {key: value for key, value in vars(args).items() if not isinstance(value, Path)}
    config["lengths"] = [args.length * k for k in (1, 2, 4, 8, 16)]
    tokenizer = spm.SentencePieceProcessor(model_file=str(DATA / "tokenizer" / "tokenizer.model"))
    config["no_retrieval_floor"] = no_retrieval_floor(tokenizer)
    write_result(args.result, {"config": config, "runs": results})


if __name__ == "__main__":
    main()
