"""The extrapolation report, for text (perplexity by length) and images (accuracy by resolution).

One layout for both: RUN/eval/extrapolation.{json,md,png} and TensorBoard scalars. A result holds
`"ppl"` keyed by length (`eval/ppl_len_<N>`), or `"acc"` keyed by evaluation protocol and then
image side (`eval/acc_<protocol>_res_<N>`); each series is a table column and a plotted line.
Optional `"notes"` (one line each) are printed under the table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..rundir import RunDir


@dataclass(frozen=True)
class Metric:
    """How one kind of result is named, shown and plotted."""

    key: str  # "ppl" | "acc"
    axis: str  # what the scale is: "length" | "resolution"
    tag: str  # TensorBoard scalar name, formatted with {series} and {size}
    title: str  # column and axis title
    count_key: str  # what was scored: "tokens" | "images"
    log_y: bool
    by_series: bool  # values (and counts) are keyed by series (a protocol) first, then by size


METRICS = {
    "ppl": Metric("ppl", "length", "eval/ppl_len_{size}", "perplexity", "tokens", log_y=True, by_series=False),
    "acc": Metric("acc", "resolution", "eval/acc_{series}_res_{size}", "top-1 accuracy", "images", log_y=False,
                  by_series=True),
}


def metric_of(result: dict) -> Metric:
    return METRICS["acc"] if "acc" in result else METRICS["ppl"]


def series(result: dict, key: str) -> dict[str, dict]:
    """`result[key]` as {series: {size: value}}; a result of one series is named by its metric."""
    metric = metric_of(result)
    return result[key] if metric.by_series else {metric.title: result[key]}


def report_dirs(run: RunDir, out: Optional[Path] = None) -> tuple[Path, Path]:
    """Where an evaluation report goes, created: (RUN/eval, RUN/tensorboard), or (OUT, OUT/tensorboard)
    when `out` is given, so that the run's own report stays as it is."""
    tensorboard = run.tensorboard if out is None else out / "tensorboard"
    out = run.eval if out is None else out
    out.mkdir(parents=True, exist_ok=True)
    return out, tensorboard


def write_report(run: RunDir, result: dict, out: Optional[Path] = None) -> None:
    """extrapolation.{json,md,png} and TensorBoard scalars into the run (RUN/eval, RUN/tensorboard),
    or, given `out`, into OUT and OUT/tensorboard, leaving the run's own report as it is."""
    metric = metric_of(result)
    out, tensorboard = report_dirs(run, out)
    (out / "extrapolation.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "extrapolation.md").write_text(markdown_table(result))
    plot(result, out / "extrapolation.png")
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tensorboard)) as writer:
        for name, values in series(result, metric.key).items():
            for size, value in values.items():
                if value is not None:
                    writer.add_scalar(metric.tag.format(series=name, size=size), value, result["step"])


def markdown_table(result: dict) -> str:
    """One row per size, one value column per series; counts shown once when the series agree."""
    metric, train = metric_of(result), result["train_length"]
    values, counts = series(result, metric.key), series(result, metric.count_key)
    unit = "L" if metric.axis == "length" else "train"
    trained = f"L = {train}" if metric.axis == "length" else f"{train}x{train} pixels"
    lines = [f"# Extrapolation: {result['position_type']} trained at {trained} ({result['checkpoint']})", ""]
    if metric.by_series:
        lines += [f"{metric.title.capitalize()} per evaluation protocol.", ""]
    lines += [f"| {metric.axis} | x {unit} | {' | '.join(values)} | {metric.count_key} | method |",
              f"|---:|---:|{'---:|' * len(values)}---:|---|"]
    for size in next(iter(values.values())):
        shown = [_cell(metric, column[size], counts[name][size]) for name, column in values.items()]
        scored = list(dict.fromkeys("-" if counts[name][size] is None else str(counts[name][size])
                                    for name in values))
        lines.append(f"| {size} | {int(size) / train:g} | {' | '.join(shown)} | {' / '.join(scored)} | "
                     f"{result['method'][size]} |")
    if "interpolate" in result["method"].values():
        how = "linearly" if metric.axis == "length" else "bicubically (as timm does)"
        lines += ["", f"The learned table cannot extend: beyond the training {metric.axis} it is {how} interpolated."]
    if result.get("notes"):
        lines += ["", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines) + "\n"


def _cell(metric: Metric, value, count) -> str:
    """A value; n/a when nothing was scored (count 0) or the series does not apply here (count None)."""
    if value is not None:
        return f"{value:.2f}" if metric.key == "ppl" else f"{value:.4f}"
    if count is None:
        return "not scored"
    return f"n/a (too little validation {'text' if metric.axis == 'length' else 'data'})"


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric_of(result)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in series(result, metric.key).items():
        points = [(int(n), p) for n, p in values.items() if p is not None]
        if points:
            label = f"{result['position_type']}: {name}" if metric.by_series else result["position_type"]
            ax.plot(*zip(*points), marker="o", label=label)
    ax.axvline(result["train_length"], color="grey", linestyle=":", label=f"training {metric.axis}")
    unit = "tokens" if metric.axis == "length" else "pixels per side"
    ax.set(xscale="log", yscale="log" if metric.log_y else "linear", xlabel=f"evaluation {metric.axis} ({unit})",
           ylabel=metric.title, title=f"{metric.title.capitalize()} vs evaluation {metric.axis}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
