"""`megaseqpe-eval --task qa`: exact match on a `megaseqpe-prep qa` set, per length and per depth.

A `task: qa` run is scored on its own data's test split; a language-model run (zero-shot) on the QA
set given with `--data`, which must use the run's tokenizer. Writes RUN/eval/qa.{json,md,png}
(the PNG a length x depth heat map) and TensorBoard scalars `qa/em/<length>` and
`qa/em/<length>/depth_<d>` at the checkpoint's step; `--out DIR` writes them there instead.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import ConfigError
from ..data import load_manifest
from ..rundir import RunDir
from ..tasks.qa import QA_SPLIT, score_qa
from .trained import load_trained
from .report import report_dirs


def evaluate_qa(run_dir: Path, *, tag: Optional[str] = None, manifest: Optional[str] = None,
                split: Optional[str] = None, lengths: Optional[Sequence[int]] = None,
                device: Optional[torch.device] = None, out: Optional[Path] = None) -> dict:
    """Score the run's checkpoint `tag` (default: latest) and write the QA report (RUN/eval or `out`)."""
    trained = load_trained(run_dir, tag, device)
    config = trained.config
    manifest = manifest or (config.data.manifest if config.task == "qa" else None)
    if not manifest:
        raise ConfigError(f"{run_dir} is a {config.task} run: give the QA set to score with --data QA_MANIFEST")
    own = load_manifest(config.data.primary_manifest, expect=None).tokenizer
    if own is None or load_manifest(manifest, expect=None).tokenizer.sha256 != own.sha256:
        raise ConfigError(f"--data {manifest} was not tokenized with the run's tokenizer ({config.data.primary_manifest})")
    result = {"position_type": config.position.type, "checkpoint": trained.tag, "step": trained.step,
              "manifest": str(manifest), "split": split or QA_SPLIT}
    result |= score_qa(trained.model, manifest, result["split"], config.model.max_seq_len,
                       lengths and list(lengths), config.data.on_corrupt)
    write_qa_report(RunDir(run_dir), result, out)
    return result


def write_qa_report(run: RunDir, result: dict, out: Optional[Path] = None) -> None:
    """qa.{json,md,png} and TensorBoard scalars into RUN/eval and RUN/tensorboard, or OUT and OUT/tensorboard."""
    out, tensorboard = report_dirs(run, out)
    (out / "qa.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "qa.md").write_text(qa_table(result))
    plot_heatmap(result, out / "qa.png")
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tensorboard)) as writer:
        for length, em in result["em"].items():
            writer.add_scalar(f"qa/em/{length}", em, result["step"])
            for depth, value in result["em_depth"][length].items():
                writer.add_scalar(f"qa/em/{length}/depth_{depth}", value, result["step"])


def depths_of(result: dict) -> list[str]:
    return sorted({d for by_depth in result["em_depth"].values() for d in by_depth}, key=float)


def qa_table(result: dict) -> str:
    """One row per length: EM, EM per depth, samples, how positions beyond L were reached."""
    depths, train = depths_of(result), result["train_length"]
    lines = [f"# Retrieval QA: {result['position_type']} fine-tuned at L = {train} ({result['checkpoint']})", "",
             "Exact match of the greedily decoded answer, per context length and per depth of the fact.", "",
             f"| length | x L | EM | {' | '.join(f'depth {d}' for d in depths)} | samples | method |",
             f"|---:|---:|---:|{'---:|' * len(depths)}---:|---|"]
    for length, em in result["em"].items():
        cells = [_percent(result["em_depth"][length].get(d)) for d in depths]
        lines.append(f"| {length} | {int(length) / train:g} | {_percent(em)} | {' | '.join(cells)} | "
                     f"{sum(result['samples'][length].values())} | {result['method'][length]} |")
    if "interpolate" in result["method"].values():
        lines += ["", "The learned table cannot extend: beyond the training length it is linearly interpolated."]
    return "\n".join(lines) + "\n"


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def plot_heatmap(result: dict, path: Path) -> None:
    """EM as a depth (rows) x length (columns) heat map, each cell labelled with its value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    depths, lengths = depths_of(result), list(result["em"])
    grid = np.array([[np.nan if result["em_depth"][n].get(d) is None else result["em_depth"][n][d] for n in lengths]
                     for d in depths], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2, 0.6 * len(depths) + 1.8))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for (row, col), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.5 else "black")
    ax.set(xticks=range(len(lengths)), xticklabels=lengths, yticks=range(len(depths)), yticklabels=depths,
           xlabel="context length (tokens)", ylabel="depth of the fact",
           title=f"Passkey exact match: {result['position_type']} (L = {result['train_length']})")
    fig.colorbar(image, ax=ax, label="exact match")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
