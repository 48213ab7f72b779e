"""The QA study's section of benchmarks/REPORT.md (from results/qa_study.json): exact match vs
context length per position type (mean over seeds), and the same as a figure."""
from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from _markdown import figure, table

RESULTS = Path(__file__).resolve().parent / "results"


def _loss(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    return f"{statistics.mean(values):.2f}" if values else "-"


def qa_section(data: dict) -> list[str]:
    """`make study-qa`'s result (qa_study) as section 5; another budget's (`--result NAME`) as a
    subsection; each followed by results/NAME.notes.md when there is one."""
    config = data["config"]
    name = config.get("result", "qa_study")
    title = "## 5. Long-context retrieval QA" if name == "qa_study" else \
        f"### The same study at {config['qa_steps']} QA steps, lr {config['qa_lr']:g} (`{name}`)"
    notes = RESULTS / f"{name}.notes.md"
    lengths, train = [str(n) for n in config["lengths"]], config["length"]
    by_variant = defaultdict(list)
    for run in data["runs"]:
        by_variant[run["variant"]].append(run)
    mean = {name: {n: statistics.mean(r["em"][n] for r in runs) for n in lengths} for name, runs in by_variant.items()}
    rows = [[name] + [f"{100 * em[n]:.1f}%" for n in lengths] + [runs[0]["method"][lengths[-1]]]
            + [f"{_loss(runs, 'val_loss_start')} → {_loss(runs, 'val_loss_end')}"]
            for (name, em), runs in zip(mean.items(), by_variant.values())]

    def draw(ax):
        for name, em in mean.items():
            ax.plot([int(n) for n in lengths], [em[n] for n in lengths], marker="o", label=name)
        ax.axvline(train, color="grey", linestyle=":", label="fine-tuning length")
        ax.set(xscale="log", xlabel="context length (tokens)", ylabel="exact match", ylim=(-0.02, 1.02),
               title="Passkey retrieval vs context length")

    return [title, "",
            f"`make study-qa`: each type fine-tuned from its pretrained study run on passkey retrieval (`task: qa`, "
            f"{config['qa_steps']} steps at L = {train}, lr {config['qa_lr']:g}, {config['train_samples']} samples, "
            f"seeds {config['seeds']}), "
            f"exact match of the greedy answer on {config['per_length']} test samples per length (5 depths). "
            "Cells: mean over seeds; the last column is the validation loss on answer tokens (at L) "
            "before and after fine-tuning" + (f", against {config['no_retrieval_floor']:.2f} nats, the lowest "
            "a model reaches without reading the fact (the keys' entropy per answer token): only below it "
            "does a type retrieve anything" if "no_retrieval_floor" in config else "") + ".", ""] + \
        table(["type"] + [f"{n} ({int(n) // train}L)" for n in lengths] + ["beyond L", "answer loss"], rows) + \
        ["", figure("qa_em_vs_length" + name.removeprefix("qa_study"), draw), ""] + \
        ([notes.read_text(), ""] if notes.exists() else [])
