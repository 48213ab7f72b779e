"""Length (and, for images, resolution) extrapolation: evaluate a run, write the report.

`evaluate_run` and the rest load on first use: `megaseqpe-prep` borrows an argument parser from
`megaseqpe.evaluation.cli` without importing torch."""
from ..lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"extrapolation": ["default_lengths", "evaluate_run", "markdown_table"]})
__all__ = __dir__()
