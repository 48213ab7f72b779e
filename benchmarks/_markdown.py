"""Markdown tables and PNG figures for benchmarks/REPORT.md (shared by the report's sections)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def figure(name: str, draw: Callable) -> str:
    """Draw on one axis with `draw(ax)`, save figures/<name>.png and return its Markdown image."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    draw(ax)
    ax.legend(fontsize=8)
    fig.tight_layout()
    FIGURES.mkdir(exist_ok=True)
    fig.savefig(FIGURES / f"{name}.png", dpi=110)
    plt.close(fig)
    return f"![{name}](figures/{name}.png)"
