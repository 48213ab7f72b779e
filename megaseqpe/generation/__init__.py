"""Text generation from a trained run: `megaseqpe-generate` and the sampling loop it streams from."""
from .sampling import Sampling, generate, sample_next

__all__ = ["Sampling", "generate", "sample_next"]
