"""Length (and, for images, resolution) extrapolation: evaluate a run, write the report."""
from .extrapolation import default_lengths, evaluate_run, markdown_table

__all__ = ["default_lengths", "evaluate_run", "markdown_table"]
