"""Text generation from a trained run: `megaseqpe-generate` and the sampling loop it streams from.

The sampling names load on first use, so that `megaseqpe-generate --help` and its one-line errors
come before torch is imported."""
from ..lazy_exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"sampling": ["Sampling", "generate", "sample_next"]})
__all__ = __dir__()
