"""The extrapolation report, for text (perplexity by length) and images (accuracy by resolution).

One layout for both: RUN/eval/extrapolation.{json,md,png} and `eval/<metric>_<len|res>_<N>`
TensorBoard scalars. A result holds `"ppl"` keyed by length, or `"acc"` keyed by image side.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..rundir import RunDir


@dataclass(frozen=True)
class Metric:
    """How one kind of result is named, shown and plotted."""

    key: str  # "ppl" | "acc"
    axis: str  # what the scale is: "length" | "resolution"
    tag: str  # TensorBoard scalar prefix
    title: str  # column and axis title
    count_key: str  # what was scored: "tokens" | "images"
    log_y: bool


METRICS = {
    "ppl": Metric("ppl", "length", "eval/ppl_len_", "perplexity", "tokens", log_y=True),
    "acc": Metric("acc", "resolution", "eval/acc_res_", "top-1 accuracy", "images", log_y=False),
}


def metric_of(result: dict) -> Metric:
    return METRICS["acc"] if "acc" in result else METRICS["ppl"]


def write_report(run: RunDir, result: dict) -> None:
    metric = metric_of(result)
    out = run.eval
    out.mkdir(parents=True, exist_ok=True)
    (out / "extrapolation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "extrapolation.md").write_text(markdown_table(result))
    plot(result, out / "extrapolation.png")
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(run.tensorboard)) as writer:
        for size, value in result[metric.key].items():
            if value is not None:
                writer.add_scalar(f"{metric.tag}{size}", value, result["step"])


def markdown_table(result: dict) -> str:
    metric, train = metric_of(result), result["train_length"]
    unit = "L" if metric.axis == "length" else "train"
    trained = f"L = {train}" if metric.axis == "length" else f"{train}x{train} pixels"
    lines = [f"# Extrapolation: {result['position_type']} trained at {trained} ({result['checkpoint']})",
             "", f"| {metric.axis} | x {unit} | {metric.title} | {metric.count_key} | method |",
             "|---:|---:|---:|---:|---|"]
    for size, value in result[metric.key].items():
        shown = (f"{value:.2f}" if metric.key == "ppl" else f"{value:.4f}") if value is not None \
            else f"n/a (too little validation {'text' if metric.axis == 'length' else 'data'})"
        lines.append(f"| {size} | {int(size) / train:g} | {shown} | {result[metric.count_key][size]} | "
                     f"{result['method'][size]} |")
    if "interpolate" in result["method"].values():
        how = "linearly" if metric.axis == "length" else "bicubically (as timm does)"
        lines += ["", f"The learned table cannot extend: beyond the training {metric.axis} it is {how} interpolated."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric_of(result)
    points = [(int(n), p) for n, p in result[metric.key].items() if p is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        ax.plot(*zip(*points), marker="o", label=result["position_type"])
    ax.axvline(result["train_length"], color="grey", linestyle=":", label=f"training {metric.axis}")
    unit = "tokens" if metric.axis == "length" else "pixels per side"
    ax.set(xscale="log", yscale="log" if metric.log_y else "linear", xlabel=f"evaluation {metric.axis} ({unit})",
           ylabel=metric.title, title=f"{metric.title.capitalize()} vs evaluation {metric.axis}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
