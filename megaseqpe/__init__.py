"""megaseqpe: Transformers with SeqPE position encodings, pretrained at scale."""

__version__ = "0.1.0"
